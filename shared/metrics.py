"""Prometheus metrics and the health endpoints of a service (aiohttp).

``GET /metrics``  Prometheus text format.
``GET /healthz``  200 while the process is alive (liveness).
``GET /readyz``   200 when the broker connection is up and the store is open, else 503 (readiness).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Histogram, generate_latest

log = logging.getLogger(__name__)

MESSAGES = Counter(
    "image_dedup_messages_processed", "Messages handled, by outcome (ok, rejected, invalid, retried, dead_lettered).",
    ["service", "outcome"],
)
PROCESSING = Histogram(
    "image_dedup_message_processing_seconds", "Time from delivery to ack of a message.", ["service"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
SIGNED = Counter("image_dedup_images_signed", "Images whose signature was computed and stored.")
GROUPS = Counter("image_dedup_duplicate_groups", "Duplicate groups found (decisions published).")
ACTIONS = Counter("image_dedup_actions", "Actuator outcomes per duplicate.", ["action", "status"])
ERRORS = Counter("image_dedup_errors", "Errors by kind.", ["kind"])
RESCANS = Counter("image_dedup_rescans", "Rescans run by the watcher.")
FILE_EVENTS = Counter("image_dedup_file_events_published", "File events published by the watcher.", ["source"])


def observe_message(service: str) -> Callable[[str, str, float], None]:
    """A RabbitBus/daemon observer that records outcome and duration of each message."""

    def observe(kind: str, outcome: str, seconds: float) -> None:
        MESSAGES.labels(service, outcome).inc()
        PROCESSING.labels(service).observe(seconds)
        if outcome in ("rejected", "invalid", "retried", "dead_lettered"):
            ERRORS.labels(outcome).inc()

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
