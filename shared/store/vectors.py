"""In-memory indexes over many records at once: Goldberg words and copy-detection embeddings.

Local mode keeps both next to the SQLite store (``LocalIndex``: persisted, caught up with the
store's change log, never rebuilt after a write). Both answer many queries per call, vectorised:

* ``WordIndex``: the 63 words of every signature as sorted ``(position, word)`` keys with their
  record ids (8 bytes per word, 504 per record), like image-match's word index but in numpy.
  A query looks up all its words (all 8 orientations) with one ``searchsorted``, keeps each
  orientation's rarest shared words, and counts the words each record shares with it; the
  best-sharing records are its candidates and the full signatures then decide (the store does
  that). Additions go to a small sorted delta merged into the main arrays when it reaches an
  eighth of them; removed ids are masked until that merge.
* ``EmbeddingIndex``: the int8 embeddings in one matrix (512 bytes per record), searched
  exactly by blocks of int8 matrix products: an approximate graph index missed real copies
  (docs/benchmarks.md, "Which embedding index").
"""

from __future__ import annotations

import json
import logging
import os
import threading
import zlib
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from ..image.signature import WORD_COUNT, distances as signature_distances, word_array

log = logging.getLogger("image_dedup.store")

_WORD_SPACE = 3**16  # a word is 16 base-3 digits
# Only the rarest words of a query are looked up. A word shared by a large part of the library
# (a flat patch of sky, the grid's edges) is little evidence of a match, and its postings are
# what made a query cost grow with the library. A near-duplicate within max_dist shares a good
# part of all 63 words (each is 16 values, coarsened to -1/0/1), so it shares some of the
# rarest ones that anybody else has too; the full signatures then decide.
QUERY_WORDS = 24
# A turned or mirrored query row looks up only its 8 rarest words: a turned copy holds the
# row's words as they are, and they are as rare as any picture's (held by it and its copies),
# while the rest of such a row's words exist only as patterns common to smooth pictures, which
# brought hundreds of records per row sharing two or three of them.
TURNED_QUERY_WORDS = 8
# A word held by more than this share of the records (and more than STOP_MIN of them) says
# nearly nothing and would cost a scan of its postings per query: it is not looked up. The
# 24th rarest word of a record is held by 3 records (median; 10 at the 99th percentile) of
# 100,000 synthetic ones, while a turned query's words mostly exist only as common ones
# (skies, the grid's edges): without the cut, each turned row brought hundreds of records
# sharing one such word.
STOP_SHARE = 1 / 20_000
STOP_MIN = 16


#: Signatures made keys at a time: a signature's words are 63 x 16 digits, coded as int64 (8 KB
#: a signature while they are): the million signatures of an Elasticsearch mirror's build at
#: once took 8 GB more, SQLite's chunks of 20,000 180 MB; 4,096 take 37 MB.
KEYS_BLOCK = 4096


def _keys(signatures: np.ndarray) -> np.ndarray:
    """(k, 63) uint32 keys: position * 3**16 + word (at most 2.7e9)."""
    out = np.empty((len(signatures), WORD_COUNT), np.uint32)
    positions = np.arange(WORD_COUNT, dtype=np.int64) * _WORD_SPACE
    for start in range(0, len(signatures), KEYS_BLOCK):
        out[start : start + KEYS_BLOCK] = word_array(signatures[start : start + KEYS_BLOCK]) + positions
    return out


def _expand(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """starts[k] + 0 .. lengths[k]-1 for every k, concatenated."""
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    offsets = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return np.repeat(starts.astype(np.int64), lengths) + offsets


class WordIndex:
    """Record ids by Goldberg word, for queries of many signatures at once."""

    MERGE_SHARE = 8  # the delta is merged into the main arrays at 1/8 of their size

    def __init__(self, keys: np.ndarray | None = None, ids: np.ndarray | None = None):
        self.keys = np.zeros(0, np.uint32) if keys is None else keys  # sorted
        self.ids = np.zeros(0, np.uint32) if ids is None else ids
        self._delta: list[tuple[np.ndarray, np.ndarray]] = []
        self._delta_sorted = (np.zeros(0, np.uint32), np.zeros(0, np.uint32))
        self._dead: set[int] = set()
        self._dead_mask = np.zeros(0, bool)
        self._present = np.zeros(0, bool)  # by id: has words in the arrays (dead or not)
        self._mark(self.ids)

    def _mark(self, ids: np.ndarray) -> None:
        if len(ids):
            top = int(ids.max()) + 1
            if top > len(self._present):
                self._present = np.concatenate([self._present, np.zeros(max(top - len(self._present), top // 4), bool)])
            self._present[ids] = True

    def __len__(self) -> int:
        return (len(self.keys) + sum(len(k) for k, _ in self._delta)) // WORD_COUNT - len(self._dead)

    def add(self, ids: np.ndarray, signatures: np.ndarray) -> None:
        if len(ids) == 0:
            return
        ids = np.asarray(ids, np.uint32)
        if self._dead and not self._dead.isdisjoint(ids.tolist()):
            self._merge()  # its old words go first (a record changed in place)
        keys = _keys(signatures)
        self._mark(ids)
        self._delta.append((keys.ravel(), np.repeat(ids, WORD_COUNT)))
        self._delta_sorted = None  # type: ignore[assignment]
        if sum(len(k) for k, _ in self._delta) * self.MERGE_SHARE >= len(self.keys):
            self._merge()

    def remove(self, ids: Iterable[int]) -> None:
        """Masked now, dropped at the next merge."""
        ids = np.fromiter((int(i) for i in ids), np.int64)
        ids = ids[ids < len(self._present)]
        self._dead.update(ids[self._present[ids]].tolist())
        if not self._dead:
            return
        self._dead_mask = np.zeros(0, bool)
        if len(self._dead) * WORD_COUNT * self.MERGE_SHARE >= max(len(self.keys), 1):
            self._merge()

    def _merge(self) -> None:
        """The sorted delta merged into the sorted arrays, each key's delta entries after its
        stored ones (the order a stable sort of both gives), without sorting the whole again:
        the merge holds the old arrays and the new ones, not four copies of them."""
        keys, ids = self.keys, self.ids
        delta_keys, delta_ids = self._parts()[1] if self._delta else (keys[:0], ids[:0])
        if self._dead:
            alive, alive_delta = self._alive(ids), self._alive(delta_ids)
            keys, ids, delta_keys, delta_ids = keys[alive], ids[alive], delta_keys[alive_delta], delta_ids[alive_delta]
        at = np.searchsorted(keys, delta_keys, side="right") + np.arange(len(delta_keys))
        stored = np.ones(len(keys) + len(delta_keys), bool)
        stored[at] = False
        self.keys, self.ids = np.empty(len(stored), np.uint32), np.empty(len(stored), np.uint32)
        self.keys[at], self.ids[at] = delta_keys, delta_ids
        self.keys[stored], self.ids[stored] = keys, ids
        self._delta, self._dead = [], set()
        self._present = np.zeros(0, bool)
        self._mark(self.ids)
        self._delta_sorted = (np.zeros(0, np.uint32), np.zeros(0, np.uint32))
        self._dead_mask = np.zeros(0, bool)

    @classmethod
    def of(cls, chunks: Iterable[tuple[np.ndarray, np.ndarray]], records: int = 0) -> WordIndex:
        """The index of every record of ``chunks`` ((ids, signatures), ids rising across them),
        sorted once: each word as one integer (key, id) in one array (room for ``records``
        made at once), sorted in place, the two halves then split off a block at a time.
        Adding chunk after chunk would merge again and again, each merge a copy of it all."""
        both, used = np.empty(records * WORD_COUNT, np.uint64), 0
        for ids, signatures in chunks:
            words = (_keys(signatures).astype(np.uint64) << np.uint64(32) | np.asarray(ids, np.uint64)[:, None]).ravel()
            if used + len(words) > len(both):
                both = np.concatenate([both[:used], np.empty(max(len(words), used // 2), np.uint64)])
            both[used : used + len(words)] = words
            used += len(words)
        if used < len(both):
            both.resize(used, refcheck=False)  # shrunk where it lies (realloc): no copy
        both.sort()  # by key, then id: what a stable sort of the keys gives ids added in rising order
        keys = np.empty(used, np.uint32)
        for start in range(0, used, 1 << 22):
            keys[start : start + (1 << 22)] = both[start : start + (1 << 22)] >> np.uint64(32)
        # the ids to the front of the same memory, a block at a time (a block's ids land where
        # integers already read lay), which is then given back: the arrays never take more than
        # 12 bytes a word at once (16 with both halves split off into new arrays)
        halves = both.view(np.uint32)
        for start in range(0, used, 1 << 22):
            block = (both[start : start + (1 << 22)] & np.uint64(0xFFFFFFFF)).astype(np.uint32)
            halves[start : start + len(block)] = block
        del halves
        both.resize((used + 1) // 2, refcheck=False)
        return cls(keys, both.view(np.uint32)[:used])

    def saved(self) -> dict[str, np.ndarray]:
        """The arrays ``restored`` takes back: the sorted ones, the sorted delta and the ids
        masked, as they are. Saving merges nothing: a merge holds the old arrays and the new
        ones (half a GB more at a million records)."""
        delta_keys, delta_ids = self._parts()[1] if self._delta else (self.keys[:0], self.ids[:0])
        return {"keys": self.keys, "ids": self.ids, "delta.keys": delta_keys, "delta.ids": delta_ids,
                "dead": np.fromiter(sorted(self._dead), np.uint32, len(self._dead))}

    @classmethod
    def restored(cls, arrays: dict[str, np.ndarray]) -> WordIndex:
        index = cls(arrays["keys"], arrays["ids"])
        if len(arrays["delta.keys"]):
            index._delta = [(arrays["delta.keys"], arrays["delta.ids"])]
            index._delta_sorted = (arrays["delta.keys"], arrays["delta.ids"])
            index._mark(arrays["delta.ids"])
        index._dead = set(arrays["dead"].tolist())
        return index

    def _parts(self) -> list[tuple[np.ndarray, np.ndarray]]:
        if self._delta_sorted is None:
            keys = np.concatenate([k for k, _ in self._delta])
            ids = np.concatenate([i for _, i in self._delta])
            order = np.argsort(keys, kind="stable")
            self._delta_sorted = (keys[order], ids[order])
        return [(self.keys, self.ids), self._delta_sorted]

    def _alive(self, ids: np.ndarray) -> np.ndarray:
        if not self._dead:
            return np.ones(len(ids), bool)
        if len(self._dead_mask) == 0:
            top = max(self._dead) + 1
            self._dead_mask = np.zeros(top, bool)
            self._dead_mask[np.fromiter(self._dead, np.int64, len(self._dead))] = True
        out = np.ones(len(ids), bool)
        inside = ids < len(self._dead_mask)
        out[inside] = ~self._dead_mask[ids[inside]]
        return out

    def query(self, signatures: np.ndarray, owners: np.ndarray, own: np.ndarray, own_signatures: np.ndarray,
              limit: int) -> tuple[np.ndarray, np.ndarray]:
        """Candidates for query rows ``signatures`` (q, 648) of owners ``owners`` (q,): pairs
        (owner, id), each id among the ``limit`` records sharing most of the row's rarest
        words (ties by id), for some row of that owner. ``own`` is the id each owner is stored
        under (-1: not stored) and ``own_signatures`` its stored signature: it is never its
        own candidate, and a word only it holds is not counted as shared."""
        q = len(signatures)
        if q == 0 or len(self.keys) + sum(len(k) for k, _ in self._delta) == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        keys = _keys(signatures)
        # each word looked up once: half of a batch's are held by other rows of it too (the
        # common patterns of smooth pictures), and a lookup is two binary searches of an array
        # of 63 keys a record
        needles, back = np.unique(keys.ravel(), return_inverse=True)
        parts = self._parts()
        ranges = [(np.searchsorted(k, needles, "left")[back], np.searchsorted(k, needles, "right")[back]) for k, _ in parts]
        counts = sum(hi - lo for lo, hi in ranges).reshape(q, WORD_COUNT)
        own_keys = _keys(own_signatures)[owners]
        own = own[owners]
        own_keys[own < 0] = np.iinfo(np.uint32).max
        mine = keys == own_keys  # a key holds its word's position: it can only be the same word there
        effective = counts - mine
        stop = max(STOP_MIN, int(STOP_SHARE * len(self)))
        usable = (effective > 0) & (counts <= stop)
        rank = np.where(usable, counts, np.iinfo(np.int64).max)
        chosen = np.argsort(rank, axis=1, kind="stable")[:, :QUERY_WORDS]
        turned = np.r_[False, owners[1:] == owners[:-1]]  # every row of an owner after its first
        chosen_usable = usable[np.arange(q)[:, None], chosen]
        chosen_usable[turned, TURNED_QUERY_WORDS:] = False
        rows = np.repeat(np.arange(q), chosen.shape[1])
        cols = chosen.ravel()
        keep = chosen_usable.ravel()
        rows, flat_at = rows[keep], rows[keep] * WORD_COUNT + cols[keep]
        hit_rows, hit_ids = [], []
        for (lo, hi), (_, ids) in zip(ranges, parts):
            starts, lengths = lo[flat_at], hi[flat_at] - lo[flat_at]
            hit_rows.append(np.repeat(rows, lengths))
            hit_ids.append(ids[_expand(starts, lengths)].astype(np.int64))
        r, i = np.concatenate(hit_rows), np.concatenate(hit_ids)
        ok = self._alive(i) & (i != own[r])
        r, i = r[ok], i[ok]
        if len(r) == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        codes, shared = np.unique(r.astype(np.int64) << 32 | i, return_counts=True)
        r, i = codes >> 32, codes & 0xFFFFFFFF
        # per row the ``limit`` best-sharing ids: sort by row, most shared first, then id (one
        # integer each, sorted: a tenth of ``lexsort``'s time over the three arrays); in a row
        # with more hits than that, one shared word is chance, not a lead
        # (rows of a query below 2**25, ids below 2**32, shared at most 63)
        ranked = np.sort(r << 38 | (WORD_COUNT - shared) << 32 | i)
        r, shared, i = ranked >> 38, WORD_COUNT - (ranked >> 32 & 63), ranked & 0xFFFFFFFF
        first = np.r_[0, np.flatnonzero(r[1:] != r[:-1]) + 1]
        sizes = np.diff(np.r_[first, len(r)])
        place = np.arange(len(r)) - np.repeat(first, sizes)
        keep = (place < limit) & ((shared > 1) | (np.repeat(sizes, sizes) <= limit) & ~turned[r])
        r, i = r[keep], i[keep]
        pairs = np.unique(owners[r].astype(np.int64) << 32 | i)
        return pairs >> 32, pairs & 0xFFFFFFFF


class EmbeddingIndex:
    """Every int8 embedding in one matrix, searched exactly: each query against all of them
    in blocks of int8 matrix products (``shared.store.int8_products``), the exact cosine of
    what lies above the threshold deciding.

    Why not an approximate index: SSCD's embeddings are spread out like random vectors
    (unrelated photos sit at a cosine of 0.007 +- 0.051), so a graph search (HNSW: usearch,
    faiss, hnswlib) has no slope to follow and found only 94 % of the kit's real copies among
    100,000 (docs/benchmarks.md), while the verdict takes pairs from a cosine of 0.35. The scan
    finds every pair above any threshold at 512 multiply-adds a pair, which ONNX Runtime's int8
    kernels do at 1.3-2.5e11 a CPU-second with AVX-512 VNNI (the machines measured here; three
    times float32 BLAS) and 4-6e11 with AMX (docs/benchmarks.md). That makes a whole library
    quadratic: a million records are 5e11 pairs, 1,000-2,000 CPU-s of scan without AMX.

    A whole library asks every stored record in turn, so each pair is met twice. Within a
    *pass* (no write in between, one threshold), a stored record asked is compared only with
    the records not asked yet; what it met among those is noted for them, so a record asked
    later gets the pairs with those asked before it from the notes: the same answers, half the
    products.

    The matrix holds each int8 value plus 128, as uint8 (``_offset``): the form the product's
    kernels take their left side in. Converted for every product, the stored rows were read and
    written once more per query batch: half a single query's time (0.56 of 1.16 ms per 16,384
    rows, 512 MB more memory traffic per query at a million records).

    A lock keeps a scan (run off the store's thread) and a catch-up with the store's writes
    apart.
    """

    QUERY_BLOCK = 2048  # query rows per product
    # Stored rows per product at most (32 MB of them, copied when not consecutive): the few
    # queries of one product (up to PRODUCT_CELLS / STORED_BLOCK, 32) pay each product's call
    # once per block, so a single query over a million rows took 53 ms (p50) in blocks of
    # 16,384 and 44 ms in blocks of 65,536; a batch's products are cut smaller by PRODUCT_CELLS.
    STORED_BLOCK = 65536
    # A product's int32 result is kept near this many cells (8 MB), fewer stored rows per
    # product the more queries: its maxima are then taken from the cache the product just
    # wrote it to. A result of 2,048 queries by 16,384 rows (128 MB) was read back from memory:
    # the scan took 2.5 times the CPU (0.95 against 0.38 CPU-s for 2,000 queries over 100,000),
    # and copying the rows that meet something (in a whole library, each meets itself) took
    # another 160 MB at once.
    PRODUCT_CELLS = 1 << 21

    def __init__(self, dims: int, ids: np.ndarray | None = None, vectors: np.ndarray | None = None,
                 offset: np.ndarray | None = None):
        """``vectors``: the int8 embeddings of ``ids``; or ``offset``, the same as uint8 plus 128
        (taken as it is, with any rows of room after them: ``LocalIndex.load``)."""
        self.dims = dims
        self.ids = np.zeros(0, np.int64) if ids is None else np.asarray(ids, np.int64)
        if offset is None:
            offset = _offset(np.zeros((0, dims), np.int8) if vectors is None else np.asarray(vectors, np.int8))
        self.vectors = offset  # uint8: each int8 value plus 128 (the class's docstring)
        self._size = len(self.ids)
        self._dead = 0
        self._slots = _slots_by_id(self.ids)
        self._norms = _norms(self.vectors[: self._size])
        self._sums = _sums(self.vectors[: self._size])
        if len(self.vectors) > self._size:  # rows of room made by the caller (``LocalIndex.load``)
            self.ids = np.r_[self.ids, np.full(len(self.vectors) - self._size, -1, np.int64)]
            self._norms = np.r_[self._norms, np.zeros(len(self.vectors) - self._size)]
            self._sums = np.r_[self._sums, np.zeros(len(self.vectors) - self._size, np.int32)]
        self._lock = threading.RLock()
        self._searchable: np.ndarray | None = None
        self._end_pass()

    def __len__(self) -> int:
        return self._size - self._dead

    def _end_pass(self) -> None:
        self._pass_floor: float | None = None
        self._asked = np.zeros(0, bool)  # by slot: asked in this pass
        self._met: dict[int, list[tuple[int, float]]] = {}  # slot -> (id, cosine) of records asked before it

    def add(self, ids: np.ndarray, embeddings: np.ndarray) -> None:
        if len(ids) == 0:
            return
        with self._lock:
            self._add(ids, embeddings)

    def _written(self) -> None:
        """After a write: a new pass, and the searchable slots found again at the next query."""
        self._end_pass()
        self._searchable = None

    def _add(self, ids: np.ndarray, embeddings: np.ndarray) -> None:
        self._remove(ids)  # a record changed in place: its old vector goes
        self._written()
        need = self._size + len(ids)
        if need > len(self.ids):  # grown by half at a time: appends cost little on average
            self.reserve(max(need, len(self.ids) * 3 // 2, 1024))
        block = np.ascontiguousarray(embeddings, np.int8)
        self.ids[self._size : need] = ids
        self.vectors[self._size : need] = _offset(block)
        self._norms[self._size : need] = _norms(block)
        self._sums[self._size : need] = _sums(self.vectors[self._size : need])
        top = int(np.max(ids)) + 1
        if top > len(self._slots):
            self._slots = np.concatenate([self._slots, np.full(max(top, len(self._slots) * 3 // 2) - len(self._slots), -1,
                                                                np.int32)])
        self._slots[np.asarray(ids, np.int64)] = np.arange(self._size, need, dtype=np.int32)
        self._size = need

    def reserve(self, room: int) -> None:
        """Room for ``room`` embeddings in all (a rebuild knows how many come: no growing)."""
        if room > len(self.ids):
            self.ids = np.concatenate([self.ids[: self._size], np.full(room - self._size, -1, np.int64)])
            grown = np.zeros((room, self.dims), np.uint8)
            grown[: self._size] = self.vectors[: self._size]
            self.vectors = grown
            self._norms = np.concatenate([self._norms[: self._size], np.zeros(room - self._size)])
            self._sums = np.concatenate([self._sums[: self._size], np.zeros(room - self._size, np.int32)])

    def remove(self, ids: Iterable[int]) -> None:
        """Marked dead (id -1); the matrix is compacted when an eighth of it is."""
        with self._lock:
            self._remove(ids)

    def _remove(self, ids: Iterable[int]) -> None:
        for i in ids:
            slot = int(self._slots[i]) if 0 <= i < len(self._slots) else -1
            if slot >= 0:
                self._slots[i] = -1
                self.ids[slot] = -1
                self._dead += 1
                self._written()
        if self._dead and self._dead * 8 >= self._size:
            alive = self.ids[: self._size] >= 0
            self.ids, self.vectors = self.ids[: self._size][alive], self.vectors[: self._size][alive]
            self._norms = self._norms[: self._size][alive]
            self._sums = self._sums[: self._size][alive]
            self._size, self._dead = len(self.ids), 0
            self._slots = _slots_by_id(self.ids)

    def get(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The embedding held under each id (zeros where none) and whether one is."""
        with self._lock:
            ids = np.asarray(ids, np.int64)
            slots = np.full(len(ids), -1, np.int64)
            known = (ids >= 0) & (ids < len(self._slots))
            slots[known] = self._slots[ids[known]]
            held = slots >= 0
            out = np.zeros((len(ids), self.dims), np.int8)
            out[held] = _int8(self.vectors[slots[held]])
            return out, held

    def stored(self) -> tuple[np.ndarray, Iterator[np.ndarray]]:
        """(ids, their int8 vectors a block at a time) of every live embedding, for saving:
        the blocks made as they are written, not a copy of a million vectors."""
        with self._lock:
            ids, rows = self.ids[: self._size], self.vectors[: self._size]
            if self._dead:
                alive = ids >= 0
                ids, rows = ids[alive], rows[alive]
        return ids, (_int8(rows[start : start + 8192]) for start in range(0, len(rows), 8192))

    def query(self, embeddings: np.ndarray, min_similarity: float, limit: int,
              own: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """For each query row its stored embeddings at a cosine of at least ``min_similarity``,
        at most the ``limit`` nearest: (rows, ids, cosines), by row, nearest first. ``own``: the
        id each row is stored under (-1: none); a row stored as it is asked takes part in the
        pass (see the class)."""
        with self._lock:
            return self._query(np.asarray(embeddings, np.int8), min_similarity, limit, own)

    def _query(self, queries: np.ndarray, min_similarity: float, limit: int,
               own: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        slots = np.full(len(queries), -1, np.int64)
        if own is not None:
            known = (own >= 0) & (own < len(self._slots))
            slots[known] = self._slots[own[known]]
        stored = slots >= 0
        stored[stored] = (self.vectors[slots[stored]] == _offset(queries[stored])).all(axis=1)
        if self._pass_floor != min_similarity or self._asked[slots[stored]].any():
            self._end_pass()  # a new pass: another threshold, or a record asked again
            self._pass_floor, self._asked = min_similarity, np.zeros(self._size, bool)
        searchable = self._searchable_slots()
        found = [self._scan(queries, np.flatnonzero(~stored), searchable, min_similarity)]
        if stored.any():
            found.append(self._scan(queries, np.flatnonzero(stored), searchable[~self._asked[searchable]], min_similarity))
        rows, hit, cosines = (np.concatenate(parts) for parts in zip(*found))
        ids = self.ids[hit]
        if stored.any():  # note what the stored rows met for the records not asked yet
            self._asked[slots[stored]] = True
            later = stored[rows] & ~self._asked[hit]
            for r, s, c in zip(rows[later].tolist(), hit[later].tolist(), cosines[later].tolist()):
                self._met.setdefault(s, []).append((int(own[r]), c))  # type: ignore[index]
            notes = [(r, i, c) for r in np.flatnonzero(stored).tolist() for i, c in self._met.pop(int(slots[r]), [])]
            if notes:
                rows = np.r_[rows, np.array([r for r, _, _ in notes], np.int64)]
                ids = np.r_[ids, np.array([i for _, i, _ in notes], np.int64)]
                cosines = np.r_[cosines, np.array([c for _, _, c in notes])]
        order = np.lexsort((ids, -cosines, rows))
        rows, ids, cosines = rows[order], ids[order], cosines[order]
        first = np.r_[0, np.flatnonzero(rows[1:] != rows[:-1]) + 1] if len(rows) else np.zeros(0, np.int64)
        place = np.arange(len(rows)) - np.repeat(first, np.diff(np.r_[first, len(rows)]))
        keep = place < limit
        return rows[keep], ids[keep], cosines[keep]

    def _searchable_slots(self) -> np.ndarray:
        """The slots of the live embeddings that are not all zero (those are near nothing),
        kept until the next write: walking a million rows' ids and norms for every query was a
        third of a single query's time."""
        if self._searchable is None:
            live = np.flatnonzero(self.ids[: self._size] >= 0)
            self._searchable = live[self._norms[live] > 0]
        return self._searchable

    def _packs_once(self, queries: int, times: int) -> bool:
        """Whether a batch of ``queries`` multiplied ``times`` gets a session of its own
        (``products_with``): one costs about five products of a full batch and saves 15 % of
        each, so it pays from ~35 of them; 64 leaves room for the machine's noise. A narrow
        batch saves less a product (its side is smaller beside the stored rows'): from half a
        block of queries only."""
        return queries * 2 >= self.QUERY_BLOCK and times >= 64

    def _scan(self, queries: np.ndarray, rows: np.ndarray, targets: np.ndarray,
              min_similarity: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every pair of query ``rows`` and stored ``targets`` (searchable slots, rising) at
        ``min_similarity`` or more: (rows, slots, cosines). The int8 products are the exact dot
        products; a block's shortest stored vector gives each query one bar that no pair above
        the threshold is under (the norms of int8 unit vectors differ by a few percent), so a
        pass over the block's maxima finds the few rows to look at, and their exact cosines
        decide.

        The stored blocks are shared out to one worker per core, each multiplying its block by
        every batch of queries and taking the maxima of each product itself, on one thread
        (``int8_products``' sessions run on their caller's): a plan's batch of queries over
        400,000 rows took 25-35 % less wall time, over a million 15-25 % in most rounds, than
        each product and its maxima split over both cores, which met twice a product and
        read half the result on the other core (``bench/scan.py``, docs/benchmarks.md)."""
        from .int8_products import products, products_with

        asked = queries[rows]
        qnorms = _norms(asked)
        ask = np.flatnonzero(qnorms > 0)  # an all-zero embedding is near nothing
        most = min(len(ask), self.QUERY_BLOCK)
        step = min(self.STORED_BLOCK, 1 << max(8, (self.PRODUCT_CELLS // max(most, 1)).bit_length() - 1))
        starts = range(0, len(targets) if len(ask) else 0, step)
        # the stored rows are the product's left side, as they lie in memory, and the queries
        # its right, transposed once: a transposed copy of each stored block, made for every
        # batch of queries, cost half again (0.37 against 0.24 CPU-s for 2,000 queries over
        # 100,000)
        batches = [ask[q0 : q0 + self.QUERY_BLOCK] for q0 in range(0, len(ask), self.QUERY_BLOCK)]
        # A single query (a search of the services' matcher) is multiplied by reading the stored
        # rows as they lie (``_single``): ONNX Runtime's kernels first pack a stored block,
        # whatever the queries (5.8 CPU-ms a 65,536 rows for one query or sixteen, without AMX),
        # simsimd only reads it (2.0): one search over a million took 32 ms, not 72 (two
        # queries: 77 against 80, not worth a second way)
        if len(ask) == 1:
            multiply = [_single(_offset(asked[ask]), self.dims)]
        else:
            multiply = []
            for batch in batches:
                batch_t = np.ascontiguousarray(asked[batch].T)
                packed = self._packs_once(len(batch), len(starts))
                multiply.append(partial(_packed, products_with(batch_t) if packed else partial(products, right=batch_t)))
        rooms = threading.local()  # each worker's result array, reused block after block

        def scan_block(start: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
            room = getattr(rooms, "array", None)
            if room is None:
                room = rooms.array = np.empty(most * min(len(targets), step), np.int32)
            block = targets[start : start + step]
            consecutive = block[-1] - block[0] == len(block) - 1
            span = slice(block[0], block[-1] + 1)
            vectors = self.vectors[span] if consecutive else self.vectors[block]
            shortest = (self._norms[span] if consecutive else self._norms[block]).min()
            sums = self._sums[span] if consecutive else self._sums[block]
            near = []
            for batch, product in zip(batches, multiply):
                dots = product(vectors, sums, room)  # (stored, queries)
                bar = min_similarity * qnorms[batch] * shortest
                some = np.flatnonzero(dots.max(axis=0) >= bar)  # few queries meet anything
                c, r = np.nonzero(dots[:, some] >= bar[some])
                near.append((batch[some[r]], block[c], dots[c, some[r]]))
            return near

        workers = min(len(starts), len(os.sched_getaffinity(0)))
        if workers > 1:
            with ThreadPoolExecutor(workers, thread_name_prefix="scan") as pool:
                found = [part for parts in pool.map(scan_block, starts) for part in parts]
        else:
            found = [part for start in starts for part in scan_block(start)]
        if not found:
            return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
        at, hit, dots = (np.concatenate(parts) for parts in zip(*found))
        cosines = dots / (qnorms[at] * self._norms[hit])
        near = cosines >= min_similarity
        return rows[at[near]], hit[near], cosines[near]


def _packed(product: Callable[..., np.ndarray], vectors: np.ndarray, sums: np.ndarray, room: np.ndarray) -> np.ndarray:
    """A block of stored rows times a batch of queries by ``int8_products`` (into ``room``)."""
    return product(vectors, room=room)


def _single(query: np.ndarray, dims: int) -> Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]:
    """A block of stored rows times one query (1 x dims, uint8: int8 plus 128) by simsimd, which
    reads the rows as they lie: the uint8 dot products, less 128 times the sums of both rows,
    plus 128 x 128 a dimension, are the int8 values' (exact: float64 holds them whole)."""
    from simsimd import cdist

    shift = 128 * 128 * dims - 128 * int(_sums(query)[0])

    def product(vectors: np.ndarray, sums: np.ndarray, room: np.ndarray) -> np.ndarray:
        raw = np.asarray(cdist(query, vectors, metric="dot", dtype="uint8")).reshape(-1, 1)
        return raw - 128 * sums[:, None] + shift
    return product


#: Searches (records, each in its orientations) per word-index query: a query's hits and their
#: full signatures grow with the searches and with the library (a rare word's postings: up to
#: STOP_SHARE of it), ~450 MB for a matcher's batch of 2000 at a million records; 500 keep it
#: near 110 MB there, while the per-query overhead stays small beside the hits.
SEARCHES_PER_QUERY = 500


def near_signatures(words: WordIndex, searches: list[np.ndarray], own: np.ndarray, own_signatures: np.ndarray,
                    signatures_of: Callable[[np.ndarray], np.ndarray], max_dist: float,
                    limit: int) -> dict[int, dict[int, float]]:
    """The records within ``max_dist`` of each search (its signature's orientations, (k, 648)):
    search place -> {id: distance}. The rows of ``SEARCHES_PER_QUERY`` searches are looked up in
    one query of the word index (the same answers as one query of them all, its memory bounded);
    the full signatures of the best-sharing records (``signatures_of`` ids, one row each)
    decide. ``own``/``own_signatures``: as ``WordIndex.query``, one per search."""
    near: dict[int, dict[int, float]] = {}
    for first in range(0, len(searches), SEARCHES_PER_QUERY):
        part = searches[first : first + SEARCHES_PER_QUERY]
        owners = np.repeat(np.arange(len(part)), [len(q) for q in part])
        mine = slice(first, first + len(part))
        who, ids = words.query(np.concatenate(part), owners, own[mine], own_signatures[mine], limit + 1)
        hits = signatures_of(ids)
        for owner, start, stop in _runs(who):
            dists = signature_distances(part[owner], hits[start:stop]).min(axis=0)
            near[first + owner] = {int(i): float(d) for i, d in zip(ids[start:stop], dists) if d <= max_dist}
    return near


def near_embeddings(index: EmbeddingIndex, queries: np.ndarray, own: np.ndarray, min_similarity: float,
                    limit: int) -> dict[int, dict[int, float]]:
    """The stored embeddings at ``min_similarity`` or more from each query row: row ->
    {id: 1 - cosine}, the row's own record (``own``, -1: none) left out."""
    rows, ids, cosines = index.query(queries, min_similarity, limit + 1, own)
    near: dict[int, dict[int, float]] = {}
    for row, i, c in zip(rows.tolist(), ids.tolist(), cosines.tolist()):
        if i != own[row]:
            near.setdefault(row, {})[i] = 1.0 - c
    return near


def _runs(keys: np.ndarray) -> Iterator[tuple[int, int, int]]:
    """(key, start, stop) of each run of equal values in ``keys`` (sorted)."""
    if len(keys) == 0:
        return
    starts = np.r_[0, np.flatnonzero(keys[1:] != keys[:-1]) + 1]
    stops = np.r_[starts[1:], len(keys)]
    for start, stop in zip(starts.tolist(), stops.tolist()):
        yield int(keys[start]), start, stop


def _slots_by_id(ids: np.ndarray) -> np.ndarray:
    """The slot of each id (-1: none), by id: the store's row ids are dense, and an array of
    them costs 4 bytes an id where a dict cost ~100 (100 MB at a million records)."""
    live = ids[ids >= 0]
    slots = np.full(int(live.max()) + 1 if len(live) else 0, -1, np.int32)
    slots[live] = np.flatnonzero(ids >= 0).astype(np.int32)
    return slots


def _offset(vectors: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """int8 values as uint8 plus 128 (bit for bit: the sign bit flipped), into ``out`` if given
    (it may be ``vectors``' own memory); and back: ``_int8``."""
    return np.bitwise_xor(vectors.view(np.uint8), np.uint8(0x80), out=out)


def _int8(offset: np.ndarray) -> np.ndarray:
    return (offset ^ np.uint8(0x80)).view(np.int8)


def _sums(offset: np.ndarray) -> np.ndarray:
    """The sum of each row of uint8 values (int8 plus 128; at most 255 x 512, an int32): what
    turns their dot products with another such row into the int8 values' (``_single``)."""
    return offset.sum(axis=1, dtype=np.int32)


def _norms(vectors: np.ndarray) -> np.ndarray:
    """The length of each row (int8, or uint8 plus 128), a block at a time: the rows as float64
    are 8 times their bytes (4 GB for a million embeddings at once)."""
    out = np.empty(len(vectors))
    for start in range(0, len(vectors), 8192):
        wide = vectors[start : start + 8192].astype(np.float64)
        if vectors.dtype == np.uint8:
            wide -= 128
        out[start : start + len(wide)] = np.sqrt(np.einsum("ij,ij->i", wide, wide))
    return out


# --------------------------------------------------------------------------------------------
# persisted next to the SQLite store

FORMAT = 3  # changes when the files' layout does: an older file is rebuilt
# A rebuilt or loaded embedding matrix gets room for this share more rows: zeros that are only
# address space until written, so adding up to that many photos copies nothing (growing the
# matrix copies it, the old one held meanwhile: 512 MB more at a million records).
ROOM_SHARE = 1 / 8
_WORD_FILES = ("keys", "ids", "delta.keys", "delta.ids", "dead")


@dataclass
class LocalIndex:
    """Both indexes for one SQLite store, as of change ``seq`` of the store's log."""

    store_id: str
    seq: int
    words: WordIndex
    embeddings: EmbeddingIndex | None

    @classmethod
    def empty(cls, store_id: str) -> LocalIndex:
        return cls(store_id, 0, WordIndex(), None)

    def add(self, ids: np.ndarray, signatures: np.ndarray | None, embeddings: np.ndarray | None) -> None:
        if signatures is not None:
            self.words.add(ids, signatures)
        if embeddings is not None and len(embeddings):
            if self.embeddings is None:
                self.embeddings = EmbeddingIndex(embeddings.shape[1])
            self.embeddings.add(ids, embeddings)

    def remove(self, ids: np.ndarray) -> None:
        self.words.remove(ids.tolist())
        if self.embeddings is not None:
            self.embeddings.remove(ids.tolist())

    # -- files ----------------------------------------------------------------------------
    @staticmethod
    def folder(store_path: Path) -> Path:
        return store_path.with_name(store_path.name + ".index")

    def save(self, store_path: Path) -> None:
        """Written beside the store through temporary names, the description last, so a
        crash leaves the old files or the new ones, and a torn file fails its checksum."""
        folder = self.folder(store_path)
        folder.mkdir(mode=0o700, exist_ok=True)  # what the store knows of the photos is their owner's only
        files = {f"words.{name}": array for name, array in self.words.saved().items()}
        meta: dict = {"format": FORMAT, "store_id": self.store_id, "seq": self.seq, "files": {}}
        if self.embeddings is not None:
            files["embeddings.ids"], files["embeddings.vectors"] = self.embeddings.stored()
            meta["dims"] = self.embeddings.dims
        for name, array in files.items():
            tmp = folder / (name + ".tmp")
            with open(tmp, "wb") as f:
                for part in [array] if isinstance(array, np.ndarray) else array:
                    f.write(np.ascontiguousarray(part).data)  # no bytes copy of the array
                f.flush()
                os.fsync(f.fileno())
            meta["files"][name] = {"crc": _crc(tmp), "size": tmp.stat().st_size}
        for name in meta["files"]:
            os.replace(folder / (name + ".tmp"), folder / name)
        tmp = folder / "index.json.tmp"
        tmp.write_text(json.dumps(meta))
        os.replace(tmp, folder / "index.json")

    @classmethod
    def load(cls, store_path: Path, store_id: str) -> LocalIndex | str:
        """The saved index, or why it cannot be used (missing, another store's, damaged)."""
        folder = cls.folder(store_path)
        try:
            meta = json.loads((folder / "index.json").read_text())
        except FileNotFoundError:
            return "missing"
        except (OSError, ValueError) as exc:
            return f"unreadable ({exc})"
        try:
            if meta.get("format") != FORMAT:
                return "written by another version"
            if meta.get("store_id") != store_id:
                return "stale (it belongs to another store file)"
            for name, facts in meta["files"].items():
                path = folder / name
                if not path.is_file() or path.stat().st_size != facts["size"] or _crc(path) != facts["crc"]:
                    return f"damaged ({name} does not match its checksum)"
            words = {name: np.fromfile(folder / f"words.{name}", np.uint32) for name in _WORD_FILES}
            for part in ("", "delta."):
                if len(words[f"{part}keys"]) != len(words[f"{part}ids"]) or len(words[f"{part}keys"]) % WORD_COUNT:
                    return "damaged (the word arrays do not match)"
            embeddings = None
            if "embeddings.ids" in meta["files"]:
                dims = int(meta["dims"])
                vector_ids = np.fromfile(folder / "embeddings.ids", np.int64)
                if meta["files"]["embeddings.vectors"]["size"] != len(vector_ids) * dims:
                    return "damaged (the embedding arrays do not match)"
                offset = np.zeros((len(vector_ids) + int(len(vector_ids) * ROOM_SHARE), dims), np.uint8)
                with open(folder / "embeddings.vectors", "rb") as f:
                    f.readinto(offset[: len(vector_ids)])  # type: ignore[arg-type]
                read = offset[: len(vector_ids)]
                _offset(read.view(np.int8), out=read)  # the file's int8 -> plus 128, in place
                embeddings = EmbeddingIndex(dims, vector_ids, offset=offset)
            return cls(store_id, int(meta["seq"]), WordIndex.restored(words), embeddings)
        except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
            return f"damaged ({' '.join(str(exc).split())})"


def _crc(path: Path) -> int:
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            crc = zlib.crc32(chunk, crc)
    return crc


Rows = Callable[[], Iterable[tuple[np.ndarray, np.ndarray | None, np.ndarray | None]]]


def rebuild(store_id: str, seq: int, rows: Rows, records: int = 0) -> LocalIndex:
    """A new index from ``rows``: chunks of (ids, signatures, embeddings) of every record, of
    which there are at most ``records`` (room for them is made at once)."""
    index = LocalIndex.empty(store_id)
    index.seq = seq

    def signed() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for ids, signatures, embeddings in rows():
            if embeddings is not None and len(embeddings) and index.embeddings is None:
                index.embeddings = EmbeddingIndex(embeddings.shape[1])
                index.embeddings.reserve(records + int(records * ROOM_SHARE))
            index.add(ids, None, embeddings)
            if signatures is not None:
                yield ids, signatures

    index.words = WordIndex.of(signed(), records)
    return index
