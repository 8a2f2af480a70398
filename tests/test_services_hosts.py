"""Services that span hosts and restarts: processes that die with their service, messages that
are refused loudly (dead-lettered with the reason), quiet logs through a broker restart, and
per-service metrics. Against the real RabbitMQ and real service processes."""

from __future__ import annotations

import asyncio
import os
import signal
import uuid
from pathlib import Path

from shared.bus.rabbitmq import RabbitBus
from shared.messages import FileEvent
from tests.services_support import (  # noqa: F401
    Services, broker_url, get, metric, photo, vhost, wait_for,
)


def _prefix() -> str:
    return f"h-{uuid.uuid4().hex[:8]}"


def _parents() -> dict[int, int]:
    """{pid: parent pid} of every live (not zombie) process."""
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        state, ppid = stat.rsplit(")", 1)[1].split()[:2]
        if state != "Z":
            out[int(entry)] = int(ppid)
    return out


def _descendants(pid: int) -> set[int]:
    parents = _parents()
    found, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, pp in parents.items() if pp in frontier} - found
        found |= frontier
    return found


async def _publish(url: str, prefix: str, *messages) -> None:
    bus = await RabbitBus(url, prefix, service="test").connect()
    try:
        for message in messages:
            await bus.publish(message)
    finally:
        await bus.close()


def test_decoder_processes_die_with_a_killed_hasher(tmp_path, vhost):
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(4):
        photo(i).save(photos / f"{i}.jpg")
    services = Services(tmp_path / "svc", photos, broker_url(vhost), _prefix(), threads=2)
    try:
        proc, port = services.start("hasher")
        services.wait_ready()
        asyncio.run(_publish(services.env["IMAGE_DEDUP_BROKER_URL"], services.env["IMAGE_DEDUP_BROKER_PREFIX"],
                             *(FileEvent(path=str(p)) for p in sorted(photos.iterdir()))))
        wait_for(lambda: metric(get(port, "/metrics")[1], "image_dedup_images_signed_total") == 4, 60,
                 lambda: services.log_text())
        children = {p for p, pp in _parents().items() if pp == proc.pid}
        workers = {p for p, pp in _parents().items() if pp in children}  # below the forkserver
        assert workers, "no decoder process found"
        left = _descendants(proc.pid)
        os.kill(proc.pid, signal.SIGKILL)  # the service alone, not its process group
        proc.wait(10)
        wait_for(lambda: not (left & set(_parents())), 5,
                 lambda: f"survived their service: {sorted(left & set(_parents()))}")
    finally:
        services.stop()
