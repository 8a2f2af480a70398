"""CPU per pixel comparison: the verdict's look (``compare.both_ways``) over a kit library's
copy pairs, the pictures decoded beforehand, so that only the comparison is timed.

    .venv/bin/python bench/compare_cost.py --lib ~/bench/wide-s1 --lib ~/bench/lib-hard

Pairs: each photo's first file (by path) against up to 7 more of its files, from the library's
truth file (``LIB.truth.json``, written by the kit's make_library.py). Each picture is compared
as the product compares it (its keypoints and bands made once, when first needed). Run it
pinned to one core (``taskset -c 1``) and compare two builds in one session: absolute times
on a shared machine are noise.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import command_line, machine_line  # noqa: E402


def pairs_of(lib: Path) -> list[tuple[str, str]]:
    truth = json.loads(lib.with_name(lib.name + ".truth.json").read_text(encoding="utf-8"))
    by_photo: dict[str, list[str]] = {}
    for rel, info in truth["files"].items():
        by_photo.setdefault(info["source"].split("#")[0], []).append(rel)
    return [(files[0], other) for files in map(sorted, by_photo.values()) for other in files[1:8]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lib", type=Path, action="append", required=True, help="a kit library (repeatable)")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from shared.image.compare import MAX_SIDE, Features, both_ways
    from shared.image.pixels import _colour
    from shared.image.signature import load_grey

    print(machine_line())
    print(f"Command: {command_line()}")
    total, count = 0.0, 0
    for lib in args.lib:
        pairs = pairs_of(lib)
        paths = {rel: str(lib / rel) for pair in pairs for rel in pair}
        pictures = {rel: Features(load_grey(p, MAX_SIDE), _colour(p)) for rel, p in paths.items()}
        start = time.process_time()
        for a, b in pairs:
            both_ways(pictures[a], pictures[b], True)
        spent = time.process_time() - start
        print(f"{lib.name}: {len(pairs)} pairs, {1000 * spent / len(pairs):.2f} CPU-ms a pair")
        total, count = total + spent, count + len(pairs)
    print(f"all: {count} pairs, {1000 * total / count:.2f} CPU-ms a pair")


if __name__ == "__main__":
    main()
