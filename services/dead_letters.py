"""``image-dedup dead-letters list|retry [--reason TEXT]``: look at the dead-letter queue, and
send its messages back to work once their cause is fixed.

A dead letter keeps its body and says why in its headers (``shared.bus.topology``): the
service's reason (``x-death-reason``), or the broker's own when a message's consumers kept
dying (``x-death``, reason ``delivery_limit``). ``list`` shows one line per message and leaves
them all in the queue; ``retry`` publishes each (those whose reason holds TEXT, without regard
to case) to the queue it came from, as new (no retries counted), and only then takes it out of
the dead-letter queue; the others stay.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the command's parser is built without loading the settings' libraries
    from shared.config import Settings


@dataclass(frozen=True)
class DeadLetter:
    kind: str  # the routing key it was published with: the queue it came from
    subject: str  # what it is about (a path), for people
    reason: str
    service: str
    body: bytes
    content_type: str | None


def _read(message) -> DeadLetter:  # an aio_pika IncomingMessage
    from shared.bus import topology
    from shared.bus.rabbitmq import subject

    headers = dict(message.headers or {})
    deaths = headers.get("x-death") or [{}]
    death = dict(deaths[0]) if isinstance(deaths, list) and deaths else {}
    keys = death.get("routing-keys") or [message.routing_key]
    kind = str(headers.get("x-original-routing-key") or keys[0])
    reason = headers.get(topology.REASON_HEADER)
    if reason is None:  # dead-lettered by the broker itself
        reason = f"{death.get('reason', 'unknown')} (its consumer died {death.get('count', '?')} times, or it was refused)"
    return DeadLetter(kind, subject(message.body), str(reason), str(headers.get("x-service", "broker")),
                      message.body, message.content_type)


async def _drain(settings: Settings, retry: bool, reason: str | None) -> tuple[list[DeadLetter], int]:
    """Every dead letter (each got once, unacked, so all are seen and none is lost); with
    ``retry``, those matching ``reason`` are re-published and then acked. Returns the letters
    looked at (those matching) and how many are in the queue in all."""
    import aio_pika

    from shared.bus import topology

    connection = await aio_pika.connect(settings.broker_url, timeout=10,
                                        client_properties={"connection_name": "image-dedup dead-letters"})
    try:
        channel = await connection.channel(publisher_confirms=True)
        declared = await topology.declare(channel, settings.broker_prefix)
        shown: list[DeadLetter] = []
        total = 0
        while (message := await declared.dead_queue.get(no_ack=False, fail=False)) is not None:
            total += 1
            letter = _read(message)
            if reason is not None and reason.lower() not in letter.reason.lower():
                continue  # stays unacked: back in the queue when the channel closes
            shown.append(letter)
            if retry:
                await declared.exchange.publish(aio_pika.Message(
                    letter.body, content_type=letter.content_type, delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                ), routing_key=letter.kind)
                await message.ack()
        return shown, total
    finally:
        await connection.close()  # what was not acked goes back to the dead-letter queue


def add_parser(sub: argparse._SubParsersAction, parents: list[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("dead-letters", parents=parents,
                            help="list the dead-letter queue's messages, or send them back to work (RabbitMQ)")
    parser.add_argument("what", choices=["list", "retry"], metavar="list|retry",
                        help="list: show them, one line each; retry: send them back to the queue they came from")
    parser.add_argument("--reason", metavar="TEXT", help="only the messages whose reason holds TEXT (any case)")


def run(args: argparse.Namespace, settings: Settings) -> int:
    from services.runner import _without_password

    try:
        letters, total = asyncio.run(_drain(settings, args.what == "retry", args.reason))
    except Exception as exc:  # the broker's client raises many kinds; the user needs one line
        print(f"image-dedup: cannot read the dead letters at {_without_password(settings.broker_url)}: "
              f"{' '.join(str(exc).split()) or type(exc).__name__}", file=sys.stderr)
        return 1
    if args.what == "list":
        for letter in letters:
            print(f"{letter.kind} {letter.subject}: {letter.reason} (from {letter.service})")
        by_reason = collections.Counter(letter.reason for letter in letters)
        matching = f" ({len(letters)} with a reason holding {args.reason!r})" if args.reason is not None else ""
        print(f"{total} dead letters in {settings.broker_prefix}.dead{matching}"
              + "".join(f"\n  {n} x {why}" for why, n in by_reason.most_common(10)))
    else:
        print(f"sent {len(letters)} dead letters back to work; {total - len(letters)} left in {settings.broker_prefix}.dead")
    return 0
