"""Throughput of services mode (RabbitMQ, separate processes) against local mode on one library.

    .venv/bin/python bench/services_throughput.py --library ~/bench/lib [--hashers 2] [--matchers 1]
        [--store sqlite elasticsearch] [--es-url http://127.0.0.1:9200] [--backlog-matchers 1 2]
        [--json OUT]

Every run starts from an empty store and is a dry run (the library is never changed). Local
mode is timed around ``services.local.deduplicate``; services mode (1 watcher, ``--hashers``,
``--matchers``, 1 actuator) from the moment the watcher is ready (its start-up rescan begins)
until every file is in the store, every stored image has its plan mark (a matcher marks a
component after publishing its decisions) and the actuator has handled as many decisions as
the matchers published. Each services row says whether it reached local mode's result: the same removals
(the actuator's ``dry_run`` lines against local mode's decisions).

``--store`` names the store kinds to measure, each with its own local-mode row and services
rows (default: SQLite only); every time is also given as a multiple of the first local-mode row. With ``elasticsearch`` every run gets a fresh index
``bench-<uuid>`` on ``--es-url``, deleted with its ledger after the run.

``--backlog-matchers N ...`` also measures (on the last ``--store``) how fast N matcher processes drain a backlog: the
library's records (analysed once, in this process) are written to a fresh store, N matchers
start, one ``image.signed`` per image is published (the broker shares them out); timed until
every image has its plan mark.

Needs a RabbitMQ (``$IMAGE_DEDUP_TEST_BROKER``, default 127.0.0.1:5672, guest/guest): a
private vhost is created and deleted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
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

from bench.common import machine_line  # noqa: E402
from tests.services_support import Services, broker_url, get, metric, rabbitmqctl  # noqa: E402

STORE_NAMES = {"sqlite": "SQLite", "elasticsearch": "Elasticsearch"}


def count_files(library: Path) -> int:
    from services.watcher.handler import walk
    from shared.config import Settings

    return sum(1 for _ in walk(Settings(source_directories=[library])))


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
        from shared.store.elasticsearch import concrete

        for name in (concrete(settings["elasticsearch_index"]), concrete(f"{settings['elasticsearch_index']}-ledger")):
            es_request(f"{settings['elasticsearch_url']}/{name}", "DELETE")


def stored_count(store: Path, es: dict[str, str]) -> int:
    if es:
        found = es_request(f"{es['elasticsearch_url']}/{es['elasticsearch_index']}/_count")
        return 0 if found is None else found["count"]
    if not store.exists():
        return 0
    with sqlite3.connect(store, timeout=30) as db:
        try:
            return db.execute("SELECT COUNT(*) FROM images").fetchone()[0]
        except sqlite3.OperationalError:  # not made yet
            return 0


def run_local(library: Path, work: Path, threads: int, es_url: str | None = None) -> tuple[float, set[str]]:
    """Seconds, and the files local mode removes."""
    from rich.console import Console

    from services.local import deduplicate
    from shared.config import Settings

    es = es_settings(es_url)
    store = work / f"local-{uuid.uuid4().hex[:6]}.sqlite"
    settings = Settings(source_directories=[library], store_path=store, journal_directory=work / "journals",
                        dry_run=True, threads=threads, **es)
    try:
        started = time.monotonic()
        summary = asyncio.run(deduplicate(settings, Console(stderr=True, quiet=True), quiet=True))
        return time.monotonic() - started, {r.path for d in summary.decisions for r in d.remove}
    finally:
        delete_index(es)


def unplanned(store: Path, es: dict[str, str], mark: str) -> int:
    """Stored images that have no plan yet (``Store.unplanned``, counted)."""
    if es:
        from shared.store.elasticsearch import SIGNED

        query = {"bool": {"filter": [SIGNED], "must_not": [{"term": {"planned": mark}}]}}
        # the marks written so far, not those the node's once-a-second refresh made searchable
        es_request(f"{es['elasticsearch_url']}/{es['elasticsearch_index']}/_refresh", "POST")
        request = urllib.request.Request(f"{es['elasticsearch_url']}/{es['elasticsearch_index']}/_count",
                                         data=json.dumps({"query": query}).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())["count"]
    with sqlite3.connect(store, timeout=30) as db:
        return db.execute("SELECT count(*) FROM images WHERE signature IS NOT NULL AND planned IS NOT ?",
                          (mark,)).fetchone()[0]


def counted(services: Services, role: str, name: str, **labels: str) -> float:
    return sum(metric(get(port, "/metrics")[1], name, **labels) for r, proc, port in services.procs
               if r == role and proc.poll() is None)


def done(services: Services, store: Path, es: dict[str, str], mark: str, files: int | None) -> bool:
    """Every file stored (``files``), every stored image planned, and every decision the
    matchers published handled by an actuator (when there is one): the broker's own queue
    counts lag by seconds, the store and the services' counters do not."""
    if files is not None and stored_count(store, es) < files:
        return False
    if unplanned(store, es, mark):
        return False
    if not any(role == "actuator" for role, _, _ in services.procs):
        return True
    settled = counted(services, "actuator", "image_dedup_actuator_messages_total") - sum(
        counted(services, "actuator", "image_dedup_actuator_messages_total", outcome=o) for o in UNSETTLED)
    return settled >= counted(services, "matcher", "image_dedup_matcher_duplicate_groups_total")


#: The actuator's outcomes after which the broker delivers the decision again
UNSETTLED = ("retried", "interrupted", "failed")


#: The services' settings that differ from local mode's defaults (Services' test defaults undone)
SAME_AS_LOCAL = {"max_dist": "0.40"}


def mark_of(library: Path) -> str:
    from services.matcher.handler import plan_mark
    from shared.config import Settings

    return plan_mark(Settings(source_directories=[library], **SAME_AS_LOCAL))


DRY_RUN_LINE = re.compile(r"image_dedup\.services: dry_run \w+ (.*) \(keep ")


def services_removed(services: Services) -> set[str]:
    """The files the actuators would remove (their dry-run lines)."""
    return {m.group(1) for log in services.logs.glob("actuator-*.log")
            for m in DRY_RUN_LINE.finditer(log.read_text(errors="replace"))}


def run_services(library: Path, work: Path, vhost: str, hashers: int, matchers: int, threads: int, files: int,
                 es_url: str | None = None) -> tuple[float, set[str]]:
    es = es_settings(es_url)
    base = work / f"svc-{hashers}-{matchers}{'-es' if es else ''}"
    services = Services(base, library, broker_url(vhost), f"bench-{uuid.uuid4().hex[:6]}",
                        dry_run="true", threads=str(threads), match_delay="1", concurrency=str(threads + 2),
                        pictures_directory=str(base / "pictures"),  # as docker-compose.yml shares it
                        **SAME_AS_LOCAL, **es)
    try:
        for _ in range(hashers):
            services.start("hasher")
        for _ in range(matchers):
            # a matcher compares pictures once the hashers went quiet (an import is matched whole),
            # so the cores are the matchers' then: each gets its share, as local mode's plan does
            services.start("matcher", threads=max(1, (os.cpu_count() or 1) // matchers))
        services.start("actuator")
        services.wait_ready(timeout=180)
        _, port = services.start("watcher")
        while get(port, "/readyz")[0] != 200:
            time.sleep(0.02)
        started = time.monotonic()
        store, mark = base / "store.sqlite", mark_of(library)
        while not done(services, store, es, mark, files):
            time.sleep(0.5)
        return time.monotonic() - started, services_removed(services)
    finally:
        services.stop()
        delete_index(es)


def analysed(library: Path) -> list:
    """The library's records, as a hasher writes them (analysed here once, two processes)."""
    from concurrent.futures import ProcessPoolExecutor

    from services.watcher.handler import walk
    from shared.config import Settings
    from shared.image.signature import ANALYSIS_VERSION, analyze
    from shared.store import ImageRecord

    found = list(walk(Settings(source_directories=[library])))
    with ProcessPoolExecutor(os.cpu_count() or 1) as pool:
        out = []
        for f, a in zip(found, pool.map(analyze, [f.path for f in found], chunksize=8)):
            out.append(ImageRecord(f.path, f.root, f.size, f.mtime_ns, a.format, a.width, a.height, a.exif_tags,
                                   a.exif_date, signature=a.signature, digest=a.digest or None,
                                   frames=a.frames, embedding=a.embedding, analysis=ANALYSIS_VERSION))
        return out


def run_backlog(records: list, library: Path, work: Path, vhost: str, matchers: int, es_url: str | None) -> float:
    """Seconds for ``matchers`` matcher processes to drain one ``image.signed`` per record."""
    from shared.bus.rabbitmq import RabbitBus
    from shared.messages import ImageSigned
    from shared.store.open import open_stores
    from shared.config import Settings

    es = es_settings(es_url)
    base = work / f"backlog-{matchers}{'-es' if es else ''}"
    # one decoder process each: N matchers on N cores, so the rows tell how the work is shared
    services = Services(base, library, broker_url(vhost), f"bench-{uuid.uuid4().hex[:6]}", dry_run="true",
                        match_delay="1", threads="1", **SAME_AS_LOCAL, **es)
    url, prefix = services.env["IMAGE_DEDUP_BROKER_URL"], services.env["IMAGE_DEDUP_BROKER_PREFIX"]

    async def fill() -> None:
        settings = Settings(source_directories=[library], store_path=base / "store.sqlite", **SAME_AS_LOCAL, **es)
        store, ledger = await open_stores(settings)
        try:
            await store.upsert_many(records)
        finally:
            await store.close()
            await ledger.close()

    async def announce() -> None:
        bus = await RabbitBus(url, prefix).connect()
        for r in records:
            await bus.publish(ImageSigned(path=r.path))
        await bus.close()

    try:
        base.mkdir(parents=True, exist_ok=True)
        asyncio.run(fill())
        for _ in range(matchers):
            services.start("matcher")
        services.wait_ready(timeout=180)
        asyncio.run(announce())  # to ready consumers: the broker shares it out among them
        started = time.monotonic()
        store, mark = base / "store.sqlite", mark_of(library)
        while not done(services, store, es, mark, None):
            time.sleep(0.5)
        return time.monotonic() - started
    finally:
        services.stop()
        delete_index(es)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 2)[2])
    parser.add_argument("--library", type=Path, default=Path.home() / "bench" / "lib")
    parser.add_argument("--hashers", type=int, nargs="+", default=[2], help="hasher counts to measure (default: 2)")
    parser.add_argument("--matchers", type=int, default=1, help="matchers in the services runs (default: 1)")
    parser.add_argument("--store", nargs="+", choices=list(STORE_NAMES), default=["sqlite"],
                        help="store kinds to measure, local and services mode on each (default: sqlite)")
    parser.add_argument("--es-url", default="http://127.0.0.1:9200", help="Elasticsearch for --store elasticsearch")
    parser.add_argument("--backlog-matchers", type=int, nargs="*", default=[],
                        help="also time this many matchers draining a backlog of the whole library")
    parser.add_argument("--json", type=Path, help="write the rows as JSON here too")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    files = count_files(args.library)
    work = Path(tempfile.mkdtemp(prefix="services-bench-"))
    vhost = f"image-dedup-bench-{uuid.uuid4().hex[:6]}"
    rabbitmqctl("add_vhost", vhost)
    rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    rows = []
    first_local = None  # the ratios are to the first local-mode row (the first --store)
    try:
        for kind in args.store:
            es_url = args.es_url if kind == "elasticsearch" else None
            on = f", {STORE_NAMES[kind]}"
            local_s, local_removed = run_local(args.library, work, cores, es_url)
            first_local = first_local or local_s
            rows.append({"mode": f"local mode ({cores} decoder processes){on}", "seconds": local_s, "same": None,
                         "ratio": local_s / first_local})
            for n in args.hashers:
                threads = max(1, cores // n)
                seconds, removed = run_services(args.library, work, vhost, n, args.matchers, threads, files, es_url)
                rows.append({"mode": f"services, {n} hasher(s) x {threads} decoder process(es), {args.matchers} "
                                     f"matcher(s) x {max(1, cores // args.matchers)}{on}", "seconds": seconds, "same": removed == local_removed,
                             "only_local": sorted(local_removed - removed), "only_services": sorted(removed - local_removed),
                             "ratio": seconds / first_local})
            if args.backlog_matchers and kind == args.store[-1]:
                records = analysed(args.library)
                for n in args.backlog_matchers:
                    seconds = run_backlog(records, args.library, work, vhost, n, es_url)
                    rows.append({"mode": f"backlog of {len(records)} signed images, {n} matcher(s) x 1 decoder process{on}",
                                 "seconds": seconds, "same": None})
    finally:
        rabbitmqctl("delete_vhost", vhost, check=False)
        shutil.rmtree(work, ignore_errors=True)
    print(f"Library: {args.library.name} ({files} files); {machine_line()}; cold store, dry run.\n")
    print("| mode | seconds | images/s | x the first row | local mode's result |")
    print("|---|---:|---:|---:|---|")
    for row in rows:
        ratio = f"{row['ratio']:.2f}" if "ratio" in row else ""
        same = "" if row["same"] is None else ("yes" if row["same"] else
                                               f"**no**: {len(row['only_local'])} of local mode's removals "
                                               f"missing, {len(row['only_services'])} more")
        print(f"| {row['mode']} | {row['seconds']:.1f} | {files / row['seconds']:.1f} | {ratio} | {same} |")
    if args.json:
        args.json.write_text(json.dumps({"library": str(args.library), "files": files, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
