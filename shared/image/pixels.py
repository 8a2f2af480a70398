"""Decoding for the pixel comparison, with a small cache of features per file version, so a
file compared with several candidates is decoded once. Safe to call from threads and from
the decoder pool's worker processes. Both ways of a pair are compared in one call, so one
process decodes the two files."""

from __future__ import annotations

import asyncio
import threading
from collections import OrderedDict

from .compare import MAX_SIDE, Agreement, BothWays, Features, both_ways
from .signature import ImageError, load_grey

FileVersion = tuple[str, int, int]  # path, size, mtime_ns: a cache key that changes with the file

_CACHE_SIZE = 256  # about 0.2 MB each: a large component is not decoded again and again
_cache: OrderedDict[FileVersion, Features] = OrderedDict()
_lock = threading.Lock()


def _features(version: FileVersion) -> Features:
    with _lock:
        if version in _cache:
            _cache.move_to_end(version)
            return _cache[version]
    found = Features(load_grey(version[0], MAX_SIDE))
    with _lock:
        _cache[version] = found
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return found


def compare_files(a: FileVersion, b: FileVersion, mirrors: bool) -> BothWays:
    """``compare.both_ways`` of two files, decoded now; a file that cannot be read is no match."""
    try:
        return both_ways(_features(a), _features(b), mirrors)
    except ImageError as exc:
        return Agreement(reason=f"cannot compare the pixels: {exc}"), None


async def look_in_thread(a: FileVersion, b: FileVersion, mirrors: bool) -> BothWays:
    """The comparison off the event loop (OpenCV and numpy release the GIL)."""
    return await asyncio.to_thread(compare_files, a, b, mirrors)
