"""shared/store/sqlite.py: the word index finds what it must, and its counts stay true."""

from __future__ import annotations


import numpy as np

from shared.image.signature import words
from shared.store.sqlite import SQLiteStore
from shared.store import ImageRecord


def _record(path: str, signature: np.ndarray) -> ImageRecord:
    return ImageRecord(path, "/r", 1, 1, signature=signature, words=words(signature))


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
