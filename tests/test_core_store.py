"""shared/store/sqlite.py and shared/store/vectors.py: the indexes beside the SQLite file follow
every write, are kept across runs, and are rebuilt from the records, with one line saying so,
when their files are missing, damaged or stale."""

from __future__ import annotations

import json
import logging
import sqlite3
import threading

import numpy as np
import pytest

from shared.store import ImageRecord
from shared.store.sqlite import SQLiteStore, _into_wal
from shared.store.vectors import LocalIndex


def _record(path: str, signature: np.ndarray, embedding: np.ndarray | None = None) -> ImageRecord:
    return ImageRecord(path, "/r", 1, 1, signature=signature, embedding=embedding)


def _near(sig: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    out = sig.copy()
    where = rng.choice(648, 15, replace=False)
    out[where] = np.clip(out[where] + rng.choice([-1, 1], 15), -2, 2)
    return out


def _library(rng: np.random.Generator, n: int = 40) -> list[ImageRecord]:
    out = []
    for i in range(n):
        sig = rng.integers(-2, 3, 648).astype(np.int8)
        emb = np.round(rng.normal(size=512) / np.sqrt(512) * 127 * 1.0).clip(-127, 127).astype(np.int8)
        out.append(_record(f"/r/{i:03}.jpg", sig, emb))
        if i % 4 == 0:  # a copy of every fourth
            out.append(_record(f"/r/{i:03}-copy.jpg", _near(sig, rng), emb))
    return out


async def _answers(store: SQLiteStore, records: list[ImageRecord]) -> list[list[str]]:
    found = await store.candidates_many(records, 0.3, turns=True)
    similar = await store.similar_many(records, 0.9)
    return [sorted(c.record.path for c in a + b) for a, b in zip(found, similar)]


async def test_the_index_follows_writes_of_this_process_and_another(tmp_path):
    rng = np.random.default_rng(2)
    store = SQLiteStore(tmp_path / "s.sqlite")
    other = SQLiteStore(tmp_path / "s.sqlite")  # another process's connection
    try:
        a, b, c = (rng.integers(-2, 3, 648).astype(np.int8) for _ in range(3))
        await store.upsert(_record("/r/a.jpg", a))
        assert await store.candidates(_record("/r/q.jpg", _near(a, rng)), 0.3) != []
        await store.upsert(_record("/r/a.jpg", b))  # replaced: found by its new signature only
        assert await store.candidates(_record("/r/q.jpg", _near(a, rng)), 0.3) == []
        assert [x.record.path for x in await store.candidates(_record("/r/q.jpg", _near(b, rng)), 0.3)] == ["/r/a.jpg"]
        await other.upsert(_record("/r/c.jpg", c))
        await other.delete("/r/a.jpg")
        assert await store.candidates(_record("/r/q.jpg", _near(b, rng)), 0.3) == []
        assert [x.record.path for x in await store.candidates(_record("/r/q.jpg", _near(c, rng)), 0.3)] == ["/r/c.jpg"]
    finally:
        await store.close()
        await other.close()


async def test_the_index_is_kept_beside_the_store_and_caught_up_not_rebuilt(tmp_path, caplog):
    rng = np.random.default_rng(3)
    library = _library(rng)
    store = SQLiteStore(tmp_path / "s.sqlite")
    await store.upsert_many(library)
    first = await _answers(store, library)
    assert sum(len(a) for a in first) >= 2 * 10  # every copy and its original find each other
    await store.close()
    folder = LocalIndex.folder(tmp_path / "s.sqlite")
    assert (folder / "index.json").is_file()

    writer = SQLiteStore(tmp_path / "s.sqlite")  # written while no index was loaded
    extra = _record("/r/extra.jpg", _near(library[0].signature, rng))
    await writer.upsert(extra)
    await writer.close()
    with caplog.at_level(logging.WARNING, logger="image_dedup.store"):
        store = SQLiteStore(tmp_path / "s.sqlite")
        try:
            again = await _answers(store, library)
            assert sorted(c.record.path for c in await store.candidates(extra, 0.3)) == sorted(
                [library[0].path, library[1].path])
        finally:
            await store.close()
    assert caplog.records == []  # loaded and caught up with the one write: no rebuild
    assert again[0] == sorted([*first[0], "/r/extra.jpg"]) and again[2:] == first[2:]


@pytest.mark.parametrize("damage", ["missing", "corrupt", "torn", "older", "stale", "ahead"])
async def test_a_missing_damaged_or_stale_index_is_rebuilt_with_a_notice(tmp_path, caplog, damage):
    rng = np.random.default_rng(4)
    library = _library(rng)
    path = tmp_path / "s.sqlite"
    store = SQLiteStore(path)
    await store.upsert_many(library)
    expected = await _answers(store, library)
    await store.close()
    folder = LocalIndex.folder(path)
    if damage == "missing":
        for f in folder.iterdir():
            f.unlink()
        folder.rmdir()
    elif damage == "corrupt":
        data = bytearray((folder / "words.keys").read_bytes())
        data[100] ^= 0xFF
        (folder / "words.keys").write_bytes(bytes(data))
    elif damage == "torn":  # the embedding matrix cut short
        vectors = folder / "embeddings.vectors"
        vectors.write_bytes(vectors.read_bytes()[:-512])
    elif damage == "older":  # written by a build whose index had another layout
        meta = json.loads((folder / "index.json").read_text())
        (folder / "index.json").write_text(json.dumps({**meta, "format": meta["format"] - 1}))
    else:  # the files of another store, or of this one ahead of its records
        other = tmp_path / "other.sqlite"
        if damage == "ahead":
            import shutil

            shutil.copy(path, other)
        donor = SQLiteStore(other)
        await donor.upsert_many([_record(f"/r/x{i}.jpg", rng.integers(-2, 3, 648).astype(np.int8)) for i in range(5)])
        await donor.candidates(library[0], 0.3)
        await donor.close()
        for f in LocalIndex.folder(other).iterdir():
            (folder / f.name).write_bytes(f.read_bytes())
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="image_dedup.store"):
        store = SQLiteStore(path)
        try:
            assert await _answers(store, library) == expected
        finally:
            await store.close()
    notices = [r.getMessage() for r in caplog.records]
    assert len(notices) == 1 and "\n" not in notices[0] and "rebuilding it from the store" in notices[0], notices
    assert {"missing": "missing", "corrupt": "damaged", "torn": "damaged", "older": "another version",
            "stale": "stale", "ahead": "stale"}[damage] in notices[0]
    store = SQLiteStore(path)  # rebuilt and saved: the next run loads it
    try:
        caplog.clear()
        assert await _answers(store, library) == expected
        assert caplog.records == []
    finally:
        await store.close()


async def test_a_new_store_builds_its_first_index_silently(tmp_path, caplog):
    rng = np.random.default_rng(5)
    with caplog.at_level(logging.WARNING, logger="image_dedup.store"):
        store = SQLiteStore(tmp_path / "s.sqlite")
        try:
            await store.upsert_many(_library(rng, 8))
            await store.candidates(_record("/r/q.jpg", rng.integers(-2, 3, 648).astype(np.int8)), 0.3)
        finally:
            await store.close()
    assert caplog.records == []


def test_the_switch_to_wal_is_asked_again_while_another_process_holds_the_file(tmp_path):
    """Services opening a new store together can meet in the switch to write-ahead logging,
    which SQLite then refuses at once ("database is locked", before any busy timeout): it is
    asked again until the other lets go. Here the other holds the file for 0.3 s and the
    connection has no busy timeout, so each refusal comes at once, as in that race."""
    path = tmp_path / "s.sqlite"
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN EXCLUSIVE")
    release = threading.Timer(0.3, lambda: holder.execute("COMMIT"))
    release.start()
    db = sqlite3.connect(path, timeout=0, isolation_level=None)
    try:
        _into_wal(db)
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        release.join()
        db.close()
        holder.close()
