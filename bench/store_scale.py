"""Store scale: SQLiteStore and ElasticsearchStore, timed through the same Store Protocol.

    .venv/bin/python bench/store_scale.py --sizes 10000 100000 [--queries 1000] [--out results.json]

For each size N and each store (``shared.store.sqlite.SQLiteStore`` in a temporary folder, and
``shared.store.elasticsearch.ElasticsearchStore`` on a fresh index ``bench-<uuid>`` of
``--es-url``, deleted with its ``-ledger`` index at the end), in one run:

1. bulk load: N synthetic records through ``upsert_many``, ``--batch`` (1000) per call, as a
   bulk-loading caller would; then ``--singles`` (500) more through one ``upsert`` each, the
   way a hasher writes. Both are reported as records per second.
2. queries: ``--queries`` (1000) ``candidates(q, max_dist=0.40, limit=100, turns=True)`` calls
   (the matcher's Goldberg word-index query in all 8 orientations, the defaults) and as many
   ``similar(q, min_similarity=0.35, limit=24)`` calls (the embedding search), p50 / p99 latency
   in ms. The first of each is in the p99 (and reported alone: Elasticsearch's first search
   reads the index into the searching process's memory, ``shared.store.elasticsearch._Mirror``). Each query record is a fresh near-duplicate of a random stored record (its "twin"),
   under a path that is not stored; recall = share of queries whose twin is among the results.

Synthetic records: Goldberg signatures from ``bench/matcher_scale.py``'s generator (shaped like
real ones, 20 % of them in planted groups of 2-6), a query's signature is its twin's with a
random 2-18 % of values moved one step, as matcher_scale plants copies (distance ~0.03-0.20);
words by ``shared.image.signature.words`` (computed before timing, as the hasher sends them).
Embeddings are random unit vectors x 127 rounded to int8 (D = 512); planted group members and
queries are their base's vector plus gaussian noise of 0.2-1.0 x its norm, renormalised (cosine
~0.7-0.98; unrelated vectors have cosine ~0 +- 0.05). The other fields are plausible values of
a camera JPEG under /photos. The same records go into both stores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import command_line, machine_line, md_table, percentile  # noqa: E402
from bench.matcher_scale import SIG_LEN, synthesize  # noqa: E402
from shared.image.signature import distances  # noqa: E402
from shared.store import ImageRecord  # noqa: E402

DIMS = 512
MAX_DIST = 0.40  # shared/config.py defaults
MIN_SIMILARITY = 0.35


def unit_embeddings(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.standard_normal((n, DIMS))
    return np.round(127 * v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.int8)


def noisy_embedding(rng: np.random.Generator, e: np.ndarray) -> np.ndarray:
    """``e`` plus gaussian noise of 0.2-1.0 times its norm, back to norm 127."""
    v = e.astype(np.float64) + rng.standard_normal(DIMS) * 127 * rng.uniform(0.2, 1.0) / np.sqrt(DIMS)
    return np.round(127 * v / np.linalg.norm(v)).astype(np.int8)


def near_signature(rng: np.random.Generator, s: np.ndarray) -> np.ndarray:
    """A planted copy as bench/matcher_scale.py makes them: 2-18 % of the values one step off."""
    mask = rng.random(SIG_LEN) < rng.uniform(0.02, 0.18)
    step = rng.choice(np.array([-1, 1], dtype=np.int8), SIG_LEN)
    out = s.copy()
    out[mask] = np.clip(s[mask] + step[mask], -2, 2)
    return out


def record(i: int, path: str, signature: np.ndarray, embedding: np.ndarray, rng: np.random.Generator) -> ImageRecord:
    return ImageRecord(
        path=path, root="/photos", size=int(rng.integers(1_500_000, 8_000_000)),
        mtime_ns=1_500_000_000 * 10**9 + i * 10**9, format="JPEG", width=4000, height=3000,
        exif_tags=int(rng.integers(10, 60)), exif_date=f"20{10 + i % 15}:06:01 12:00:00",
        signature=signature, digest=rng.bytes(16).hex(), embedding=embedding,
    )


def make_data(n: int, singles: int, queries: int, seed: int) -> dict:
    """The N bulk records, the single-upsert records, and the queries with their twins' paths."""
    rng = np.random.default_rng(seed)
    sigs, group = synthesize(n + singles, seed)
    emb = unit_embeddings(rng, n + singles)
    for i in range(1, n + singles):  # a planted group's members lie near its first member
        if group[i] >= 0 and group[i] == group[i - 1]:
            base = i - 1
            while base > 0 and group[base - 1] == group[i]:
                base -= 1
            emb[i] = noisy_embedding(rng, emb[base])
    paths = [f"/photos/{2010 + i % 15}/{i // 1000:03d}/IMG_{i:07d}.JPG" for i in range(n + singles)]
    records = [record(i, paths[i], sigs[i], emb[i], rng) for i in range(n + singles)]
    twins = rng.choice(n, queries, replace=queries > n)
    qs = [record(n + singles + k, f"/photos/queries/Q_{k:06d}.JPG", near_signature(rng, sigs[t]),
                 noisy_embedding(rng, emb[t]), rng) for k, t in enumerate(twins)]
    q_dist = [float(distances(q.signature, sigs[t][None])[0]) for q, t in zip(qs, twins)]
    q_cos = [float(q.embedding.astype(float) @ emb[t] / np.linalg.norm(q.embedding) / np.linalg.norm(emb[t]))
             for q, t in zip(qs, twins)]
    return {"bulk": records[:n], "singles": records[n:], "queries": qs, "twins": [paths[t] for t in twins],
            "twin_distance": (min(q_dist), float(np.median(q_dist)), max(q_dist)),
            "twin_cosine": (min(q_cos), float(np.median(q_cos)), max(q_cos))}


async def timed_queries(call, queries: list[ImageRecord], twins: list[str]) -> dict:
    lat, found = [], 0
    for q, twin in zip(queries, twins):
        t0 = time.perf_counter()
        hits = await call(q)
        lat.append((time.perf_counter() - t0) * 1000)
        found += any(c.record.path == twin for c in hits)
    return {"p50_ms": percentile(lat, 50), "p99_ms": percentile(lat, 99), "first_ms": lat[0],
            "recall": found / len(queries)}


async def measure(store, data: dict, batch: int) -> dict:
    bulk, singles = data["bulk"], data["singles"]
    t0 = time.perf_counter()
    for start in range(0, len(bulk), batch):
        await store.upsert_many(bulk[start : start + batch])
    bulk_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for r in singles:
        await store.upsert(r)
    single_s = time.perf_counter() - t0
    out = {"bulk_s": bulk_s, "bulk_per_s": len(bulk) / bulk_s,
           "singles": len(singles), "single_s": single_s, "single_per_s": len(singles) / single_s if singles else None}
    out["candidates"] = await timed_queries(lambda q: store.candidates(q, MAX_DIST, limit=100, turns=True),
                                            data["queries"], data["twins"])
    out["similar"] = await timed_queries(lambda q: store.similar(q, MIN_SIMILARITY, limit=24),
                                         data["queries"], data["twins"])
    return out


async def run_sqlite(data: dict, batch: int) -> dict:
    from shared.store.sqlite import SQLiteStore

    with tempfile.TemporaryDirectory(prefix="store-scale-") as tmp:
        store = SQLiteStore(Path(tmp) / "store.sqlite")
        try:
            out = await measure(store, data, batch)
        finally:
            await store.close()
        out["bytes_per_record"] = sum(p.stat().st_size for p in Path(tmp).glob("store.sqlite*")) / (
            len(data["bulk"]) + len(data["singles"]))
    return out


async def run_elasticsearch(data: dict, batch: int, url: str) -> dict:
    from elasticsearch import AsyncElasticsearch

    from shared.store.elasticsearch import ElasticsearchStore, concrete

    index = f"bench-{uuid.uuid4().hex[:12]}"
    store = ElasticsearchStore(url, index)
    es = AsyncElasticsearch(url, request_timeout=120)
    try:
        await store.open()
        out = await measure(store, data, batch)
        stats = await es.indices.stats(index=index, metric="store,segments")
        total = stats["indices"][concrete(index)]["total"]  # the index behind the alias
        out["bytes_per_record"] = total["store"]["size_in_bytes"] / (len(data["bulk"]) + len(data["singles"]))
        out["segments"] = total["segments"]["count"]
    finally:
        await store.close()
        await es.indices.delete(index=[concrete(index), concrete(f"{index}-ledger")], ignore_unavailable=True)
        await es.close()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000], help="records bulk-loaded (default: %(default)s)")
    ap.add_argument("--queries", type=int, default=1000, help="candidates and similar calls each (default: %(default)s)")
    ap.add_argument("--singles", type=int, default=500, help="single upsert calls timed (default: %(default)s)")
    ap.add_argument("--batch", type=int, default=1000, help="records per upsert_many call (default: %(default)s)")
    ap.add_argument("--stores", nargs="+", choices=["sqlite", "elasticsearch"], default=["sqlite", "elasticsearch"])
    ap.add_argument("--es-url", default="http://127.0.0.1:9200")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", type=Path, help="also write the results here (JSON)")
    args = ap.parse_args(argv)

    results = []
    for n in args.sizes:
        print(f"generating {n} records ...", file=sys.stderr, flush=True)
        data = make_data(n, args.singles, args.queries, args.seed)
        for kind in args.stores:
            print(f"{kind} n={n} ...", file=sys.stderr, flush=True)
            t0 = time.perf_counter()
            run = run_sqlite(data, args.batch) if kind == "sqlite" else run_elasticsearch(data, args.batch, args.es_url)
            out = asyncio.run(run)
            results.append({"store": kind, "n": n, "batch": args.batch, "queries": args.queries,
                            "twin_distance": data["twin_distance"], "twin_cosine": data["twin_cosine"],
                            "wall_s": time.perf_counter() - t0, **out})
            print(f"  {json.dumps(results[-1])}", file=sys.stderr, flush=True)
    print(machine_line())
    print(f"Command: {command_line()}\n")
    rows = [[r["store"], f"{r['n']:,}", f"{r['bulk_per_s']:.0f}", f"{r['single_per_s']:.1f}" if r["singles"] else "-",
             f"{r['candidates']['p50_ms']:.2f} / {r['candidates']['p99_ms']:.2f} ({r['candidates']['first_ms']:.0f})",
             f"{r['similar']['p50_ms']:.2f} / {r['similar']['p99_ms']:.2f} ({r['similar']['first_ms']:.0f})",
             f"{r['candidates']['recall']:.3f} / {r['similar']['recall']:.3f}"] for r in results]
    print(md_table(["store", "N", "bulk inserts/s", "single upserts/s", "candidates p50 / p99 (first) (ms)",
                    "similar p50 / p99 (first) (ms)", "recall (candidates / similar)"], rows))
    if results:
        d, c = results[0]["twin_distance"], results[0]["twin_cosine"]
        print(f"\nBulk: {args.batch} records per upsert_many; single upserts: {args.singles}; {args.queries} queries "
              f"of each kind (max_dist {MAX_DIST}, limit 100, 8 orientations; min_similarity {MIN_SIMILARITY}, limit 24). Twins "
              f"(first size): signature distance {d[0]:.3f} / {d[1]:.3f} / {d[2]:.3f}, embedding cosine "
              f"{c[0]:.3f} / {c[1]:.3f} / {c[2]:.3f} (min / median / max).")
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
