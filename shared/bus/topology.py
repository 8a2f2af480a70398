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

Failure policy (see ``shared.bus.rabbitmq``):

* ``Reject`` from a handler, an undecodable body or an unknown version: published to the
  dead-letter exchange at once with the reason, then acked.
* any other exception: retried by re-publishing a copy (persistent, confirmed) to the same
  queue with header ``x-retries`` + 1 and acking the original; after ``max_retries``
  retries the message is dead-lettered with ``"<ExceptionType>: <message>"`` as reason.
  The retry count travels in the message so it survives restarts and works across replicas.
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

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractQueue

# Which role consumes which kind; the queue of a kind is ``{prefix}.{kind}``.
CONSUMED_KINDS: dict[str, str] = {
    "watcher": "watcher.rescan",
    "hasher": "file.event",
    "matcher": "image.signed",
    "actuator": "group.decision",
}
# The matcher batches: it must be allowed to hold a whole import's worth of unacked messages.
PREFETCH: dict[str, int] = {"image.signed": 500}
# Broker-side guard against crash loops (see the module doc); far above any max_retries.
DELIVERY_LIMIT = 20

RETRIES_HEADER = "x-retries"
REASON_HEADER = "x-death-reason"


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
