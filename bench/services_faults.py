"""Services mode under faults, against local mode on an identical copy of a library (issue 20).

    .venv/bin/python bench/services_faults.py --library ~/bench/heal/lib-300 --es-url http://127.0.0.1:9200
        [--scenario storm outage index broker] [--kills 20] [--outage 30] [--json OUT]

Each scenario is one run of 1 watcher, 2 hashers, 2 matchers and 2 actuators as separate
processes, each with a host of its own (HOME, temporary folder, journals, duplicates folder),
sharing only the photos, RabbitMQ (a private vhost) and Elasticsearch (a fresh index, reached
through a TCP relay that plays the store's outages); real actions (``move``), not a dry run.
Local mode runs once on a copy of the library: the files it removes are the reference.

* ``storm``: ``--kills`` kill -9 of a random service (its decoder processes too), each
  restarted at once, spread over the import; then Elasticsearch refusing connections for
  ``--outage`` seconds, then frozen (connections open, no byte passed) as long;
* ``outage``: only the refusing and the frozen store;
* ``index``: the index deleted in the middle of the import;
* ``broker``: RabbitMQ stopped for 10 s in the middle of the import (``rabbitmqctl stop_app``).

For each: seconds from the last fault until the services rest where local mode ended (the same
files moved; every queue empty), files moved that local mode keeps, files local mode moves that
stayed, photos with no copy left, dead letters, and the log lines of the broker and store
outages per service.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import random
import re
import shutil
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import machine_line  # noqa: E402
from bench.services_throughput import SAME_AS_LOCAL, delete_index, mark_of, unplanned  # noqa: E402
from tests.services_support import (  # noqa: E402
    Services, TcpProxy, broker_url, dead_letters, get, metric, queue_depths, rabbitmqctl, snapshot,
)

ROLES = (("watcher", 1), ("hasher", 2), ("matcher", 2), ("actuator", 2))


def local_removed(library: Path, work: Path) -> set[str]:
    from rich.console import Console

    from services.local import deduplicate
    from shared.config import Settings

    settings = Settings(source_directories=[library], store_path=work / "local.sqlite", dry_run=True,
                        journal_directory=work / "local-journals")
    summary = asyncio.run(deduplicate(settings, Console(stderr=True, quiet=True), quiet=True))
    return {str(Path(r.path).relative_to(library)) for d in summary.decisions for r in d.remove}


def run(scenario: str, library: Path, work: Path, vhost: str, es_url: str, expected: set[str], kills: int,
        outage: float, settle: float) -> dict:
    rng = random.Random(f"{scenario}-{kills}")
    base = work / scenario
    photos = base / "photos"
    shutil.copytree(library, photos)
    files = snapshot(photos)
    proxy = TcpProxy(int(es_url.rsplit(":", 1)[1]))
    index = f"bench-{uuid.uuid4().hex[:12]}"
    services = Services(base / "svc", photos, broker_url(vhost), f"faults-{uuid.uuid4().hex[:6]}", dry_run="false",
                        action="move", elasticsearch_url=proxy.url, elasticsearch_index=index, threads="1",
                        match_delay="2", reconcile_interval="30", **SAME_AS_LOCAL)
    es = {"elasticsearch_url": es_url, "elasticsearch_index": index}
    mark = mark_of(photos)
    hosts = base / "hosts"
    url, prefix = services.env["IMAGE_DEDUP_BROKER_URL"], services.env["IMAGE_DEDUP_BROKER_PREFIX"]
    started = time.monotonic()
    try:
        live: dict[tuple[str, int], object] = {}
        for role, n in ROLES:
            for i in range(n):
                if role != "watcher":
                    live[(role, i)] = services.start(role, host=hosts / f"{role}-{i}")[0]
        services.wait_ready(timeout=240)
        live[("watcher", 0)] = services.start("watcher", host=hosts / "watcher-0")[0]  # its start-up scan: the import
        hashers = lambda: [p for role, proc, p in services.procs if role == "hasher" and proc.poll() is None]  # noqa: E731

        def signed() -> float:
            return sum(metric(get(p, "/metrics")[1], "image_dedup_hasher_images_signed_total") for p in hashers())

        time.sleep(5)
        if scenario == "storm":
            for _ in range(kills):
                time.sleep(rng.uniform(1.0, 4.0))
                key = rng.choice(sorted(live))
                services.kill9(live[key])
                live[key] = services.start(key[0], host=hosts / f"{key[0]}-{key[1]}")[0]
        if scenario in ("storm", "outage"):
            proxy.refuse()
            time.sleep(outage)
            proxy.resume()
            proxy.freeze()
            time.sleep(outage)
            proxy.resume()
        elif scenario == "index":
            from shared.store.elasticsearch import concrete

            deadline = time.monotonic() + 120
            while signed() < len(files) / 3 and time.monotonic() < deadline:
                time.sleep(0.2)
            urllib.request.urlopen(urllib.request.Request(f"{es_url}/{concrete(index)}", method="DELETE"), timeout=30).close()
        elif scenario == "broker":
            rabbitmqctl("stop_app")
            time.sleep(10)
            rabbitmqctl("start_app")
        last_fault = time.monotonic()
        removed = lambda: files - snapshot(photos)  # noqa: E731

        def at_rest() -> bool:
            """Local mode's result on disk, every stored image planned, no queue but the dead
            letters' holding a message (the broker's counts lag: it must hold twice, 6 s apart)."""
            for attempt in range(2):
                if attempt:
                    time.sleep(6)
                depths = asyncio.run(queue_depths(url, prefix))
                if (removed() != expected or unplanned(base, es, mark)
                        or any(ready for name, (ready, _) in depths.items() if not name.endswith(".dead"))):
                    return False
            return True

        converged = None
        while time.monotonic() - last_fault < settle:
            time.sleep(1)
            try:
                if at_rest():
                    converged = time.monotonic() - last_fault - 6
                    break
            except Exception:  # noqa: BLE001 - the broker may still be coming back
                continue
        time.sleep(5)  # and nothing more
        gone = removed()
        letters = asyncio.run(dead_letters(url, prefix))
        moved = {str(p.relative_to(d / "photos")) for d in hosts.glob("actuator-*/duplicates") for p in d.rglob("*")
                 if p.is_file()}
        logs = {p.stem: p.read_text(errors="replace") for p in sorted(services.logs.glob("*.log"))}
    finally:
        services.stop()
        proxy.close()
        delete_index({"elasticsearch_url": es_url, "elasticsearch_index": index})
    count = lambda pattern: {k: len(re.findall(pattern, v)) for k, v in logs.items() if re.search(pattern, v)}  # noqa: E731
    return {
        "scenario": scenario, "files": len(files), "wall_s": round(time.monotonic() - started, 1),
        "converged_after_last_fault_s": None if converged is None else round(converged, 1),
        "moved_but_kept_by_local": sorted(gone - expected), "kept_but_moved_by_local": sorted(expected - gone),
        "lost": sorted(files - snapshot(photos) - moved),  # neither in the library nor in a duplicates folder
        "dead_letters": [h.get("x-death-reason") for _, h in letters],
        "log_lines": {
            "broker lost": count(r"lost the broker connection"), "broker back": count(r"reconnected to the broker"),
            "store outage": count(r"pausing until it answers"), "store back": count(r"the outage is over"),
            "index made again": count(r"had vanished: created it again"), "tracebacks": count(r"Traceback"),
            "reconcile": count(r"reconcile: \d+ stored images"),
        },
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 2)[2])
    parser.add_argument("--library", type=Path, required=True)
    parser.add_argument("--es-url", default="http://127.0.0.1:9200")
    parser.add_argument("--scenario", nargs="+", default=["storm", "outage", "index", "broker"],
                        choices=["storm", "outage", "index", "broker"])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--outage", type=float, default=30.0, help="seconds refusing, then as many frozen")
    parser.add_argument("--settle", type=float, default=600.0, help="give up this long after the last fault")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="services-faults-"))
    vhost = f"image-dedup-faults-{uuid.uuid4().hex[:6]}"
    rabbitmqctl("add_vhost", vhost)
    rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    results = []
    try:
        expected = local_removed(args.library, work)
        for scenario in args.scenario:
            results.append(run(scenario, args.library, work, vhost, args.es_url, expected, args.kills, args.outage,
                               args.settle))
            print(json.dumps(results[-1]), flush=True)
    finally:
        rabbitmqctl("delete_vhost", vhost, check=False)
        shutil.rmtree(work, ignore_errors=True)
    print(f"\nLibrary: {args.library.name}; local mode removes {len(expected)} files; {machine_line()}\n")
    print("| scenario | converged after the last fault | as local mode | files lost | dead letters | outage lines per service |")
    print("|---|---:|---|---:|---:|---|")
    for r in results:
        same = not r["moved_but_kept_by_local"] and not r["kept_but_moved_by_local"]
        lines = collections.Counter()
        for what, per in r["log_lines"].items():
            if per:
                lines[what] = max(per.values())
        conv = "never" if r["converged_after_last_fault_s"] is None else f"{r['converged_after_last_fault_s']:.0f} s"
        print(f"| {r['scenario']} | {conv} | {'yes' if same else 'no'} | {len(r['lost'])} | {len(r['dead_letters'])} | "
              + ", ".join(f"{k}: {v}" for k, v in sorted(lines.items())) + " |")
    if args.json:
        args.json.write_text(json.dumps({"library": str(args.library), "expected": len(expected), "results": results},
                                        indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
