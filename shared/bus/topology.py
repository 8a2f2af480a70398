"""The broker topology and its failure policy, declared in one place.

Every service declares the whole topology when it connects (declaring is idempotent, so
declaring twice or from many processes is harmless) and so no message is ever published
before the queue that must keep it exists:

* ``{prefix}`` - a durable *topic* exchange; a message's ``kind`` is its routing key.
* one durable **quorum** queue per consumer role, ``{prefix}.{kind}``, bound with ``kind``:
  watcher: ``watcher.rescan``, hasher: ``file.event``, matcher: ``image.signed``,
  actuator: ``group.decision``. ``file.removed`` has no queue on purpose: nobody consumes it
  (yet), and an unconsumed queue would only grow. Bind one when a consumer appears.
* ``{prefix}.dead`` - a durable fanout exchange and a quorum queue bound to it: the
  dead-letter queue. A dead message keeps its body and gets the headers
  ``x-death-reason`` (why, one line), ``x-original-routing-key``, ``x-original-queue``,
  ``x-retries`` and ``x-service``.

Failure policy (``failure`` below; carried out by both buses, ``shared.bus`` and
``shared.bus.rabbitmq``):

* ``Reject`` from a handler, an undecodable body or an unknown version: the message can never
  succeed. Published to the dead-letter exchange at once with the reason, then acked; one
  warning line names it and the reason.
* an **outage** (``OUTAGES``: the store does not answer, or not now): the message is not at
  fault. It stays in hand; the service says so in one line, stops taking messages (its
  consumers are cancelled; those in hand wait), is not ready (``/readyz`` 503), and probes the
  store with growing waits (``PROBE_WAITS``). When it answers again: one line, the consumers
  resume and the handlers run again. However long the outage, nothing is counted as a retry,
  nothing is dead-lettered, nothing is logged per message.
* any other exception: retried by re-publishing a copy (persistent, confirmed) to the same
  queue with header ``x-retries`` + 1 and acking the original, after a wait that doubles
  with each retry (``RETRY_WAIT``); after ``max_retries`` retries the message is
  dead-lettered with ``"<ExceptionType>: <message>"`` as reason. The retry count travels in
  the message so it survives restarts and works across replicas.
* a consumer that *crashes* (kill -9, OOM) never acks: the broker redelivers the message to
  another consumer. A quorum queue counts these deliveries; after ``DELIVERY_LIMIT`` of them
  the broker itself dead-letters the message to ``{prefix}.dead`` (its ``x-death`` header
  then says ``delivery_limit``), so a message that kills every worker cannot loop forever.
  ``DELIVERY_LIMIT`` is a constant, not a setting: a queue's arguments cannot change once
  declared.

Messages are persistent and published with publisher confirms; consumers ack manually after
their work is done, with prefetch = the service's concurrency (``PREFETCH`` overrides it for
the matcher, which batches).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from ..store import StoreUnavailable
from . import Reject

if TYPE_CHECKING:  # the broker's client is imported where a broker is used (not in local mode)
    from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractQueue

# Which role consumes which kind; the queue of a kind is ``{prefix}.{kind}``.
CONSUMED_KINDS: dict[str, str] = {
    "watcher": "watcher.rescan",
    "hasher": "file.event",
    "matcher": "image.signed",
    "actuator": "group.decision",
}
# The matcher batches: it must be allowed to hold a whole import's worth of unacked messages
# (a batch holds at most this many; a larger import is matched in parts of this size).
PREFETCH: dict[str, int] = {"image.signed": 2000}
# Broker-side guard against crash loops (see the module doc); far above any max_retries.
DELIVERY_LIMIT = 20

RETRIES_HEADER = "x-retries"
REASON_HEADER = "x-death-reason"

#: What an outage is: a store that does not answer (refused, reset, timed out), or answers
#: "not now" (429, 502-504). A store that refuses our credentials is one too while it lasts:
#: a secret being rotated should not burn the messages either.
OUTAGES: tuple[type[BaseException], ...] = (StoreUnavailable,)
#: Seconds between probes of a store that is down: doubling from the first to the last, so a
#: short outage is over within a second or two of its end, a long one costs a request per 10 s.
PROBE_WAITS = (0.5, 10.0)
#: Seconds a probe may take: a frozen server does not refuse, it just never answers.
PROBE_TIMEOUT = 5.0
#: Seconds before the first retry of a failed message; doubled for each further retry.
RETRY_WAIT = 0.5


def failure(exc: BaseException) -> Literal["reject", "outage", "retry"]:
    """What the policy does with a handler's exception (see the module doc)."""
    if isinstance(exc, Reject):
        return "reject"
    if isinstance(exc, OUTAGES):
        return "outage"
    return "retry"


def queue_name(prefix: str, kind: str) -> str:
    return f"{prefix}.{kind}"


def dead_name(prefix: str) -> str:
    return f"{prefix}.dead"


def queue_arguments(prefix: str) -> dict[str, object]:
    return {
        "x-queue-type": "quorum",
        "x-delivery-limit": DELIVERY_LIMIT,
        "x-dead-letter-exchange": dead_name(prefix),
    }


@dataclass
class Topology:
    exchange: AbstractExchange
    dead_exchange: AbstractExchange
    dead_queue: AbstractQueue
    queues: dict[str, AbstractQueue]  # kind -> queue


async def declare(channel: AbstractChannel, prefix: str) -> Topology:
    """Declare exchanges, queues and bindings (idempotent)."""
    import aio_pika

    exchange = await channel.declare_exchange(prefix, aio_pika.ExchangeType.TOPIC, durable=True)
    dead_exchange = await channel.declare_exchange(dead_name(prefix), aio_pika.ExchangeType.FANOUT, durable=True)
    dead_queue = await channel.declare_queue(
        dead_name(prefix), durable=True, arguments={"x-queue-type": "quorum"}
    )
    await dead_queue.bind(dead_exchange, routing_key="#")
    queues = {}
    for kind in CONSUMED_KINDS.values():
        queue = await channel.declare_queue(queue_name(prefix, kind), durable=True, arguments=queue_arguments(prefix))
        await queue.bind(exchange, routing_key=kind)
        queues[kind] = queue
    return Topology(exchange, dead_exchange, dead_queue, queues)
