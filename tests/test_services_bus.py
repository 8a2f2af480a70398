"""RabbitBus and topology against the real broker (a private vhost per test run)."""

from __future__ import annotations

import asyncio
import uuid


from services.runner import Batcher, Context, start_hasher
from shared.bus import Reject
from shared.config import Settings
from shared.messages import FileEvent, ImageSigned, encode
from shared.bus.rabbitmq import RabbitBus
from shared.store.sqlite import SQLiteStore
from shared.store.sqlite_ledger import SQLiteLedger
from tests.services_support import broker_url, dead_letters, photo, queue_depths, vhost  # noqa: F401


def _prefix() -> str:
    return f"t-{uuid.uuid4().hex[:8]}"


async def _until(condition, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("timed out")
        await asyncio.sleep(0.05)


async def test_topology_declares_twice_harmlessly(vhost):
    url, prefix = broker_url(vhost), _prefix()
    first = await RabbitBus(url, prefix, service="a").connect()
    second = await RabbitBus(url, prefix, service="b").connect()  # same declarations again
    await first.publish(FileEvent(path="/x.jpg"))
    try:
        depths = await queue_depths(url, prefix)
        assert depths[f"{prefix}.file.event"][0] == 1
        assert set(depths) == {f"{prefix}.{k}" for k in ("watcher.rescan", "file.event", "image.signed", "group.decision")} | {f"{prefix}.dead"}
    finally:
        await first.close()
        await second.close()


async def test_poison_messages_are_dead_lettered_and_the_consumer_goes_on(vhost):
    url, prefix = broker_url(vhost), _prefix()
    bus = await RabbitBus(url, prefix, max_retries=2, retry_backoff=0.01, service="test").connect()
    seen: list[str] = []
    flaky_failures = []

    async def handler(message):
        seen.append(message.path)
        if message.path == "reject":
            raise Reject("never works")
        if message.path == "boom":
            raise RuntimeError("always fails")
        if message.path == "flaky" and not flaky_failures:
            flaky_failures.append(1)
            raise OSError("once")

    await bus.subscribe("file.event", handler, concurrency=2)
    try:
        await bus.publish_raw(b"{not json", "file.event")
        await bus.publish_raw(b'{"version": 99, "kind": "file.event", "path": "/a.jpg"}', "file.event")
        await bus.publish_raw(encode(ImageSigned(path="/wrong-queue.jpg")), "file.event")
        for path in ("reject", "boom", "flaky", "good"):
            await bus.publish(FileEvent(path=path))
        await _until(lambda: "good" in seen and seen.count("boom") == 3 and seen.count("flaky") == 2)
        await asyncio.sleep(0.3)
    finally:
        await bus.close()
    letters = await dead_letters(url, prefix)
    reasons = {body: headers["x-death-reason"] for body, headers in letters}
    assert len(letters) == 5, reasons
    assert "Invalid JSON" in reasons[b"{not json"]
    assert "version" in reasons[b'{"version": 99, "kind": "file.event", "path": "/a.jpg"}']
    assert any("image.signed message in the file.event queue" in r for r in reasons.values())
    assert encode(FileEvent(path="reject")) in reasons
    assert reasons[encode(FileEvent(path="reject"))] == "never works"
    boom = [h for b, h in letters if b == encode(FileEvent(path="boom"))][0]
    assert boom["x-death-reason"] == "RuntimeError: always fails" and boom["x-retries"] == 2
    assert boom["x-original-routing-key"] == "file.event" and boom["x-service"] == "test"
    assert seen.count("good") == 1 and seen.count("reject") == 1


async def test_a_name_that_is_not_utf8_or_holds_a_newline_travels_intact(vhost):
    url, prefix = broker_url(vhost), _prefix()
    bus = await RabbitBus(url, prefix, service="test").connect()
    names = ["/r/caf\udce9.jpg", "/r/new\nline.jpg", "/r/\u00e9t\u00e9 \U0001f600.jpg"]
    seen: list[str] = []

    async def handler(message):
        seen.append(message.path)

    await bus.subscribe("file.event", handler, concurrency=1)
    try:
        for name in names:
            await bus.publish(FileEvent(path=name))
        await _until(lambda: len(seen) == len(names))
    finally:
        await bus.close()
    assert sorted(seen) == sorted(names)
    assert await dead_letters(url, prefix) == []


async def test_bad_image_is_dead_lettered_by_the_hasher(vhost, tmp_path):
    url, prefix = broker_url(vhost), _prefix()
    root = tmp_path / "photos"
    root.mkdir()
    (root / "empty.jpg").write_bytes(b"")
    photo(1).save(root / "good.jpg")
    settings = Settings(source_directories=[root], store_path=tmp_path / "s.sqlite", threads=1, max_retries=1)
    store, ledger = SQLiteStore(settings.store_path), SQLiteLedger(settings.store_path)
    bus = await RabbitBus(url, prefix, max_retries=1, service="hasher").connect()
    signed = []

    async def on_signed(message):
        signed.append(message.path)

    try:
        await start_hasher(Context(settings, store, bus, ledger))
        await bus.subscribe("image.signed", on_signed)
        await bus.publish(FileEvent(path=str(root / "empty.jpg")))
        await bus.publish(FileEvent(path=str(root / "good.jpg")))
        await _until(lambda: signed, timeout=30)
        await asyncio.sleep(0.3)
    finally:
        await bus.close()
        await store.close()
        await ledger.close()
    letters = await dead_letters(url, prefix)
    assert len(letters) == 1
    body, headers = letters[0]
    assert b"empty.jpg" in body and headers["x-death-reason"] and headers["x-retries"] == 0  # no retry
    assert signed == [str(root / "good.jpg")]


async def test_batcher_waits_for_quiet_and_fails_the_whole_batch():
    batches: list[list[str]] = []

    async def run(paths):
        batches.append(paths)
        if "bad" in paths:
            raise RuntimeError("store down")

    batcher = Batcher(run, delay=0.2, max_size=3, max_wait=5)
    await asyncio.gather(*(batcher.submit(p) for p in ("a", "b")))
    assert batches == [["a", "b"]]
    results = await asyncio.gather(*(batcher.submit(p) for p in ("c", "bad", "d", "e")), return_exceptions=True)
    assert batches[1] == ["c", "bad", "d"]  # max_size reached: no waiting
    assert [type(r) for r in results[:3]] == [RuntimeError] * 3 and results[3] is None


async def test_a_service_is_not_ready_before_it_started(tmp_path, monkeypatch):
    """/readyz stays 503 until every role's start hook returned (its subscriptions, decoder
    processes and watch in place), so nothing copied in after "ready" can go unseen."""
    import aiohttp

    from services import runner
    from tests.services_support import free_port

    release = asyncio.Event()

    async def slow_start(ctx: Context) -> None:
        await release.wait()

    monkeypatch.setitem(runner.STARTERS, "hasher", slow_start)
    port = free_port()
    settings = Settings(source_directories=[tmp_path], store_path=tmp_path / "s.sqlite", metrics_port=port,
                        journal_directory=tmp_path / "journals")
    service = asyncio.create_task(runner.serve(["hasher"], settings, in_process=True))

    async def readyz_once_up(refused: tuple[int, str] | None) -> tuple[int, str] | None:
        """The first answer of /readyz other than ``refused`` (None: no answer yet)."""
        deadline = asyncio.get_running_loop().time() + 10
        answer = None
        while answer in (None, refused) and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
            try:
                async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/readyz") as response:
                    answer = response.status, await response.text()
            except aiohttp.ClientConnectionError:
                answer = None
        return answer

    try:
        assert await readyz_once_up(None) == (503, "starting\n")
        await asyncio.sleep(0.3)
        assert await readyz_once_up(None) == (503, "starting\n"), "ready while a start hook still runs"
        release.set()
        assert await readyz_once_up((503, "starting\n")) == (200, "ready\n")
    finally:
        service.cancel()
        await asyncio.gather(service, return_exceptions=True)


async def test_batcher_waits_while_more_is_on_its_way_but_not_forever():
    """While files are still being signed, a batch waits for them (an import is matched whole,
    its groups complete); but not past max_wait, and a full batch goes at once."""
    batches: list[list[str]] = []
    busy = {"on": True}

    async def run(paths):
        batches.append(paths)

    async def hashing() -> bool:
        return busy["on"]

    batcher = Batcher(run, delay=0.05, max_size=10, max_wait=0.6, busy=hashing)
    waiting = asyncio.ensure_future(batcher.submit("a"))
    await asyncio.sleep(0.3)
    assert batches == [] and not batcher.idle  # quiet for 0.05 s, but the hashers are busy
    busy["on"] = False
    await asyncio.wait_for(waiting, 1)
    assert batches == [["a"]] and batcher.idle
    busy["on"] = True
    started = asyncio.get_running_loop().time()
    await asyncio.wait_for(batcher.submit("b"), 2)  # busy throughout: max_wait ends the wait
    assert batches[-1] == ["b"] and asyncio.get_running_loop().time() - started >= 0.55
    await asyncio.wait_for(asyncio.gather(*(batcher.submit(str(i)) for i in range(10))), 1)  # full: at once
    assert batches[-1] == [str(i) for i in range(10)]
