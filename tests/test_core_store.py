"""shared/store/sqlite.py: the word index finds what it must, and its counts stay true."""

from __future__ import annotations


import numpy as np

from shared.image.signature import orientations, words
from shared.store.sqlite import SQLiteStore
from shared.store import ImageRecord


def _record(path: str, signature: np.ndarray) -> ImageRecord:
    return ImageRecord(path, "/r", 1, 1, signature=signature, words=words(signature))


async def test_a_turned_query_under_a_stored_path_finds_the_turned_copy(tmp_path):
    rng = np.random.default_rng(1)
    original = rng.integers(-2, 3, 648).astype(np.int8)
    mirrored = orientations(original)[4]
    store = SQLiteStore(tmp_path / "s.sqlite")
    try:
        await store.upsert(_record("/r/a.jpg", original))
        await store.upsert(_record("/r/a-mirrored.jpg", mirrored))
        for i in range(20):  # unrelated images
            await store.upsert(_record(f"/r/other{i}.jpg", rng.integers(-2, 3, 648).astype(np.int8)))
        # the original's path, but the mirrored signature: every word of it belongs to the copy only
        query = _record("/r/a.jpg", mirrored)
        found = await store.candidates(query, 0.1)
        assert [c.record.path for c in found] == ["/r/a-mirrored.jpg"]
        assert (await store.candidates(_record("/r/a.jpg", original), 0.1)) == []
    finally:
        await store.close()


async def test_word_counts_follow_upserts_and_deletes(tmp_path):
    rng = np.random.default_rng(2)
    store = SQLiteStore(tmp_path / "s.sqlite")
    try:
        for i in range(6):
            sig = rng.integers(-2, 3, 648).astype(np.int8)
            await store.upsert(_record(f"/r/{i}.jpg", sig))
            await store.upsert(_record(f"/r/{i}.jpg", sig))  # again: replaced, not added
        await store.delete("/r/0.jpg")
        counted, rows = await store._run(lambda: (
            store._db.execute("SELECT SUM(n) FROM word_counts").fetchone()[0],
            store._db.execute("SELECT COUNT(*) FROM words").fetchone()[0],
        ))
        assert counted == rows == 5 * 63
    finally:
        await store.close()
