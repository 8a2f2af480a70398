"""Accuracy on the benchmark kit's library: our tool at its defaults and a sweep of the
verdict's options (max_dist, min_similarity, min_agreement), and imagehash pHash.

Each library is analysed ONCE, by running the real CLI (``image-dedup deduplicate LIB --store
S --report R --quiet``, a dry run) into a temporary SQLite store; its report is scored as the
"CLI defaults" row. Each setting then re-runs the matcher's ``plan`` (services.matcher.handler,
with the verdict's pixel comparison in a decoder pool) against that store, writes a report in
the kit's format and scores it with the kit's ``score.py --json``. As a reference point, imagehash's pHash (64 bits) is run on every
file; pairs within a Hamming distance of 10 become groups (connected components) and score.py
``--format pairs --lib`` keeps the file with most pixels, then bytes.

Columns: wrong = wrong removals (should be 0); recall by difficulty; pair precision; keep
accuracy; neg = 'negative' (look-alike) files put in a group with another photo.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import DEFAULT_LIB, REPO, command_line, find_kit, machine_line, md_table  # noqa: E402

DIFFICULTIES = ("exact", "easy", "medium", "hard", "natural")


def cli() -> list[str]:
    exe = Path(sys.executable).with_name("image-dedup")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "services.cli"]


def build_store(lib: Path, store: Path, report: Path) -> float:
    """Run the real CLI once (dry run); returns its wall time."""
    t0 = time.perf_counter()
    proc = subprocess.run([*cli(), "deduplicate", str(lib), "--store", str(store), "--report", str(report), "--quiet"],
                          capture_output=True, text=True, cwd=REPO)
    if proc.returncode != 0:
        raise RuntimeError(f"image-dedup failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return time.perf_counter() - t0


async def plan_report(lib: Path, store_path: Path, overrides: dict, threads: int) -> dict:
    """The kit-format report of the matcher's plan with ``overrides`` over every stored file."""
    from services.hasher.handler import ProcessSigner
    from services.matcher.handler import plan
    from shared.config import Settings
    from shared.store.sqlite import SQLiteStore

    settings = Settings(source_directories=[lib], store_path=store_path,
                        journal_directory=store_path.parent / "journals", **overrides)
    store = SQLiteStore(store_path)
    pool = ProcessSigner(threads)
    try:
        paths = [p async for p in store.iter_paths()]
        groups = await plan(paths, store=store, settings=settings, look=pool.look, measure=pool.measure)
    finally:
        pool.close()
        await store.close()
    return {"groups": [{"keep": g.keep.path, "remove": [r.path for r, _ in g.remove]} for g in groups]}


def score(kit: Path, truth: Path, report: dict | Path, workdir: Path, pairs_lib: Path | None = None) -> dict:
    if isinstance(report, dict):
        path = workdir / f"report-{time.monotonic_ns()}.json"
        path.write_text(json.dumps(report, ensure_ascii=False), encoding="utf-8")
        report = path
    cmd = [sys.executable, str(kit / "score.py"), str(truth), str(report), "--json"]
    if pairs_lib is not None:
        cmd += ["--format", "pairs", "--lib", str(pairs_lib)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"score.py failed ({proc.returncode}): {proc.stderr[-1000:]}")
    return json.loads(proc.stdout)


def phash_pairs(lib: Path, threshold: int) -> dict[str, list[str]]:
    """imagededup-style map {file: [duplicates]} of pHash pairs within ``threshold`` bits."""
    import imagehash
    import numpy as np
    from PIL import Image, ImageOps

    files, hashes = [], []
    for dirpath, _, names in os.walk(lib):
        for name in sorted(names):
            path = os.path.join(dirpath, name)
            try:
                with Image.open(path) as img:
                    h = imagehash.phash(ImageOps.exif_transpose(img))
            except Exception:
                continue
            files.append(os.path.relpath(path, lib))
            hashes.append(h.hash.ravel())
    bits = np.array(hashes, dtype=bool)
    out: dict[str, list[str]] = {}
    for i in range(len(files)):
        d = (bits[i + 1 :] != bits[i]).sum(1)
        near = [files[i + 1 + j] for j in np.nonzero(d <= threshold)[0].tolist()]
        if near:
            out[files[i]] = near
    return out


def _pair_text(p: object) -> str:
    if isinstance(p, dict) and "kept_source" in p:
        return f"{p['removed_source']} removed for {p['kept_source']}"
    return str(p)


def row(label: str, m: dict, plan_s: float | None = None) -> list:
    rec = m.get("recall_by_difficulty") or {}
    return [label, m["wrong_removals"], *[rec.get(d) for d in DIFFICULTIES], m.get("recall"), m.get("pair_precision"),
            m.get("keep_accuracy"), f"{m.get('negatives_grouped', 0)}/{m.get('negatives', 0)}",
            None if plan_s is None else round(plan_s, 1)]


#: plan (s): what a setting costs, the plan's wall time with every pixel comparison made afresh
#: (pass a default value, e.g. max_dist=0.40, for the defaults' own)
HEADERS = ["setting", "wrong", *DIFFICULTIES, "recall", "pair precision", "keep acc.", "neg grouped", "plan (s)"]


#: The sweep: one option moved at a time away from the defaults, in both directions.
DEFAULT_SWEEP = (
    "min_agreement=0.75", "min_agreement=0.95", "min_similarity=0.45", "min_similarity=0.65",
    "max_dist=0.30", "max_dist=0.50", "match_orientations=false",
)


def parse_setting(spec: str) -> dict:
    """``name=value[,name=value]`` into Settings overrides."""
    out: dict = {}
    for part in filter(None, spec.split(",")):
        name, _, value = part.partition("=")
        out[name.strip()] = {"true": True, "false": False}.get(value.strip().lower(), value.strip())
    return out


def _kept(m: dict) -> dict:
    return {k: m[k] for k in ("wrong_removals", "wrong_removal_pairs", "recall", "recall_by_difficulty",
                              "recall_by_variant", "pair_precision", "keep_accuracy", "negatives_grouped")}


def evaluate(lib: Path, truth: Path, kit: Path, settings: list[str], phash: int | None, threads: int,
             workdir: Path) -> tuple[list[list], dict]:
    store = workdir / "store.sqlite"
    wall = build_store(lib, store, workdir / "cli-report.json")
    m = score(kit, truth, workdir / "cli-report.json", workdir)
    rows, raw = [row("CLI defaults", m)], {"cli_wall_s": wall, "CLI defaults": _kept(m)}
    print(f"  CLI defaults: wrong {m['wrong_removals']}, recall {m['recall']} ({wall:.0f} s)", file=sys.stderr, flush=True)
    for spec in settings:
        t0 = time.perf_counter()
        report = asyncio.run(plan_report(lib, store, parse_setting(spec), threads))
        plan_s = time.perf_counter() - t0
        m = score(kit, truth, report, workdir)
        rows.append(row(spec, m, plan_s))
        raw[spec] = {**_kept(m), "plan_s": plan_s}
        print(f"  {spec}: wrong {m['wrong_removals']}, recall {m['recall']}", file=sys.stderr, flush=True)
    if phash is not None:
        pairs = workdir / "phash-pairs.json"
        pairs.write_text(json.dumps(phash_pairs(lib, phash), ensure_ascii=False), encoding="utf-8")
        m = score(kit, truth, pairs, workdir, pairs_lib=lib)
        rows.append(row(f"imagehash pHash <= {phash}", m))
        raw["phash"] = {k: m[k] for k in ("wrong_removals", "recall", "recall_by_difficulty", "pair_precision")}
    return rows, raw


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lib", type=Path, action="append",
                    help=f"library built by the kit's make_library.py; repeat for several (default: {DEFAULT_LIB})")
    ap.add_argument("--truth", type=Path, action="append", help="truth files (default: LIB.truth.json for each --lib)")
    ap.add_argument("--kit", type=Path, help="the benchmark kit folder (default: ../shared/bench next to the repo)")
    ap.add_argument("--setting", action="append", metavar="NAME=VALUE[,NAME=VALUE]",
                    help="a setting to score besides the defaults; repeat for several "
                    f"(default: {' '.join(DEFAULT_SWEEP)}); 'none' for the defaults only")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="decoder processes for the sweep")
    ap.add_argument("--phash", type=int, default=10, help="imagehash pHash Hamming threshold; -1 to skip (default: 10)")
    ap.add_argument("--json", type=Path, help="also write the raw scores here")
    args = ap.parse_args(argv)

    kit = find_kit(args.kit)
    if kit is None:
        ap.error("benchmark kit (score.py) not found; pass --kit")
    libs = [p.resolve() for p in (args.lib or [DEFAULT_LIB])]
    truths = args.truth or [Path(str(p) + ".truth.json") for p in libs]
    settings = [s for s in (args.setting or DEFAULT_SWEEP) if s != "none"]
    all_raw = {}
    out = [machine_line(), f"Command: {command_line()}", ""]
    for lib, truth in zip(libs, truths):
        print(f"evaluating {lib} ...", file=sys.stderr, flush=True)
        with tempfile.TemporaryDirectory(prefix="accuracy-") as tmp:
            rows, raw = evaluate(lib, truth, kit, settings, None if args.phash < 0 else args.phash,
                                 args.threads, Path(tmp))
        meta = json.loads(truth.read_text(encoding="utf-8"))
        out += [f"Library {lib} (seed {meta.get('seed')}, variants {meta.get('variants')}, "
                f"{len(meta.get('files', {}))} files)", "", md_table(HEADERS, rows), ""]
        wrong = {k: v["wrong_removal_pairs"] for k, v in raw.items() if isinstance(v, dict) and v.get("wrong_removal_pairs")}
        if wrong:
            out.append("Wrong removals (kept, removed) per setting:")
            for k, v in wrong.items():
                out.append(f"- {k}: " + "; ".join(_pair_text(p) for p in v))
            out.append("")
        all_raw[str(lib)] = raw
    print("\n".join(out))
    if args.json:
        args.json.write_text(json.dumps(all_raw, indent=1, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
