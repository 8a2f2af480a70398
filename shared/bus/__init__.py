"""The bus port and its in-process implementation (local mode).

Handlers raise; the bus applies the failure policy: ``Reject`` means the message can never
succeed (bad body, bad image, path outside the roots) and is dead-lettered at once; any other
exception is retried up to ``max_retries`` times, then dead-lettered with its reason. The
RabbitMQ bus (``shared.bus.rabbitmq``) implements the same policy with broker queues.
"""

from __future__ import annotations

import asyncio
import logging
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


class Bus(Protocol):
    async def publish(self, message: Message) -> None: ...

    async def subscribe(self, kind: str, handler: Handler, concurrency: int = 1) -> None:
        """Start consuming messages of ``kind`` with up to ``concurrency`` handlers at once."""
        ...

    async def close(self) -> None: ...


class InProcessBus:
    """asyncio queues, one per message kind; ``join`` waits until every queue is drained."""

    def __init__(self, max_retries: int = 0):
        self.max_retries = max_retries
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
        while True:
            message, attempt = await queue.get()
            try:
                await handler(message)
            except Reject as exc:
                self.dead.append(DeadLetter(message, str(exc)))
            except Exception as exc:  # the policy, not the handler, decides what happens next
                if attempt < self.max_retries:
                    queue.put_nowait((message, attempt + 1))
                else:
                    log.exception("giving up on %s", message.kind)
                    self.dead.append(DeadLetter(message, f"{type(exc).__name__}: {exc}"))
            finally:
                queue.task_done()

    async def join(self, *kinds: str) -> None:
        """Wait until the named queues (default: all) are empty and their work is done."""
        for kind in kinds or tuple(self._queues):
            await self._queue(kind).join()

    async def close(self) -> None:
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers.clear()
