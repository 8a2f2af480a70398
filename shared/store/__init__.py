"""The store ports: where image records live, and the ledger that coordinates actuators.

Two small Protocols, each implemented by SQLite (``shared.store.sqlite``, local mode and one
host) and Elasticsearch (``shared.store.elasticsearch``, services on several hosts):

* ``Store``, the similarity index: records with their Goldberg signature (found through its 63
  words, as image-match does), their copy-detection embedding (found through a vector index)
  and their content digest (exact copies, no decoding needed).
* ``Ledger``, what is known about pairs: short leases on the files of a pair while it is acted
  on (so two actuators can never remove both files of a pair), short claims on the files a
  matcher is planning (so two matchers never plan one group at once), the pairs a person marked
  as "not duplicates", and the pixel comparisons already made (so an unchanged re-run makes none).

Writes are seen at once by the reads by path (``get``, ``get_many``) and by the searches
(``candidates``, ``similar``, ``same_digest``, ``unplanned``, ``iter_paths``) of the same store
object; another process's writes reach the searches after ``refresh()``. A matcher refreshes
once per batch, before it plans: every record it was told about was written before the
message that told it, so every one is found.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from ..image.signature import ANALYSIS_VERSION


class StoreUnavailable(Exception):
    """The store's server does not answer, or not now (overloaded, starting); one line naming its
    URL. An outage, not the fault of the work at hand: the services wait for it to end."""


class StoreRefused(StoreUnavailable):
    """The store's server refuses our credentials: a configuration to fix, not an outage."""


@dataclass(frozen=True, slots=True)
class ImageRecord:
    """What the hasher learned about one file. ``error`` is set (and the descriptors are None)
    for files that could not be read, so an unchanged bad file is not decoded again on every
    run."""

    path: str
    root: str
    size: int
    mtime_ns: int
    format: str = ""
    width: int = 0
    height: int = 0
    exif_tags: int = 0
    exif_date: str | None = None
    signature: np.ndarray | None = field(default=None, compare=False, repr=False)  # int8 (648,)
    error: str | None = None
    digest: str | None = None  # BLAKE2b of the file's bytes, hex: byte-identical copies
    frames: int = 1  # animation frames or pages
    embedding: np.ndarray | None = field(default=None, compare=False, repr=False)  # int8 (D,), L2 ~ 127
    analysis: int = ANALYSIS_VERSION  # the version of the analysis that wrote the descriptors
    # The plan mark, set by the matcher once the record's group was decided (None: not yet, or
    # the file changed since): ``planned`` names the retrieval settings and code it was planned
    # under (``services.matcher.handler.plan_mark``), ``neighbors`` the paths retrieval linked
    # it with then. A record planned under the current mark is not looked up again: its
    # neighbours are read back. A record without it is planned by the next matcher batch or
    # the reconcile, whatever became of the message that announced it.
    planned: str | None = None
    neighbors: tuple[str, ...] = field(default=(), repr=False)

    @property
    def pixels(self) -> int:
        return self.width * self.height

    def unchanged(self, size: int, mtime_ns: int) -> bool:
        return self.size == size and self.mtime_ns == mtime_ns

    @property
    def revision(self) -> tuple[int, int, int]:
        """What makes this record another one under the same path: the file's version and the
        analysis that described it. A plan mark is only ever set on the revision planned."""
        return self.size, self.mtime_ns, self.analysis


@dataclass(frozen=True, slots=True)
class Candidate:
    """A record found by an index; ``distance`` is that index's own measure (Goldberg distance,
    or 1 - cosine for the embedding). The verdict decides from the two records, not from it."""

    record: ImageRecord
    distance: float


def ranked(near: Mapping[int, Mapping[int, float]], asked: Sequence[int], count: int, limit: int,
           found: Mapping[int, ImageRecord]) -> list[list[Candidate]]:
    """For each of ``count`` queries, its near hits (``near``, by the query's place in
    ``asked``: record number -> distance) among the records ``found``, nearest first (then by
    path), at most ``limit``: what ``candidates_many`` and ``similar_many`` return."""
    out: list[list[Candidate]] = [[] for _ in range(count)]
    for place, hits in near.items():
        out[asked[place]] = sorted((Candidate(found[i], d) for i, d in hits.items() if i in found),
                                   key=lambda c: (c.distance, c.record.path))[:limit]
    return out


class Batched:
    """The one-record queries of a store that answers many records per call (the Protocol's
    ``*_many`` methods): each is its batch of one, so both give the same answers."""

    async def candidates(
        self, record: ImageRecord, max_dist: float, limit: int = 100, turns: bool = False
    ) -> list[Candidate]:
        return (await self.candidates_many([record], max_dist, limit, turns))[0]  # type: ignore[attr-defined]

    async def similar(self, record: ImageRecord, min_similarity: float, limit: int = 100) -> list[Candidate]:
        return (await self.similar_many([record], min_similarity, limit))[0]  # type: ignore[attr-defined]

    async def same_digest(self, record: ImageRecord) -> list[ImageRecord]:
        return (await self.same_digest_many([record]))[0]  # type: ignore[attr-defined]


class Store(Protocol):
    async def upsert(self, record: ImageRecord) -> None: ...

    async def upsert_many(self, records: Sequence[ImageRecord]) -> None:
        """Several records in one round trip (bulk)."""
        ...

    async def get(self, path: str) -> ImageRecord | None: ...

    async def get_many(self, paths: Sequence[str]) -> dict[str, ImageRecord]: ...

    async def candidates(
        self, record: ImageRecord, max_dist: float, limit: int = 100, turns: bool = False
    ) -> list[Candidate]:
        """Records (other than ``record.path``) whose signature lies within ``max_dist`` of
        ``record.signature`` or, with ``turns``, of any of its 8 orientations (turned copies,
        ``shared.image.signature.orientations``), nearest first by the nearest orientation,
        found through the word index (never a scan), in one call."""
        ...

    async def similar(self, record: ImageRecord, min_similarity: float, limit: int = 100) -> list[Candidate]:
        """Records (other than ``record.path``) whose embedding has a cosine of at least
        ``min_similarity`` with ``record.embedding``, nearest first, through a vector index."""
        ...

    async def same_digest(self, record: ImageRecord) -> list[ImageRecord]:
        """Other records with ``record.digest``: byte-identical files."""
        ...

    async def candidates_many(
        self, records: Sequence[ImageRecord], max_dist: float, limit: int = 100, turns: bool = False
    ) -> list[list[Candidate]]:
        """``candidates`` of each of ``records``, in their order, in as few round trips and
        index passes as the store can (a whole-library plan asks thousands at once)."""
        ...

    async def similar_many(
        self, records: Sequence[ImageRecord], min_similarity: float, limit: int = 100
    ) -> list[list[Candidate]]:
        """``similar`` of each of ``records``, in their order, batched likewise."""
        ...

    async def same_digest_many(self, records: Sequence[ImageRecord]) -> list[list[ImageRecord]]:
        """``same_digest`` of each of ``records``, in their order, batched likewise."""
        ...

    async def delete(self, path: str) -> None: ...

    def iter_paths(self) -> AsyncIterator[str]:
        """Every stored path, in order, however many there are."""
        ...

    async def refresh(self) -> None:
        """Make every write acknowledged so far, by any process, visible to the searches."""
        ...

    async def set_aside(self) -> None:
        """Give back the search indexes held in this process (a million photos' are 1.1 GB): the
        caller searches no more for a while (local mode's whole-library plan once its lookups
        are done). The next search takes them up again, with every write made meanwhile."""
        ...

    async def mark_planned(self, records: Sequence[ImageRecord], mark: str | None) -> list[str]:
        """Set the plan mark ``mark`` and each record's ``neighbors`` on the stored records, but
        only where the stored one is still the same ``revision`` (a file signed again meanwhile
        stays unplanned: its new version is announced anew). Returns the paths marked. Does not
        change what the searches for twins find. ``None`` takes the mark away: the record is
        planned again (its unit changed: a sidecar or video arrived)."""
        ...

    async def unplanned(self, mark: str, after: str = "", limit: int = 1000) -> list[str]:
        """Paths (after ``after``, in path order, at most ``limit``) of the records with a
        signature whose plan mark is not ``mark``: never planned, a file changed since, or
        planned under other settings."""
        ...

    async def close(self) -> None: ...


class Ledger(Protocol):
    async def acquire(self, keep: str, remove: str, owner: str) -> bool:
        """Lease the pair for one action: ``remove`` will be removed in favour of ``keep``.

        Atomic per file: refused (False) while ``remove`` is leased in any role, or ``keep`` is
        leased for removal, by an unexpired lease of another owner. ``keep`` may be leased as
        kept by several actions at once. A refused pair is tried again later by the caller.
        """
        ...

    async def release(self, keep: str, remove: str, owner: str) -> None:
        """End the lease taken by ``acquire`` (after the action, done or not)."""
        ...

    async def claim(self, paths: Sequence[str], owner: str, seconds: float) -> set[str]:
        """Claim each of ``paths`` for planning, for ``seconds`` (taken again by the same owner:
        extended). Returns the paths refused: claimed by another owner whose claim has not
        expired. Independent of the pair leases."""
        ...

    async def unclaim(self, paths: Sequence[str], owner: str) -> None:
        """End ``owner``'s claims on ``paths`` (those it holds; others are left alone)."""
        ...

    async def mark_distinct(self, a: str, b: str) -> None:
        """A person said these two (content digests) show different photos."""
        ...

    async def unmark_distinct(self, a: str, b: str) -> None:
        """Forget that a person said these two show different photos (they changed their mind)."""
        ...

    async def marked_distinct(self) -> list[tuple[str, str]]:
        """Every pair marked distinct, each as (smaller digest, larger), in order."""
        ...

    async def remember(self, found: Mapping[str, dict]) -> None:
        """Keep comparison results (JSON objects) under their keys (``shared.store.comparisons``)."""
        ...

    async def recall(self, keys: Sequence[str]) -> dict[str, dict]:
        """The results kept under those of ``keys`` that ``remember`` has seen."""
        ...

    async def close(self) -> None: ...
