"""Prometheus metrics and the health endpoints of a service (aiohttp).

``GET /metrics``  Prometheus text format.
``GET /healthz``  200 while the process is alive (liveness).
``GET /readyz``   200 once the service started, while the broker connection is up and the store is open, else 503 (readiness).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Histogram, disable_created_metrics, generate_latest

from .bus.topology import CONSUMED_KINDS

log = logging.getLogger(__name__)

# the text format has no use for a ``<name>_created`` gauge per counter and histogram
disable_created_metrics()

_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class ServiceMetrics:
    """The families of one service, ``image_dedup_<service>_*``. Each is registered when its
    service starts, so a process exports only the metrics of the services it runs."""

    timed = True  # per-message processing time (the matcher's would include its batch wait)

    def __init__(self, service: str):
        self.prefix = f"image_dedup_{service}"
        self.messages = Counter(
            f"{self.prefix}_messages", "Messages handled, by outcome (ok, rejected, invalid, retried, "
            "dead_lettered, interrupted, failed).", ["outcome"])
        self.processing = Histogram(
            f"{self.prefix}_message_processing_seconds", "Time from delivery to settlement of a message.",
            buckets=_SECONDS) if self.timed else None

    def observe(self, outcome: str, seconds: float) -> None:
        self.messages.labels(outcome).inc()
        if self.processing is not None:
            self.processing.observe(seconds)


class WatcherMetrics(ServiceMetrics):
    def __init__(self) -> None:
        super().__init__("watcher")
        self.rescans = Counter(f"{self.prefix}_rescans", "Rescans run.")
        self.file_events = Counter(f"{self.prefix}_file_events_published", "File events published, by source "
                                   "(watch, rescan).", ["source"])


class HasherMetrics(ServiceMetrics):
    def __init__(self) -> None:
        super().__init__("hasher")
        self.signed = Counter(f"{self.prefix}_images_signed", "Images whose signature was computed and stored.")


class MatcherMetrics(ServiceMetrics):
    timed = False

    def __init__(self) -> None:
        super().__init__("matcher")
        self.groups = Counter(f"{self.prefix}_duplicate_groups", "Duplicate groups found (decisions published).")
        self.batch = Histogram(f"{self.prefix}_batch_processing_seconds", "Time to match one batch of signed "
                               "images, without the wait for the batch to fill.", buckets=_SECONDS)


class ActuatorMetrics(ServiceMetrics):
    def __init__(self) -> None:
        super().__init__("actuator")
        self.actions = Counter(f"{self.prefix}_actions", "Outcomes per duplicate, by action and status.",
                               ["action", "status"])


@functools.cache
def watcher() -> WatcherMetrics:
    return WatcherMetrics()


@functools.cache
def hasher() -> HasherMetrics:
    return HasherMetrics()


@functools.cache
def matcher() -> MatcherMetrics:
    return MatcherMetrics()


@functools.cache
def actuator() -> ActuatorMetrics:
    return ActuatorMetrics()


FOR_ROLE: dict[str, Callable[[], ServiceMetrics]] = {
    "watcher": watcher, "hasher": hasher, "matcher": matcher, "actuator": actuator,
}


def _total(family: Counter, **labels: str) -> int:
    """A counter's count, summed over the label values not given."""
    return int(sum(s.value for metric in family.collect() for s in metric.samples
                   if s.name.endswith("_total") and all(s.labels.get(k) == v for k, v in labels.items())))


def done(roles: list[str]) -> str:
    """What the services of this process did, in words: the line a service logs as it stops."""
    parts = []
    if "watcher" in roles:
        parts.append(f"{_total(watcher().file_events)} file events published")
    if "hasher" in roles:
        parts.append(f"{_total(hasher().signed)} images analysed")
    if "matcher" in roles:
        groups = _total(matcher().groups)
        parts.append(f"{groups} duplicate group{'s' if groups != 1 else ''}")
    if "actuator" in roles:
        actions = actuator().actions
        parts.append(f"{_total(actions, status='done')} duplicates acted on, {_total(actions, status='dry_run')} in a "
                     f"dry run, {_total(actions, status='skipped')} skipped, {_total(actions, status='error')} errors")
    return ", ".join(parts)


def observe_messages(roles: list[str]) -> Callable[[str, str, float], None]:
    """A RabbitBus/daemon observer: outcome and duration of each message, under the service
    that consumes its kind."""
    by_kind = {CONSUMED_KINDS[role]: FOR_ROLE[role]() for role in roles}

    def observe(kind: str, outcome: str, seconds: float) -> None:
        by_kind[kind].observe(outcome, seconds)

    return observe


class HealthServer:
    def __init__(self, port: int, ready: Callable[[], tuple[bool, str]], host: str = "0.0.0.0"):
        self.port = port
        self.host = host
        self.ready = ready
        self._runner: web.AppRunner | None = None

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _readyz(self, request: web.Request) -> web.Response:
        ok, why = self.ready()
        return web.Response(text=why + "\n", status=200 if ok else 503)

    async def start(self) -> None:
        """Serve unless the port is 0 (disabled)."""
        if not self.port:
            return
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port).start()
        log.info("metrics on http://%s:%d/metrics", self.host, self.port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
