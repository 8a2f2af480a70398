"""Services mode end to end: the services as separate OS processes over the real RabbitMQ,
compared with what local mode decides on an identical copy of the photos."""

from __future__ import annotations

import asyncio
import collections
import shutil
import sqlite3
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from PIL import Image

from tests.services_support import (  # noqa: F401
    VENV_BIN, Services, broker_url, dead_letters, free_port, get, local_removed, make_library, metric, queue_depths,
    rabbitmqctl, snapshot, vhost, wait_for,
)


@pytest.fixture
def world(tmp_path, vhost):
    """A library, its local-mode verdict, and a services environment with an empty photo root."""
    created: list[Services] = []

    def make(n_photos: int, seed: int, **settings) -> tuple[Services, Path, dict[str, str], set[str]]:
        library = tmp_path / "library"
        files = make_library(library, n_photos, seed=seed, subfolders=4)
        expected = local_removed(library, tmp_path / "local")
        assert expected and all(p.endswith(" copy.jpg") for p in expected)
        photos = tmp_path / "photos"
        photos.mkdir()
        services = Services(tmp_path / "svc", photos, broker_url(vhost), f"e2e-{uuid.uuid4().hex[:8]}", **settings)
        created.append(services)
        return services, library, files, expected

    yield make
    for services in created:
        services.stop()


def _wait_done(services: Services, files: dict[str, str], expected: set[str], timeout: float) -> None:
    target = set(files) - expected
    wait_for(lambda: snapshot(services.photos) == target, timeout,
             lambda: f"not converged: missing {sorted(target - snapshot(services.photos))[:5]}, "
                     f"extra {sorted(snapshot(services.photos) - target)[:5]}\n{services.log_text()}")
    depths = asyncio.run(queue_depths(services.env["IMAGE_DEDUP_BROKER_URL"], services.env["IMAGE_DEDUP_BROKER_PREFIX"]))
    wait_for(lambda: all(ready == 0 for name, (ready, _) in asyncio.run(queue_depths(
        services.env["IMAGE_DEDUP_BROKER_URL"], services.env["IMAGE_DEDUP_BROKER_PREFIX"])).items()
        if not name.endswith(".dead")), 20,
        lambda: f"queues not drained: {depths}")


def _assert_nothing_lost(services: Services, files: dict[str, str]) -> None:
    left = snapshot(services.photos)
    survivors = collections.Counter(files[p] for p in left)
    assert set(survivors) == set(files.values()), "a photo lost every copy"


def _assert_removed_once(services: Services, removed: set[str]) -> None:
    entries = services.journal_entries()
    intents = {e["id"]: e for e in entries if e["state"] == "intent"}
    done = collections.Counter(intents[e["intent"]]["path"] for e in entries
                               if e["state"] == "done" and e.get("recovered") not in ("not done", "rolled back"))
    assert all(n == 1 for n in done.values()), f"removed twice: {[p for p, n in done.items() if n > 1]}"
    done_rel = {str(Path(p).relative_to(services.photos)) for p in done}
    assert done_rel <= removed
    # only the actions in flight when an actuator was killed (at most its concurrency) can have
    # happened without their confirmation; each still has its intent in the journal
    unconfirmed = removed - done_rel
    assert len(unconfirmed) <= int(services.env["IMAGE_DEDUP_CONCURRENCY"])
    intended = {str(Path(e["path"]).relative_to(services.photos)) for e in intents.values()}
    assert unconfirmed <= intended


def test_four_services_follow_a_watched_folder_like_local_mode(world):
    services, library, files, expected = world(12, seed=1)
    ports = {role: services.start(role)[1] for role in ("watcher", "hasher", "matcher", "actuator")}
    services.wait_ready()
    for role, port in ports.items():
        assert get(port, "/healthz")[0] == 200 and get(port, "/readyz") == (200, "ready\n"), role

    # an import: one album copied file by file, the others as whole folders
    (services.photos / "album0").mkdir()
    for path in sorted((library / "album0").iterdir()):
        shutil.copy2(path, services.photos / "album0" / path.name)
    for album in ("album1", "album2", "album3"):
        shutil.copytree(library / album, services.photos / album)
    (services.photos / "broken.jpg").write_bytes(b"")  # a bad image: dead-lettered, nothing else
    files = dict(files, **{"broken.jpg": "broken"})

    _wait_done(services, files, expected, timeout=60)
    removed = set(files) - snapshot(services.photos)
    assert removed == expected
    _assert_removed_once(services, removed)
    # the hashers left each picture for the matcher, which dropped them once matched
    assert (services.base / "pictures").is_dir()
    wait_for(lambda: not list((services.base / "pictures").iterdir()), 20, "pictures left after matching")

    letters = asyncio.run(dead_letters(services.env["IMAGE_DEDUP_BROKER_URL"], services.env["IMAGE_DEDUP_BROKER_PREFIX"]))
    assert [b"broken.jpg" in body for body, _ in letters] == [True]
    assert letters[0][1]["x-death-reason"] and letters[0][1]["x-service"] == "hasher"

    signed_metric = lambda: metric(get(ports["hasher"], "/metrics")[1], "image_dedup_hasher_images_signed_total")
    assert signed_metric() >= 24
    assert metric(get(ports["matcher"], "/metrics")[1], "image_dedup_matcher_duplicate_groups_total") >= 12
    actuator = get(ports["actuator"], "/metrics")[1]
    assert metric(actuator, "image_dedup_actuator_actions_total", action="delete", status="done") == 12
    assert metric(actuator, "image_dedup_actuator_messages_total", outcome="ok") >= 12
    assert metric(actuator, "image_dedup_actuator_message_processing_seconds_count") >= 12
    hasher = get(ports["hasher"], "/metrics")[1]
    assert metric(hasher, "image_dedup_hasher_messages_total", outcome="rejected") == 1

    # a manual rescan finds what the store forgot (as if an event had been missed)
    kept = sorted(snapshot(services.photos) - {"broken.jpg"})[0]
    with sqlite3.connect(services.base / "store.sqlite", timeout=30) as db:
        db.execute("DELETE FROM images WHERE path = ?", (str(services.photos / kept),))
    before = signed_metric()
    assert metric(get(ports["watcher"], "/metrics")[1], "image_dedup_watcher_rescans_total") == 1
    subprocess.run([str(VENV_BIN / "image-dedup"), "rescan"], env=services.env, check=True, capture_output=True, timeout=60)
    wait_for(lambda: metric(get(ports["watcher"], "/metrics")[1], "image_dedup_watcher_rescans_total") == 2, 20, "no rescan")
    wait_for(lambda: signed_metric() == before + 1, 20, lambda: f"rescan did not re-sign {kept}\n{services.log_text()}")
    assert snapshot(services.photos) == set(files) - expected


def test_scaled_services_survive_kill9_like_local_mode(world):
    services, library, files, expected = world(60, seed=2, match_delay=1.5)
    shutil.copytree(library, services.photos, dirs_exist_ok=True)  # found by the watcher's start-up scan
    hashers = [services.start("hasher") for _ in range(3)]
    actuators = [services.start("actuator") for _ in range(2)]
    for _ in range(2):
        services.start("matcher")
    services.wait_ready()
    services.start("watcher")

    victim, port = hashers[0]
    wait_for(lambda: metric(get(port, "/metrics")[1], "image_dedup_hasher_images_signed_total") >= 3, 60,
             lambda: f"hasher idle\n{services.log_text()}", interval=0.05)
    services.kill9(victim)
    services.start("hasher")
    victim, port = actuators[0]
    wait_for(lambda: metric(get(port, "/metrics")[1], "image_dedup_actuator_actions_total", status="done") >= 2, 240,
             lambda: f"actuator idle\n{services.log_text()}", interval=0.02)
    services.kill9(victim)
    services.start("actuator")

    _wait_done(services, files, expected, timeout=300)
    removed = set(files) - snapshot(services.photos)
    assert removed == expected
    _assert_nothing_lost(services, files)
    _assert_removed_once(services, removed)
    assert asyncio.run(dead_letters(services.env["IMAGE_DEDUP_BROKER_URL"], services.env["IMAGE_DEDUP_BROKER_PREFIX"])) == []


def test_services_reconnect_after_a_broker_restart(world):
    services, library, files, expected = world(40, seed=3)
    procs = {role: services.start(role) for role in ("watcher", "hasher", "matcher", "actuator")}
    services.wait_ready()
    shutil.copytree(library / "album0", services.photos / "album0")
    wait_for(lambda: metric(get(procs["hasher"][1], "/metrics")[1], "image_dedup_hasher_images_signed_total") >= 1, 30,
             lambda: f"hasher idle\n{services.log_text()}", interval=0.05)
    rabbitmqctl("stop_app")
    try:
        wait_for(lambda: get(procs["hasher"][1], "/readyz")[0] == 503, 20, "still ready without a broker")
        for album in ("album1", "album2", "album3"):  # arrives while the broker is down
            shutil.copytree(library / album, services.photos / album)
        time.sleep(1)
    finally:
        rabbitmqctl("start_app")
    _wait_done(services, files, expected, timeout=120)
    assert set(files) - snapshot(services.photos) == expected
    for role, (proc, port) in procs.items():
        assert proc.poll() is None and get(port, "/readyz")[0] == 200, role
    # one line per service when the broker went, one when it was back; nothing else said of it
    for log in sorted(services.logs.glob("*.log")):
        text = log.read_text(errors="replace")
        assert text.count("lost the broker connection") == 1 and text.count("reconnected to the broker") == 1, text
        assert "Traceback" not in text and "WARNING" not in text.replace("WARNING shared.bus.rabbitmq: lost", "").replace(
            "WARNING shared.bus.rabbitmq: reconnected", ""), text


def test_concurrent_actuators_never_remove_both_files_of_a_pair(world):
    """Conflicting decisions (A over B and B over A; B over C, then A over B) delivered to two
    actuator processes at once: the ledger's leases let exactly one side of a pair win, and a
    later decision supersedes an earlier one without a photo losing its last copy."""
    from shared.messages import Decision, FileRef, Removal
    from shared.bus.rabbitmq import RabbitBus
    from shared.image.signature import analyze
    from shared.store.sqlite import SQLiteStore
    from shared.store import ImageRecord

    services, library, files, _ = world(26, seed=4)
    shutil.copytree(library, services.photos, dirs_exist_ok=True)
    pairs = [(services.photos / f"album{i % 4}/img{i:04d}.jpg", services.photos / f"album{i % 4}/img{i:04d} copy.jpg")
             for i in range(26)]
    chains = []
    for a, b in pairs[20:]:  # a third copy of each of these photos: chains A > B > C
        c = a.with_name(a.stem + " small.jpg")
        with Image.open(a) as img:
            img.resize((img.width // 2, img.height // 2)).save(c, quality=75)
        chains.append((a, b, c))
    paths = sorted(p for p in services.photos.rglob("*.jpg"))

    async def prepare_and_publish() -> None:
        store = SQLiteStore(services.base / "store.sqlite")
        refs = {}
        for path in paths:
            st, a = path.stat(), analyze(str(path))
            await store.upsert(ImageRecord(str(path), str(services.photos), st.st_size, st.st_mtime_ns, a.format,
                                           a.width, a.height, signature=a.signature,
                                           digest=a.digest, frames=a.frames, embedding=a.embedding))
            refs[path] = FileRef(path=str(path), size=st.st_size, mtime_ns=st.st_mtime_ns)
        await store.close()
        rm = lambda p: Removal(**refs[p].model_dump(), distance=0.1)
        bus = await RabbitBus(services.env["IMAGE_DEDUP_BROKER_URL"], services.env["IMAGE_DEDUP_BROKER_PREFIX"]).connect()
        for a, b in pairs[:20]:  # each decision twice, both directions
            for _ in range(2):
                await bus.publish(Decision(keep=refs[a], remove=[rm(b)]))
                await bus.publish(Decision(keep=refs[b], remove=[rm(a)]))
        for a, b, c in chains:
            await bus.publish(Decision(keep=refs[b], remove=[rm(c)]))
            await bus.publish(Decision(keep=refs[a], remove=[rm(b)]))
        await bus.close()

    asyncio.run(prepare_and_publish())
    for _ in range(2):
        services.start("actuator")
    services.wait_ready()

    def settled() -> bool:
        left = {services.photos / p for p in snapshot(services.photos)}
        return all((a in left) != (b in left) for a, b in pairs[:20]) and not any(b in left for _, b, _ in chains)

    wait_for(settled, 60, lambda: services.log_text())
    time.sleep(1)
    left = {services.photos / p for p in snapshot(services.photos)}
    for a, b in pairs[:20]:
        assert (a in left) != (b in left), "exactly one file of a pair is removed"
    for a, b, c in chains:
        # B goes either way: removed for A, or kept for C and then removed for A (which superseded);
        # C goes only if B still held the photo when C was removed; A, kept by all, stays
        assert a in left and b not in left
    _assert_removed_once(services, {str(p.relative_to(services.photos)) for p in set(paths) - left})


def test_daemon_runs_all_four_in_one_process_without_a_broker(world):
    services, library, files, expected = world(8, seed=5)
    port = free_port()
    env = dict(services.env, IMAGE_DEDUP_METRICS_PORT=str(port), IMAGE_DEDUP_BROKER_URL="amqp://nobody@127.0.0.1:1/")
    log = open(services.logs / "daemon.log", "wb")
    proc = subprocess.Popen([str(VENV_BIN / "image-dedup"), "daemon"], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: get(port, "/readyz")[0] == 200, 30, lambda: services.log_text())
        shutil.copytree(library, services.photos, dirs_exist_ok=True)
        wait_for(lambda: snapshot(services.photos) == set(files) - expected, 60, lambda: services.log_text())
        assert metric(get(port, "/metrics")[1], "image_dedup_actuator_actions_total", status="done") == len(expected)
    finally:
        proc.terminate()
        assert proc.wait(30) == 0
