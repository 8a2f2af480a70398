"""Watcher: finds the files under the roots and tells the hasher about new, changed and vanished
ones. Walking and clean-up are plain functions so local mode can run them as phases."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from shared.bus import Reject
from shared.core import bundles
from shared.config import Settings
from shared.messages import FileEvent, Rescan
from shared.core.safety import Unsafe, confine, confine_folder, home_trash, never_scanned, root_of
from shared.store import Store


@dataclass(frozen=True, slots=True)
class FoundFile:
    path: str
    root: str
    size: int
    mtime_ns: int


def skipped_folders(settings: Settings) -> frozenset[str]:
    """Folders never scanned, whatever the exclusions say, besides those skipped by name
    (``shared.core.safety.never_scanned``): where duplicates are moved to, the desktop trash,
    and the thumbnail caches (the review page's and the desktop's), should a root hold them."""
    env = os.environ
    return _skipped_folders(settings.store_path, settings.duplicates_target_directory,
                            env.get("XDG_DATA_HOME"), env.get("XDG_CACHE_HOME"), env.get("HOME"))


@functools.lru_cache(maxsize=16)  # asked for every path that clean-up and the live watch look at
def _skipped_folders(store_path: Path, target: Path | None, *environment: str | None) -> frozenset[str]:
    """(``environment``, the variables the folders depend on, is the cache's key: a daemon or
    a test may change them)"""
    cache_home = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    folders = [store_path.parent / "thumbs", home_trash(), Path(os.path.abspath(cache_home)) / "thumbnails"]
    return frozenset(str(f) for f in folders + ([target] if target is not None else []))


def _skipped(folder: str, skipped: frozenset[str]) -> bool:
    return folder in skipped or never_scanned(os.path.basename(folder))


def wanted(path: str, settings: Settings) -> bool:
    """Does the configuration ask for this file (extension, exclusions, roots, recursion), and
    does it lie in no folder that is never scanned (trash, NAS metadata, the target)?"""
    root = root_of(path, settings.source_directories)
    if root is None or not _wanted_here(path, root, settings):
        return False
    folder = os.path.dirname(os.path.normpath(os.path.abspath(path)))
    return not _in_skipped_folder(folder, root, skipped_folders(settings))


def _in_skipped_folder(folder: str, root: Path, skipped: frozenset[str]) -> bool:
    """Is ``folder`` (a root or below it), or a folder on its way up to the root, never scanned?"""
    while len(folder) > len(str(root)):
        if _skipped(folder, skipped):
            return True
        folder = os.path.dirname(folder)
    return False


def _wanted_here(path: str, root: Path, settings: Settings) -> bool:
    """``wanted`` for a file found in a folder that is scanned."""
    if os.path.splitext(path)[1].lower() not in settings.file_extensions:
        return False
    if not settings.recursive and Path(path).parent != root:
        return False
    return not settings.is_excluded(path)


def companion(path: str, settings: Settings) -> bool:
    """Could this file below a root be a sidecar or a Live Photo video (not an image asked
    for)? The live watch tells the hasher of it, so a unit is decided whole whatever order its
    files arrive in."""
    root = root_of(path, settings.source_directories)
    return (root is not None and bundles.is_companion_name(os.path.basename(path))
            and os.path.splitext(path)[1].lower() not in settings.file_extensions and not settings.is_excluded(path)
            and not _in_skipped_folder(os.path.dirname(os.path.normpath(os.path.abspath(path))), root,
                                       skipped_folders(settings)))


def walk(
    settings: Settings, start: Path | None = None, on_error: Callable[[str, str], None] = lambda p, r: None
) -> Iterator[FoundFile]:
    """Yield every wanted regular file below the roots (or below ``start``), in a stable order.

    Symbolic links are never followed, so nothing outside a root is reached; unreadable
    folders are reported through ``on_error`` and skipped, and so are the folders that are
    never scanned (trash, NAS metadata, the target).
    """
    skipped = skipped_folders(settings)
    for root in settings.source_directories:
        if start is not None and root_of(start, [root]) is None:
            continue
        if start is not None and _in_skipped_folder(os.path.normpath(os.path.abspath(start)), root, skipped):
            continue
        stack = [start if start is not None else root]
        while stack:
            folder = stack.pop()
            try:
                with os.scandir(folder) as it:
                    entries = sorted(it, key=lambda e: e.name, reverse=True)
            except OSError as exc:
                on_error(str(folder), f"cannot read folder: {exc.strerror}")
                continue
            for entry in entries:
                try:
                    if entry.is_symlink():
                        continue
                    if entry.is_dir():
                        if settings.recursive and not _skipped(entry.path, skipped) \
                                and not settings.is_excluded(entry.path + os.sep):
                            stack.append(Path(entry.path))
                    elif entry.is_file() and _wanted_here(entry.path, root, settings):
                        st = entry.stat()
                        yield FoundFile(entry.path, str(root), st.st_size, st.st_mtime_ns)
                except OSError as exc:
                    on_error(entry.path, f"cannot read: {exc.strerror}")


async def clean_up(store: Store, settings: Settings) -> list[str]:
    """Phase 1: forget store entries whose file vanished, or that lie below a current root but
    are no longer wanted there. Entries of other roots stay: scanning a second folder must not
    throw away the first one's analyses."""
    stale = []
    async for path in store.iter_paths():
        if root_of(path, settings.source_directories) is not None:
            try:
                confine(path, settings.source_directories)
                keep = wanted(path, settings)
            except Unsafe:
                keep = False
        else:
            keep = os.path.lexists(path)
        if not keep:
            stale.append(path)
    for path in stale:
        await store.delete(path)
    return stale


async def handle_rescan(command: Rescan, *, store: Store, settings: Settings, publish) -> int:
    """Clean up, walk the roots (or the folder in the command) and publish one event per new
    or changed file. Returns how many events were published."""
    start = None
    if command.path is not None:
        try:
            start = confine_folder(command.path, settings.source_directories)
        except Unsafe as exc:
            raise Reject(f"rescan refused: {exc}") from None
    await clean_up(store, settings)
    published = 0
    batch: list[FoundFile] = []

    async def flush() -> None:
        nonlocal published
        known = await store.get_many([f.path for f in batch])
        for found in batch:
            record = known.get(found.path)
            if record is None or not record.unchanged(found.size, found.mtime_ns):
                await publish(FileEvent(path=found.path))
                published += 1
        batch.clear()

    for found in walk(settings, start):
        batch.append(found)
        if len(batch) >= 500:
            await flush()
    await flush()
    return published
