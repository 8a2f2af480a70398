"""Throughput of services mode (RabbitMQ, 1 and 2 hashers) against local mode on one library.

    .venv/bin/python bench/services_throughput.py [--library /work/bench/lib] [--hashers 1 2]

Every run starts from an empty store and is a dry run (the library is never changed). Local
mode is timed around ``services.local.deduplicate``; services mode from the moment the watcher
is ready (its start-up rescan begins) until every file is in the store, every queue is empty
and the matcher and actuator are idle. Needs a RabbitMQ on 127.0.0.1:5672 (guest/guest); a
private vhost is created and deleted.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import sqlite3
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.services_support import Services, broker_url, get, queue_depths, rabbitmqctl  # noqa: E402


def count_files(library: Path) -> int:
    from services.watcher.handler import walk
    from shared.config import Settings

    return sum(1 for _ in walk(Settings(source_directories=[library])))


def run_local(library: Path, work: Path, threads: int) -> float:
    from rich.console import Console

    from services.local import deduplicate
    from shared.config import Settings

    settings = Settings(source_directories=[library], store_path=work / "local.sqlite",
                        journal_directory=work / "journals", dry_run=True, threads=threads)
    started = time.monotonic()
    asyncio.run(deduplicate(settings, Console(stderr=True, quiet=True), quiet=True))
    return time.monotonic() - started


def run_services(library: Path, work: Path, vhost: str, hashers: int, threads: int, files: int) -> float:
    base = work / f"svc-{hashers}"
    services = Services(base, library, broker_url(vhost), f"bench-{uuid.uuid4().hex[:6]}",
                        dry_run="true", threads=str(threads), match_delay="1", concurrency=str(threads + 2))
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
            with sqlite3.connect(store, timeout=30) as db:
                stored = db.execute("SELECT COUNT(*) FROM images").fetchone()[0]
            if stored < files:
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 2)[2])
    parser.add_argument("--library", type=Path, default=Path("/work/bench/lib"))
    parser.add_argument("--hashers", type=int, nargs="+", default=[1, 2], help="hasher counts to measure")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    files = count_files(args.library)
    work = Path(tempfile.mkdtemp(prefix="services-bench-"))
    vhost = f"image-dedup-bench-{uuid.uuid4().hex[:6]}"
    rabbitmqctl("add_vhost", vhost)
    rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    rows = []
    try:
        seconds = run_local(args.library, work, cores)
        rows.append((f"local mode ({cores} decoder processes)", seconds))
        for n in args.hashers:
            threads = max(1, cores // n)
            seconds = run_services(args.library, work, vhost, n, threads, files)
            rows.append((f"services mode, {n} hasher(s) x {threads} decoder process(es)", seconds))
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
