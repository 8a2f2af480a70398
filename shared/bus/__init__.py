"""The bus port and its in-process implementation (local mode and the daemon).

Handlers raise; the bus applies the failure policy of ``shared.bus.topology``: ``Reject``
means the message can never succeed (bad body, bad image, path outside the roots) and is
dead-lettered at once; an outage (the store does not answer) is waited out with the message
in hand (``Outages``); any other exception is retried up to ``max_retries`` times, then
dead-lettered with its reason. The RabbitMQ bus (``shared.bus.rabbitmq``) implements the same
policy with broker queues.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from ..messages import Message

log = logging.getLogger(__name__)

Handler = Callable[[Message], Awaitable[None]]


class Reject(Exception):
    """A message that must not be retried; ``str(exc)`` is the reason kept with it."""


@dataclass(frozen=True, slots=True)
class DeadLetter:
    message: Message
    reason: str


def one_line(exc: BaseException) -> str:
    """An exception as one line, with its type: for logs and dead-letter reasons."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class Outages:
    """The outages of what a service's handlers need, waited out (see ``shared.bus.topology``).

    A handler that fails with an outage calls ``wait_out``: the first one to do so closes the
    gate, logs one line, and probes (``probe``, e.g. a read from the store) with growing waits
    until it answers; then one line, and the gate opens. Handlers pass ``gate`` before they
    start, so while it is closed none starts (``on_pause``/``on_resume`` let a bus stop and
    resume its deliveries too). ``reason`` is set while an outage lasts (readiness)."""

    def __init__(self, probe: Callable[[], Awaitable[object]], *, on_pause: Callable[[], Awaitable[None]] | None = None,
                 on_resume: Callable[[], Awaitable[None]] | None = None):
        self.probe = probe
        self.on_pause, self.on_resume = on_pause, on_resume
        self.reason: str | None = None
        self._open = asyncio.Event()
        self._open.set()
        self._ended = 0.0  # monotonic time the last outage ended
        self._prober: asyncio.Task[None] | None = None

    async def gate(self) -> float:
        """Wait while an outage lasts; returns the time the caller starts (for ``wait_out``)."""
        await self._open.wait()
        return time.monotonic()

    async def wait_out(self, exc: BaseException, started: float) -> None:
        """``exc`` is an outage met by work begun at ``started``: return once it is over. A
        failure of work begun before the last outage ended belongs to that one: tried again at once."""
        if self._open.is_set() and started >= self._ended:
            from . import topology

            self._open.clear()
            self.reason = str(exc) or type(exc).__name__
            log.warning("%s; pausing until it answers (messages wait in hand, /readyz is 503)", self.reason)
            self._prober = asyncio.create_task(self._probe(time.monotonic(), topology))
        await self._open.wait()

    async def _probe(self, began: float, topology) -> None:
        if self.on_pause is not None:
            await self.on_pause()
        wait, longest = topology.PROBE_WAITS
        while True:
            await asyncio.sleep(wait)
            try:
                await asyncio.wait_for(self.probe(), topology.PROBE_TIMEOUT)
                break
            except (asyncio.TimeoutError, *topology.OUTAGES):
                wait = min(wait * 2, longest)
        log.warning("the outage is over after %.0f s (%s); resuming", time.monotonic() - began, self.reason)
        self.reason = None
        self._ended = time.monotonic()
        self._open.set()
        if self.on_resume is not None:
            await self.on_resume()

    def close(self) -> None:
        if self._prober is not None:
            self._prober.cancel()


class Bus(Protocol):
    async def publish(self, message: Message) -> None: ...

    async def subscribe(self, kind: str, handler: Handler, concurrency: int = 1) -> None:
        """Start consuming messages of ``kind`` with up to ``concurrency`` handlers at once."""
        ...

    async def backlog(self, kind: str) -> int:
        """Messages of ``kind`` waiting in their queue (not counting those in a handler's hand)."""
        ...

    async def close(self) -> None: ...


class InProcessBus:
    """asyncio queues, one per message kind; ``join`` waits until every queue is drained. With
    ``outages`` (the daemon), an outage is waited out; without (a one-shot local run), it
    counts as any other failure."""

    def __init__(self, max_retries: int = 0, outages: Outages | None = None):
        self.max_retries = max_retries
        self.outages = outages
        self.dead: list[DeadLetter] = []
        self._queues: dict[str, asyncio.Queue[tuple[Message, int]]] = {}
        self._workers: list[asyncio.Task[None]] = []

    def _queue(self, kind: str) -> asyncio.Queue[tuple[Message, int]]:
        return self._queues.setdefault(kind, asyncio.Queue())

    async def publish(self, message: Message) -> None:
        self._queue(message.kind).put_nowait((message, 0))

    async def subscribe(self, kind: str, handler: Handler, concurrency: int = 1) -> None:
        queue = self._queue(kind)
        for _ in range(concurrency):
            self._workers.append(asyncio.create_task(self._work(queue, handler)))

    async def _work(self, queue: asyncio.Queue[tuple[Message, int]], handler: Handler) -> None:
        from . import topology

        while True:
            message, attempt = await queue.get()
            try:
                while True:
                    started = await self.outages.gate() if self.outages else 0.0
                    try:
                        await handler(message)
                    except Exception as exc:  # the policy, not the handler, decides what happens next
                        what = topology.failure(exc)
                        if what == "outage" and self.outages is not None:
                            await self.outages.wait_out(exc, started)
                            continue
                        if what == "reject":
                            self.dead.append(DeadLetter(message, str(exc)))
                        elif attempt < self.max_retries:
                            queue.put_nowait((message, attempt + 1))
                        else:
                            log.debug("giving up on %s", message.kind, exc_info=True)  # a bug's traceback
                            self.dead.append(DeadLetter(message, one_line(exc)))
                    break
            finally:
                queue.task_done()

    async def backlog(self, kind: str) -> int:
        """Messages of ``kind`` waiting in their queue (not counting those in a handler's hand)."""
        return self._queue(kind).qsize()

    async def join(self, *kinds: str) -> None:
        """Wait until the named queues (default: all) are empty and their work is done."""
        for kind in kinds or tuple(self._queues):
            await self._queue(kind).join()

    async def close(self) -> None:
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers.clear()
