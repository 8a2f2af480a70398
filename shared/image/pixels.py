"""Decoding for the pixel comparison, with a cache of pictures per file version, so a file
compared with several candidates is decoded once (its keypoints computed once), and a file
analysed in local mode is not decoded again at all: its picture comes from the analysis
(``analyze_with_picture``) and is sent with each comparison. Safe to call from threads and
from the decoder pool's worker processes. Both ways of a pair are compared in one call, so one
process decodes the two files."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import os
import struct
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from . import lineage
from .compare import MAX_SIDE, Agreement, BothWays, Features, both_ways
from .signature import Analysis, ImageError, analyze_for_comparison, load_colour, load_grey

FileVersion = tuple[str, int, int]  # path, size, mtime_ns: a cache key that changes with the file

#: The pictures one process keeps (about 0.2 MB each at 512 px, keypoints included): a whole
#: library of some 600 photos (local mode's main process, and each decoder process of what it
#: compared), or the most recent of a larger one.
CACHE_BYTES = 128 << 20


class Pictures:
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


_pictures = Pictures()


Sent = tuple[Features | None, Features | None]  # the pictures of a pair, when the caller holds them


def _features(version: FileVersion, sent: Features | None) -> Features:
    found = _pictures.get(version)
    if found is None:
        found = sent if sent is not None else _decoded(version[0])
        _pictures.keep(version, found)
    return found


def _decoded(path: str) -> Features:
    return Features(load_grey(path, MAX_SIDE), _colour(path))


def picture(version: FileVersion) -> Features | None:
    """The comparison's picture of a file, for a caller that keeps it and sends it with each
    comparison (ProcessSigner); None when the file cannot be read (the comparison says why)."""
    try:
        return _decoded(version[0])
    except ImageError:
        return None


def analyze_with_picture(path: str) -> tuple[Analysis, FileVersion, Features]:
    """``signature.analyze``, and the comparison's picture of the file from the same decode,
    with the file's version, for a caller that sends it with the comparisons (ProcessSigner)."""
    analysis, version, grey = analyze_for_comparison(path, MAX_SIDE)
    return analysis, version, Features(grey, _colour(path))


class SharedPictures:
    """The comparison's pictures that hashers leave in a folder the matchers also reach
    (services mode; messages carry no pixels), so the matcher that compares a file does not
    decode it a second time: that decode was most of what the services cost beyond local mode
    (docs/benchmarks.md). One file per image, named by its path and holding the version it was
    made from, so a file changed since is decoded again. The matcher drops a picture once its
    image was planned; one left by a crash goes after ``KEEP_SECONDS``."""

    #: A picture not planned within a day waited through a crash or a backlog that long; it is
    #: dropped, and the matcher that needs it decodes the file (nothing else is lost).
    KEEP_SECONDS = 24 * 3600
    #: Pictures left waiting at most (~4 GB at ~0.2 MB each): past that (matchers far behind a
    #: big import) the files are compared from the disk, rather than fill the disk with pictures.
    MOST_WAITING = 20_000
    #: Pictures left between two counts of the folder (a count lists it: a few ms at the most).
    COUNT_EVERY = 200
    _HEADER = struct.Struct("<qqII")  # size, mtime_ns, height, width

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self._puts, self._full = 0, False

    def _file(self, path: str) -> Path:
        name = hashlib.blake2b(path.encode("utf-8", "surrogateescape"), digest_size=16).hexdigest()
        return self.directory / f"{name}.grey"

    def put(self, version: FileVersion, grey: np.ndarray) -> bool:
        """Written whole or not at all (a reader never sees half a picture); not written (False)
        while ``MOST_WAITING`` pictures wait."""
        if self._puts % self.COUNT_EVERY == 0:
            self._full = self.waiting() >= self.MOST_WAITING
        self._puts += 1
        if self._full:
            return False
        self.directory.mkdir(parents=True, exist_ok=True)
        target = self._file(version[0])
        partial = target.with_name(f"{target.name}.{os.getpid()}.{threading.get_ident()}.part")
        try:
            partial.write_bytes(self._HEADER.pack(version[1], version[2], *grey.shape) + np.ascontiguousarray(grey, np.uint8).tobytes())
            os.replace(partial, target)
        except OSError:  # a full disk, say: no half-written picture left behind
            partial.unlink(missing_ok=True)
            raise
        return True

    def waiting(self) -> int:
        try:
            return sum(1 for _ in os.scandir(self.directory))
        except FileNotFoundError:
            return 0

    def check(self) -> None:
        """Raises OSError when the folder cannot be written."""
        self.directory.mkdir(parents=True, exist_ok=True)
        probe = self.directory / f"probe.{os.getpid()}.part"
        probe.write_bytes(b"")
        probe.unlink()

    def features(self, version: FileVersion) -> Features | None:
        """What ``compare_files`` needs of this version of the file, from its picture here."""
        grey = self.get(version)
        return Features(grey, _colour(version[0])) if grey is not None else None

    def get(self, version: FileVersion) -> np.ndarray | None:
        """The picture of this version of the file; None when there is none (or another
        version's, or a file that is not one of ours)."""
        try:
            data = self._file(version[0]).read_bytes()
            size, mtime_ns, h, w = self._HEADER.unpack_from(data)
        except (OSError, struct.error):
            return None
        if (size, mtime_ns) != version[1:] or len(data) != self._HEADER.size + h * w:
            return None
        return np.frombuffer(data, np.uint8, offset=self._HEADER.size).reshape(h, w)

    def drop(self, paths: Iterable[str]) -> None:
        for path in paths:
            self._file(path).unlink(missing_ok=True)

    def prune(self) -> int:
        """Drop the pictures older than ``KEEP_SECONDS``; how many."""
        old, dropped = time.time() - self.KEEP_SECONDS, 0
        try:
            entries = list(os.scandir(self.directory))
        except FileNotFoundError:
            return 0
        for entry in entries:
            try:
                if entry.stat().st_mtime < old:
                    os.unlink(entry.path)
                    dropped += 1
            except FileNotFoundError:  # another matcher dropped it
                pass
        return dropped


_shared_here: dict[Path, SharedPictures] = {}  # a decoder process's folder, with its count


def analyze_and_share(path: str, directory: Path) -> Analysis:
    """``signature.analyze``, leaving the comparison's picture from the same decode in
    ``directory`` for the matchers (``SharedPictures``)."""
    analysis, version, grey = analyze_for_comparison(path, MAX_SIDE)
    try:
        _shared_here.setdefault(directory, SharedPictures(directory)).put(version, grey)
    except OSError:  # a full disk, say: the matcher decodes the file (the hasher said so at start)
        pass
    return analysis


def _colour(path: str):
    """What decodes the file's picture in colour, when the comparison asks (picklable)."""
    return functools.partial(load_colour, path, MAX_SIDE)


def compare_files(a: FileVersion, b: FileVersion, turns: bool, sent: Sent = (None, None)) -> BothWays:
    """``compare.both_ways`` of two files: kept here, or ``sent`` (their pictures, when the
    caller holds them), or decoded now; a file that cannot be read is no match."""
    try:
        return both_ways(_features(a, sent[0]), _features(b, sent[1]), turns)
    except ImageError as exc:
        return Agreement(reason=f"cannot compare the pixels: {exc}"), None


async def look_in_thread(a: FileVersion, b: FileVersion, turns: bool) -> BothWays:
    """The comparison off the event loop (OpenCV and numpy release the GIL)."""
    return await asyncio.to_thread(compare_files, a, b, turns)


async def measure_in_thread(kind: str, copy: FileVersion, source: FileVersion, turn: int) -> object:
    """A provenance measure (``shared.image.lineage``) off the event loop."""
    return await asyncio.to_thread(lineage.measure, kind, copy[0], source[0], turn)
