"""The exact embedding scan alone: one batch of a whole library's queries over N stored
embeddings, as a plan asks it (``EmbeddingIndex.query`` of stored records, once each).

    .venv/bin/python bench/scan.py --records 400000 [--queries 2048] [--repeat 5] [--busy]

N embeddings as bench/store_scale.py makes them (random int8 unit vectors: SSCD's are as
spread out), the first ``--queries`` of them asked at the default min_similarity (0.35), each
asked ``--repeat`` times in a new pass; the median wall and CPU seconds (this process, all its
threads). ``--busy``: a thread of plain Python runs beside the scan in the same process, as
the plan's word lookups and record reading do, and its progress is reported alone and beside
the scan: how much each of them waits for the other on the interpreter's lock.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import command_line, machine_line, md_table  # noqa: E402
from bench.store_scale import unit_embeddings  # noqa: E402


class _Busy:
    """Plain Python work on a thread, counted: rounds a second."""

    def __init__(self) -> None:
        self.rounds, self._stop = 0, False
        self._thread = threading.Thread(target=self._work, daemon=True)
        self._thread.start()

    def _work(self) -> None:
        table: dict[int, int] = {}
        while not self._stop:
            for i in range(1000):
                table[i % 97] = table.get(i % 53, 0) + 1
            self.rounds += 1

    def rate(self, seconds: float) -> float:
        start, t = self.rounds, time.perf_counter()
        time.sleep(seconds)
        return (self.rounds - start) / (time.perf_counter() - t)

    def stop(self) -> None:
        self._stop = True
        self._thread.join()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--records", type=int, default=400_000)
    ap.add_argument("--queries", type=int, default=2048)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--busy", action="store_true", help="plain Python on a thread beside the scan")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    from shared.store.vectors import EmbeddingIndex

    data = unit_embeddings(np.random.default_rng(args.seed), args.records)
    index = EmbeddingIndex(data.shape[1], np.arange(args.records), data)
    ids = np.arange(args.queries)
    index.query(data[:8], 0.35, 25)  # the searchable slots found, the kernels loaded
    busy = _Busy() if args.busy else None
    alone = busy.rate(1.0) if busy else None
    walls, cpus, pairs = [], [], 0
    start, t0 = (busy.rounds, time.perf_counter()) if busy else (0, 0.0)
    for _ in range(args.repeat):
        t, c = time.perf_counter(), time.process_time()
        rows, _, _ = index.query(data[: args.queries], 0.35, 25, ids)  # a new pass each time: asked again
        walls.append(time.perf_counter() - t)
        cpus.append(time.process_time() - c)
        pairs = len(rows)
    beside = (busy.rounds - start) / (time.perf_counter() - t0) if busy else None
    if busy:
        busy.stop()
    print(machine_line())
    print(f"Command: {command_line()}\n")
    print(md_table(["records", "queries", "wall (s, median)", "CPU (s, median)", "pairs found", "busy thread alone (rounds/s)",
                    "beside the scan"],
                   [[f"{args.records:,}", args.queries, f"{statistics.median(walls):.3f}", f"{statistics.median(cpus):.3f}",
                     pairs, f"{alone:.0f}" if busy else "-", f"{beside:.0f}" if busy else "-"]]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
