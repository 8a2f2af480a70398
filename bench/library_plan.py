"""What units cost the matcher's plan (issue 19): the plan of a library whose store is filled
already, timed whole, with the time spent finding each component's units (folder listings,
the RAW+JPEG verdicts) and reading the metadata of every group's files (exiv2, for what only
a removed copy holds).

    python bench/library_plan.py ~/bench/wide-s1 --store ~/bench/library/wide-s1.sqlite

Fill the store first with a dry run over the same library and store
(``image-dedup deduplicate LIB --store STORE``); comparisons are then remembered, so the plan
looks at no pixels and what is left is the indexes, the ranking and the units.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import services.matcher.handler as matcher  # noqa: E402
from bench.common import machine_line  # noqa: E402
from services.watcher.handler import walk  # noqa: E402
from shared.config import Settings  # noqa: E402
from shared.store.open import open_stores  # noqa: E402

spent = {"units": 0.0, "metadata": 0.0}


def _timed_units(fn):
    async def wrapper(*args, **kwargs):
        started = time.perf_counter()
        try:
            return await fn(*args, **kwargs)
        finally:
            spent["units"] += time.perf_counter() - started
    return wrapper


def _timed_metadata(fn):
    def wrapper(*args, **kwargs):
        started = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            spent["metadata"] += time.perf_counter() - started
    return wrapper


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("library", type=Path)
    parser.add_argument("--store", type=Path, required=True)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    matcher.units_of = _timed_units(matcher.units_of)
    matcher._with_units = _timed_metadata(matcher._with_units)
    settings = Settings(source_directories=[args.library], store_path=args.store, threads=1)
    store, ledger = await open_stores(settings)
    paths = [f.path for f in walk(settings)]
    runs = []
    try:
        for _ in range(args.repeat):
            started = time.perf_counter()
            groups = await matcher.plan(paths, store=store, settings=settings, ledger=ledger)
            runs.append(time.perf_counter() - started)
    finally:
        await store.close()
        await ledger.close()
    files = sum(1 + len(g.remove) for g in groups)
    print(machine_line())
    print(f"{args.library.name}: {len(paths)} files, {len(groups)} groups of {files} files; {args.repeat} plans\n")
    print("| plan (median s) | units (s per plan) | metadata of the groups' files (s per plan) |")
    print("|---:|---:|---:|")
    print(f"| {statistics.median(runs):.2f} | {spent['units'] / args.repeat:.3f} | {spent['metadata'] / args.repeat:.3f} |")


if __name__ == "__main__":
    asyncio.run(main())
