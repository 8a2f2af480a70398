"""Throughput of services mode (RabbitMQ, 1 and 2 hashers) against local mode on one library.

    .venv/bin/python bench/services_throughput.py [--library /work/bench/lib] [--hashers 1 2]
        [--store sqlite elasticsearch] [--es-url http://127.0.0.1:9200]

Every run starts from an empty store and is a dry run (the library is never changed). Local
mode is timed around ``services.local.deduplicate``; services mode from the moment the watcher
is ready (its start-up rescan begins) until every file is in the store, every queue is empty
and the matcher and actuator are idle. Needs a RabbitMQ on 127.0.0.1:5672 (guest/guest); a
private vhost is created and deleted.

``--store`` names the store kinds to measure, each with its own local-mode row and services
rows (default: SQLite only). With ``elasticsearch`` every run, local or services, gets a fresh
index ``bench-<uuid>`` on ``--es-url`` (deleted with its ``-ledger`` index after the run), and
"every file is in the store" is the index's document count (``GET /<index>/_count``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import sqlite3
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.services_support import Services, broker_url, get, queue_depths, rabbitmqctl  # noqa: E402


def count_files(library: Path) -> int:
    from services.watcher.handler import walk
    from shared.config import Settings

    return sum(1 for _ in walk(Settings(source_directories=[library])))


STORE_NAMES = {"sqlite": "SQLite", "elasticsearch": "Elasticsearch"}


def es_settings(es_url: str | None) -> dict[str, str]:
    """Settings of a fresh Elasticsearch index, or none (the SQLite store)."""
    return {} if es_url is None else {"elasticsearch_url": es_url, "elasticsearch_index": f"bench-{uuid.uuid4().hex[:12]}"}


def es_request(url: str, method: str = "GET") -> dict | None:
    """The JSON answer of one request, or None for a 404 (no such index)."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=30) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise


def delete_index(settings: dict[str, str]) -> None:
    if settings:
        for name in (settings["elasticsearch_index"], f"{settings['elasticsearch_index']}-ledger"):
            es_request(f"{settings['elasticsearch_url']}/{name}", "DELETE")


def stored_count(store: Path, es: dict[str, str]) -> int:
    if es:
        found = es_request(f"{es['elasticsearch_url']}/{es['elasticsearch_index']}/_count")
        return 0 if found is None else found["count"]
    with sqlite3.connect(store, timeout=30) as db:
        return db.execute("SELECT COUNT(*) FROM images").fetchone()[0]


def run_local(library: Path, work: Path, threads: int, es_url: str | None = None) -> float:
    from rich.console import Console

    from services.local import deduplicate
    from shared.config import Settings

    es = es_settings(es_url)
    settings = Settings(source_directories=[library], store_path=work / "local.sqlite",
                        journal_directory=work / "journals", dry_run=True, threads=threads, **es)
    try:
        started = time.monotonic()
        asyncio.run(deduplicate(settings, Console(stderr=True, quiet=True), quiet=True))
        return time.monotonic() - started
    finally:
        delete_index(es)


def run_services(library: Path, work: Path, vhost: str, hashers: int, threads: int, files: int,
                 es_url: str | None = None) -> float:
    es = es_settings(es_url)
    base = work / f"svc-{hashers}{'-es' if es else ''}"
    services = Services(base, library, broker_url(vhost), f"bench-{uuid.uuid4().hex[:6]}",
                        dry_run="true", threads=str(threads), match_delay="1", concurrency=str(threads + 2), **es)
    try:
        for _ in range(hashers):
            services.start("hasher")
        services.start("matcher")
        services.start("actuator")
        services.wait_ready()
        _, port = services.start("watcher")
        while get(port, "/readyz")[0] != 200:
            time.sleep(0.02)
        started = time.monotonic()
        url, prefix = services.env["IMAGE_DEDUP_BROKER_URL"], services.env["IMAGE_DEDUP_BROKER_PREFIX"]
        store = base / "store.sqlite"
        while True:
            time.sleep(0.2)
            if stored_count(store, es) < files:
                continue
            depths = asyncio.run(queue_depths(url, prefix))
            if all(ready == 0 for name, (ready, _) in depths.items() if not name.endswith(".dead")):
                # the matcher acks its batch only after publishing the decisions, and the
                # actuator acks after acting: once nothing is ready or unacked, all is done
                out = rabbitmqctl("list_queues", "-p", vhost, "name", "messages_unacknowledged").stdout
                if all(line.split()[-1] == "0" for line in out.splitlines()[1:] if line.strip()):
                    return time.monotonic() - started
    finally:
        services.stop()
        delete_index(es)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 2)[2])
    parser.add_argument("--library", type=Path, default=Path("/work/bench/lib"))
    parser.add_argument("--hashers", type=int, nargs="+", default=[1, 2], help="hasher counts to measure")
    parser.add_argument("--store", nargs="+", choices=list(STORE_NAMES), default=["sqlite"],
                        help="store kinds to measure, local and services mode on each (default: sqlite)")
    parser.add_argument("--es-url", default="http://127.0.0.1:9200", help="Elasticsearch for --store elasticsearch")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    files = count_files(args.library)
    work = Path(tempfile.mkdtemp(prefix="services-bench-"))
    vhost = f"image-dedup-bench-{uuid.uuid4().hex[:6]}"
    rabbitmqctl("add_vhost", vhost)
    rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    rows = []
    try:
        for kind in args.store:
            es_url = args.es_url if kind == "elasticsearch" else None
            on = "" if args.store == ["sqlite"] else f", {STORE_NAMES[kind]}"  # the table as before
            seconds = run_local(args.library, work, cores, es_url)
            rows.append((f"local mode ({cores} decoder processes){on}", seconds))
            for n in args.hashers:
                threads = max(1, cores // n)
                seconds = run_services(args.library, work, vhost, n, threads, files, es_url)
                rows.append((f"services mode, {n} hasher(s) x {threads} decoder process(es){on}", seconds))
    finally:
        rabbitmqctl("delete_vhost", vhost, check=False)
        shutil.rmtree(work, ignore_errors=True)
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    print(f"Library: {args.library} ({files} files); machine: {cores} cores, {cpu}; cold store, dry run.\n")
    print("| mode | seconds | images/s |")
    print("|---|---:|---:|")
    for name, seconds in rows:
        print(f"| {name} | {seconds:.1f} | {files / seconds:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
