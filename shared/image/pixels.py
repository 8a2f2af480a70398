"""Decoding for the pixel comparison, with a cache of pictures per file version, so a file
compared with several candidates is decoded once, and a file analysed by this process
(``analyze_keeping_pixels``, local mode) is not decoded again at all. Safe to call from threads
and from the decoder pool's worker processes. Both ways of a pair are compared in one call, so
one process decodes the two files."""

from __future__ import annotations

import asyncio
import threading
from collections import OrderedDict

from .compare import MAX_SIDE, Agreement, BothWays, Features, both_ways
from .signature import Analysis, ImageError, analyze, comparison_grey, load_grey

FileVersion = tuple[str, int, int]  # path, size, mtime_ns: a cache key that changes with the file

#: The pictures one process keeps (about 0.2 MB each at 512 px, keypoints included): a whole
#: library of some 600 photos per decoder process, or the most recent of a larger one.
CACHE_BYTES = 128 << 20


class _Pictures:
    """The most recently used pictures, up to ``CACHE_BYTES`` of grey levels."""

    def __init__(self) -> None:
        self._kept: OrderedDict[FileVersion, Features] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, version: FileVersion) -> Features | None:
        with self._lock:
            found = self._kept.get(version)
            if found is not None:
                self._kept.move_to_end(version)
            return found

    def keep(self, version: FileVersion, found: Features) -> None:
        with self._lock:
            old = self._kept.pop(version, None)
            self._bytes += found.grey.nbytes - (old.grey.nbytes if old is not None else 0)
            self._kept[version] = found
            while self._bytes > CACHE_BYTES and len(self._kept) > 1:
                self._bytes -= self._kept.popitem(last=False)[1].grey.nbytes


_pictures = _Pictures()


def _features(version: FileVersion) -> Features:
    found = _pictures.get(version)
    if found is None:
        found = Features(load_grey(version[0], MAX_SIDE))
        _pictures.keep(version, found)
    return found


def analyze_keeping_pixels(path: str) -> Analysis:
    """``signature.analyze``, keeping the comparison's picture of the file from the same decode."""
    return analyze(path, keep=lambda version, grey: _pictures.keep(version, Features(comparison_grey(grey, MAX_SIDE))))


def compare_files(a: FileVersion, b: FileVersion, turns: bool) -> BothWays:
    """``compare.both_ways`` of two files, decoded now unless kept; a file that cannot be read
    is no match."""
    try:
        return both_ways(_features(a), _features(b), turns)
    except ImageError as exc:
        return Agreement(reason=f"cannot compare the pixels: {exc}"), None


async def look_in_thread(a: FileVersion, b: FileVersion, turns: bool) -> BothWays:
    """The comparison off the event loop (OpenCV and numpy release the GIL)."""
    return await asyncio.to_thread(compare_files, a, b, turns)
