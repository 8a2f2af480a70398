"""Services mode: each of the four handlers as a long-running service over RabbitMQ, or all four
in one process over the in-process bus (``image-dedup daemon``).

    image-dedup service watcher|hasher|matcher|actuator
    image-dedup daemon
    image-dedup rescan [PATH]

Every service loads the same settings (YAML + ``IMAGE_DEDUP_*``), serves ``/metrics``,
``/healthz`` and ``/readyz`` on ``metrics_port`` (0: off), opens the store and the ledger
(``shared.store.open``: Elasticsearch at ``elasticsearch_url``, shared by any number of hosts,
else the SQLite file at ``store_path``, shared by the processes of one host; a store that does
not answer yet is waited for), connects to ``broker_url``, and stops gracefully on
SIGTERM/SIGINT: it stops consuming, finishes the messages in hand, then closes.

It heals itself: a store outage is waited out with the messages in hand (``shared.bus.Outages``,
also for the background work: the watcher's rescans, the matcher's reconcile); an index that
vanished is made again by whichever service meets its absence first, which then asks the
watcher to rescan (the records come back); and the matcher's reconcile plans any stored image
that has no plan, whatever became of the message that announced it.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import sys
import time
import uuid
from urllib.parse import urlsplit
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services import ROLES
from services.actuator.handler import ActionOutcome, PairBusy, handle_decision
from services.hasher.handler import ProcessSigner, handle_file_event
from services.matcher.handler import handle_signed, plan_mark
from services.watcher.handler import clean_up, companion, handle_rescan, walk, wanted
from shared import metrics
from shared.actions import Journal, recover, remove_empty_folders
from shared.bus import InProcessBus, Outages, Reject
from shared.bus.topology import OUTAGES, PREFETCH, PROBE_WAITS
from shared.config import WATCH_POLL_FALLBACK, Settings
from shared.core.safety import Unsafe, below_root, confine_folder
from shared.messages import Decision, FileEvent, ImageSigned, Message, Rescan
from shared.store import Ledger, Store, StoreRefused, StoreUnavailable
from shared.store.open import open_stores

log = logging.getLogger("image_dedup.services")


# -- shared context ---------------------------------------------------------------------------
@dataclass
class Context:
    settings: Settings
    store: Store
    bus: Any  # RabbitBus or InProcessBus
    ledger: Ledger
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: list[asyncio.Task] = field(default_factory=list)
    on_stop: list[Callable[[], Awaitable[None] | None]] = field(default_factory=list)  # before the bus drains
    on_close: list[Callable[[], Awaitable[None] | None]] = field(default_factory=list)  # after it closed
    failed: bool = False  # stopping because a part of the service failed: exit status 1
    _decoders: ProcessSigner | None = None

    async def decoders(self) -> ProcessSigner:
        """The decoder processes of this service (``threads`` of them, started on first use and
        shared by its roles): the hasher's analysis and the matcher's pixel comparisons run
        there, off the event loop and on every core asked for."""
        if self._decoders is None:
            self._decoders = ProcessSigner(self.settings.threads, shared=self.settings.pictures_directory)
            self.on_close.append(self._decoders.close)
            await self._decoders.start()
        return self._decoders

    def spawn(self, work: Awaitable[None], what: str) -> None:
        """Run ``work`` in the background until the service stops. If it fails, the service stops
        with exit status 1 for its supervisor to restart it, rather than stay up, ready and deaf."""
        task = asyncio.ensure_future(work)
        task.add_done_callback(lambda done: self._stop_if_failed(done, what))
        self.tasks.append(task)

    async def outlast(self, work: Callable[[], Awaitable[Any]]) -> Any:
        """``work()``, run again after each store outage it meets, waited out as a handler's is
        (one line when it begins, one when it ends), so a background task outlives an outage."""
        outages: Outages | None = self.bus.outages
        if outages is None:  # a bus without a store to probe (tests): an outage is a failure
            return await work()
        while True:
            began = await outages.gate()
            try:
                return await work()
            except OUTAGES as exc:
                await outages.wait_out(exc, began)

    def _stop_if_failed(self, task: asyncio.Future, what: str) -> None:
        if task.cancelled() or task.exception() is None:
            return
        log.error("%s stopped (%s); stopping the service", what, _first_line(task.exception()))
        self.failed = True
        self.stopping.set()


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc).strip() else type(exc).__name__


async def _call_all(callbacks: list) -> None:
    for cb in callbacks:
        result = cb()
        if asyncio.iscoroutine(result):
            await result


# -- hasher -----------------------------------------------------------------------------------
async def start_hasher(ctx: Context) -> None:
    settings = ctx.settings
    sign = await ctx.decoders()
    signed = metrics.hasher().signed

    async def on_event(message: Message) -> None:
        outcome = await handle_file_event(message, store=ctx.store, settings=settings, sign=sign, publish=ctx.bus.publish,
                                          ledger=ctx.ledger)
        if outcome.status == "signed":
            signed.inc()

    # enough messages in hand to keep every decoder process busy
    await ctx.bus.subscribe("file.event", on_event, concurrency=max(settings.concurrency, settings.threads + 1))


# -- matcher ----------------------------------------------------------------------------------
class Batcher:
    """Collects paths until ``delay`` quiet seconds passed (or ``max_size`` are waiting, or the
    oldest waited ``max_wait``), then runs ``run`` on the batch. ``submit`` returns when the
    batch holding its path is done (so the message is acked only after the batch's decisions
    were published) and raises if the batch failed (so the message is retried)."""

    def __init__(self, run: Callable[[list[str]], Awaitable[Any]], delay: float, max_size: int, max_wait: float,
                 busy: Callable[[], Awaitable[bool]] | None = None):
        self.run, self.delay, self.max_size, self.max_wait = run, delay, max_size, max_wait
        self.busy = busy  # more is on its way (files still to sign): the batch waits for it
        self._pending: list[tuple[str, asyncio.Future]] = []
        self._first = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._lock = asyncio.Lock()

    @property
    def idle(self) -> bool:
        return not self._pending and not self._lock.locked()

    async def run_now(self, paths: list[str]) -> None:
        """Run a batch of ``paths`` at once (between two of the batches submitted)."""
        async with self._lock:
            await self.run(paths)

    async def submit(self, path: str) -> None:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        if not self._pending:
            self._first = loop.time()
        self._pending.append((path, future))
        self._schedule()
        await future

    def _schedule(self) -> None:
        loop = asyncio.get_running_loop()
        if self._timer is not None:
            self._timer.cancel()
        if len(self._pending) >= self.max_size:
            when = loop.time()
        else:
            when = min(loop.time() + self.delay, self._first + self.max_wait)
        self._timer = loop.call_at(when, lambda: asyncio.ensure_future(self._flush()))

    def flush_soon(self) -> None:
        self.delay = self.max_wait = 0
        if self._pending:
            self._schedule()

    async def _waits_for_more(self) -> bool:
        """A batch not yet full or old, while files are still being signed, waits for them: an
        import is matched whole (its groups complete), not piecemeal."""
        if self.busy is None or not self._pending or not self.delay or len(self._pending) >= self.max_size:
            return False
        if asyncio.get_running_loop().time() - self._first >= self.max_wait:
            return False
        try:
            return await self.busy()
        except Exception:  # noqa: BLE001 - the broker may be away: match what is there
            return False

    async def _flush(self) -> None:
        if await self._waits_for_more():
            self._schedule()
            return
        async with self._lock:
            batch, self._pending = self._pending[: self.max_size], self._pending[self.max_size :]
            if self._pending:  # more than one batch waited: the rest goes next
                self._first = asyncio.get_running_loop().time()
                self._schedule()
            if not batch:
                return
            try:
                await self.run(list(dict.fromkeys(p for p, _ in batch)))
            except Exception as exc:
                for _, f in batch:
                    if not f.done():
                        f.set_exception(exc)
            else:
                for _, f in batch:
                    if not f.done():
                        f.set_result(None)


#: The longest a batch waits for the hashers to finish an import before it is matched anyway.
MATCH_MAX_WAIT = 600.0


async def start_matcher(ctx: Context, prefetch: int | None = None) -> None:
    settings = ctx.settings
    size = prefetch or PREFETCH["image.signed"]
    measured = metrics.matcher()
    owner = f"matcher-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    decoders = await ctx.decoders()  # the comparisons of a batch on every core, not one

    async def publish(decision: Decision) -> None:
        await ctx.bus.publish(decision)
        measured.groups.inc()  # as published, not at the batch's end: a long batch's count is live

    async def run(paths: list[str]) -> None:
        started = time.monotonic()
        decisions = await handle_signed(paths, store=ctx.store, settings=settings, ledger=ctx.ledger,
                                        publish=publish, owner=owner, look=decoders.look)
        if decoders.shared is not None:  # planned: their pictures are not wanted any more
            await asyncio.to_thread(decoders.shared.drop, paths)
        seconds = time.monotonic() - started
        measured.batch.observe(seconds)
        log.info("matched %d signed images: %d groups in %.2fs", len(paths), len(decisions), seconds)

    async def hashing() -> bool:
        return await ctx.bus.backlog("file.event") > 0

    batcher = Batcher(run, settings.match_delay, size, MATCH_MAX_WAIT, busy=hashing)

    async def reconcile() -> None:
        """Every ``reconcile_interval`` while idle: plan the stored images that have no plan."""
        mark = plan_mark(settings)

        async def sweep() -> None:
            if not batcher.idle or await ctx.bus.backlog("image.signed") or await hashing():
                return
            if decoders.shared is not None and (dropped := await asyncio.to_thread(decoders.shared.prune)):
                log.info("dropped %d pictures left in pictures_directory for more than a day", dropped)
            await ctx.store.refresh()
            after, found = "", 0
            while page := await ctx.store.unplanned(mark, after, limit=size):
                await batcher.run_now(page)
                found, after = found + len(page), page[-1]
            if found:
                log.info("reconcile: %d stored images had no plan; planned them", found)

        while True:
            await asyncio.sleep(settings.reconcile_interval)
            await ctx.outlast(sweep)

    async def on_signed(message: Message) -> None:
        assert isinstance(message, ImageSigned)
        try:
            below_root(message.path, settings.source_directories)
        except Unsafe as exc:  # never matched: dead-lettered with the reason, not acked as done
            raise Reject(str(exc)) from None
        await batcher.submit(message.path)

    ctx.on_stop.append(batcher.flush_soon)
    await ctx.bus.subscribe("image.signed", on_signed, concurrency=size)
    ctx.spawn(reconcile(), "the reconcile")


# -- actuator ---------------------------------------------------------------------------------
async def start_actuator(ctx: Context) -> None:
    settings = ctx.settings
    if not settings.dry_run:  # an actuator killed part-way through a unit: finished or rolled back now
        for line in await asyncio.to_thread(recover, settings.journal_directory):
            log.warning("journal: %s", line)
    journal = Journal.new(settings.journal_directory, "actuator")  # thread-safe, created on its first entry
    log.info("journal: %s%s", journal.path, " (dry run: nothing will be changed)" if settings.dry_run else
             " (written on the first action)")
    actions = metrics.actuator().actions

    def report(outcomes: list[ActionOutcome]) -> None:
        for o in outcomes:
            actions.labels(o.action, o.status).inc()
            level = logging.WARNING if o.status == "error" else logging.INFO
            log.log(level, "%s %s %s (keep %s)%s", o.status, o.action, o.path, o.keep, f": {o.reason}" if o.reason else "")
        if settings.remove_empty_folders and not settings.dry_run:
            emptied = [Path(o.path).parent for o in outcomes if o.status == "done" and o.action != "hardlink"]
            for folder in remove_empty_folders(emptied, settings.source_directories):
                log.info("removed empty folder %s", folder)

    async def on_decision(message: Message) -> None:
        assert isinstance(message, Decision)
        try:
            outcomes = await handle_decision(message, store=ctx.store, ledger=ctx.ledger, settings=settings,
                                             journal=journal, publish=ctx.bus.publish, retry_refused=True)
        except PairBusy as busy:  # retried by the bus; what was done meanwhile is reported now
            report(busy.outcomes)
            raise
        report(outcomes)

    ctx.on_close.append(journal.close)
    await ctx.bus.subscribe("group.decision", on_decision, concurrency=settings.concurrency)


# -- watcher ----------------------------------------------------------------------------------
def _stat(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


class LiveWatch:
    """watchfiles over the roots; a path is published once it stayed unchanged (size, mtime)
    for ``debounce`` seconds, so a file still being copied is published once, complete.
    Where the system cannot watch (inotify's limits reached, say) it polls instead, and
    ``rescan`` catches up with what changed meanwhile."""

    def __init__(self, ctx: Context, rescan: Callable[[], Awaitable[None]]):
        self.ctx = ctx
        self.rescan = rescan
        self.published = metrics.watcher().file_events.labels("watch")
        self.settings = ctx.settings
        self.debounce = ctx.settings.watch_debounce
        self.pending: dict[str, tuple[float, tuple[int, int] | None]] = {}
        self.cleanup_due: float | None = None

    def note(self, path: str) -> None:
        self.pending[path] = (time.monotonic() + self.debounce, _stat(path))

    def on_change(self, change: Any, path: str) -> None:
        from watchfiles import Change

        if change != Change.deleted and os.path.isdir(path) and not os.path.islink(path):
            for found in walk(self.settings, Path(path)):  # a folder copied or moved in at once
                self.note(found.path)
        elif wanted(path, self.settings) or companion(path, self.settings):  # a unit's sidecar or video too
            self.note(path)
        elif change == Change.deleted:
            self.cleanup_due = time.monotonic() + self.debounce  # maybe a folder: forget what was below

    async def flush_loop(self) -> None:
        tick = min(0.25, max(self.debounce / 4, 0.05))
        while True:
            await asyncio.sleep(tick)
            now = time.monotonic()
            for path, (due, seen) in list(self.pending.items()):
                if due > now:
                    continue
                current = _stat(path)
                if current != seen:  # still changing: wait another quiet period
                    self.pending[path] = (now + self.debounce, current)
                    continue
                del self.pending[path]
                change = "deleted" if current is None else "upsert"
                await self.ctx.bus.publish(FileEvent(path=path, change=change))
                self.published.inc()
            if self.cleanup_due is not None and self.cleanup_due <= now:
                self.cleanup_due = None
                forgotten = await self.ctx.outlast(lambda: clean_up(self.ctx.store, self.settings))
                if forgotten:
                    log.info("forgot %d vanished files", len(forgotten))

    async def run(self) -> None:
        roots = [str(r) for r in self.settings.source_directories if r.is_dir()]
        if not roots:
            log.warning("no existing root to watch")
            return
        flusher = asyncio.create_task(self.flush_loop())
        poll = self.settings.watch_poll
        try:
            while True:
                try:
                    return await self._watch(roots, poll)
                except RuntimeError as exc:  # watchfiles could not set up (or keep) the system's watch
                    if poll:
                        raise
                    poll = WATCH_POLL_FALLBACK
                    log.warning("cannot watch the roots (%s); polling them every %gs instead", _first_line(exc), poll)
                    # scheduled now, run once the polling watch is in place: nothing is missed
                    self.ctx.spawn(self.rescan(), "the rescan after the switch to polling")
        finally:
            flusher.cancel()

    async def _watch(self, roots: list[str], poll: float) -> None:
        from watchfiles import awatch

        async for changes in awatch(
            *roots, watch_filter=None, recursive=self.settings.recursive, debounce=200, step=50,
            stop_event=self.ctx.stopping, force_polling=bool(poll), poll_delay_ms=int(poll * 1000) or 300,
        ):
            for change, path in changes:
                self.on_change(change, path)


async def start_watcher(ctx: Context, live: bool = True) -> None:
    settings = ctx.settings
    lock = asyncio.Lock()  # one rescan at a time
    measured = metrics.watcher()

    async def publish(event: Message) -> None:
        await ctx.bus.publish(event)
        measured.file_events.labels("rescan").inc()

    async def rescan(command: Rescan) -> None:
        async with lock:
            started = time.monotonic()
            n = await ctx.outlast(lambda: handle_rescan(command, store=ctx.store, settings=settings, publish=publish))
            measured.rescans.inc()
            log.info("rescan of %s: %d new or changed files in %.1fs", command.path or "all roots", n,
                     time.monotonic() - started)

    async def on_rescan(message: Message) -> None:
        assert isinstance(message, Rescan)
        await rescan(message)

    await ctx.bus.subscribe("watcher.rescan", on_rescan, concurrency=1)
    if live:
        # watch first: nothing copied meanwhile is missed
        ctx.spawn(LiveWatch(ctx, lambda: rescan(Rescan())).run(), "the live watch")
    ctx.spawn(rescan(Rescan()), "the start-up rescan")


STARTERS = {"watcher": start_watcher, "hasher": start_hasher, "matcher": start_matcher, "actuator": start_actuator}


# -- process ----------------------------------------------------------------------------------
async def serve(roles: list[str], settings: Settings, *, in_process: bool = False) -> int:
    """Run ``roles`` until SIGTERM/SIGINT (exit status 0) or a part of them failed (1)."""
    name = "daemon" if in_process else "+".join(roles)
    state = {"store": "waiting for the store", "started": False}
    bus: Any = None
    ctx: Context | None = None

    def ready() -> tuple[bool, str]:
        if state["store"] != "open":
            return False, state["store"]
        if bus is not None and bus.outages.reason is not None:
            return False, f"store unavailable: {bus.outages.reason}"
        if not state["started"]:  # subscriptions, decoder processes, the watch: not all in place yet
            return False, "starting"
        if not in_process and not bus.ready:
            return False, "broker not connected"
        return True, "ready"

    health = metrics.HealthServer(settings.metrics_port, ready, settings.metrics_host)
    await health.start()
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    try:
        opened = await _open_when_up(settings, stopping)
        if opened is None:
            return 0
        store, ledger = opened
    except BaseException:
        await health.stop()
        raise
    state["store"] = "open"
    observe = metrics.observe_messages(roles)

    async def probe() -> None:
        """A read from the store and one from the ledger: both answer, or the outage goes on."""
        await store.get("/")
        await ledger.recall(["probe"])

    try:
        if in_process:
            bus = _ObservedInProcessBus(settings.max_retries, observe, probe)
        else:
            from shared.bus.rabbitmq import RabbitBus

            bus = RabbitBus(settings.broker_url, settings.broker_prefix, max_retries=settings.max_retries,
                            service=name, observe=observe, probe=probe)
            await bus.connect()
        ctx = Context(settings, store, bus, ledger, stopping=stopping)
        if hasattr(store, "recreated"):  # a store on a server, whose index may vanish

            async def rescan_all() -> None:
                log.warning("asking the watcher to rescan the roots: the store's records come back")
                await bus.publish(Rescan())

            store.recreated = rescan_all
        if in_process:
            ctx.spawn(bus.log_dead_letters(), "the dead-letter log")
        for role in roles:
            await STARTERS[role](ctx)
        state["started"] = True
        log.info("%s started (store %s%s)", name, settings.elasticsearch_url or settings.store_path,
                 "" if in_process else f", broker prefix {settings.broker_prefix}")
        await ctx.stopping.wait()
        log.info("%s stopping: finishing the messages in hand", name)
        for task in ctx.tasks:
            task.cancel()
        await asyncio.gather(*ctx.tasks, return_exceptions=True)
        if in_process:
            await _call_all(ctx.on_stop)
            await bus.close()
        else:
            await bus.stop_consuming()
            await _call_all(ctx.on_stop)
            await bus.close()
    finally:
        if bus is not None:
            bus.outages.close()
        if ctx is not None:
            await _call_all(ctx.on_close)
        state["store"] = "store closed"
        await store.close()
        await ledger.close()
        await health.stop()
        log.info("%s stopped: %s", name, metrics.done(roles))
    return 1 if ctx is not None and ctx.failed else 0


async def _open_when_up(settings: Settings, stopping: asyncio.Event) -> tuple[Store, Ledger] | None:
    """The store and the ledger, once the store answers (one line while it does not; None if
    the service is stopped meanwhile). Credentials it refuses stop the service at once."""
    wait, longest = PROBE_WAITS
    waited = None
    while True:
        try:
            opened = await open_stores(settings)
        except StoreRefused:
            raise
        except StoreUnavailable as exc:
            if waited is None:
                waited = time.monotonic()
                log.warning("%s; waiting for it (/readyz is 503 meanwhile)", exc)
            try:
                await asyncio.wait_for(stopping.wait(), wait)
                return None
            except asyncio.TimeoutError:
                wait = min(wait * 2, longest)
            continue
        if waited is not None:
            log.warning("the store answers after %.0f s", time.monotonic() - waited)
        return opened


class _ObservedInProcessBus(InProcessBus):
    """The daemon's bus: the in-process one, with dead letters logged and counted, and store
    outages waited out."""

    def __init__(self, max_retries: int, observe: Callable[[str, str, float], None],
                 probe: Callable[[], Awaitable[object]]):
        super().__init__(max_retries, Outages(probe))
        self.observe = observe

    async def subscribe(self, kind: str, handler, concurrency: int = 1) -> None:
        async def observed(message: Message) -> None:
            started = time.monotonic()
            try:
                await handler(message)
            except Exception as exc:
                if not isinstance(exc, OUTAGES):  # waited out and run again: not an outcome
                    self.observe(kind, "rejected" if isinstance(exc, Reject) else "failed", time.monotonic() - started)
                raise
            self.observe(kind, "ok", time.monotonic() - started)

        await super().subscribe(kind, observed, concurrency)

    async def log_dead_letters(self) -> None:
        seen = 0
        while True:
            await asyncio.sleep(1)
            for letter in self.dead[seen:]:
                log.warning("dead letter %s: %s", letter.message.kind, letter.reason)
            seen = len(self.dead)


async def publish_rescan(settings: Settings, path: str | None) -> int:
    """Publish the command; returns how many watchers were consuming rescans just before."""
    from shared.bus.rabbitmq import RabbitBus

    bus = RabbitBus(settings.broker_url, settings.broker_prefix, service="cli")
    await bus.connect(timeout=10)
    try:
        await bus.publish(Rescan(path=None if path is None else os.path.abspath(path)))
        return bus.consumers(Rescan().kind)
    finally:
        await bus.close()


# -- command line (the parsers are in services/cli.py) -----------------------------------------
def run_command(args: argparse.Namespace, settings: Settings) -> int:
    logging.getLogger().setLevel(getattr(args, "log_level", "INFO").upper())
    if args.command == "rescan":
        if args.path is not None:
            try:
                confine_folder(args.path, settings.source_directories)
            except Unsafe as exc:  # the watcher would refuse it too, but silently to the user
                print(f"image-dedup: rescan refused: {exc}", file=sys.stderr)
                return 2
        # a one-shot command: its own one line below says whether the broker was reached, so
        # the broker client's own logging is quieted for it (and only for it)
        quiet = {"aiormq": logging.CRITICAL, "shared.bus.rabbitmq": logging.ERROR}
        before = {name: logging.getLogger(name).level for name in quiet}
        try:
            for name, level in quiet.items():
                logging.getLogger(name).setLevel(level)
            listening = asyncio.run(publish_rescan(settings, args.path))
        except Exception as exc:  # the broker's client raises many kinds; the user needs one line
            print(f"image-dedup: cannot publish the rescan to {_without_password(settings.broker_url)}: "
                  f"{_first_line(exc)}", file=sys.stderr)
            return 1
        finally:
            for name, level in before.items():
                logging.getLogger(name).setLevel(level)
        if not listening:
            print(f"rescan of {args.path or 'all roots'} queued on {settings.broker_prefix}, but no watcher is "
                  "listening: it runs when one starts (image-dedup service watcher)")
            return 0
        print(f"rescan of {args.path or 'all roots'} published to {settings.broker_prefix}")
        return 0
    roles = [args.role] if args.command == "service" else list(ROLES)
    return asyncio.run(serve(roles, settings, in_process=args.command == "daemon"))


def _without_password(url: str) -> str:
    parts = urlsplit(url)
    return parts._replace(netloc=parts.hostname + (f":{parts.port}" if parts.port else "")).geturl() if parts.hostname else url
