"""The Store and Ledger Protocols, held to one contract by SQLite and by a real Elasticsearch.

Elasticsearch tests talk to the node at ``$IMAGE_DEDUP_TEST_ELASTICSEARCH_URL`` (default
http://127.0.0.1:9200; ``scripts/ensure-elasticsearch.sh`` starts one). They are skipped only
when ``IMAGE_DEDUP_TEST_ELASTICSEARCH=off``: a node that does not answer fails them. Each test
uses its own random index and deletes it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import sqlite3
import uuid

import numpy as np
import pytest

from shared.image.signature import orientations, words
from shared.store import ImageRecord, StoreUnavailable
from shared.store.sqlite import SQLiteStore
from shared.store.sqlite_ledger import SQLiteLedger
from tests.services_support import ES_OFF, ES_URL



class Backend:
    """Opens stores and ledgers of one kind over one place, and removes that place after."""

    def __init__(self, kind: str, tmp_path):
        self.kind = kind
        self.file = tmp_path / "store.sqlite"
        self.index = f"test-{uuid.uuid4().hex[:12]}"
        self.opened: list = []

    async def store(self):
        if self.kind == "sqlite":
            return self._opened(SQLiteStore(self.file))
        from shared.store.elasticsearch import ElasticsearchStore

        store = self._opened(ElasticsearchStore(ES_URL, self.index))
        await store.open()
        return store

    async def ledger(self, lease_seconds: float = 600.0):
        if self.kind == "sqlite":
            return self._opened(SQLiteLedger(self.file, lease_seconds=lease_seconds))
        from shared.store.elasticsearch import ElasticsearchLedger

        ledger = self._opened(ElasticsearchLedger(ES_URL, self.index, lease_seconds=lease_seconds))
        await ledger.open()
        return ledger

    def _opened(self, thing):
        self.opened.append(thing)  # closed at the end even if opening fails
        return thing

    async def tear_down(self) -> None:
        for thing in self.opened:
            await thing.close()
        if self.kind == "elasticsearch":
            from elasticsearch import AsyncElasticsearch

            from shared.store.elasticsearch import concrete

            es = AsyncElasticsearch(ES_URL)
            try:
                await es.indices.delete(index=[concrete(self.index), concrete(f"{self.index}-ledger")],
                                        ignore_unavailable=True)
            finally:
                await es.close()


@pytest.fixture(params=["sqlite", "elasticsearch"])
async def backend(request, tmp_path):
    if request.param == "elasticsearch" and ES_OFF:
        pytest.skip("IMAGE_DEDUP_TEST_ELASTICSEARCH=off")
    b = Backend(request.param, tmp_path)
    yield b
    await b.tear_down()


@pytest.fixture
async def store(backend):
    return await backend.store()


@pytest.fixture
async def ledger(backend):
    return await backend.ledger()


RNG = np.random.default_rng(11)


def signature(rng=RNG) -> np.ndarray:
    return rng.integers(-2, 3, 648).astype(np.int8)


def embedding(rng=RNG, base: np.ndarray | None = None, noise: float = 0.0) -> np.ndarray:
    """Like the model's: unit length times 127, as int8; ``base`` plus ``noise`` for a near one."""
    v = rng.normal(size=512) if base is None else base.astype(np.float64) / 127 + rng.normal(scale=noise, size=512)
    return np.clip(np.round(v / np.linalg.norm(v) * 127), -127, 127).astype(np.int8)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def record(path: str, sig: np.ndarray | None = None, emb: np.ndarray | None = None, **kw) -> ImageRecord:
    return ImageRecord(path, "/r", kw.pop("size", 10), kw.pop("mtime_ns", 20), signature=sig,
                       embedding=emb, **kw)


def near(sig: np.ndarray, changes: int = 20, rng=RNG) -> np.ndarray:
    out = sig.copy()
    where = rng.choice(648, changes, replace=False)
    out[where] = np.clip(out[where] + rng.choice([-1, 1], changes), -2, 2)
    return out


# --------------------------------------------------------------------------------------------
# records


async def test_a_record_comes_back_as_it_was_stored(store):
    sig, emb = signature(), embedding()
    full = record("/r/a.jpg", sig, emb, format="JPEG", width=640, height=480, exif_tags=7,
                  exif_date="2020:01:02 03:04:05", digest="ab" * 32, frames=3, analysis=1)
    await store.upsert(full)
    got = await store.get("/r/a.jpg")
    assert got == full  # the compared fields
    assert np.array_equal(got.signature, sig) and got.signature.dtype == np.int8
    assert np.array_equal(got.embedding, emb) and got.embedding.dtype == np.int8
    assert await store.get("/r/missing.jpg") is None


async def test_a_record_without_descriptors_has_none(store):
    bad = record("/r/bad.jpg", error="cannot identify image file")
    await store.upsert(bad)
    got = await store.get("/r/bad.jpg")
    assert got == bad and got.error == "cannot identify image file"
    assert got.signature is None and got.embedding is None and got.digest is None


async def test_upsert_replaces_and_delete_forgets(store):
    await store.upsert(record("/r/a.jpg", signature(), size=1))
    await store.upsert(record("/r/a.jpg", signature(), size=2))
    await store.upsert(record("/r/b.jpg", size=3))
    got = await store.get_many(["/r/a.jpg", "/r/b.jpg", "/r/none.jpg"])
    assert {p: r.size for p, r in got.items()} == {"/r/a.jpg": 2, "/r/b.jpg": 3}
    await store.delete("/r/a.jpg")
    await store.delete("/r/never-stored.jpg")
    assert await store.get("/r/a.jpg") is None
    assert [p async for p in store.iter_paths()] == ["/r/b.jpg"]


async def test_upsert_many_stores_every_record(store):
    records = [record(f"/r/{i:03}.jpg", signature(), embedding(), digest=f"{i:064x}") for i in range(120)]
    await store.upsert_many(records)
    got = await store.get_many([r.path for r in records])
    assert set(got) == {r.path for r in records}
    assert all(np.array_equal(got[r.path].embedding, r.embedding) for r in records)
    assert (await store.same_digest(record("/r/other.jpg", digest=f"{5:064x}"))) == [got["/r/005.jpg"]]


async def test_a_long_path_is_stored_found_listed_and_deleted(store):
    long = "/r/" + "d" * 300 + "/" + "é" * 292 + ".jpg"  # 600 characters, 892 bytes
    assert len(long) == 600
    sig = signature()
    await store.upsert(record(long, sig, digest="cd" * 32))
    assert (await store.get(long)).path == long
    [found] = await store.candidates(record("/r/q.jpg", near(sig)), 0.2)
    assert found.record.path == long
    assert [r.path for r in await store.same_digest(record("/r/q.jpg", digest="cd" * 32))] == [long]
    assert [p async for p in store.iter_paths()] == [long]
    await store.delete(long)
    assert await store.get(long) is None


async def test_iter_paths_lists_more_than_ten_thousand_in_order(store):
    paths = [f"/r/{i:05}.jpg" for i in range(10_050)]
    shuffled = list(paths)
    np.random.default_rng(3).shuffle(shuffled)
    await store.upsert_many([ImageRecord(p, "/r", 1, 1) for p in shuffled])
    assert [p async for p in store.iter_paths()] == paths


# --------------------------------------------------------------------------------------------
# the three ways to find a twin


async def test_candidates_finds_a_near_copy_and_not_an_unrelated_image(store):
    rng = np.random.default_rng(5)
    original = signature(rng)
    await store.upsert(record("/r/a.jpg", original))
    await store.upsert(record("/r/a-copy.jpg", near(original, 20, rng)))
    await store.upsert_many([record(f"/r/other{i}.jpg", signature(rng)) for i in range(30)])
    found = await store.candidates(record("/r/a.jpg", original), 0.2)
    assert [c.record.path for c in found] == ["/r/a-copy.jpg"]
    assert 0 < found[0].distance <= 0.2
    assert await store.candidates(record("/r/new.jpg", signature(rng)), 0.2) == []
    assert await store.candidates(record("/r/bad.jpg"), 0.2) == []  # no signature, nothing to look for


async def test_a_turned_query_under_a_stored_path_finds_the_turned_copy(store):
    rng = np.random.default_rng(1)
    original = signature(rng)
    mirrored = orientations(original)[4]
    await store.upsert(record("/r/a.jpg", original))
    await store.upsert(record("/r/a-mirrored.jpg", mirrored))
    await store.upsert_many([record(f"/r/other{i}.jpg", signature(rng)) for i in range(20)])
    found = await store.candidates(record("/r/a.jpg", mirrored), 0.1)
    assert [c.record.path for c in found] == ["/r/a-mirrored.jpg"]
    assert await store.candidates(record("/r/a.jpg", original), 0.1) == []


async def test_candidates_with_turns_find_every_turned_copy_in_one_call(store):
    rng = np.random.default_rng(4)
    original = signature(rng)
    turned = orientations(original)
    await store.upsert(record("/r/a.jpg", original))
    await store.upsert_many([record(f"/r/a-{k}.jpg", near(turned[k], 10, rng)) for k in (0, 1, 4, 6)])
    await store.upsert_many([record(f"/r/other{i}.jpg", signature(rng)) for i in range(30)])
    found = await store.candidates(record("/r/a.jpg", original), 0.2, turns=True)
    assert sorted(c.record.path for c in found) == ["/r/a-0.jpg", "/r/a-1.jpg", "/r/a-4.jpg", "/r/a-6.jpg"]
    # each at its distance to the nearest orientation, nearest first
    assert all(0 < c.distance <= 0.2 for c in found)
    assert [c.distance for c in found] == sorted(c.distance for c in found)
    assert [c.record.path for c in await store.candidates(record("/r/a.jpg", original), 0.2)] == ["/r/a-0.jpg"]
    assert len(await store.candidates(record("/r/a.jpg", original), 0.2, limit=2, turns=True)) == 2


async def test_similar_finds_near_embeddings_with_their_exact_cosine(store):
    rng = np.random.default_rng(7)
    base = embedding(rng)
    close, farther = embedding(rng, base, 0.01), embedding(rng, base, 0.04)
    await store.upsert_many([
        record("/r/a.jpg", emb=base), record("/r/close.jpg", emb=close), record("/r/farther.jpg", emb=farther),
        record("/r/no-embedding.jpg", signature()), *(record(f"/r/other{i}.jpg", emb=embedding(rng)) for i in range(40)),
    ])
    threshold = (cosine(base, farther) + cosine(base, close)) / 2
    assert cosine(base, farther) > 0.5 and cosine(base, close) > threshold
    found = await store.similar(record("/r/a.jpg", emb=base), 0.5)
    assert [c.record.path for c in found] == ["/r/close.jpg", "/r/farther.jpg"]
    assert found[0].distance == pytest.approx(1 - cosine(base, close), abs=1e-12)
    assert np.array_equal(found[0].record.embedding, close)
    assert [c.record.path for c in await store.similar(record("/r/a.jpg", emb=base), threshold)] == ["/r/close.jpg"]
    assert len(await store.similar(record("/r/a.jpg", emb=base), 0.5, limit=1)) == 1
    assert await store.similar(record("/r/q.jpg"), 0.5) == []


async def test_similar_sees_writes_made_after_it_was_first_asked(backend, store):
    """SQLite keeps the embeddings in memory: its own writes and (after ``refresh``) another
    process's must show."""
    rng = np.random.default_rng(8)
    base = embedding(rng)
    await store.upsert(record("/r/a.jpg", emb=base))
    assert await store.similar(record("/r/a.jpg", emb=base), 0.9) == []
    await store.upsert(record("/r/b.jpg", emb=base))
    assert [c.record.path for c in await store.similar(record("/r/a.jpg", emb=base), 0.9)] == ["/r/b.jpg"]
    other = await backend.store()  # another connection, as another process would have
    await other.upsert(record("/r/c.jpg", emb=base))
    await other.delete("/r/b.jpg")
    await store.refresh()  # another process's writes reach the searches after a refresh
    assert [c.record.path for c in await store.similar(record("/r/a.jpg", emb=base), 0.9)] == ["/r/c.jpg"]


async def test_indexes_set_aside_are_taken_up_again_with_the_writes_made_meanwhile(backend, store):
    """Local mode gives the indexes back once a whole library's lookups are done; a search
    after that (this run's or the next's) answers as if they had been held all along."""
    rng = np.random.default_rng(9)
    base, sig = embedding(rng), signature(rng)
    await store.upsert_many([record("/r/a.jpg", sig, base), record("/r/b.jpg", near(sig), base),
                             *(record(f"/r/other{i}.jpg", signature(rng), embedding(rng)) for i in range(30))])
    asked = record("/r/a.jpg", sig, base)
    assert [c.record.path for c in await store.similar(asked, 0.9)] == ["/r/b.jpg"]
    await store.set_aside()
    await store.set_aside()  # twice: nothing held the second time
    other = await backend.store()
    await other.upsert(record("/r/c.jpg", near(sig), base))
    await store.upsert(record("/r/d.jpg", near(sig), base))
    await other.delete("/r/b.jpg")
    await store.refresh()
    assert sorted(c.record.path for c in await store.similar(asked, 0.9)) == ["/r/c.jpg", "/r/d.jpg"]
    assert sorted(c.record.path for c in await store.candidates(asked, 0.4)) == ["/r/c.jpg", "/r/d.jpg"]


async def test_indexes_taken_up_again_a_chunk_at_a_time_answer_as_before(store, monkeypatch):
    """Elasticsearch's mirror is built MIRROR_CHUNK documents at a time (a million at once
    held 8 GB more); built in chunks of 7, or taken up again from SQLite's saved index, the
    indexes answer every query as before."""
    from shared.store import elasticsearch

    library = _generated_library(np.random.default_rng(23))
    await store.upsert_many(library)

    async def answers():
        return ([[c.record.path for c in found] for found in await store.candidates_many(library, 0.3, 10, turns=True)],
                [[c.record.path for c in found] for found in await store.similar_many(library, 0.8, 10)])

    before = await answers()
    monkeypatch.setattr(elasticsearch, "MIRROR_CHUNK", 7)
    await store.set_aside()
    assert await answers() == before and sum(map(len, before[0])) >= 20 and sum(map(len, before[1])) >= 20


async def test_sqlite_indexes_set_aside_are_saved_and_dropped(tmp_path, monkeypatch):
    """Given back means saved beside the store and no longer held: the next search (here, a
    new process's) loads the files instead of rebuilding them from the records."""
    import shared.store.sqlite as sqlite_store

    store = SQLiteStore(tmp_path / "s.sqlite")
    rng = np.random.default_rng(10)
    base = embedding(rng)
    await store.upsert_many([record(f"/r/{i}.jpg", signature(rng), base) for i in range(3)])
    assert len(await store.similar(record("/r/0.jpg", emb=base), 0.9)) == 2
    await store.set_aside()
    assert store._index is None
    monkeypatch.setattr(sqlite_store, "rebuild", lambda *a, **k: pytest.fail("rebuilt, not loaded"))
    again = SQLiteStore(tmp_path / "s.sqlite")
    assert len(await again.similar(record("/r/0.jpg", emb=base), 0.9)) == 2
    for s in (store, again):
        await s.close()


async def test_every_write_acknowledged_by_concurrent_writers_is_found_by_the_next_search(backend, store):
    """Two writers (as two hashers) write while a reader searches again and again: whatever was
    acknowledged before a search began is found by it, by signature and by embedding, and a
    record written again in between is found as it is now. Elasticsearch's reader catches up
    by sequence numbers while the writes go on; none may fall between two catch-ups."""
    rng = np.random.default_rng(31)
    written = [record(f"/w/{k:03}.jpg", signature(rng), embedding(rng)) for k in range(120)]
    writers = [await backend.store(), await backend.store()]
    acknowledged: list[ImageRecord] = []

    async def write(writer, records):
        for start in range(0, len(records), 3):
            batch = records[start : start + 3]
            await asyncio.gather(*(writer.upsert(r) for r in batch))
            acknowledged.extend(batch)

    async def search() -> int:
        rounds = 0
        while len(acknowledged) < len(written) or rounds < 2:
            seen = list(acknowledged)
            await store.refresh()
            probes = [dataclasses.replace(r, path=r.path.replace("/w/", "/probe/")) for r in seen]
            by_signature = await store.candidates_many(probes, 0.1, limit=5)
            by_embedding = await store.similar_many(probes, 0.99, limit=5)
            for r, sigs, embs in zip(seen, by_signature, by_embedding):
                assert [c.record.path for c in sigs] == [r.path]
                assert [c.record.path for c in embs] == [r.path]
            rounds += 1
        return rounds

    *_, rounds = await asyncio.gather(write(writers[0], written[0::2]), write(writers[1], written[1::2]), search())
    assert rounds >= 3
    changed = dataclasses.replace(written[0], signature=signature(rng), embedding=embedding(rng))
    await writers[1].upsert(changed)
    await store.refresh()
    assert [c.record.path for c in await store.similar(changed, 0.99)] == []  # only itself has it
    probe = dataclasses.replace(changed, path="/probe/changed.jpg")
    assert [c.record.path for c in await store.similar(probe, 0.99)] == [changed.path]
    assert [c.record.path for c in await store.candidates(probe, 0.1)] == [changed.path]
    old = dataclasses.replace(written[0], path="/probe/old.jpg")
    assert await store.similar(old, 0.99) == [] and await store.candidates(old, 0.1) == []


async def test_same_digest_finds_the_byte_identical_others(store):
    await store.upsert(record("/r/a.jpg", digest="11" * 32))
    await store.upsert(record("/r/b.jpg", digest="11" * 32))
    await store.upsert(record("/r/c.jpg", digest="22" * 32))
    await store.upsert(record("/r/d.jpg"))
    assert [r.path for r in await store.same_digest(record("/r/a.jpg", digest="11" * 32))] == ["/r/b.jpg"]
    assert await store.same_digest(record("/r/c.jpg", digest="22" * 32)) == []
    assert await store.same_digest(record("/r/d.jpg")) == []


def _generated_library(rng) -> list[ImageRecord]:
    """Photos with resized, turned, re-encoded (same digest) and cropped (embedding only) copies."""
    out = []
    record = functools.partial(globals()["record"], width=640, height=480)
    for i in range(30):
        sig, emb = signature(rng), embedding(rng)
        digest = f"{i:064x}"
        out.append(record(f"/r/{i:02}.jpg", sig, emb, digest=digest))
        if i % 3 == 0:
            out.append(record(f"/r/{i:02}-small.jpg", near(sig, 25, rng), embedding(rng, emb, 0.02)))
        if i % 5 == 0:
            out.append(record(f"/r/{i:02}-turned.jpg", near(orientations(sig)[3], 10, rng), embedding(rng, emb, 0.03)))
        if i % 7 == 0:
            out.append(record(f"/r/{i:02}-same.jpg", sig, emb, digest=digest))
        if i % 4 == 0:
            out.append(record(f"/r/{i:02}-crop.jpg", signature(rng), embedding(rng, emb, 0.03)))
    return out


async def test_the_batched_queries_give_the_one_at_a_time_answers(store):
    library = _generated_library(np.random.default_rng(21))
    await store.upsert_many(library)
    queries = [*library, record("/r/new.jpg", near(library[0].signature, 20), library[0].embedding)]
    many = await store.candidates_many(queries, 0.3, limit=10, turns=True)
    similar = await store.similar_many(queries, 0.8, limit=10)
    same = await store.same_digest_many(queries)
    assert sum(1 for found in many if found) >= 20 and sum(1 for found in similar if found) >= 20
    for k, q in enumerate(queries):
        assert many[k] == await store.candidates(q, 0.3, limit=10, turns=True)
        assert similar[k] == await store.similar(q, 0.8, limit=10)
        assert same[k] == await store.same_digest(q)


async def _stored_library(store, tmp_path):
    """The generated library stored: its paths, and settings under which its copies group."""
    from shared.config import Settings

    library = _generated_library(np.random.default_rng(22))
    await store.upsert_many(library)
    return [r.path for r in library], Settings(source_directories=[tmp_path], max_dist=0.3, min_similarity=0.8)


def _groups(found):
    return sorted((g.keep.path, sorted(r.path for r, _ in g.remove)) for g in found)


async def test_a_plan_of_the_whole_library_in_batches_gives_the_groups_one_at_a_time_gives(store, monkeypatch, tmp_path):
    from services.matcher import handler
    from shared.image.compare import Agreement

    async def agrees(a, b, turns):
        return Agreement(score=1.0), None

    paths, settings = await _stored_library(store, tmp_path)
    batched = _groups(await handler.plan(paths, store=store, settings=settings, look=agrees))
    monkeypatch.setattr(handler, "BATCH", 1)
    assert _groups(await handler.plan(paths, store=store, settings=settings, look=agrees)) == batched
    # and from any one file: its component, as the whole-library plan found it
    some = next(g for g in batched if len(g[1]) >= 2)
    assert _groups(await handler.plan([some[1][-1]], store=store, settings=settings, look=agrees)) == [some]
    assert len(batched) >= 10 and sum(len(r) for _, r in batched) >= 25


async def test_a_batch_scans_the_embeddings_beside_its_word_lookups(store, monkeypatch, tmp_path):
    """The scan is the longest part of a batch at a million records: the word lookups must not
    keep it from starting (SQLite's one thread served them first, so it waited for them)."""
    import importlib
    import threading

    from services.matcher import handler

    adapter = importlib.import_module(type(store).__module__)
    scan, look_up = adapter.near_embeddings, adapter.near_signatures
    scanning, beside = threading.Event(), []

    def scan_started(*args):
        scanning.set()
        return scan(*args)

    def look_up_once_scanning(*args):
        beside.append(scanning.wait(timeout=5))
        return look_up(*args)

    monkeypatch.setattr(adapter, "near_embeddings", scan_started)
    monkeypatch.setattr(adapter, "near_signatures", look_up_once_scanning)
    paths, settings = await _stored_library(store, tmp_path)
    records = list((await store.get_many(paths)).values())
    found = await handler._candidates(records, store, settings)
    assert beside == [True] and sum(map(len, found)) >= 25


async def test_a_plan_asks_the_ledger_once_for_a_run_of_small_components_and_again_compares_nothing(store, ledger,
                                                                                                    tmp_path):
    """The comparisons of every pair in each small component are asked for together (not a
    round trip per component and per pair), the new ones written together, and a second plan
    recalls them all: the same groups, no pixel looked at."""
    from services.matcher import handler
    from shared.image.compare import Agreement

    looks, asked, written = [], [], []

    async def agrees(a, b, turns):
        looks.append((a, b))
        return Agreement(score=1.0), None

    recall, remember = ledger.recall, ledger.remember

    async def counting_recall(keys):
        asked.append(len(keys))
        return await recall(keys)

    async def counting_remember(found):
        written.append(len(found))
        await remember(found)

    ledger.recall, ledger.remember = counting_recall, counting_remember
    paths, settings = await _stored_library(store, tmp_path)
    first = _groups(await handler.plan(paths, store=store, settings=settings, ledger=ledger, look=agrees))
    assert len(first) >= 10 and len(looks) >= 15
    assert len(asked) == 1 and len(written) == 1 and written[0] == len(looks), (asked, written)
    looks.clear()
    assert _groups(await handler.plan(paths, store=store, settings=settings, ledger=ledger, look=agrees)) == first
    assert looks == [] and len(asked) == 2 and len(written) == 1


# --------------------------------------------------------------------------------------------
# the plan mark


async def test_a_plan_mark_is_set_on_the_revision_planned_only(store):
    a, b = record("/r/a.jpg", signature(), size=1), record("/r/b.jpg", signature(), size=1)
    await store.upsert_many([a, b, record("/r/bad.jpg", error="not an image")])
    assert await store.unplanned("m1") == ["/r/a.jpg", "/r/b.jpg"]  # the bad file has nothing to plan
    await store.upsert(dataclasses.replace(b, size=2))  # b changed after the matcher read it
    marked = await store.mark_planned([dataclasses.replace(a, neighbors=("/r/b.jpg", "/r/caf\udce9.jpg")),
                                       dataclasses.replace(b, neighbors=("/r/a.jpg",))], "m1")
    assert marked == ["/r/a.jpg"]
    got = await store.get_many(["/r/a.jpg", "/r/b.jpg"])
    assert got["/r/a.jpg"].planned == "m1" and got["/r/a.jpg"].neighbors == ("/r/b.jpg", "/r/caf\udce9.jpg")
    assert got["/r/b.jpg"].planned is None and got["/r/b.jpg"].neighbors == ()
    assert await store.unplanned("m1") == ["/r/b.jpg"]
    assert await store.unplanned("m2") == ["/r/a.jpg", "/r/b.jpg"]  # planned under other settings
    await store.mark_planned([await store.get("/r/a.jpg")], None)  # to be planned again
    assert await store.unplanned("m1") == ["/r/a.jpg", "/r/b.jpg"]
    await store.mark_planned([await store.get("/r/a.jpg")], "m1")
    await store.upsert(dataclasses.replace(a, size=5))  # signed again: the mark goes with the old revision
    assert await store.unplanned("m1") == ["/r/a.jpg", "/r/b.jpg"]
    assert (await store.get("/r/a.jpg")).planned is None


async def test_unplanned_pages_in_path_order(store):
    await store.upsert_many([record(f"/r/{i:04}.jpg", signature()) for i in range(25)])
    first = await store.unplanned("m", limit=10)
    assert first == [f"/r/{i:04}.jpg" for i in range(10)]
    assert await store.unplanned("m", after=first[-1], limit=100) == [f"/r/{i:04}.jpg" for i in range(10, 25)]


async def test_a_plan_mark_does_not_change_what_searches_find(store):
    sig = signature()
    await store.upsert_many([record("/r/a.jpg", sig), record("/r/b.jpg", near(sig))])
    [found] = await store.candidates(record("/r/a.jpg", sig), 0.2)
    await store.mark_planned([dataclasses.replace(found.record, neighbors=("/r/a.jpg",))], "m")
    [again] = await store.candidates(record("/r/a.jpg", sig), 0.2)
    assert again.record.path == "/r/b.jpg" and again.record.planned == "m"


async def test_many_writes_at_once_all_arrive_and_a_refused_one_fails_alone(store):
    records = [record(f"/r/{i:03}.jpg", signature(), embedding()) for i in range(60)]
    await asyncio.gather(*(store.upsert(r) for r in records))
    assert set(await store.get_many([r.path for r in records])) == {r.path for r in records}
    if isinstance(store, SQLiteStore):
        return
    broken = record("/r/broken.jpg", signature(), embedding(), width=2**40)  # the mapping's width has 32 bits
    results = await asyncio.gather(store.upsert(broken), store.upsert(record("/r/fine.jpg")), return_exceptions=True)
    assert isinstance(results[0], ValueError) and "/r/broken.jpg" in str(results[0]) and results[1] is None
    assert await store.get("/r/fine.jpg") is not None and await store.get("/r/broken.jpg") is None


# --------------------------------------------------------------------------------------------
# the ledger


async def test_a_pair_is_leased_and_released(ledger):
    assert await ledger.acquire("/r/K", "/r/X", "one")
    assert not await ledger.acquire("/r/K", "/r/X", "two")  # X is being removed
    await ledger.release("/r/K", "/r/X", "one")
    assert await ledger.acquire("/r/K", "/r/X", "two")


async def test_both_files_of_a_pair_are_never_leased_for_removal(ledger):
    assert await ledger.acquire("/r/K", "/r/Y", "one")
    assert not await ledger.acquire("/r/Y", "/r/K", "two")  # K is kept, Y removed
    assert not await ledger.acquire("/r/Z", "/r/K", "two")  # a kept file is not removed
    assert not await ledger.acquire("/r/Y", "/r/Z", "two")  # a file being removed cannot keep
    # the refused attempts left nothing behind: Z is free
    assert await ledger.acquire("/r/W", "/r/Z", "three")


async def test_concurrent_opposite_pairs_never_both_win(backend):
    ledgers = [await backend.ledger(), await backend.ledger()]  # two actuators
    for i in range(15):
        a, b = f"/r/{i}a", f"/r/{i}b"
        won = await asyncio.gather(ledgers[0].acquire(a, b, f"one{i}"), ledgers[1].acquire(b, a, f"two{i}"))
        assert won.count(True) <= 1, (i, won)


async def test_the_kept_file_is_shared_by_two_removals(ledger):
    assert await ledger.acquire("/r/K", "/r/X", "one")
    assert await ledger.acquire("/r/K", "/r/Y", "two")
    await ledger.release("/r/K", "/r/X", "one")
    assert not await ledger.acquire("/r/Z", "/r/K", "three")  # still kept by two
    await ledger.release("/r/K", "/r/Y", "two")
    assert await ledger.acquire("/r/Z", "/r/K", "three")


async def test_an_expired_lease_is_taken_over(backend):
    crashed, alive = await backend.ledger(lease_seconds=1.0), await backend.ledger()
    assert await crashed.acquire("/r/K", "/r/X", "crashed")
    assert not await alive.acquire("/r/X", "/r/K", "next")
    await asyncio.sleep(1.2)
    assert await alive.acquire("/r/X", "/r/K", "next")  # roles swapped: both leases expired
    assert not await crashed.acquire("/r/K", "/r/X", "crashed")


async def test_the_same_owner_may_take_its_lease_again(ledger):
    assert await ledger.acquire("/r/K", "/r/X", "decision-1")
    assert await ledger.acquire("/r/K", "/r/X", "decision-1")  # redelivered
    await ledger.release("/r/K", "/r/X", "decision-1")
    assert await ledger.acquire("/r/X", "/r/K", "decision-2")


async def test_a_file_is_not_its_own_pair(ledger):
    assert not await ledger.acquire("/r/K", "/r/K", "one")


async def test_a_claim_is_refused_to_another_owner_until_released_or_expired(backend):
    one, two = await backend.ledger(), await backend.ledger()
    assert await one.claim(["/r/a", "/r/b"], "m1", 60) == set()
    assert await two.claim(["/r/b", "/r/c"], "m2", 60) == {"/r/b"}  # c is taken, b is not
    assert await one.claim(["/r/a", "/r/b"], "m1", 1) == set()  # taken again: renewed (here: shortened)
    await one.unclaim(["/r/a", "/r/c"], "m1")  # c is m2's: left alone
    assert await two.claim(["/r/a"], "m2", 60) == set()
    assert await one.claim(["/r/c"], "m1", 60) == {"/r/c"}
    await asyncio.sleep(1.2)
    assert await two.claim(["/r/b"], "m2", 60) == set()  # m1's claim on b expired
    # claims and pair leases do not touch each other
    assert await one.acquire("/r/b", "/r/a", "decision")


async def test_concurrent_claims_never_both_win(backend):
    ledgers = [await backend.ledger(), await backend.ledger()]
    for i in range(10):
        paths = [f"/r/{i}-{j}" for j in range(5)]
        refused = await asyncio.gather(ledgers[0].claim(paths, "m1", 60), ledgers[1].claim(paths[::-1], "m2", 60))
        for path in paths:
            assert (path in refused[0]) != (path in refused[1]), (i, path, refused)


async def test_distinct_pairs_are_listed_and_forgotten_in_either_order(ledger):
    for a, b in (("d2", "d1"), ("d3", "d1"), ("d4", "d2")):
        await ledger.mark_distinct(a, b)
    assert await ledger.marked_distinct() == [("d1", "d2"), ("d1", "d3"), ("d2", "d4")]
    await ledger.unmark_distinct("d2", "d1")
    await ledger.unmark_distinct("d9", "d1")  # never marked: nothing happens
    assert await ledger.marked_distinct() == [("d1", "d3"), ("d2", "d4")]
    await ledger.mark_distinct("d3", "d1")  # again, the other way round: still one pair
    assert await ledger.marked_distinct() == [("d1", "d3"), ("d2", "d4")]


async def test_comparisons_are_recalled_by_key_from_another_process(backend, ledger):
    await ledger.remember({"k1": {"score": 0.9, "reason": ""}, "k2": {"score": 0.1, "reason": "moved"}})
    await ledger.remember({"k2": {"score": 0.2, "reason": "moved"}})  # compared again: the newer result
    later = await backend.ledger()  # another run, or another matcher
    assert await later.recall(["k1", "k2", "k3"]) == {"k1": {"score": 0.9, "reason": ""},
                                                    "k2": {"score": 0.2, "reason": "moved"}}
    assert await later.recall([]) == {}
    many = {f"key{i}": {"score": i / 1000} for i in range(1200)}  # more than one query holds
    await later.remember(many)
    assert await ledger.recall(sorted(many)) == many


# --------------------------------------------------------------------------------------------
# one backend only


OLD_SCHEMA = """
CREATE TABLE images (
    id INTEGER PRIMARY KEY, path TEXT NOT NULL UNIQUE, root TEXT NOT NULL, size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL, format TEXT NOT NULL DEFAULT '', width INTEGER NOT NULL DEFAULT 0,
    height INTEGER NOT NULL DEFAULT 0, exif_tags INTEGER NOT NULL DEFAULT 0, exif_date TEXT,
    signature BLOB, error TEXT
);
CREATE TABLE words (pos INTEGER NOT NULL, word INTEGER NOT NULL,
                    image_id INTEGER NOT NULL REFERENCES images(id) ON DELETE CASCADE);
CREATE INDEX words_lookup ON words (pos, word, image_id);
CREATE TABLE claims (path TEXT PRIMARY KEY, role TEXT NOT NULL, keep TEXT NOT NULL);
"""


async def test_an_old_sqlite_file_is_migrated_in_place(tmp_path):
    path = tmp_path / "old.sqlite"
    sig = signature()
    db = sqlite3.connect(path)
    db.executescript(OLD_SCHEMA)
    db.execute("INSERT INTO images (id, path, root, size, mtime_ns, format, signature) VALUES (1, '/r/a.jpg', '/r', 5, 6, 'JPEG', ?)",
               (sig.tobytes(),))
    db.executemany("INSERT INTO words VALUES (?, ?, 1)", list(enumerate(words(sig))))
    db.commit()
    db.close()
    store = SQLiteStore(path)
    try:
        old = await store.get("/r/a.jpg")
        assert np.array_equal(old.signature, sig) and old.format == "JPEG"
        assert old.embedding is None and old.digest is None and old.frames == 1 and old.analysis == 1
        await store.upsert(record("/r/b.jpg", near(sig), embedding(), digest="ee" * 32))
        assert [c.record.path for c in await store.candidates(record("/r/b.jpg", near(sig)), 0.2)] == ["/r/a.jpg"]
        assert (await store.get("/r/b.jpg")).embedding is not None
    finally:
        await store.close()
    store = SQLiteStore(path)  # opened again: nothing left to migrate
    try:
        assert set(await store.get_many(["/r/a.jpg", "/r/b.jpg"])) == {"/r/a.jpg", "/r/b.jpg"}
    finally:
        await store.close()


async def test_an_elasticsearch_that_does_not_answer_is_named_in_one_line():
    from shared.store.elasticsearch import ElasticsearchStore

    store = ElasticsearchStore("http://127.0.0.1:9", "images")  # nothing listens on port 9
    try:
        with pytest.raises(StoreUnavailable, match=r"^Elasticsearch at http://127\.0\.0\.1:9 does not answer") as exc:
            await store.open()
        assert "\n" not in str(exc.value)
    finally:
        await store.close()


@pytest.fixture
async def es_backend(tmp_path):
    if ES_OFF:
        pytest.skip("IMAGE_DEDUP_TEST_ELASTICSEARCH=off")
    b = Backend("elasticsearch", tmp_path)
    yield b
    await b.tear_down()


async def _mapping(backend: Backend, name: str) -> dict:
    from shared.store.elasticsearch import concrete

    store = backend.opened[0]
    return (await store._es.indices.get_mapping(index=name))[concrete(name)]["mappings"]


@pytest.mark.parametrize("how", ["a write", "a read"])
async def test_an_index_that_vanished_is_made_again_with_its_mapping_never_by_a_write(es_backend, caplog, how):
    """Deleted (or lost with the node's data), the index is created again by the services with its
    strict mapping, never auto-created by a write with a guessed one; one warning line says so,
    the store's owner is told (the services rescan), and the request that found it gone is done."""
    from shared.store.elasticsearch import concrete

    store, ledger = await es_backend.store(), await es_backend.ledger()
    told = []

    async def recreated() -> None:
        told.append(1)

    store.recreated = recreated
    sig, emb = signature(), embedding()
    await store.upsert(record("/r/a.jpg", sig, emb))
    await ledger.remember({"k": {"score": 1.0}})
    await store._es.indices.delete(index=[concrete(es_backend.index), concrete(f"{es_backend.index}-ledger")])
    with caplog.at_level(logging.WARNING, logger="shared.store.elasticsearch"):
        if how == "a write":
            await asyncio.gather(store.upsert(record("/r/b.jpg", sig, emb)), store.upsert(record("/r/c.jpg", sig, emb)))
            assert set(await store.get_many(["/r/a.jpg", "/r/b.jpg", "/r/c.jpg"])) == {"/r/b.jpg", "/r/c.jpg"}
        else:
            assert await store.get("/r/a.jpg") is None
            assert await store.candidates(record("/r/q.jpg", sig), 0.2) == []
        assert await ledger.recall(["k"]) == {}
        assert await ledger.acquire("/r/K", "/r/X", "one")
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [f"Elasticsearch index {name} had vanished: created it again, empty, with its mapping"
                     for name in (es_backend.index, f"{es_backend.index}-ledger")], lines
    assert told == [1]
    mapping = await _mapping(es_backend, es_backend.index)
    assert mapping["dynamic"] == "strict" and mapping["properties"]["embedding"]["type"] == "binary"
    assert mapping["properties"]["path"]["type"] == "keyword"
    assert (await _mapping(es_backend, f"{es_backend.index}-ledger"))["dynamic"] == "strict"
    await store.upsert(record("/r/d.jpg", sig, emb))
    assert [c.record.path for c in await store.candidates(record("/r/q.jpg", sig), 0.2)][-1] == "/r/d.jpg"


async def test_a_write_never_creates_an_index(es_backend):
    """Even where nobody can make it again (no vanished hook: a bare store object), a write to a
    missing index fails rather than create one with a guessed mapping."""
    from shared.store.elasticsearch import concrete

    store = await es_backend.store()
    await store._es.indices.delete(index=concrete(es_backend.index))
    store._es.vanished = None
    with pytest.raises(ValueError, match="no such index"):
        await store.upsert(record("/r/a.jpg", signature()))
    assert not await store._es.indices.exists(index=es_backend.index)


async def test_an_alias_made_by_another_process_while_opening_is_not_taken_for_an_earlier_index(es_backend):
    """Services open at once: one makes the index and its alias after another looked for the
    alias. That other must still write only through the alias (never an auto-created index once
    the index is deleted), and must make it again when it vanishes."""
    from shared.store.elasticsearch import ElasticsearchStore, concrete

    await es_backend.store()  # the process that made it
    late = es_backend._opened(ElasticsearchStore(ES_URL, es_backend.index))
    looked = late._es.indices.exists_alias

    async def before_it_was_made(**kwargs):
        late._es.indices.exists_alias = looked  # the next look sees it
        return False

    late._es.indices.exists_alias = before_it_was_made
    await late.open()
    assert late._write == {"require_alias": True}
    await late._es.indices.delete(index=concrete(es_backend.index))
    await late.upsert(record("/r/a.jpg", signature()))
    mapping = await _mapping(es_backend, es_backend.index)
    assert mapping["dynamic"] == "strict" and mapping["properties"]["path"]["type"] == "keyword"
    assert [r.path for r in (await late.get_many(["/r/a.jpg"])).values()] == ["/r/a.jpg"]


async def test_an_index_made_by_an_earlier_version_still_works(es_backend, caplog):
    """An index made when the node searched the words and the vectors itself (63 word fields, a
    vector graph, no ``signed``) is used as it is: its documents are found by the searches and
    by the reconcile beside the ones written now, and one line says it could be renewed."""
    import copy

    from shared.store.elasticsearch import IMAGES_MAPPING, IMAGES_SETTINGS, _hash_id, _to_doc, concrete

    old = copy.deepcopy(IMAGES_MAPPING)
    del old["properties"]["signed"]
    old["properties"].update({f"w{i}": {"type": "keyword", "doc_values": False} for i in range(63)})
    old["properties"]["embedding"] = {"type": "dense_vector", "element_type": "byte", "dims": 512, "index": True,
                                      "similarity": "cosine"}
    sig, emb = signature(), embedding()
    earlier = _to_doc(record("/r/old.jpg", sig, emb), vector=True)
    del earlier["signed"]
    earlier.update({f"w{i}": str(w) for i, w in enumerate(words(sig))})
    store = await es_backend.store()  # made with today's mapping: replaced by the earlier one
    await store._es.indices.delete(index=concrete(es_backend.index))
    await store._es.indices.create(index=concrete(es_backend.index), mappings=old, settings=IMAGES_SETTINGS,
                                   aliases={es_backend.index: {"is_write_index": True}})
    await store._es.index(index=es_backend.index, id=_hash_id("/r/old.jpg"), document=earlier, refresh=True)
    with caplog.at_level(logging.WARNING, logger="shared.store.elasticsearch"):
        store = await es_backend.store()
        await es_backend.store()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 and all("made by an earlier version: it still works" in line for line in lines), lines
    await store.upsert(record("/r/new.jpg", sig, emb))
    assert await store.unplanned("mark") == ["/r/new.jpg", "/r/old.jpg"]
    probe = record("/r/probe.jpg", sig, emb)
    assert [c.record.path for c in await store.similar(probe, 0.99)] == ["/r/new.jpg", "/r/old.jpg"]
    assert [c.record.path for c in await store.candidates(probe, 0.1)] == ["/r/new.jpg", "/r/old.jpg"]
    for path in ("/r/old.jpg", "/r/new.jpg"):
        stored = await store.get(path)
        assert stored.signature.tolist() == sig.tolist() and stored.embedding.tolist() == emb.tolist()
