"""Hasher: turns a file event into a stored signature. The decoding runs in a process pool
(``sign``) so the event loop stays free."""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import signal
import threading
from concurrent.futures import ProcessPoolExecutor
from multiprocessing.connection import Connection
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from shared.bus import Reject
from shared.config import Settings
from shared.messages import FileEvent, ImageSigned
from shared.core.safety import Unsafe, confine, root_of
from shared.image import compare, lineage
from shared.image.compare import BothWays, Features
from shared.image.pixels import (
    FileVersion, Pictures, SharedPictures, analyze_and_share, analyze_with_picture, compare_files, picture,
)
from shared.image.signature import ANALYSIS_VERSION, Analysis, ImageError, analyze
from shared.store import ImageRecord, Ledger, Store
from services.hasher.companions import on_companion
from services.watcher.handler import companion, wanted

Sign = Callable[[str], Awaitable[Analysis]]

log = logging.getLogger(__name__)


class WorkersUnavailable(Exception):
    """The decoder processes cannot be started; ``str(exc)`` says why in one line."""


def _die_with_service(lifeline: Connection) -> None:
    """Worker initializer: exit as soon as the service is gone. Only the service holds the
    pipe's write end, so the read returns EOF when it dies in any way (kill -9 included);
    the workers are children of the forkserver, so neither their parent pid nor a parent-death
    signal would tell. Ctrl-C is the service's to handle: a worker that got it too would print
    a traceback."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def watch() -> None:
        try:
            lifeline.recv_bytes()
        except (EOFError, OSError):
            pass
        os._exit(1)

    threading.Thread(target=watch, name="lifeline", daemon=True).start()


class ProcessSigner:
    """``analyze`` in a pool of worker processes: decoding is CPU-bound, so it runs off the
    event loop, on every core asked for. The workers die with the service. This process keeps
    the comparison's picture of each file it compares and sends it with each comparison, so a
    file is decoded once, whichever worker compares it (kept by the worker that compared it
    instead, half the comparisons of two workers decoded a file again). With ``keep_pixels``
    (when the same pool compares the pixels next, as in local mode) the pictures come from the
    analysis itself, so an analysed file is not decoded again at all. With ``shared`` (services
    mode, ``pictures_directory``) each picture analysed is left in that folder for the matchers,
    and a comparison takes a picture from there before it decodes the file."""

    def __init__(self, processes: int, keep_pixels: bool = False, shared: Path | None = None):
        self._kept = Pictures()
        self._keep_analysed = keep_pixels
        self.shared = SharedPictures(shared) if shared is not None else None
        self._decoding: dict[FileVersion, asyncio.Future[Features | None]] = {}
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["__main__", *compare.PRELOAD])
        lifeline, self._lifeline = context.Pipe(duplex=False)
        self._pool = ProcessPoolExecutor(processes, mp_context=context, initializer=_die_with_service,
                                         initargs=(lifeline,))

    async def start(self) -> None:
        """Start the pool now: one that cannot start (say, a temporary folder whose path is too
        long for the forkserver's socket) fails the run or the service at start, in one line,
        not every file after it."""
        try:
            await asyncio.get_running_loop().run_in_executor(self._pool, os.getpid)
        except (OSError, RuntimeError) as exc:
            raise WorkersUnavailable(f"cannot start the decoder processes: {exc}") from None
        if self.shared is not None:
            try:
                await asyncio.to_thread(self.shared.check)
            except OSError as exc:
                log.warning("pictures_directory %s cannot be written (%s): the matchers decode each file again",
                            self.shared.directory, exc.strerror or exc)

    async def __call__(self, path: str) -> Analysis:
        loop = asyncio.get_running_loop()
        if self.shared is not None:
            return await loop.run_in_executor(self._pool, analyze_and_share, path, self.shared.directory)
        if not self._keep_analysed:
            return await loop.run_in_executor(self._pool, analyze, path)
        analysis, version, seen = await loop.run_in_executor(self._pool, analyze_with_picture, path)
        self._kept.keep(version, seen)
        return analysis

    async def _picture(self, version: FileVersion) -> Features | None:
        """The file's picture: kept here, or left by a hasher, or decoded once in the pool (the
        looks that want it meanwhile wait for that one decode) and kept."""
        found = self._kept.get(version)
        if found is not None:
            return found
        pending = self._decoding.get(version)
        if pending is None:
            pending = asyncio.ensure_future(self._shared_or_decoded(version))
            self._decoding[version] = pending
            pending.add_done_callback(lambda done: self._settle(version, done))
        return await asyncio.shield(pending)  # a look cancelled does not cancel the others' decode

    async def _shared_or_decoded(self, version: FileVersion) -> Features | None:
        if self.shared is not None and (found := await asyncio.to_thread(self.shared.features, version)) is not None:
            return found
        return await asyncio.get_running_loop().run_in_executor(self._pool, picture, version)

    def _settle(self, version: FileVersion, done: asyncio.Future[Features | None]) -> None:
        self._decoding.pop(version, None)
        if not done.cancelled() and done.exception() is None and done.result() is not None:
            self._kept.keep(version, done.result())  # type: ignore[arg-type]

    async def look(self, a: FileVersion, b: FileVersion, turns: bool) -> BothWays:
        """The verdict's pixel comparison, in the same pool (shared.core.verdict.Look)."""
        sent = await asyncio.gather(self._picture(a), self._picture(b))
        return await asyncio.get_running_loop().run_in_executor(self._pool, compare_files, a, b, turns, tuple(sent))

    async def measure(self, kind: str, copy: FileVersion, source: FileVersion, turn: int) -> object:
        """A provenance measure on the full pixels, in the same pool (shared.core.provenance.Measure)."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, lineage.measure, kind, copy[0], source[0], turn)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._lifeline.close()  # after the shutdown: the workers finish what they hold


@dataclass(frozen=True, slots=True)
class HashOutcome:
    path: str
    status: Literal["signed", "upgraded", "unchanged", "forgotten", "companion"]


async def handle_file_event(
    event: FileEvent, *, store: Store, settings: Settings, sign: Sign, publish: Callable[[ImageSigned], Awaitable[None]],
    ledger: Ledger | None = None,
) -> HashOutcome:
    """Sign a new or changed image into the store and announce it (``image.signed``); an
    unchanged one that was never planned is announced again, so a write and its announcement
    cannot be parted by a crash. For a sidecar or video, have its unit decided again
    (``services.hasher.companions``).

    Raises Reject for what can never succeed (a path outside the roots, a bad image): the bad
    image is also recorded in the store, so it is not decoded again until it changes.
    """
    if companion(event.path, settings):
        await on_companion(event, store=store, ledger=ledger, settings=settings, publish=publish)
        return HashOutcome(event.path, "companion")
    if event.change == "deleted" and not os.path.lexists(event.path):  # else: back already, or never gone
        await store.delete(event.path)
        return HashOutcome(event.path, "forgotten")
    try:
        path = str(confine(event.path, settings.source_directories))
    except Unsafe as exc:
        if not os.path.lexists(event.path):
            await store.delete(event.path)
            return HashOutcome(event.path, "forgotten")
        raise Reject(str(exc)) from None
    if not wanted(path, settings):
        raise Reject(f"{path} is excluded by the configuration")
    try:
        st = os.stat(path)
    except FileNotFoundError:  # gone since the event was published
        await store.delete(path)
        return HashOutcome(path, "forgotten")
    known = await store.get(path)
    outdated = False
    if known is not None and known.unchanged(st.st_size, st.st_mtime_ns):
        if known.error:
            raise Reject(known.error)
        # an analysis by an older version (before the embedding and digest existed, say) is
        # brought up to date
        outdated = known.embedding is None or not known.digest or known.analysis < ANALYSIS_VERSION
        if not outdated:
            if known.signature is not None and known.planned is None:
                # stored but not planned yet: maybe the announcement was lost (the service died
                # between the write and it); announced again, the matcher plans it or skips it
                await publish(ImageSigned(path=path))
            return HashOutcome(path, "unchanged")
    root = str(root_of(path, settings.source_directories))
    try:
        analysis = await sign(path)
    except ImageError as exc:
        await store.upsert(ImageRecord(path, root, st.st_size, st.st_mtime_ns, error=str(exc)))
        raise Reject(str(exc)) from None
    await store.upsert(
        ImageRecord(
            path=path, root=root, size=st.st_size, mtime_ns=st.st_mtime_ns, format=analysis.format,
            width=analysis.width, height=analysis.height,
            exif_tags=analysis.exif_tags if settings.use_exif_data else 0,
            exif_date=analysis.exif_date if settings.use_exif_data else None,
            signature=analysis.signature,
            digest=analysis.digest or None, frames=analysis.frames, embedding=analysis.embedding,
            analysis=ANALYSIS_VERSION,
        )
    )
    await publish(ImageSigned(path=path))
    return HashOutcome(path, "upgraded" if outdated else "signed")
