"""The RabbitMQ bus: the Bus Protocol over the topology of ``shared.bus.topology``.

``connect_robust`` reconnects after a broker restart and restores the channels, the declared
exchanges/queues/bindings, the prefetch and the consumers. Messages that were unacked when the
connection dropped are redelivered by the broker, so every handler must be idempotent (they are:
the hasher skips unchanged files, the ledger grants a redelivered decision its lease again and
the actuator re-checks the disk). ``publish`` waits for the connection to come back (up to
``publish_timeout`` seconds) instead of failing during a broker restart.

A lost connection is reported once, by the bus: one line when it is lost (with the broker's
reason), one when it is back. The client libraries' own records of it (several per loss, with
tracebacks, one per unsettled message) and the count of messages in hand that could not be
settled (the broker redelivers them) are shown only at DEBUG level. A store outage is one line
when it begins and one when it ends (``shared.bus.Outages``), a dead letter one line with its
reason.

The failure policy (outages, retry header, dead-letter exchange, reasons) is described in
``shared.bus.topology``.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Awaitable, Callable

import aio_pika
from aio_pika.abc import AbstractIncomingMessage, AbstractQueue, AbstractRobustConnection
from pydantic import ValidationError

from . import topology
from . import Handler, Outages, Reject, one_line
from ..messages import Message, decode, encode

log = logging.getLogger(__name__)

# (kind, outcome, seconds); outcome is one of ok, rejected, invalid, retried, dead_lettered
Observer = Callable[[str, str, float], None]


def _quiet_client_logs() -> None:
    """Leave the story of a lost connection to the bus (see the module doc)."""
    level = logging.DEBUG if log.isEnabledFor(logging.DEBUG) else logging.CRITICAL
    for name in ("aiormq", "aio_pika"):
        logging.getLogger(name).setLevel(level)


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, ValidationError):
        parts = [f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in exc.errors()[:3]]
        return "invalid message: " + "; ".join(parts)
    return one_line(exc)


def subject(body: bytes) -> str:
    """What a message is about, for a log line: its path (a decision's kept file), else its start."""
    try:
        message = decode(body)
    except (ValidationError, ValueError):
        return repr(body[:80])
    path = getattr(message, "path", None) or getattr(getattr(message, "keep", None), "path", None)
    return str(path) if path else message.kind


class RabbitBus:
    def __init__(
        self,
        url: str,
        prefix: str,
        *,
        max_retries: int = 3,
        service: str = "",
        observe: Observer | None = None,
        publish_timeout: float = 120.0,
        retry_backoff: float = topology.RETRY_WAIT,
        probe: Callable[[], Awaitable[object]] | None = None,
    ):
        self.url = url
        self.prefix = prefix
        self.max_retries = max_retries
        self.service = service
        self.observe = observe or (lambda kind, outcome, seconds: None)
        self.publish_timeout = publish_timeout
        self.retry_backoff = retry_backoff
        self.connection: AbstractRobustConnection | None = None
        self._topology: topology.Topology | None = None
        self._consumers: list[tuple[AbstractQueue, str]] = []
        self._inflight: set[asyncio.Task[None]] = set()
        # per consumer channel: messages in hand, and those that could not be settled (why)
        self._in_hand: collections.Counter[object] = collections.Counter()
        self._unsettled: dict[object, tuple[int, str]] = {}
        self._closing = False
        self._lost_at: float | None = None  # since when the connection is lost (one line per loss)
        self._subscriptions: list[tuple[AbstractQueue, Callable[[AbstractIncomingMessage], Awaitable[None]]]] = []
        self._paused = False
        #: the store's outages, waited out with the messages in hand (None: counted as failures)
        self.outages = None if probe is None else Outages(probe, on_pause=self._pause, on_resume=self._resume)

    # -- lifecycle ------------------------------------------------------------------------
    async def connect(self, timeout: float = 60.0) -> RabbitBus:
        """Connect (retrying until ``timeout`` while the broker is not up yet) and declare."""
        deadline = time.monotonic() + timeout
        _quiet_client_logs()
        while True:
            try:
                self.connection = await aio_pika.connect_robust(self.url, client_properties={
                    "connection_name": f"image-dedup {self.service}".strip()})
                break
            except (OSError, aio_pika.exceptions.AMQPConnectionError) as exc:
                if time.monotonic() > deadline:
                    raise
                log.warning("broker not reachable (%s), retrying", _one_line(exc))
                await asyncio.sleep(1)
        self.connection.close_callbacks.add(self._lost)
        self.connection.reconnect_callbacks.add(self._reconnected)

        async def declare() -> None:
            channel = await self.connection.channel(publisher_confirms=True)
            self._topology = await topology.declare(channel, self.prefix)

        await self._persist("declare the topology", declare, deadline)
        return self

    async def _persist(self, what: str, step, deadline: float) -> None:
        """Run a start-up step again while the broker refuses it for a moment (a quorum queue
        that several services declare at the same instant can fail with INTERNAL_ERROR)."""
        while True:
            try:
                return await step()
            except (OSError, aio_pika.exceptions.AMQPError, asyncio.TimeoutError) as exc:
                if time.monotonic() > deadline:
                    raise
                log.warning("could not %s (%s), retrying", what, _one_line(exc))
                await asyncio.sleep(1)
                if self.connection is not None:
                    try:
                        await asyncio.wait_for(self.connection.connected.wait(), timeout=10)
                    except asyncio.TimeoutError:
                        pass

    def _lost(self, connection: object, reason: BaseException | None) -> None:
        """Called at the loss and again at each failed attempt to reconnect: said once."""
        if self._closing or self._lost_at is not None:
            return
        self._lost_at = time.monotonic()
        log.warning("lost the broker connection (%s); reconnecting, messages in hand are redelivered by the broker, "
                    "/readyz is 503 meanwhile", _one_line(reason) if reason is not None else "closed")

    def _reconnected(self, connection: object) -> None:
        if self._lost_at is not None:
            log.warning("reconnected to the broker after %.0f s", time.monotonic() - self._lost_at)
            self._lost_at = None

    def consumers(self, kind: str) -> int:
        """How many consumers the queue of ``kind`` had when this bus declared it (connect)."""
        assert self._topology is not None, "connect first"
        return self._topology.queues[kind].declaration_result.consumer_count

    @property
    def ready(self) -> bool:
        """Connected, with every channel and consumer restored after a loss."""
        c = self.connection
        return c is not None and not c.is_closed and c.connected.is_set() and self._lost_at is None

    async def stop_consuming(self) -> None:
        for queue, tag in self._consumers:
            try:
                await queue.cancel(tag)
            except Exception as exc:  # the connection may be down; nothing is delivered then anyway
                log.debug("cancel failed: %s", exc)
        self._consumers.clear()

    async def _pause(self) -> None:
        """An outage began: take no more messages (those in hand stay, unacked, and wait)."""
        self._paused = True
        await self.stop_consuming()

    async def _resume(self) -> None:
        """The outage is over: consume again, whatever the broker's state (retried until done)."""
        self._paused = False
        for queue, on_message in self._subscriptions:
            async def consume(queue=queue, on_message=on_message) -> None:
                self._consumers.append((queue, await queue.consume(on_message, no_ack=False)))

            await self._persist(f"consume {queue.name} again", consume, float("inf"))

    async def drain(self, timeout: float = 60.0) -> None:
        """Wait for the in-flight handlers (they ack or dead-letter their messages)."""
        if self._inflight:
            await asyncio.wait(set(self._inflight), timeout=timeout)

    async def close(self, timeout: float = 60.0) -> None:
        """Graceful: stop consuming, let in-flight work finish, then close the connection.
        Whatever is still unacked after ``timeout`` is redelivered by the broker."""
        await self.stop_consuming()
        # during a store outage nothing in hand can finish: the broker redelivers it
        await self.drain(0 if self.outages is not None and self.outages.reason else timeout)
        for task in list(self._inflight):
            task.cancel()
        self._closing = True
        if self.connection is not None:
            await self.connection.close()

    # -- publishing -----------------------------------------------------------------------
    async def _send(self, exchange_name: str, message: aio_pika.Message, routing_key: str) -> None:
        assert self._topology is not None, "connect() first"
        exchange = {
            "": None,
            self.prefix: self._topology.exchange,
            topology.dead_name(self.prefix): self._topology.dead_exchange,
        }[exchange_name]
        deadline = time.monotonic() + self.publish_timeout
        while True:
            try:
                target = exchange or self._topology.exchange.channel.default_exchange
                await target.publish(message, routing_key=routing_key, mandatory=False, timeout=30)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if time.monotonic() > deadline:
                    raise
                # a lost connection was reported once already (_lost)
                log.log(logging.WARNING if self.ready else logging.DEBUG,
                        "publish to %s failed (%s); waiting for the broker", routing_key, _one_line(exc))
                if self.connection is not None:
                    try:
                        await asyncio.wait_for(self.connection.connected.wait(), timeout=5)
                    except asyncio.TimeoutError:
                        pass
                await asyncio.sleep(0.5)

    async def publish(self, message: Message) -> None:
        body = aio_pika.Message(
            encode(message), content_type="application/json", delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        )
        await self._send(self.prefix, body, message.kind)

    async def backlog(self, kind: str) -> int:
        """Messages of ``kind`` waiting in their queue (not counting those in a consumer's hand)."""
        assert self._topology is not None, "connect() first"
        channel = await self._topology.exchange.channel.get_underlay_channel()
        declared = await channel.queue_declare(topology.queue_name(self.prefix, kind), passive=True)
        return declared.message_count or 0

    async def publish_raw(self, body: bytes, routing_key: str) -> None:
        """Publish bytes as they are (tests, tools): the consumer decodes and judges them."""
        await self._send(self.prefix, aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT), routing_key)

    # -- consuming ------------------------------------------------------------------------
    async def subscribe(self, kind: str, handler: Handler, concurrency: int = 1) -> None:
        """Consume the queue of ``kind``; prefetch = ``concurrency`` = handlers running at once."""
        assert self.connection is not None, "connect() first"

        async def on_message(incoming: AbstractIncomingMessage) -> None:
            # Each delivery gets its own task, so up to ``prefetch`` handlers run at once.
            task = asyncio.create_task(self._process(kind, handler, incoming))
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)

        async def consume() -> None:
            channel = await self.connection.channel(publisher_confirms=True)
            await channel.set_qos(prefetch_count=concurrency)
            queue = await channel.declare_queue(
                topology.queue_name(self.prefix, kind), durable=True, arguments=topology.queue_arguments(self.prefix)
            )
            self._subscriptions.append((queue, on_message))
            if not self._paused:
                self._consumers.append((queue, await queue.consume(on_message, no_ack=False)))

        await self._persist(f"consume {kind}", consume, time.monotonic() + 60)

    async def _process(self, kind: str, handler: Handler, incoming: AbstractIncomingMessage) -> None:
        started = time.monotonic()
        channel = incoming.channel
        self._in_hand[channel] += 1
        headers = dict(incoming.headers or {})
        try:
            retries = int(headers.get(topology.RETRIES_HEADER, 0))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            retries = 0
        outcome = "ok"
        try:
            try:
                message = decode(incoming.body)
                if message.kind != kind:
                    raise Reject(f"a {message.kind} message in the {kind} queue")
            except (ValidationError, ValueError, Reject) as exc:
                outcome = "invalid"
                await self._dead_letter(incoming, kind, _one_line(exc) if not isinstance(exc, Reject) else str(exc),
                                        retries)
                return
            while True:
                began = await self.outages.gate() if self.outages else 0.0
                try:
                    await handler(message)
                except asyncio.CancelledError:
                    raise  # not acked: the broker redelivers it
                except Exception as exc:
                    what = topology.failure(exc)
                    if what == "outage" and self.outages is not None:
                        await self.outages.wait_out(exc, began)  # in hand meanwhile; then again
                        continue
                    if what == "reject":
                        outcome = "rejected"
                        await self._dead_letter(incoming, kind, str(exc) or "rejected", retries)
                    elif retries < self.max_retries:
                        outcome = "retried"
                        log.warning("%s failed (%s); retry %d of %d", kind, _one_line(exc), retries + 1, self.max_retries)
                        await asyncio.sleep(self.retry_backoff * 2**retries)
                        await self._retry(incoming, kind, retries + 1)
                    else:
                        outcome = "dead_lettered"
                        await self._dead_letter(incoming, kind, _one_line(exc), retries)
                    return
                break
            await incoming.ack()
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        except Exception as exc:
            # Acking or re-publishing failed (connection lost): the message stays unacked and
            # the broker delivers it again once we are reconnected.
            outcome = "interrupted"
            count, _ = self._unsettled.get(channel, (0, ""))
            self._unsettled[channel] = (count + 1, _one_line(exc))
        finally:
            self.observe(kind, outcome, time.monotonic() - started)
            self._settled(kind, channel)

    def _settled(self, kind: str, channel: object) -> None:
        """Once a channel has no message in hand any more, say in one line how many of its
        messages could not be settled."""
        self._in_hand[channel] -= 1
        if self._in_hand[channel]:
            return
        del self._in_hand[channel]
        if channel in self._unsettled:
            count, why = self._unsettled.pop(channel)
            log.debug("could not settle %d %s message%s (%s); the broker redelivers %s", count, kind,
                        "s" if count > 1 else "", why, "them" if count > 1 else "it")

    def _copy(self, incoming: AbstractIncomingMessage, headers: dict) -> aio_pika.Message:
        return aio_pika.Message(
            incoming.body, headers=headers, content_type=incoming.content_type,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT, message_id=incoming.message_id,
        )

    async def _retry(self, incoming: AbstractIncomingMessage, kind: str, retries: int) -> None:
        headers = dict(incoming.headers or {})
        headers[topology.RETRIES_HEADER] = retries
        queue = topology.queue_name(self.prefix, kind)
        await self._send("", self._copy(incoming, headers), queue)  # straight to its queue
        await incoming.ack()

    async def _dead_letter(self, incoming: AbstractIncomingMessage, kind: str, reason: str, retries: int) -> None:
        headers = dict(incoming.headers or {})
        headers.update({
            topology.REASON_HEADER: reason[:1000],
            "x-original-routing-key": kind,
            "x-original-queue": topology.queue_name(self.prefix, kind),
            topology.RETRIES_HEADER: retries,
            "x-service": self.service,
        })
        await self._send(topology.dead_name(self.prefix), self._copy(incoming, headers), kind)
        await incoming.ack()
        log.warning("dead-lettered %s %s: %s", kind, subject(incoming.body), reason)
