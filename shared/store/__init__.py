"""The store port: where image records and their signatures live.

Small on purpose (image-match's own database base class has just insert and search): upsert,
get, candidates, delete, iterate, and one atomic ``claim`` that keeps concurrent actuators from
removing both files of a pair. SQLite (``shared.store.sqlite``) implements it;
an Elasticsearch store will implement the same Protocol.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np


@dataclass(frozen=True, slots=True)
class ImageRecord:
    """What the hasher learned about one file. ``error`` is set (and ``signature`` is None) for
    files that could not be read, so an unchanged bad file is not decoded again on every run."""

    path: str
    root: str
    size: int
    mtime_ns: int
    format: str = ""
    width: int = 0
    height: int = 0
    exif_tags: int = 0
    exif_date: str | None = None
    signature: np.ndarray | None = field(default=None, compare=False, repr=False)
    words: tuple[int, ...] = field(default=(), compare=False, repr=False)
    error: str | None = None

    @property
    def pixels(self) -> int:
        return self.width * self.height

    def unchanged(self, size: int, mtime_ns: int) -> bool:
        return self.size == size and self.mtime_ns == mtime_ns


@dataclass(frozen=True, slots=True)
class Candidate:
    record: ImageRecord
    distance: float


class Store(Protocol):
    async def upsert(self, record: ImageRecord) -> None: ...

    async def get(self, path: str) -> ImageRecord | None: ...

    async def get_many(self, paths: Sequence[str]) -> dict[str, ImageRecord]: ...

    async def candidates(self, record: ImageRecord, max_dist: float, limit: int = 100) -> list[Candidate]:
        """Records (other than ``record``) whose signature lies within ``max_dist``, nearest
        first, found through an index (never a scan of all records)."""
        ...

    async def delete(self, path: str) -> None: ...

    def iter_paths(self) -> AsyncIterator[str]: ...

    async def claim(self, keep: str, remove: Sequence[str]) -> list[str]:
        """Atomically mark ``keep`` as kept and each of ``remove`` as removed in its favour.

        Returns the paths that may be removed: those not already kept by another decision and
        not already claimed for another keeper. If ``keep`` itself was already claimed as
        removed, nothing may be removed and the result is empty.
        """
        ...

    async def release_claims(self) -> None: ...

    async def close(self) -> None: ...
