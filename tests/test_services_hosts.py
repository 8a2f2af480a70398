"""Services that span hosts and restarts: processes that die with their service, messages that
are refused loudly (dead-lettered with the reason), quiet logs through a broker restart, and
per-service metrics. Against the real RabbitMQ and real service processes."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path

from PIL import Image

from services.hasher.handler import handle_file_event
from services.runner import Context, start_actuator, start_matcher, start_watcher
from shared.bus.rabbitmq import RabbitBus
from shared.config import Settings
from shared.image.signature import analyze
from shared.messages import Decision, FileEvent, FileRef, ImageSigned, Removal, Rescan, encode
from shared.store.sqlite import SQLiteStore
from shared.store.sqlite_ledger import SQLiteLedger
from tests.services_support import (  # noqa: F401
    ES_URL, VENV_BIN, Services, broker_url, dead_letters, es_index, get, local_removed, make_library, metric, photo,
    queue_depths, rabbitmqctl, snapshot, vhost, wait_for,
)


def _prefix() -> str:
    return f"h-{uuid.uuid4().hex[:8]}"


def _parents() -> dict[int, int]:
    """{pid: parent pid} of every live (not zombie) process."""
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        state, ppid = stat.rsplit(")", 1)[1].split()[:2]
        if state != "Z":
            out[int(entry)] = int(ppid)
    return out


def _descendants(pid: int) -> set[int]:
    parents = _parents()
    found, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, pp in parents.items() if pp in frontier} - found
        found |= frontier
    return found


async def wait_for_async(condition, timeout: float) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("timed out")
        await asyncio.sleep(0.05)


async def _publish(url: str, prefix: str, *messages) -> None:
    bus = await RabbitBus(url, prefix, service="test").connect()
    try:
        for message in messages:
            await bus.publish(message)
    finally:
        await bus.close()


def test_decoder_processes_die_with_a_killed_hasher(tmp_path, vhost):
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(4):
        photo(i).save(photos / f"{i}.jpg")
    services = Services(tmp_path / "svc", photos, broker_url(vhost), _prefix(), threads=2)
    try:
        proc, port = services.start("hasher")
        services.wait_ready()
        asyncio.run(_publish(services.env["IMAGE_DEDUP_BROKER_URL"], services.env["IMAGE_DEDUP_BROKER_PREFIX"],
                             *(FileEvent(path=str(p)) for p in sorted(photos.iterdir()))))
        wait_for(lambda: metric(get(port, "/metrics")[1], "image_dedup_hasher_images_signed_total") == 4, 60,
                 lambda: services.log_text())
        children = {p for p, pp in _parents().items() if pp == proc.pid}
        workers = {p for p, pp in _parents().items() if pp in children}  # below the forkserver
        assert workers, "no decoder process found"
        left = _descendants(proc.pid)
        os.kill(proc.pid, signal.SIGKILL)  # the service alone, not its process group
        proc.wait(10)
        wait_for(lambda: not (left & set(_parents())), 5,
                 lambda: f"survived their service: {sorted(left & set(_parents()))}")
    finally:
        services.stop()


async def test_a_deleted_event_for_a_file_that_is_there_keeps_its_record(tmp_path):
    """Events can arrive late (a file replaced in place): the disk, not the event, decides."""
    root = tmp_path / "photos"
    root.mkdir()
    path = root / "a.jpg"
    photo(1).save(path)
    settings = Settings(source_directories=[root], store_path=tmp_path / "s.sqlite", threads=1)
    store = SQLiteStore(settings.store_path)
    published = []

    async def sign(p):
        return await asyncio.to_thread(analyze, p)

    async def publish(message):
        published.append(message)

    handle = lambda change: handle_file_event(FileEvent(path=str(path), change=change), store=store,
                                              settings=settings, sign=sign, publish=publish)
    try:
        assert (await handle("upsert")).status == "signed"
        assert (await handle("deleted")).status == "unchanged"
        assert (await store.get(str(path))).signature is not None
        path.unlink()
        assert (await handle("deleted")).status == "forgotten"
        assert await store.get(str(path)) is None
    finally:
        await store.close()


async def test_refused_paths_are_dead_lettered_with_the_reason(tmp_path, vhost):
    """Matcher, actuator and watcher refuse paths outside the roots (and a rescan through a
    symbolic link) by dead-lettering them, never by acking them as done."""
    url, prefix = broker_url(vhost), _prefix()
    root, outside = tmp_path / "photos", tmp_path / "outside"
    (root / "album").mkdir(parents=True)
    outside.mkdir()
    (root / "link").symlink_to(outside)
    inside = root / "album" / "a.jpg"
    photo(1).save(inside)
    photo(1).save(outside / "b.jpg")
    settings = Settings(source_directories=[root], store_path=tmp_path / "s.sqlite", match_delay=0.1,
                        journal_directory=tmp_path / "journals", dry_run=False)
    store, ledger = SQLiteStore(settings.store_path), SQLiteLedger(settings.store_path)
    bus = await RabbitBus(url, prefix, service="test").connect()
    ctx = Context(settings, store, bus, ledger)
    ref = lambda p: FileRef(path=str(p), size=p.stat().st_size, mtime_ns=p.stat().st_mtime_ns)
    escaped = f"{root}/../outside/b.jpg"
    refused = [
        (ImageSigned(path=str(outside / "b.jpg")), "not below a configured root"),
        (ImageSigned(path=escaped), "not below a configured root"),
        (Decision(keep=ref(inside), remove=[Removal(**ref(outside / "b.jpg").model_dump(), distance=0)]),
         "not below a configured root"),
        (Decision(keep=FileRef(**{**ref(outside / "b.jpg").model_dump(), "path": escaped}),
                  remove=[Removal(**ref(inside).model_dump(), distance=0)]), "not below a configured root"),
        (Rescan(path=str(root / "link")), "symbolic link"),
        (Rescan(path=str(outside)), "not a configured root or below one"),
    ]
    try:
        for start in (start_matcher, start_actuator, start_watcher):
            await start(ctx)
        for message, _ in refused:
            await bus.publish(message)
        await bus.publish(ImageSigned(path=str(inside)))  # fine: acked, not dead-lettered
        await bus.publish(Rescan(path=str(root / "album")))
        for _ in range(200):  # the refused ones dead, the rest taken (file.event has no consumer here)
            depths = await queue_depths(url, prefix)
            if depths[f"{prefix}.dead"][0] >= len(refused) and all(
                    depths[f"{prefix}.{kind}"][0] == 0 for kind in ("watcher.rescan", "image.signed", "group.decision")):
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)
    finally:
        for task in ctx.tasks:
            task.cancel()
        await bus.close()
        await store.close()
        await ledger.close()
    letters = {body: headers["x-death-reason"] for body, headers in await dead_letters(url, prefix)}
    expected = {encode(m): why for m, why in refused}
    assert set(letters) == set(expected), letters
    for body, why in expected.items():
        assert why in letters[body], (body, letters[body])
    assert inside.exists() and (outside / "b.jpg").exists()


def test_rescan_cli_refuses_a_folder_outside_the_roots_or_through_a_symlink(tmp_path, vhost):
    url, prefix = broker_url(vhost), _prefix()
    root, outside = tmp_path / "photos", tmp_path / "outside"
    (root / "album").mkdir(parents=True)
    outside.mkdir()
    (root / "link").symlink_to(outside)
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGE_DEDUP_")}
    env.update(IMAGE_DEDUP_SOURCE_DIRECTORIES=json.dumps([str(root)]), IMAGE_DEDUP_BROKER_URL=url,
               IMAGE_DEDUP_BROKER_PREFIX=prefix, XDG_CONFIG_HOME=str(tmp_path / "config"))

    async def declare_and_count() -> int:
        await (await RabbitBus(url, prefix, service="test").connect()).close()
        return (await queue_depths(url, prefix))[f"{prefix}.watcher.rescan"][0]

    assert asyncio.run(declare_and_count()) == 0
    rescan = lambda path: subprocess.run([str(VENV_BIN / "image-dedup"), "rescan", str(path)], env=env,
                                         capture_output=True, text=True, timeout=60)
    for path, why in ((outside, "not a configured root or below one"), (root / "link", "symbolic link")):
        done = rescan(path)
        assert done.returncode == 2 and done.stdout == "", done
        assert done.stderr.count("\n") == 1 and "rescan refused" in done.stderr and why in done.stderr, done.stderr
    assert asyncio.run(declare_and_count()) == 0
    assert rescan(root / "album").returncode == 0
    assert asyncio.run(declare_and_count()) == 1


async def test_a_lost_connection_costs_one_log_line_not_one_per_message(vhost, caplog):
    """Messages in hand when the broker drops the connection cannot be acked; the broker
    redelivers them. That is one event, so it is one line when it happens and one when it is
    over, without tracebacks."""
    url, prefix = broker_url(vhost), _prefix()
    bus = await RabbitBus(url, prefix, service="test").connect()
    release = asyncio.Event()
    seen: list[str] = []

    async def handler(message):
        seen.append(message.path)
        await release.wait()

    caplog.set_level(logging.WARNING)
    try:
        await bus.subscribe("file.event", handler, concurrency=30)
        for i in range(30):
            await bus.publish(FileEvent(path=f"/p/{i}.jpg"))
        wait = lambda condition: wait_for_async(condition, 20)
        await wait(lambda: len(seen) == 30)
        rabbitmqctl("close_all_connections", "-p", vhost, "test: broker restart")
        await wait(lambda: not bus.ready)
        await wait(lambda: bus.ready)
        release.set()  # the handlers finish on the dead channel, then get their messages again
        await wait(lambda: len(seen) == 60)
        await bus.drain(10)
    finally:
        await bus.close()
    assert sorted(seen) == sorted(f"/p/{i}.jpg" for i in range(30) for _ in range(2))  # redelivered once
    lines = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert not [r for r in lines if r.exc_info], [r.getMessage() for r in lines if r.exc_info]
    assert [r.getMessage().split(" (")[0].split(" after")[0] for r in lines] == [
        "lost the broker connection", "reconnected to the broker"]
    assert "CONNECTION_FORCED" in lines[0].getMessage()


def test_each_service_exports_its_own_metrics_and_the_matcher_times_only_its_work(tmp_path, vhost):
    from prometheus_client.parser import text_string_to_metric_families

    photos = tmp_path / "photos"
    photos.mkdir()
    make_library(tmp_path / "library", 3, seed=7)
    services = Services(tmp_path / "svc", photos, broker_url(vhost), _prefix(), match_delay=2)
    try:
        ports = {role: services.start(role)[1] for role in ("watcher", "hasher", "matcher", "actuator")}
        services.wait_ready()
        shutil.copytree(tmp_path / "library", photos, dirs_exist_ok=True)
        wait_for(lambda: metric(get(ports["actuator"], "/metrics")[1], "image_dedup_actuator_actions_total",
                                status="done") == 3, 60, lambda: services.log_text())
        scraped = {role: get(port, "/metrics")[1] for role, port in ports.items()}
    finally:
        services.stop()
    common = {"messages": "counter", "message_processing_seconds": "histogram"}
    expected = {
        "watcher": {**common, "rescans": "counter", "file_events_published": "counter"},
        "hasher": {**common, "images_signed": "counter"},
        "matcher": {"messages": "counter", "duplicate_groups": "counter", "batch_processing_seconds": "histogram"},
        "actuator": {**common, "actions": "counter"},
    }
    for role, text in scraped.items():
        families = {f.name: f.type for f in text_string_to_metric_families(text) if f.name.startswith("image_dedup_")}
        assert families == {f"image_dedup_{role}_{name}": kind for name, kind in expected[role].items()}, role
        assert f"image_dedup_{role}_messages_total" in text  # counters carry the _total suffix
    matcher = scraped["matcher"]
    batches = metric(matcher, "image_dedup_matcher_batch_processing_seconds_count")
    # (a file the watcher saw change twice while it was copied is published, signed and matched twice)
    assert batches >= 1 and metric(matcher, "image_dedup_matcher_messages_total", outcome="ok") >= 6
    assert metric(matcher, "image_dedup_matcher_batch_processing_seconds_sum") < 2 * batches  # no batch wait
    assert metric(scraped["hasher"], "image_dedup_hasher_images_signed_total") >= 6
    assert metric(scraped["watcher"], "image_dedup_watcher_file_events_published_total") >= 6


def test_services_on_hosts_of_their_own_move_what_local_mode_moves_and_undo_takes_every_journal(
        tmp_path, vhost, es_index):
    """A watcher, two hashers, two matchers and two actuators, each with its own HOME,
    temporary folder, journals and duplicates folder, sharing only the photos, RabbitMQ and
    Elasticsearch: they move exactly the files local mode removes (also when a better copy of a
    kept photo arrives later), no SQLite file is made anywhere, and one ``undo`` of all the
    actuators' journals brings every file back."""
    library = tmp_path / "library"
    files = make_library(library, 16, seed=5, subfolders=4)
    expected = local_removed(library, tmp_path / "local")
    photos = tmp_path / "photos"
    shutil.copytree(library, photos)  # found by the watcher's start-up scan
    hosts = tmp_path / "hosts"
    services = Services(tmp_path / "svc", photos, broker_url(vhost), _prefix(), action="move",
                        elasticsearch_url=ES_URL, elasticsearch_index=es_index)
    try:
        for role, n in (("watcher", 1), ("hasher", 2), ("matcher", 2), ("actuator", 2)):
            for i in range(n):
                services.start(role, host=hosts / f"{role}-{i}")
        services.wait_ready(timeout=120)
        removed = lambda: set(files) - snapshot(photos)  # noqa: E731
        wait_for(lambda: removed() == expected, 180,
                 lambda: f"moved {sorted(removed() ^ expected)[:6]} apart from local mode\n{services.log_text()}")
        time.sleep(3)  # and nothing more
        assert removed() == expected
        # a copy of a kept photo with twice its pixels, and older (restored from a backup, say: so
        # it cannot be a copy made from the kept one), arrives after the run converged: it is the
        # better copy now, and the old keeper is moved for it, as local mode would (a newer
        # decision supersedes the one that kept it)
        kept, bigger = photos / "album0" / "img0000.jpg", photos / "album0" / "img0000 big.jpg"
        with Image.open(kept) as img:
            img.resize((img.width * 2, img.height * 2), Image.LANCZOS).save(bigger, quality=95)
        older = kept.stat().st_mtime - 3600
        os.utime(bigger, (older, older))
        wait_for(lambda: not kept.exists(), 120, lambda: f"the old keeper stayed\n{services.log_text()}")
        time.sleep(3)
        assert bigger.exists() and removed() == expected | {"album0/img0000.jpg"}
    finally:
        services.stop()
    moved = {str(p.relative_to(d / "photos")) for d in hosts.glob("actuator-*/duplicates") for p in d.rglob("*")
             if p.is_file()}
    assert moved == expected | {"album0/img0000.jpg"}, "each actuator moved into its own duplicates folder"
    journals = sorted(hosts.glob("*/journals/*.jsonl"))
    assert journals and {j.parts[-3] for j in journals} <= {"actuator-0", "actuator-1"}
    assert not [p for p in tmp_path.rglob("*.sqlite*") if "local" not in p.relative_to(tmp_path).parts], \
        "with Elasticsearch no service keeps a store file"
    undone = subprocess.run([str(VENV_BIN / "image-dedup"), "undo", *map(str, journals)], env=services.env,
                            capture_output=True, text=True, timeout=120)
    assert undone.returncode == 0, undone.stderr
    assert snapshot(photos) == set(files) | {"album0/img0000 big.jpg"}, undone.stdout


async def _watched(tmp_path: Path, copy_in, **settings) -> list[str]:
    """The paths the watcher service publishes (in process) while ``copy_in(root)`` runs after
    its start; it returns once ``copy_in``'s files were all published (or 20 s passed)."""
    from shared.bus import InProcessBus

    root = tmp_path / "photos"
    root.mkdir()
    settings = Settings(source_directories=[root], store_path=tmp_path / "s.sqlite", watch_debounce=0.2, **settings)
    store, ledger, bus = SQLiteStore(settings.store_path), SQLiteLedger(settings.store_path), InProcessBus()
    published: list[str] = []

    async def on_event(message) -> None:
        published.append(message.path)

    ctx = Context(settings, store, bus, ledger)
    await bus.subscribe("file.event", on_event)
    try:
        await start_watcher(ctx)
        expected = await copy_in(root)
        deadline = time.monotonic() + 20
        while not expected <= set(published) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert not ctx.failed
        return published
    finally:
        for task in ctx.tasks:
            task.cancel()
        await asyncio.gather(*ctx.tasks, return_exceptions=True)
        await bus.close()
        await store.close()
        await ledger.close()


async def _copy_album(root: Path) -> set[str]:
    await asyncio.sleep(0.5)  # after the start-up rescan
    album = root / "album"
    album.mkdir()
    for i in range(3):
        photo(i).save(album / f"{i}.jpg")
    return {str(album / f"{i}.jpg") for i in range(3)}


async def test_the_watcher_polls_the_roots_when_asked(tmp_path):
    """watch_poll: a network share changed by other hosts sends no inotify events; polling sees them."""
    published = await _watched(tmp_path, _copy_album, watch_poll=0.3)
    assert {p.rsplit("/", 2)[-2] for p in published} == {"album"} and len(set(published)) == 3


async def test_the_watcher_polls_where_the_system_cannot_watch(tmp_path, monkeypatch, caplog):
    """With inotify's instances used up, the watcher says so in one line and polls instead (and
    rescans, so what changed while it switched is not missed), rather than staying up, deaf."""
    import ctypes

    from services import runner

    monkeypatch.setattr(runner, "WATCH_POLL_FALLBACK", 0.3)
    libc = ctypes.CDLL(None, use_errno=True)
    held = []
    while (fd := libc.inotify_init()) >= 0:  # a real shortage, for as short as possible
        held.append(fd)

    async def release_then_copy(root: Path) -> set[str]:
        await asyncio.sleep(0.2)  # the watch was set up (and failed) at the start
        for fd in held:
            os.close(fd)
        held.clear()
        return await _copy_album(root)

    try:
        with caplog.at_level(logging.WARNING, logger="image_dedup.services"):
            published = await _watched(tmp_path, release_then_copy)
    finally:
        for fd in held:
            os.close(fd)
    assert len(set(published)) == 3, published
    said = [r.getMessage() for r in caplog.records if "cannot watch" in r.getMessage()]
    assert len(said) == 1 and "\n" not in said[0] and said[0].endswith("; polling them every 0.3s instead"), said


async def test_a_failed_background_part_stops_its_service_with_status_1(tmp_path, caplog):
    """Up, ready and deaf is the worst state for a service: its supervisor restarts a stopped one."""
    async def broken() -> None:
        raise RuntimeError("watch lost\nsecond line")

    ctx = Context(Settings(source_directories=[tmp_path]), None, None, None)  # type: ignore[arg-type]
    with caplog.at_level(logging.ERROR, logger="image_dedup.services"):
        ctx.spawn(broken(), "the live watch")
        await asyncio.gather(*ctx.tasks, return_exceptions=True)
        await asyncio.sleep(0)  # the done callbacks run
    assert ctx.failed and ctx.stopping.is_set()
    assert [r.getMessage() for r in caplog.records] == ["the live watch stopped (watch lost); stopping the service"]
    ctx = Context(Settings(source_directories=[tmp_path]), None, None, None)  # type: ignore[arg-type]
    ctx.spawn(asyncio.sleep(10), "the live watch")
    ctx.tasks[0].cancel()  # a service stopping cancels its background parts: no failure
    await asyncio.gather(*ctx.tasks, return_exceptions=True)
    await asyncio.sleep(0)
    assert not ctx.failed and not ctx.stopping.is_set()
