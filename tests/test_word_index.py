"""The Goldberg word index's bulk build and merge give exactly the arrays of sorting everything
(a stable sort of the keys, ids in the order they were added), dead records left out."""

from __future__ import annotations

import numpy as np

from shared.image.signature import SIGNATURE_LENGTH
from shared.image.signature import WORD_COUNT, word_array
from shared.store import vectors
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
    added._merge()
    keys, ids = _sorted_whole(chunks, set())
    for index in (*built, added):
        assert np.array_equal(index.keys, keys) and np.array_equal(index.ids, ids)
        assert index.keys.dtype == index.ids.dtype == np.uint32 and len(index) == 3500


def test_keys_made_a_block_at_a_time_are_each_word_at_its_position(monkeypatch):
    """Made KEYS_BLOCK signatures at a time (a million at once took 8 GB): every key is its
    word offset by its position, whatever the block size."""
    signatures = _signatures(np.random.default_rng(8), 1000)
    expected = word_array(signatures) + np.arange(WORD_COUNT) * vectors._WORD_SPACE
    for block in (4096, 64, 7):
        monkeypatch.setattr(vectors, "KEYS_BLOCK", block)
        keys = _keys(signatures)
        assert keys.dtype == np.uint32 and np.array_equal(keys, expected), block


def test_merge_keeps_stored_entries_before_new_ones_and_drops_the_dead():
    rng = np.random.default_rng(6)
    first = (np.arange(0, 2000), _signatures(rng, 2000))
    index = WordIndex.of([first])
    later = [(np.arange(2000, 2100), _signatures(rng, 100)), (np.arange(2100, 2150), _signatures(rng, 50))]
    for ids, signatures in later:
        index.add(ids, signatures)  # a delta below an eighth of the stored words: not merged yet
    assert index._delta
    index.remove([3, 17, 2005, 2140])
    index._merge()
    keys, ids = _sorted_whole([first, *later], {3, 17, 2005, 2140})
    assert np.array_equal(index.keys, keys) and np.array_equal(index.ids, ids)
    assert len(index) == 2150 - 4


def test_saved_with_its_delta_and_dead_records_and_loaded_back_it_answers_the_same(tmp_path):
    """Saving merges nothing (a merge holds two copies of the arrays); what is loaded back
    answers each query as the index saved did, and merges into the same arrays."""
    from shared.store.vectors import LocalIndex

    rng = np.random.default_rng(8)
    first = (np.arange(0, 2000), _signatures(rng, 2000))
    index = LocalIndex.empty("store")
    index.words = WordIndex.of([first])
    later = (np.arange(2000, 2120), _signatures(rng, 120))
    index.add(later[0], later[1], rng.integers(-127, 128, (120, 512)).astype(np.int8))
    index.remove(np.array([3, 17, 2005]))
    assert index.words._delta and index.words._dead  # neither merged by the save below
    index.save(tmp_path / "s.sqlite")
    assert index.words._delta and index.words._dead
    loaded = LocalIndex.load(tmp_path / "s.sqlite", "store")
    assert isinstance(loaded, LocalIndex)
    queries = np.r_[first[1][:40], later[1][:40]]
    owners, own = np.arange(80), np.full(80, -1)
    for limit in (3, 50):
        assert all(np.array_equal(a, b) for a, b in zip(index.words.query(queries, owners, own, queries, limit),
                                                        loaded.words.query(queries, owners, own, queries, limit)))
    assert len(loaded.words) == len(index.words) == 2120 - 3
    index.words._merge()
    loaded.words._merge()
    assert np.array_equal(loaded.words.keys, index.words.keys) and np.array_equal(loaded.words.ids, index.words.ids)
    # the embeddings come back with room: an eighth more is added without growing the matrix
    matrix = loaded.embeddings.vectors
    asked = np.array([2000, 2005, 2119])
    assert loaded.embeddings.get(asked)[1].tolist() == [True, False, True]
    assert np.array_equal(loaded.embeddings.get(asked)[0], index.embeddings.get(asked)[0])
    loaded.embeddings.add(np.arange(3000, 3014), rng.integers(-127, 128, (14, 512)).astype(np.int8))
    assert loaded.embeddings.vectors is matrix and len(loaded.embeddings) == 119 + 14


def test_searches_looked_up_a_few_hundred_at_a_time_find_what_one_query_finds(monkeypatch):
    """``near_signatures`` bounds each word-index query to SEARCHES_PER_QUERY searches; split
    anywhere (an owner's orientations never apart), the answers are those of one query."""
    from shared.image.signature import orientations
    from shared.store import vectors

    rng = np.random.default_rng(8)
    stored = _signatures(rng, 600)
    index = WordIndex.of(iter([(np.arange(600), stored)]), 600)
    asked = np.r_[np.arange(0, 600, 7), -np.ones(20, np.int64)]  # stored ones and new ones
    signatures = np.concatenate([stored[asked[asked >= 0]], _signatures(rng, 20)])
    signatures[:5] = stored[[1, 2, 3, 4, 5]]  # copies of other stored records
    searches = [np.stack(orientations(s)) for s in signatures]
    own_signatures = np.stack([stored[i] if i >= 0 else np.zeros(SIGNATURE_LENGTH, np.int8) for i in asked])

    def near() -> dict:
        return vectors.near_signatures(index, searches, asked, own_signatures, lambda ids: stored[ids], 0.6, 10)

    whole = near()
    assert len(whole) > 5 and all(whole[k] for k in range(5))
    for size in (1, 7, 50):
        monkeypatch.setattr(vectors, "SEARCHES_PER_QUERY", size)
        assert near() == whole, size
