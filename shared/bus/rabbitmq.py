"""The RabbitMQ bus: the Bus Protocol over the topology of ``shared.bus.topology``.

``connect_robust`` reconnects after a broker restart and restores the channels, the declared
exchanges/queues/bindings, the prefetch and the consumers. Messages that were unacked when the
connection dropped are redelivered by the broker, so every handler must be idempotent (they are:
the hasher skips unchanged files, the ledger grants a redelivered decision its lease again and
the actuator re-checks the disk). ``publish`` waits for the connection to come back (up to
``publish_timeout`` seconds) instead of failing during a broker restart.

A lost connection is reported once, by the bus: one line when it is lost (with the broker's
reason), one when it is back, and one per consumer channel for the messages that were in hand
and could not be settled (the broker redelivers them). The client libraries' own records of it
(several per loss, with tracebacks, one per unsettled message) are shown only at DEBUG level.

The failure policy (retry header, dead-letter exchange, reasons) is described in
``shared.bus.topology``.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable

import aio_pika
from aio_pika.abc import AbstractIncomingMessage, AbstractQueue, AbstractRobustConnection
from pydantic import ValidationError

from . import topology
from . import Handler, Reject
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
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


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
        retry_backoff: float = 0.5,
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
        self.connection.reconnect_callbacks.add(lambda connection: log.info("reconnected to the broker"))

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
        if not self._closing:
            log.warning("lost the broker connection (%s); reconnecting, /readyz is 503 meanwhile",
                        _one_line(reason) if reason is not None else "closed")

    @property
    def ready(self) -> bool:
        c = self.connection
        return c is not None and not c.is_closed and c.connected.is_set()

    async def stop_consuming(self) -> None:
        for queue, tag in self._consumers:
            try:
                await queue.cancel(tag)
            except Exception as exc:  # the connection may be down; nothing is delivered then anyway
                log.debug("cancel failed: %s", exc)
        self._consumers.clear()

    async def drain(self, timeout: float = 60.0) -> None:
        """Wait for the in-flight handlers (they ack or dead-letter their messages)."""
        if self._inflight:
            await asyncio.wait(set(self._inflight), timeout=timeout)

    async def close(self, timeout: float = 60.0) -> None:
        """Graceful: stop consuming, let in-flight work finish, then close the connection.
        Whatever is still unacked after ``timeout`` is redelivered by the broker."""
        await self.stop_consuming()
        await self.drain(timeout)
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
            tag = await queue.consume(on_message, no_ack=False)
            self._consumers.append((queue, tag))

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
            except (ValidationError, ValueError) as exc:
                outcome = "invalid"
                await self._dead_letter(incoming, kind, _one_line(exc), retries)
                return
            except Reject as exc:
                outcome = "invalid"
                await self._dead_letter(incoming, kind, str(exc), retries)
                return
            try:
                await handler(message)
            except Reject as exc:
                outcome = "rejected"
                log.info("rejected %s: %s", kind, exc)
                await self._dead_letter(incoming, kind, str(exc) or "rejected", retries)
                return
            except asyncio.CancelledError:
                raise  # not acked: the broker redelivers it
            except Exception as exc:
                if retries < self.max_retries:
                    outcome = "retried"
                    log.warning("%s failed (%s); retry %d of %d", kind, _one_line(exc), retries + 1, self.max_retries)
                    await asyncio.sleep(self.retry_backoff * 2**retries)
                    await self._retry(incoming, kind, retries + 1)
                else:
                    outcome = "dead_lettered"
                    log.error("%s failed %d times, dead-lettered: %s", kind, retries + 1, _one_line(exc))
                    await self._dead_letter(incoming, kind, _one_line(exc), retries)
                return
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
            log.warning("could not settle %d %s message%s (%s); the broker redelivers %s", count, kind,
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
