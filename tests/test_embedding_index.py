"""shared/store/vectors.py EmbeddingIndex: the exact scan answers what comparing every pair
one at a time answers, at any threshold, through additions, changes and removals."""

from __future__ import annotations

import functools
import threading

import numpy as np
import pytest

from shared.store.int8_products import products_with as _products_with
from shared.store.vectors import EmbeddingIndex, _offset, _single, _sums


def _int8(x: np.ndarray) -> np.ndarray:
    return np.round(x / np.linalg.norm(x, axis=-1, keepdims=True) * 127).clip(-127, 127).astype(np.int8)


def _library(rng: np.random.Generator, n: int) -> np.ndarray:
    """Random directions (as spread out as SSCD's) and, for every fifth, copies at cosines from
    0.2 to 0.98: many pairs near any threshold."""
    base = rng.normal(size=(n, 512))
    for k in range(0, n - 1, 5):
        target = rng.uniform(0.2, 0.98)
        noise = rng.normal(size=512)
        noise -= noise @ base[k] / (base[k] @ base[k]) * base[k]
        noise *= np.linalg.norm(base[k]) / np.linalg.norm(noise)
        base[k + 1] = target * base[k] + np.sqrt(1 - target**2) * noise
    return _int8(base)


def _one_at_a_time(queries: np.ndarray, ids: np.ndarray, vectors: np.ndarray, floor: float, limit: int):
    out = {}
    for row, q in enumerate(queries.astype(np.float64)):
        cos = vectors.astype(np.float64) @ q / (np.linalg.norm(vectors.astype(np.float64), axis=1) * np.linalg.norm(q))
        hits = sorted((-c, int(i)) for i, c in zip(ids, cos) if c >= floor)[:limit]
        out[row] = [(i, -c) for c, i in hits]
    return out


@functools.cache
def _every_seventh_compared(floor: float) -> dict:
    """The answers for every seventh vector of the library below (seed 7), compared one at a time."""
    vectors = _library(np.random.default_rng(7), 3000)
    return _one_at_a_time(vectors[::7], np.arange(10, 10 + len(vectors)), vectors, floor, 4)


def _answers(rows, ids, cosines):
    out: dict[int, list] = {}
    for r, i, c in zip(rows.tolist(), ids.tolist(), cosines.tolist()):
        out.setdefault(r, []).append((i, c))
    return out


@pytest.mark.parametrize("cores", [1, 2, 3])
@pytest.mark.parametrize("packed", [False, True], ids=["as a single query", "as a batch of a whole library"])
@pytest.mark.parametrize("floor", [0.35, 0.55, 0.9])
def test_the_scan_finds_exactly_what_every_pair_compared_finds(floor, packed, cores, monkeypatch):
    from shared.store import int8_products, vectors as module

    vectors = _library(np.random.default_rng(7), 3000)
    ids = np.arange(10, 10 + len(vectors))
    monkeypatch.setattr(EmbeddingIndex, "STORED_BLOCK", 700)  # several blocks each way
    monkeypatch.setattr(EmbeddingIndex, "QUERY_BLOCK", 128)
    monkeypatch.setattr(EmbeddingIndex, "_packs_once", lambda self, queries, times: packed)
    monkeypatch.setattr(module.os, "sched_getaffinity", lambda pid: set(range(cores)))  # a worker per core
    sessions = []
    scanned_on = set()  # the threads the products ran on

    def on_this_thread(product):
        return lambda *args, **kw: scanned_on.add(threading.current_thread().name.split("_")[0]) or product(*args, **kw)

    monkeypatch.setattr(int8_products, "products_with",
                        lambda right: sessions.append(right) or on_this_thread(_products_with(right)))
    monkeypatch.setattr(int8_products, "products", on_this_thread(int8_products.products))
    index = EmbeddingIndex(512)
    index.add(ids[:1700], vectors[:1700])
    index.add(ids[1700:], vectors[1700:])
    queries = vectors[::7]
    got = _answers(*index.query(queries, floor, 4))
    want = _every_seventh_compared(floor)
    assert {r: [i for i, _ in v] for r, v in got.items()} == {r: [i for i, _ in v] for r, v in want.items() if v}
    assert all(np.allclose([c for _, c in got[r]], [c for _, c in want[r]], atol=1e-12) for r in got)
    assert sum(len(v) for v in got.values()) > len(queries)  # copies found, not only each query itself
    assert len(sessions) == (4 if packed else 0)  # a session for each batch of queries (429: 4 of 128)
    assert scanned_on == ({"MainThread"} if cores == 1 else {"scan"})  # five blocks: a worker per core


def test_changed_and_removed_vectors_are_answered_as_they_are_now():
    rng = np.random.default_rng(8)
    vectors = _library(rng, 400)
    ids = np.arange(len(vectors))
    index = EmbeddingIndex(512)
    index.add(ids, vectors)
    rows, found, _ = index.query(vectors[[0, 100]], 0.99, 10)  # what is searched is kept from here
    assert found.tolist() == [0, 100]
    index.remove([0, 1, 2])
    assert index.query(vectors[[0]], 0.99, 10)[1].tolist() == []  # until a write
    index.add(np.array([5]), vectors[[100]])  # record 5 changed: now a twin of record 100
    assert len(index) == len(vectors) - 3
    rows, found, _ = index.query(vectors[[0, 100]], 0.99, 10)
    assert sorted(found[rows == 1].tolist()) == [5, 100]
    assert found[rows == 0].tolist() == []  # record 0 removed, record 5 no longer its old self
    index.remove(range(3, 200))  # most of it: compacted, the rest still answered
    rows, found, _ = index.query(vectors[[250]], 0.99, 10)
    assert found.tolist() == [250]
    saved_ids, saved = index.stored()
    saved = np.concatenate(list(saved))
    assert sorted(saved_ids.tolist()) == list(range(200, 400))
    assert np.array_equal(saved, vectors[saved_ids]) and saved.dtype == np.int8


def test_a_whole_library_asked_batch_by_batch_gets_the_answers_of_a_full_scan(monkeypatch):
    """The pass: each stored record asked once, in any order, gets every pair (half of them
    from the notes of records asked before it); a record asked again, a write or another
    threshold starts a new pass, never an answer with pairs missing."""
    rng = np.random.default_rng(9)
    vectors = _library(rng, 1200)
    ids = np.arange(100, 100 + len(vectors))
    monkeypatch.setattr(EmbeddingIndex, "STORED_BLOCK", 300)
    index = EmbeddingIndex(512)
    index.add(ids, vectors)
    want = _one_at_a_time(vectors, ids, vectors, 0.35, 5)
    order = rng.permutation(len(vectors))
    got: dict[int, list] = {}
    for batch in np.array_split(order, 7):
        for r, i, c in zip(*(a.tolist() for a in index.query(vectors[batch], 0.35, 5, ids[batch]))):
            got.setdefault(int(batch[r]), []).append(i)
    assert got == {r: [i for i, _ in v] for r, v in want.items()}
    again = _answers(*index.query(vectors[:50], 0.35, 5, ids[:50]))  # asked again: a new pass
    assert {r: [i for i, _ in v] for r, v in again.items()} == {r: [i for i, _ in want[r]] for r in range(50)}
    index.add(np.array([5000]), vectors[[0]])  # a write: a new pass that sees it
    rows, found, _ = index.query(vectors[[0]], 0.35, 5, ids[[0]])
    assert sorted(found.tolist()[:2]) == [100, 5000]
    changed = vectors[[3]].copy()  # asked as it is now, not as stored: not part of the pass
    changed[0, :8] = 0
    rows, found, _ = index.query(changed, 0.35, 5, ids[[3]])
    assert found.tolist()[:1] == [103]


def test_the_int8_products_are_the_exact_dot_products_over_the_whole_int8_range():
    from shared.store.int8_products import products

    rng = np.random.default_rng(3)
    queries = rng.integers(-128, 128, (70, 512), dtype=np.int8)
    stored = rng.integers(-128, 128, (300, 512), dtype=np.int8)
    queries[0], stored[0] = -128, -128  # the corners: 512 x 16384 fits int32
    want = queries.astype(np.int64) @ stored.astype(np.int64).T
    assert np.array_equal(products(_offset(queries), np.ascontiguousarray(stored.T)), want)  # as the index holds them
    assert np.array_equal(_products_with(np.ascontiguousarray(stored.T))(_offset(queries)), want)

    query = queries[:2].copy()
    query[1, ::2] = 127  # the other corner beside the lowest
    for q in query:  # a single query's products, read by simsimd from the rows as they lie
        single = _single(_offset(q[None]), 512)(_offset(stored), _sums(_offset(stored)), np.empty(0, np.int32))
        assert np.array_equal(single, stored.astype(np.int64) @ q.astype(np.int64)[:, None])


@pytest.mark.parametrize("floor", [0.35, 0.9])
def test_a_single_query_finds_exactly_what_every_pair_compared_finds(floor):
    """One query (the services' search) is multiplied another way than a batch (``_single``)."""
    vectors = _library(np.random.default_rng(7), 3000)
    index = EmbeddingIndex(512, np.arange(10, 10 + len(vectors)), vectors)
    want = _every_seventh_compared(floor)
    for row in range(0, len(vectors), 7 * 25):
        assert _answers(*index.query(vectors[[row]], floor, 4)) == {0: want[row // 7]}


def test_an_all_zero_embedding_is_near_nothing_and_hides_nothing():
    rng = np.random.default_rng(4)
    vectors = _library(rng, 50)
    vectors[3] = 0
    index = EmbeddingIndex(512, np.arange(50), vectors)
    rows, ids, _ = index.query(vectors[[1, 3]], 0.35, 10)
    assert (rows == 1).sum() == 0, "the zero query meets nothing"
    with np.errstate(invalid="ignore"):
        want = {i for i, _ in _one_at_a_time(vectors[[1]], np.arange(50), vectors, 0.35, 10)[0]}
    assert set(ids[rows == 0].tolist()) == want and 3 not in want and {0, 1} <= want


def test_a_wide_batch_of_queries_over_many_stored_blocks_gets_its_own_session(monkeypatch):
    """Packing the queries once pays only when they are many and meet many stored blocks; the
    answers are the same either way (above)."""
    from shared.store import int8_products

    rng = np.random.default_rng(11)
    vectors = _library(rng, 64 * 256)
    monkeypatch.setattr(EmbeddingIndex, "QUERY_BLOCK", 128)
    monkeypatch.setattr(EmbeddingIndex, "PRODUCT_CELLS", 128 * 256)  # 256 stored rows a product: 64 products
    sessions = []
    monkeypatch.setattr(int8_products, "products_with", lambda right: sessions.append(right.shape) or _products_with(right))
    index = EmbeddingIndex(512, np.arange(len(vectors)), vectors)
    # 200 queries: two batches (128, 72) of 64 products each; 130: the batch of 2 too narrow to pay;
    # 64: a product of 512 stored rows, 32 of them
    for asked, made in ((vectors[:200], [(512, 128), (512, 72)]), (vectors[:130], [(512, 128)]), (vectors[:64], [])):
        sessions.clear()
        rows, found, _ = index.query(asked, 0.99, 1)
        assert found.tolist() == list(range(len(asked)))
        assert sessions == made
    index.remove(range(1000))  # 61 products of 256 rows: fewer than it takes to pay
    sessions.clear()
    index.query(vectors[1000:1200], 0.99, 1)
    assert sessions == []
