"""Library scale: a whole library of N synthetic records planned by local mode's own code path.

    .venv/bin/python bench/library_scale.py --records 100000 [--store sqlite|elasticsearch] --json OUT

Builds N records with planted copies (matcher_scale's Goldberg signatures and store_scale's
embeddings: 20 % of the records in planted groups of 2-6, a copy 2-18 % of its base's
signature values one step off and its embedding at cosine ~0.7-0.98; unrelated embeddings are
random unit vectors, as spread out as SSCD's), writes them through the store's ``upsert_many``
(1000 per call; ``insert_s``), then plans the whole library through ``services.local.
match_library`` (``plan_s``) with the default settings (max_dist 0.40, 8 orientations,
min_similarity 0.35) and the pixel look stubbed to "agrees" (the records have no files; the
verdict's other rules all apply). Then the same call again (``rerun_s``: nothing changed).
Then ``--add`` new records (half of them copies of records of no group, half new photos) are
written and the library planned again (``add_s``: what adding photos to a planned library
costs, local mode planning only the new records and the components they meet;
``add_recall``: the new copies found; ``recall_after_add``: all planted copies, old and new).

Scored like the benchmark kit: ``recall`` is the share of planted copies removed in favour of
a member of their own group, ``wrong`` the removals in favour of a record of another group or
of none. ``peak_rss_mb`` is this process's peak resident memory (generation included; the
records are made and written 10,000 at a time). With ``--store elasticsearch`` the records go
to a fresh index ``bench-<uuid>`` of ``--es-url`` (deleted after, unless ``--keep``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
import uuid
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import command_line, machine_line, md_table, peak_rss_mb, phase_peak_rss_mb  # noqa: E402
from bench.matcher_scale import synthesize_chunks  # noqa: E402
from bench.store_scale import SIG_LEN, near_signature, noisy_embedding, record, unit_embeddings  # noqa: E402


async def _agrees(a, b, turns):
    """The pixel look, stubbed: synthetic records have no files behind them. This measures
    retrieval and planning; bench/accuracy.py measures the look on real photos."""
    from shared.image.compare import Agreement

    return Agreement(score=1.0), None


def chunks(n: int, seed: int, root: str):
    """(records, planted group ids) 10,000 at a time; groups never straddle chunks."""
    rng = np.random.default_rng(seed + 1)
    at = 0
    for sigs, group in synthesize_chunks(n, seed):
        emb = unit_embeddings(rng, len(sigs))
        for i in range(1, len(sigs)):  # a planted group's members lie near its first member
            if group[i] >= 0 and group[i] == group[i - 1]:
                base = i - 1
                while base > 0 and group[base - 1] == group[i]:
                    base -= 1
                emb[i] = noisy_embedding(rng, emb[base])
        records = [replace(record(at + i, path_of(root, at + i), sigs[i], emb[i], rng), root=root)
                   for i in range(len(sigs))]
        yield records, group
        at += len(sigs)


def path_of(root: str, i: int) -> str:
    return f"{root}/{2010 + i % 15}/{i // 1000:04d}/IMG_{i:07d}.JPG"


def index_of(path: str) -> int:
    return int(path[-11:-4])


def score(decisions, group: np.ndarray) -> dict:
    expected = int(sum(np.bincount(group[group >= 0]) - 1)) if (group >= 0).any() else 0
    correct = wrong = 0
    stages: dict[str, int] = {}
    for d in decisions:
        gk = group[index_of(d.keep.path)]
        for r in d.remove:
            if gk >= 0 and group[index_of(r.path)] == gk:
                correct += 1
            else:
                wrong += 1
            stages[r.evidence.stage] = stages.get(r.evidence.stage, 0) + 1
    return {"expected": expected, "found": correct, "wrong": wrong, "recall": correct / expected if expected else None,
            "stages": stages}


async def run(args: argparse.Namespace, work: Path) -> dict:
    from services.local import match_library
    from shared.config import Settings

    root = str(work / "photos")
    os.makedirs(root, exist_ok=True)
    settings = Settings(source_directories=[root], store_path=work / "store.sqlite", journal_directory=work / "j",
                        elasticsearch_url=args.es_url if args.store == "elasticsearch" else None,
                        elasticsearch_index=f"bench-{uuid.uuid4().hex[:12]}")
    from shared.store.open import open_stores

    store, ledger = await open_stores(settings)
    groups, paths = [], []
    out: dict = {"store": args.store, "records": args.records, "seed": args.seed}
    try:
        insert_s = 0.0
        for records, group in chunks(args.records, args.seed, root):
            for start in range(0, len(records), 1000):
                t0 = time.perf_counter()
                await store.upsert_many(records[start : start + 1000])
                insert_s += time.perf_counter() - t0
            groups.append(group)
            paths += [r.path for r in records]
            print(f"  written {len(paths)}, {insert_s:.0f} s", file=sys.stderr, flush=True)
        out["insert_s"] = insert_s
        out["insert_per_s"] = args.records / insert_s
        group = np.concatenate(groups)
        phase_peak_rss_mb(reset=True)
        cpu0, t0 = time.process_time(), time.perf_counter()
        decisions, _ = await match_library(paths, store, ledger, settings, _agrees, lambda n: None)
        out["plan_s"] = time.perf_counter() - t0
        out["plan_cpu_s"] = time.process_time() - cpu0
        out["plan_peak_rss_mb"] = phase_peak_rss_mb(reset=True)
        out.update(score(decisions, group))
        t0 = time.perf_counter()
        again, _ = await match_library(paths, store, ledger, settings, _agrees, lambda n: None)
        out["rerun_s"] = time.perf_counter() - t0
        out["rerun_same"] = again == decisions
        del again, decisions  # the benchmark holds no plan of its own while the next is made
        out["rerun_peak_rss_mb"] = phase_peak_rss_mb(reset=True)
        if args.add:
            rng = np.random.default_rng(args.seed + 2)
            singles = np.flatnonzero(group < 0)
            originals = rng.choice(singles, args.add // 2, replace=False)
            existing = {r.path: r for r in (await store.get_many([paths[i] for i in originals])).values()}
            added, new_group, first_new = [], np.full(args.add, -1), int(group.max()) + 1
            fresh = unit_embeddings(rng, args.add)
            for k in range(args.add):
                i = len(paths) + k
                if k < len(originals):  # a copy of a record that had none
                    base = existing[paths[originals[k]]]
                    sig, emb = near_signature(rng, base.signature), noisy_embedding(rng, base.embedding)
                    new_group[k] = first_new + k
                else:
                    sig, emb = rng.integers(-2, 3, SIG_LEN).astype(np.int8), fresh[k]
                added.append(replace(record(i, path_of(root, i), sig, emb, rng), root=root))
            group = np.concatenate([group, new_group])
            group[originals] = new_group[: len(originals)]
            await store.upsert_many(added)
            cpu0, t0 = time.process_time(), time.perf_counter()
            decisions, _ = await match_library(paths + [r.path for r in added], store, ledger, settings, _agrees,
                                               lambda n: None)
            out["add_s"] = time.perf_counter() - t0
            out["add_cpu_s"] = time.process_time() - cpu0
            out["add_peak_rss_mb"] = phase_peak_rss_mb(reset=True)
            added_score = score([d for d in decisions if any(group[index_of(p.path)] >= first_new
                                                              for p in (d.keep, *d.remove))], group)
            out["add_recall"] = added_score["found"] / len(originals)
            after = score(decisions, group)
            out["add_wrong"], out["recall_after_add"] = after["wrong"], after["recall"]
    finally:
        phase_peak_rss_mb(reset=True)
        await store.close()  # local mode saves its index beside the store here
        await ledger.close()
        out["close_peak_rss_mb"] = phase_peak_rss_mb()
        if args.store == "elasticsearch" and not args.keep:
            from elasticsearch import AsyncElasticsearch

            from shared.store.elasticsearch import concrete

            es = AsyncElasticsearch(args.es_url, request_timeout=120)
            index = settings.elasticsearch_index  # an alias: the indexes behind it are deleted
            await es.indices.delete(index=[concrete(index), concrete(f"{index}-ledger")], ignore_unavailable=True)
            await es.close()
    out["peak_rss_mb"] = peak_rss_mb()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--records", type=int, required=True, help="records in the library")
    ap.add_argument("--store", choices=["sqlite", "elasticsearch"], default="sqlite")
    ap.add_argument("--es-url", default=os.environ.get("IMAGE_DEDUP_TEST_ELASTICSEARCH_URL", "http://127.0.0.1:9200"))
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--workdir", type=Path, help="where the SQLite store goes (default: a temporary folder)")
    ap.add_argument("--keep", action="store_true", help="keep the Elasticsearch index")
    ap.add_argument("--add", type=int, default=1000, help="records added after the first plan (0: none)")
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args(argv)
    if args.workdir:
        args.workdir.mkdir(parents=True, exist_ok=True)
        out = asyncio.run(run(args, args.workdir))
    else:
        with tempfile.TemporaryDirectory(prefix="library-scale-") as tmp:
            out = asyncio.run(run(args, Path(tmp)))
    print(machine_line())
    print(f"Command: {command_line()}\n")
    print(md_table(["store", "records", "insert (s)", "inserts/s", "plan (s)", "plan CPU (s)", "re-run (s)",
                    "peak RSS (MB)", "recall", "wrong", "+ records", "plan again (s)", "their recall", "recall after"],
                   [[out["store"], f"{out['records']:,}", f"{out['insert_s']:.1f}", f"{out['insert_per_s']:.0f}",
                     f"{out['plan_s']:.1f}", f"{out['plan_cpu_s']:.1f}", f"{out['rerun_s']:.1f}",
                     f"{out['peak_rss_mb']:.0f}", f"{out['recall']:.4f}", out["wrong"], f"{args.add:,}",
                     f"{out['add_s']:.1f}" if args.add else "-",
                     f"{out['add_recall']:.4f}" if args.add else "-",
                     f"{out['recall_after_add']:.4f}" if args.add else "-"]]))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
