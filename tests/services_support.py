"""Helpers of the services-mode tests: a private RabbitMQ vhost per test run, generated photos,
service processes, and the local-mode reference result."""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from urllib.parse import quote

import pytest
from PIL import Image

from .conftest import FIXTURE_MAX_DIST, make_photo

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
BROKER = os.environ.get("IMAGE_DEDUP_TEST_BROKER", "127.0.0.1:5672")
# a real Elasticsearch (scripts/ensure-elasticsearch.sh); its tests are skipped only when
# IMAGE_DEDUP_TEST_ELASTICSEARCH=off is set by hand: a node that does not answer fails them
ES_URL = os.environ.get("IMAGE_DEDUP_TEST_ELASTICSEARCH_URL", "http://127.0.0.1:9200")
ES_OFF = os.environ.get("IMAGE_DEDUP_TEST_ELASTICSEARCH") == "off"


def _broker_up() -> bool:
    host, port = BROKER.split(":")
    try:
        socket.create_connection((host, int(port)), timeout=2).close()
        return True
    except OSError:
        return False


def rabbitmqctl(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["rabbitmqctl", "-q", *args], check=check, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="session")
def vhost():
    """A vhost of our own, deleted at the end, so concurrent test runs cannot disturb each other."""
    if not _broker_up():
        pytest.skip(f"no RabbitMQ on {BROKER} (scripts/ensure-rabbitmq.sh starts one)")
    name = f"image-dedup-test-{uuid.uuid4().hex[:8]}"
    rabbitmqctl("add_vhost", name)
    rabbitmqctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
    yield name
    rabbitmqctl("delete_vhost", name, check=False)


@pytest.fixture
def es_index():
    """A fresh index name on the test node; the index and its ledger are deleted after."""
    if ES_OFF:
        pytest.skip("IMAGE_DEDUP_TEST_ELASTICSEARCH=off")
    from shared.store.elasticsearch import concrete

    index = f"test-{uuid.uuid4().hex[:12]}"
    yield index
    for name in (concrete(index), concrete(f"{index}-ledger")):
        request = urllib.request.Request(f"{ES_URL}/{name}", method="DELETE")
        try:
            urllib.request.urlopen(request, timeout=30).close()
        except urllib.error.HTTPError as exc:
            if exc.code != 404:
                raise


def broker_url(vhost: str) -> str:
    return f"amqp://guest:guest@{BROKER}/{quote(vhost, safe='')}"


def free_port() -> int:
    """A port free now, for a service to bind a moment later: drawn below the range the kernel
    hands out to outgoing connections (the port 0 gives is in it, and a client's socket took
    one between the test picking it and the service binding it)."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for port in random.SystemRandom().sample(range(10000, low), 200):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port between 10000 and {low}")


# -- photos ---------------------------------------------------------------------------------
def photo(seed: int, size: int = 256) -> Image.Image:
    """The test suite's photo-like picture (tests/conftest.py), ``size`` pixels wide."""
    return make_photo(seed, (size, size * 3 // 4))


def make_library(folder: Path, n_photos: int, seed: int = 0, subfolders: int = 1) -> dict[str, str]:
    """``n_photos`` distinct photos, each with a resized, re-encoded copy; returns
    {relative path: source photo id} for every file written."""
    files = {}
    for i in range(n_photos):
        sub = folder / f"album{i % subfolders}"
        sub.mkdir(parents=True, exist_ok=True)
        img = photo(seed * 100_000 + i)
        original = sub / f"img{i:04d}.jpg"
        img.save(original, quality=92)
        copy = sub / f"img{i:04d} copy.jpg"
        img.resize((img.width * 3 // 4, img.height * 3 // 4), Image.LANCZOS).save(copy, quality=70)
        files[str(original.relative_to(folder))] = f"p{i}"
        files[str(copy.relative_to(folder))] = f"p{i}"
    return files


def snapshot(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


def local_removed(library: Path, work: Path, **overrides) -> set[str]:
    """What local mode removes from an identical copy of ``library``."""
    from rich.console import Console

    from services.local import deduplicate
    from shared.config import Settings

    copy = work / "photos"
    shutil.copytree(library, copy)
    before = snapshot(copy)
    settings = Settings(
        source_directories=[copy], store_path=work / "store.sqlite", journal_directory=work / "journals",
        dry_run=False, threads=2, **{"max_dist": FIXTURE_MAX_DIST, "action": "delete", **overrides},
    )
    asyncio.run(deduplicate(settings, Console(stderr=True, quiet=True), quiet=True))
    return before - snapshot(copy)


# -- service processes ---------------------------------------------------------------------
class Services:
    """Service processes of one test, sharing one environment; stopped at the end."""

    def __init__(self, base: Path, photos: Path, url: str, prefix: str, **settings: object):
        self.base, self.photos = base, photos
        self.logs = base / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.procs: list[tuple[str, subprocess.Popen, int]] = []
        self.tmpdirs: list[str] = []
        self.killed: set[int] = set()  # pids the test ended on purpose
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGE_DEDUP_")}
        values = {
            "source_directories": json.dumps([str(photos)]), "store_path": str(base / "store.sqlite"),
            "journal_directory": str(base / "journals"), "pictures_directory": str(base / "pictures"),
            "dry_run": "false", "broker_url": url,
            "broker_prefix": prefix, "threads": "1", "match_delay": "1", "watch_debounce": "0.5",
            "max_retries": "3", "concurrency": "4", "max_dist": str(FIXTURE_MAX_DIST),
            "action": "delete",  # explicit: the default, trash, would use the user's own trash
        }
        values.update({k: str(v) for k, v in settings.items()})
        self.env.update({f"IMAGE_DEDUP_{k.upper()}": v for k, v in values.items()})
        self.env["XDG_CONFIG_HOME"] = str(base / "config")  # never a user's config file
        self.env["PYTHONUNBUFFERED"] = "1"

    def start(self, role: str, *extra: str, host: Path | None = None, **settings: object) -> tuple[subprocess.Popen, int]:
        """``host``: a folder standing for a host of its own (HOME, temporary folder, store
        file, journals, pictures and duplicates folder inside it), so that the process shares nothing on
        disk with the others but the photos. ``settings``: this process's own, over the others'."""
        port = free_port()
        env = dict(self.env, IMAGE_DEDUP_METRICS_PORT=str(port))
        env.update({f"IMAGE_DEDUP_{k.upper()}": str(v) for k, v in settings.items()})
        if host is not None:
            for sub in ("home", "journals"):
                (host / sub).mkdir(parents=True, exist_ok=True)
            # short: a forkserver's socket lives there, and a Unix socket path has 107 bytes
            self.tmpdirs.append(tempfile.mkdtemp(prefix="idh-"))
            env.update(HOME=str(host / "home"), TMPDIR=self.tmpdirs[-1], XDG_CONFIG_HOME=str(host / "home" / ".config"),
                       XDG_DATA_HOME=str(host / "home" / ".local" / "share"), IMAGE_DEDUP_STORE_PATH=str(host / "store.sqlite"),
                       IMAGE_DEDUP_JOURNAL_DIRECTORY=str(host / "journals"), IMAGE_DEDUP_PICTURES_DIRECTORY=str(host / "pictures"),
                       IMAGE_DEDUP_DUPLICATES_TARGET_DIRECTORY=str(host / "duplicates"))
        n = sum(1 for r, _, _ in self.procs if r == role)
        log = open(self.logs / f"{role}-{n}.log", "ab")
        proc = subprocess.Popen(
            [str(VENV_BIN / "image-dedup"), "service", role, *extra], env=env, stdout=log, stderr=subprocess.STDOUT,
            cwd=self.base, start_new_session=True,
        )
        self.procs.append((role, proc, port))
        return proc, port

    def kill9(self, proc: subprocess.Popen) -> None:
        self.killed.add(proc.pid)
        os.killpg(proc.pid, signal.SIGKILL)  # the service and its decoder processes
        proc.wait(10)

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        for role, proc, port in self.procs:
            if proc.pid in self.killed:
                continue
            while get(port, "/readyz")[0] != 200:
                if proc.poll() is not None:
                    raise AssertionError(f"{role} exited with {proc.returncode}:\n{self.log_text()}")
                if time.monotonic() > deadline:
                    raise AssertionError(f"{role} not ready:\n{self.log_text()}")
                time.sleep(0.2)

    def log_text(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-4000:]}" for p in sorted(self.logs.glob("*.log")))

    def stop(self) -> None:
        for _, proc, _ in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for _, proc, _ in self.procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # leftover decoder processes, if any
            except ProcessLookupError:
                pass
        for folder in self.tmpdirs:
            shutil.rmtree(folder, ignore_errors=True)

    def journal_entries(self) -> list[dict]:
        entries = []
        for path in sorted((self.base / "journals").glob("*.jsonl")):
            entries += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return entries


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return 0, ""


def metric(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def wait_for(condition, timeout: float, message, interval: float = 0.3):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(message() if callable(message) else message)
        time.sleep(interval)


async def queue_depths(url: str, prefix: str) -> dict[str, tuple[int, int]]:
    """{queue: (ready messages, consumers)} for every queue of the topology."""
    import aio_pika

    from shared.bus import topology

    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel()
        out = {}
        for name in [topology.queue_name(prefix, k) for k in topology.CONSUMED_KINDS.values()] + [topology.dead_name(prefix)]:
            q = await channel.declare_queue(name, passive=True)
            out[name] = (q.declaration_result.message_count, q.declaration_result.consumer_count)
        return out
    finally:
        await connection.close()


async def dead_letters(url: str, prefix: str) -> list[tuple[bytes, dict]]:
    import aio_pika

    from shared.bus import topology

    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel()
        q = await channel.declare_queue(topology.dead_name(prefix), passive=True)
        out = []
        while (m := await q.get(no_ack=True, fail=False)) is not None:
            out.append((m.body, dict(m.headers)))
        return out
    finally:
        await connection.close()


class TcpProxy:
    """A TCP relay in front of a server, for fault tests: ``refuse`` closes it (connections
    refused, those open reset), ``freeze`` keeps every connection open but passes no byte (a
    server that hangs), ``resume`` relays again. The server itself is never touched."""

    def __init__(self, target_port: int, host: str = "127.0.0.1"):
        import threading

        self.target = (host, target_port)
        self.port = free_port()
        self._passing = threading.Event()
        self._passing.set()
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self._closed = False
        self._listen()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _listen(self) -> None:
        import threading

        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        import threading

        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.target, timeout=5)
                server.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._listener is not listener:  # refused meanwhile: this one must not pass either
                    client.close()
                    server.close()
                    return
                self._open.update((client, server))
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                self._passing.wait()
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()
            with self._lock:
                self._open.difference_update((source, sink))

    def _drop_connections(self) -> None:
        with self._lock:
            sockets, self._open = set(self._open), set()
        for s in sockets:
            try:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # reset
                # shutdown first: a close alone does not end a connection while a pump thread
                # waits in recv() on it, so a request in flight when the relay closed would hang
                # until the client's timeout (30 s) instead of failing at once
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def refuse(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
        if listener is not None:
            # shutdown, not only close: a close leaves the socket listening while the accepting
            # thread waits in accept(), and the next connection would still be relayed
            try:
                listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            listener.close()
        self._drop_connections()
        self._passing.set()

    def freeze(self) -> None:
        self._passing.clear()

    def resume(self) -> None:
        self._passing.set()
        if self._listener is None and not self._closed:
            self._listen()

    def close(self) -> None:
        self._closed = True
        self.refuse()
