"""Services that heal themselves: a store outage waited out with the messages in hand, an index
that vanished made again, an announcement lost in a crash made again, a reconcile that plans
what has no plan, dead letters sent back to work, two matchers sharing one backlog. Against the
real RabbitMQ and Elasticsearch (a TCP relay in front of it plays the outages), and real
service processes where the promise is about processes."""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import re
import shutil
import subprocess
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from services.hasher.handler import handle_file_event
from services.matcher.handler import handle_signed, plan_mark, retrieve
from shared.bus import InProcessBus, Outages, Reject
from shared.config import Settings
from shared.image.signature import analyze
from shared.messages import FileEvent, ImageSigned
from shared.store import ImageRecord, StoreUnavailable
from shared.store.sqlite import SQLiteStore
from shared.store.sqlite_ledger import SQLiteLedger
from tests.conftest import FIXTURE_MAX_DIST
from tests.services_support import (  # noqa: F401
    ES_URL, VENV_BIN, Services, TcpProxy, broker_url, dead_letters, es_index, get, local_removed, make_library,
    metric, photo, queue_depths, snapshot, vhost, wait_for,
)


def _prefix() -> str:
    return f"heal-{uuid.uuid4().hex[:8]}"


def _record(path: Path, root: Path) -> ImageRecord:
    """The record a hasher writes for ``path`` (analysed in this process)."""
    st, a = path.stat(), analyze(str(path))
    return ImageRecord(str(path), str(root), st.st_size, st.st_mtime_ns, a.format, a.width, a.height,
                       signature=a.signature, digest=a.digest, frames=a.frames,
                       embedding=a.embedding)


def _no_tracebacks(services: Services) -> None:
    text = services.log_text()
    assert "Traceback" not in text, text
    assert "elastic_transport" not in text, "the client library logs each request"


def _converged(services: Services, files: dict[str, str], expected: set[str], timeout: float) -> None:
    target = set(files) - expected
    wait_for(lambda: snapshot(services.photos) == target, timeout,
             lambda: f"not converged: missing {sorted(target - snapshot(services.photos))[:5]}, "
                     f"extra {sorted(snapshot(services.photos) - target)[:5]}\n{services.log_text()}")
    time.sleep(2)  # and nothing more
    assert snapshot(services.photos) == target
    assert asyncio.run(dead_letters(services.env["IMAGE_DEDUP_BROKER_URL"], services.env["IMAGE_DEDUP_BROKER_PREFIX"])) == []


def _lines(services: Services, pattern: str) -> dict[str, int]:
    """Per service log, how many lines match ``pattern``."""
    return {p.stem: len(re.findall(pattern, p.read_text(errors="replace"))) for p in sorted(services.logs.glob("*.log"))}


@pytest.fixture
def es_world(tmp_path, vhost, es_index):
    """A library, local mode's verdict on a copy of it, and services on Elasticsearch behind a
    relay that plays the outages, with an empty photo root."""
    made: list[tuple[Services, TcpProxy]] = []

    def make(n_photos: int, seed: int, **settings) -> tuple[Services, TcpProxy, Path, dict[str, str], set[str]]:
        library = tmp_path / "library"
        files = make_library(library, n_photos, seed=seed, subfolders=4)
        expected = local_removed(library, tmp_path / "local")
        photos = tmp_path / "photos"
        photos.mkdir()
        proxy = TcpProxy(int(ES_URL.rsplit(":", 1)[1]))
        services = Services(tmp_path / "svc", photos, broker_url(vhost), _prefix(), elasticsearch_url=proxy.url,
                            elasticsearch_index=es_index, **settings)
        made.append((services, proxy))
        return services, proxy, library, files, expected

    yield make
    for services, proxy in made:
        services.stop()
        proxy.close()


# -- in process ---------------------------------------------------------------------------------
async def test_an_outage_is_waited_out_with_the_message_in_hand(caplog):
    """The in-process bus (the daemon) under the failure policy: an outage is not the message's
    fault, so it is neither retried nor dead-lettered, however long it lasts; two lines say when
    it began and ended; a poison message is still dead-lettered at once."""
    state = {"down": True, "probes": 0}
    ran: list[str] = []

    async def probe() -> None:
        state["probes"] += 1
        if state["probes"] < 3:  # down for two probes more
            raise StoreUnavailable("Elasticsearch at http://es:9200 does not answer (refused)")
        state["down"] = False

    async def handler(message) -> None:
        ran.append(message.path)
        if message.path == "poison":
            raise Reject("never works")
        if state["down"]:
            raise StoreUnavailable("Elasticsearch at http://es:9200 does not answer (refused)")

    bus = InProcessBus(max_retries=0, outages=Outages(probe))
    await bus.subscribe("file.event", handler, concurrency=2)
    with caplog.at_level(logging.WARNING, logger="shared.bus"):
        for path in ("a", "b", "poison"):
            await bus.publish(FileEvent(path=path))
        await asyncio.wait_for(bus.join(), 30)
    await bus.close()
    assert [d.message.path for d in bus.dead] == ["poison"]
    assert ran.count("a") == 2 and ran.count("b") in (1, 2) and state["probes"] == 3
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines
    assert lines[0].startswith("Elasticsearch at http://es:9200 does not answer (refused); pausing until it answers")
    assert lines[1].startswith("the outage is over after ")


async def test_an_image_written_but_never_announced_is_announced_again(tmp_path):
    """The hasher died between the write and the announcement: the event comes back (it was
    never acked), the record is there and unchanged, but it was never planned, so it is
    announced again; once planned, a repeated event announces nothing."""
    root = tmp_path / "photos"
    root.mkdir()
    photo(1).save(root / "a.jpg")
    settings = Settings(source_directories=[root], store_path=tmp_path / "s.sqlite", threads=1)
    store = SQLiteStore(settings.store_path)
    announced: list[str] = []

    async def dies(message) -> None:
        raise KeyboardInterrupt  # stands for kill -9: nothing after the write happens

    async def publish(message) -> None:
        announced.append(message.path)

    async def sign(path: str):
        return analyze(path)

    try:
        event = FileEvent(path=str(root / "a.jpg"))
        with pytest.raises(KeyboardInterrupt):
            await handle_file_event(event, store=store, settings=settings, sign=sign, publish=dies)
        assert (await store.get(str(root / "a.jpg"))) is not None
        outcome = await handle_file_event(event, store=store, settings=settings, sign=sign, publish=publish)
        assert outcome.status == "unchanged" and announced == [str(root / "a.jpg")]
        record = await store.get(str(root / "a.jpg"))
        await store.mark_planned([record], plan_mark(settings))
        await handle_file_event(event, store=store, settings=settings, sign=sign, publish=publish)
        assert announced == [str(root / "a.jpg")]
    finally:
        await store.close()


async def test_each_image_is_looked_up_once_and_its_group_is_complete(tmp_path):
    """Batch by batch, each new image is looked up in the indexes once; an image planned before
    is read back (its stored neighbours), so a copy that arrives later still gets the whole
    group, without asking the indexes about the old images again."""
    root = tmp_path / "photos"
    files = make_library(root, 3, seed=9)
    settings = Settings(source_directories=[root], store_path=tmp_path / "s.sqlite", threads=1, max_dist=FIXTURE_MAX_DIST)
    store, ledger = SQLiteStore(settings.store_path), SQLiteLedger(settings.store_path)
    asked: list[str] = []
    real = store.candidates_many

    async def counted(records, *args, **kwargs):
        asked.extend(r.path for r in records)
        return await real(records, *args, **kwargs)

    store.candidates_many = counted  # type: ignore[method-assign]
    published = []

    async def publish(decision) -> None:
        published.append(decision)

    try:
        originals = sorted(str(root / p) for p in files if not p.endswith(" copy.jpg"))
        copies = sorted(str(root / p) for p in files if p.endswith(" copy.jpg"))
        await store.upsert_many([_record(Path(p), root) for p in originals])
        first = await handle_signed(originals, store=store, settings=settings, ledger=ledger, publish=publish, owner="m")
        assert first == [] and sorted(asked) == originals
        assert await store.unplanned(plan_mark(settings)) == []
        asked.clear()
        await store.upsert_many([_record(Path(p), root) for p in copies])
        second = await handle_signed(copies, store=store, settings=settings, ledger=ledger, publish=publish, owner="m")
        assert sorted(asked) == copies, "the originals were looked up again"
        assert sorted((d.keep.path, tuple(r.path for r in d.remove)) for d in second) == [
            (o, (c,)) for o, c in zip(originals, copies)]
        asked.clear()
        again = await handle_signed(copies + originals, store=store, settings=settings, ledger=ledger,
                                    publish=publish, owner="m")
        assert again == [] and asked == [], "announced again, a planned image is not planned again"
    finally:
        await store.close()
        await ledger.close()


async def test_a_record_written_by_one_hasher_is_found_by_the_plan_that_follows(es_index):
    """Hashers write without waiting for a refresh; a matcher refreshes once per batch, so a
    record written (by any process) before the batch's message is found by it. Two writers at
    once, a reader that plans right after each pair was written."""
    from shared.store.elasticsearch import ElasticsearchStore

    import numpy as np

    rng = np.random.default_rng(4)
    stores = [ElasticsearchStore(ES_URL, es_index) for _ in range(3)]
    for s in stores:
        await s.open()
    one, two, matcher = stores
    settings = Settings(source_directories=["/r"], max_dist=0.2)
    try:
        pairs = []
        for i in range(40):
            sig = rng.integers(-2, 3, 648).astype(np.int8)
            twin = sig.copy()
            twin[:12] = np.clip(twin[:12] + 1, -2, 2)
            pairs.append((ImageRecord(f"/r/{i}a.jpg", "/r", 1, 1, signature=sig),
                          ImageRecord(f"/r/{i}b.jpg", "/r", 1, 1, signature=twin)))
        for a, b in pairs:
            await asyncio.gather(one.upsert(a), two.upsert(b))
            await matcher.refresh()  # what the matcher does before each batch
            found = await retrieve([b.path], store=matcher, settings=settings)
            assert [sorted(part) for part, _ in found.parts()] == [[a.path, b.path]]
    finally:
        for s in stores:
            await s.close()


# -- service processes --------------------------------------------------------------------------
def test_a_store_that_refuses_then_hangs_costs_no_message_and_two_lines(es_world):
    """Elasticsearch refusing connections, then frozen (every connection open, not a byte
    passed), in the middle of an import: the services wait, 503 on /readyz, with the messages
    in hand; then they end exactly where local mode ends, with no dead letter, one line when
    the outage began and one when it ended, and no traceback."""
    services, proxy, library, files, expected = es_world(30, seed=11, max_retries=1)
    ports = {role: services.start(role)[1] for role in ("watcher", "hasher", "hasher", "matcher", "actuator")}
    services.wait_ready(timeout=120)
    hashers = [p for role, _, p in services.procs if role == "hasher"]
    # half the files arrive while the store refuses, so the hashers have work in hand then
    # (on a quiet machine they would otherwise have signed all of them before it began)
    later = set(sorted(f for f in library.rglob("*") if f.is_file())[1::2])
    shutil.copytree(library, services.photos, dirs_exist_ok=True,
                    ignore=lambda folder, names: [n for n in names if Path(folder, n) in later])
    signed_by = lambda p: metric(get(p, "/metrics")[1], "image_dedup_hasher_images_signed_total")
    signed = lambda: sum(signed_by(p) for p in hashers)
    wait_for(lambda: signed() >= 4, 90, lambda: f"nothing signed\n{services.log_text()}", interval=0.1)
    proxy.refuse()
    for f in sorted(later):
        (services.photos / f.relative_to(library)).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(f, services.photos / f.relative_to(library))
    # a hasher meets the outage at its next request; 60 s leaves room for a loaded machine
    wait_for(lambda: any(get(p, "/readyz")[0] == 503 and "store unavailable" in get(p, "/readyz")[1]
                         for p in hashers), 60,
             lambda: f"ready while the store refuses; signed {[signed_by(p) for p in hashers]}, "
                     f"readyz {[get(p, '/readyz') for p in hashers]}\n{services.log_text()}")
    time.sleep(1)  # what was written before the relay closed may still be announced
    before = signed()
    time.sleep(5)
    assert signed() == before, "signed while the store refused"
    proxy.resume()
    time.sleep(2)
    proxy.freeze()
    time.sleep(8)
    proxy.resume()
    _converged(services, files, expected, timeout=240)
    _no_tracebacks(services)
    began, ended = _lines(services, r"pausing until it answers"), _lines(services, r"the outage is over after")
    assert began == ended and all(n <= 1 for n in began.values()), began
    assert all(began[f"hasher-{i}"] == 1 for i in range(2)), began
    for p in ports.values():
        assert get(p, "/readyz") == (200, "ready\n")


def test_an_index_deleted_mid_run_is_made_again_with_its_mapping_and_the_run_converges(es_world):
    from shared.store.elasticsearch import concrete

    services, proxy, library, files, expected = es_world(24, seed=12)
    for role in ("watcher", "hasher", "hasher", "matcher", "actuator"):
        services.start(role)
    services.wait_ready(timeout=120)
    hashers = [p for role, _, p in services.procs if role == "hasher"]
    shutil.copytree(library, services.photos, dirs_exist_ok=True)
    wait_for(lambda: sum(metric(get(p, "/metrics")[1], "image_dedup_hasher_images_signed_total") for p in hashers) >= 8,
             90, lambda: f"nothing signed\n{services.log_text()}", interval=0.1)
    index = services.env["IMAGE_DEDUP_ELASTICSEARCH_INDEX"]
    urllib.request.urlopen(urllib.request.Request(f"{ES_URL}/{concrete(index)}", method="DELETE"), timeout=30).close()
    _converged(services, files, expected, timeout=240)
    _no_tracebacks(services)
    made = _lines(services, rf"Elasticsearch index {index} had vanished: created it again")
    assert sum(made.values()) == 1, made
    assert sum(_lines(services, "asking the watcher to rescan").values()) == 1
    with urllib.request.urlopen(f"{ES_URL}/{index}/_mapping", timeout=30) as answer:
        mapping = json.loads(answer.read())[concrete(index)]["mappings"]
    assert mapping["dynamic"] == "strict" and mapping["properties"]["embedding"]["type"] == "binary"


def test_the_reconcile_plans_what_was_stored_but_never_announced(es_world):
    """Records in the store that no message will ever announce (their announcements were lost):
    the matcher's reconcile finds them and plans them, and the duplicates are moved as local
    mode moves them."""
    services, proxy, library, files, expected = es_world(10, seed=13, reconcile_interval=2)
    shutil.copytree(library, services.photos, dirs_exist_ok=True)

    async def store_them() -> None:
        from shared.store.elasticsearch import ElasticsearchStore

        store = ElasticsearchStore(ES_URL, services.env["IMAGE_DEDUP_ELASTICSEARCH_INDEX"])
        await store.open()
        try:
            await store.upsert_many([_record(services.photos / p, services.photos) for p in sorted(files)])
        finally:
            await store.close()

    asyncio.run(store_them())
    for role in ("hasher", "matcher", "actuator"):  # no watcher: nothing else announces them
        services.start(role)
    services.wait_ready(timeout=120)
    _converged(services, files, expected, timeout=120)
    assert sum(_lines(services, r"reconcile: \d+ stored images had no plan; planned them").values()) >= 1


def test_dead_letters_are_listed_and_sent_back_to_work_once_their_cause_is_fixed(es_world):
    services, proxy, library, files, expected = es_world(6, seed=14)
    broken = sorted(p for p in files if p.endswith(" copy.jpg"))[0]
    shutil.copytree(library, services.photos, dirs_exist_ok=True)
    (services.photos / broken).write_bytes(b"not an image yet")  # still being copied, say
    for role in ("watcher", "hasher", "matcher", "actuator"):
        services.start(role)
    services.wait_ready(timeout=120)
    url, prefix = services.env["IMAGE_DEDUP_BROKER_URL"], services.env["IMAGE_DEDUP_BROKER_PREFIX"]
    said = lambda: sum(_lines(services, rf"dead-lettered file\.event {re.escape(str(services.photos / broken))}: ").values())
    wait_for(lambda: said() == 1, 120, lambda: f"no dead letter\n{services.log_text()}")
    assert asyncio.run(queue_depths(url, prefix))[f"{prefix}.dead"][0] == 1
    _no_tracebacks(services)
    command = lambda *args: subprocess.run([str(VENV_BIN / "image-dedup"), "dead-letters", *args], env=services.env,
                                           capture_output=True, text=True, timeout=60)
    listed = command("list")
    assert listed.returncode == 0, listed.stderr
    assert f"file.event {services.photos / broken}: " in listed.stdout and "1 dead letters" in listed.stdout
    assert command("retry", "--reason", "no such reason").stdout.startswith("sent 0 dead letters back to work; 1 left")
    shutil.copy2(library / broken, services.photos / broken)  # the cause is fixed
    # (its mtime is the library's again; a rescan would not see it as changed: the retry does)
    retried = command("retry", "--reason", "IMAGE")
    assert retried.returncode == 0 and retried.stdout.startswith("sent 1 dead letters back to work; 0 left"), retried
    _converged(services, files, expected, timeout=120)


def test_two_matchers_share_one_backlog_and_decide_each_group_once(tmp_path, vhost, es_index):
    """A backlog of signed images announced to two matcher processes: both plan a share of it
    (the ledger's claims keep them off each other's components), every group is decided once,
    and the decisions are local mode's."""
    from shared.bus.rabbitmq import RabbitBus
    from shared.store.elasticsearch import ElasticsearchStore

    library = tmp_path / "library"
    files = make_library(library, 24, seed=15, subfolders=4)
    # the generated photos are alike enough (cosine up to 0.75) to link them all into one
    # component at the default 0.55; a component is planned by one matcher, so: one per photo
    expected = local_removed(library, tmp_path / "local", min_similarity=0.85)
    services = Services(tmp_path / "svc", library, broker_url(vhost), _prefix(), elasticsearch_url=ES_URL,
                        elasticsearch_index=es_index, match_delay=0.5, min_similarity=0.85)
    url, prefix = services.env["IMAGE_DEDUP_BROKER_URL"], services.env["IMAGE_DEDUP_BROKER_PREFIX"]
    decisions = []

    async def fill_and_announce() -> None:
        store = ElasticsearchStore(ES_URL, es_index)
        await store.open()
        try:
            await store.upsert_many([_record(library / p, library) for p in sorted(files)])
        finally:
            await store.close()
        bus = await RabbitBus(url, prefix).connect()
        for p in sorted(files):
            await bus.publish(ImageSigned(path=str(library / p)))
        await bus.close()

    async def collect() -> None:
        bus = await RabbitBus(url, prefix, service="test").connect()

        async def keep(message) -> None:
            decisions.append(message)

        await bus.subscribe("group.decision", keep, concurrency=50)
        deadline = time.monotonic() + 240
        while sum(len(d.remove) for d in decisions) < len(expected) and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        await asyncio.sleep(3)  # and nothing more
        await bus.close()

    try:
        ports = [services.start("matcher")[1] for _ in range(2)]
        services.wait_ready(timeout=120)
        asyncio.run(fill_and_announce())
        asyncio.run(collect())
        groups = [metric(get(p, "/metrics")[1], "image_dedup_matcher_duplicate_groups_total") for p in ports]
    finally:
        services.stop()
    _no_tracebacks(services)
    keepers = collections.Counter(d.keep.path for d in decisions)
    assert all(n == 1 for n in keepers.values()), [k for k, n in keepers.items() if n > 1]
    removed = [r.path for d in decisions for r in d.remove]
    assert len(removed) == len(set(removed))
    assert {str(Path(p).relative_to(library)) for p in removed} == expected
    assert sum(groups) == len(keepers) == 24, groups  # (how the work is shared: bench/services_throughput.py)
