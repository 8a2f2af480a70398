"""The Goldberg word index's bulk build and merge give exactly the arrays of sorting everything
(a stable sort of the keys, ids in the order they were added), dead records left out."""

from __future__ import annotations

import numpy as np

from shared.image.signature import SIGNATURE_LENGTH
from shared.store.vectors import WordIndex, _keys


def _signatures(rng: np.random.Generator, n: int) -> np.ndarray:
    # few distinct values, so that many records share words and the order among equal keys matters
    return rng.integers(-1, 2, size=(n, SIGNATURE_LENGTH)).astype(np.int8) * (rng.random((n, SIGNATURE_LENGTH)) < 0.1)


def _sorted_whole(chunks: list[tuple[np.ndarray, np.ndarray]], dead: set[int]) -> tuple[np.ndarray, np.ndarray]:
    keys = np.concatenate([_keys(s).ravel() for _, s in chunks])
    ids = np.concatenate([np.repeat(np.asarray(i, np.uint32), 63) for i, _ in chunks])
    alive = ~np.isin(ids, list(dead))
    order = np.argsort(keys[alive], kind="stable")
    return keys[alive][order], ids[alive][order]


def test_built_at_once_as_added_chunk_after_chunk():
    rng = np.random.default_rng(5)
    chunks = [(np.arange(start, start + 700), _signatures(rng, 700)) for start in range(0, 3500, 700)]
    built = [WordIndex.of(iter(chunks), records) for records in (0, 1000, 3500)]  # room made: none, some, all
    added = WordIndex()
    for ids, signatures in chunks:
        added.add(ids, signatures)
    added.compact()
    keys, ids = _sorted_whole(chunks, set())
    for index in (*built, added):
        assert np.array_equal(index.keys, keys) and np.array_equal(index.ids, ids)
        assert index.keys.dtype == index.ids.dtype == np.uint32 and len(index) == 3500


def test_merge_keeps_stored_entries_before_new_ones_and_drops_the_dead():
    rng = np.random.default_rng(6)
    first = (np.arange(0, 2000), _signatures(rng, 2000))
    index = WordIndex.of([first])
    later = [(np.arange(2000, 2100), _signatures(rng, 100)), (np.arange(2100, 2150), _signatures(rng, 50))]
    for ids, signatures in later:
        index.add(ids, signatures)  # a delta below an eighth of the stored words: not merged yet
    assert index._delta
    index.remove([3, 17, 2005, 2140])
    index.compact()
    keys, ids = _sorted_whole([first, *later], {3, 17, 2005, 2140})
    assert np.array_equal(index.keys, keys) and np.array_equal(index.ids, ids)
    assert len(index) == 2150 - 4
