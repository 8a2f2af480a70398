"""Which index holds local mode's embeddings: the exact scan the product uses
(shared.store.vectors.EmbeddingIndex) against the HNSW graphs of usearch, faiss and hnswlib,
measured on the same vectors.

    .venv/bin/pip install usearch faiss-cpu hnswlib   # only for this comparison
    .venv/bin/python bench/ann_choice.py --records 100000 [--queries 2000]

N embeddings as bench/store_scale.py makes them (random unit vectors x 127 as int8: SSCD's are
as spread out, unrelated photos at cosine 0.007 +- 0.051), and ``--queries`` planted copies of
stored ones (cosine ~0.7-0.98). The exact scan compares each copy with every stored vector
(floor 0.35, the default min_similarity). Each library builds an HNSW graph of 16 links per
node with an insertion beam of 48 (the settings the product used before the scan), in the
element type it supports closest to int8, then answers the copies with a search beam of 96:
build rate and search time in CPU seconds (this process, both threads), the share of copies
whose twin is among the 25 nearest, memory per vector, and whether the library can remove a
vector (a record deleted or changed) and save its index beside the store.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import command_line, machine_line, md_table  # noqa: E402
from bench.store_scale import noisy_embedding, unit_embeddings  # noqa: E402

M, EF_ADD, EF_SEARCH, K = 16, 48, 96, 25


def exact_run(data, queries):
    from shared.store.vectors import EmbeddingIndex

    index = EmbeddingIndex(data.shape[1])
    t = time.process_time()
    index.add(np.arange(len(data)), data)
    build = time.process_time() - t
    t = time.process_time()
    rows, ids, _ = index.query(queries, 0.35, K)
    keys = [ids[rows == k] for k in range(len(queries))]
    return build, time.process_time() - t, keys, len(data) * (data.shape[1] + 16), "int8", "yes", "yes"


def usearch_run(data, queries):
    from usearch.index import Index, MetricKind, ScalarKind

    index = Index(ndim=data.shape[1], metric=MetricKind.Cos, dtype=ScalarKind.I8, connectivity=M,
                  expansion_add=EF_ADD, expansion_search=EF_SEARCH)
    t = time.process_time()
    index.add(np.arange(len(data)), data, threads=2)
    build = time.process_time() - t
    t = time.process_time()
    found = index.search(queries, K, threads=2)
    return build, time.process_time() - t, found.keys, index.memory_usage, "int8", "yes", "yes"


def faiss_run(data, queries):
    import faiss

    unit = data.astype(np.float32) / np.linalg.norm(data.astype(np.float32), axis=1, keepdims=True)
    index = faiss.IndexHNSWSQ(data.shape[1], faiss.ScalarQuantizer.QT_8bit, M, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = EF_ADD
    t = time.process_time()
    index.train(unit[:20000])
    index.add(unit)
    build = time.process_time() - t
    index.hnsw.efSearch = EF_SEARCH
    q = queries.astype(np.float32) / np.linalg.norm(queries.astype(np.float32), axis=1, keepdims=True)
    t = time.process_time()
    _, keys = index.search(q, K)
    memory = len(data) * (data.shape[1] + 2 * M * 4)  # int8 codes + level-0 links
    return build, time.process_time() - t, keys, memory, "int8 (scalar quantizer)", "no (HNSW)", "yes"


def hnswlib_run(data, queries):
    import hnswlib

    index = hnswlib.Index(space="cosine", dim=data.shape[1])
    index.init_index(max_elements=len(data), ef_construction=EF_ADD, M=M)
    index.set_num_threads(2)
    t = time.process_time()
    index.add_items(data.astype(np.float32), np.arange(len(data)))
    build = time.process_time() - t
    index.set_ef(EF_SEARCH)
    t = time.process_time()
    keys, _ = index.knn_query(queries.astype(np.float32), K)
    memory = len(data) * (data.shape[1] * 4 + 2 * M * 4)
    return build, time.process_time() - t, keys, memory, "float32 only", "yes (marked)", "yes"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--records", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--only", help="run only the index of this name (e.g. exact: the HNSW builds take hours at 1M)")
    args = ap.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    data = unit_embeddings(rng, args.records)
    twins = rng.choice(args.records, args.queries, replace=False)
    queries = np.stack([noisy_embedding(rng, data[t]) for t in twins])
    rows = []
    runs = (("exact scan (the product)", exact_run), ("usearch", usearch_run), ("faiss-cpu", faiss_run),
            ("hnswlib", hnswlib_run))
    for name, run in runs:
        if args.only and not name.startswith(args.only):
            continue
        try:
            build, search, keys, memory, dtype, removal, saved = run(data, queries)
        except ImportError:
            rows.append([name, "not installed", "-", "-", "-", "-", "-", "-"])
            continue
        recall = float(np.mean([t in set(np.asarray(k).tolist()) for t, k in zip(twins, keys)]))
        rows.append([name, dtype, f"{args.records / max(build, 1e-9):.0f}", f"{1000 * search / args.queries:.2f}",
                     f"{recall:.3f}", f"{memory / args.records:.0f}", removal, saved])
        print(rows[-1], file=sys.stderr, flush=True)
    print(machine_line())
    print(f"Command: {command_line()}\n")
    print(md_table(["library", "vectors as", "inserts per CPU-s", "search CPU ms/query", "twin recall@25",
                    "bytes/vector", "removal", "save/load"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
