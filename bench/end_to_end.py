"""End to end, local mode: the real CLI on a library, first run and unchanged re-run.

Runs ``image-dedup deduplicate LIB --store TMP/store.sqlite --report TMP/r.json --quiet`` (a dry
run) twice as a subprocess with a fresh store in a temporary folder: the first run decodes and
signs every file and plans, the second finds every file unchanged (size + mtime), reuses the
last plan and only checks every removal again (a dry run: against the comparisons remembered).
Prints wall time and images/s for both, and the store's size per image.
Services mode numbers are added by the services benchmark (see docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import DEFAULT_LIB, REPO, command_line, machine_line, md_table  # noqa: E402


def cli() -> list[str]:
    exe = Path(sys.executable).with_name("image-dedup")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "services.cli"]


def run(lib: Path, store: Path, report: Path, threads: int | None) -> float:
    cmd = [*cli(), "deduplicate", str(lib), "--store", str(store), "--report", str(report), "--quiet"]
    if threads:
        cmd += ["--threads", str(threads)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"image-dedup failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return wall


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lib", type=Path, default=DEFAULT_LIB, help="library to run on (default: %(default)s)")
    ap.add_argument("--threads", type=int, help="decoder processes (default: the tool's default, all cores)")
    ap.add_argument("--json", type=Path, help="also write the raw numbers here")
    args = ap.parse_args(argv)
    lib = args.lib.resolve()
    files = sum(len(names) for _, _, names in os.walk(lib))
    size_mb = sum(os.path.getsize(os.path.join(d, n)) for d, _, names in os.walk(lib) for n in names) / 1e6
    with tempfile.TemporaryDirectory(prefix="e2e-") as tmp:
        tmp = Path(tmp)
        first = run(lib, tmp / "store.sqlite", tmp / "r1.json", args.threads)
        again = run(lib, tmp / "store.sqlite", tmp / "r2.json", args.threads)
        store_bytes = sum(p.stat().st_size for p in tmp.glob("store.sqlite*"))
        groups = len(json.loads((tmp / "r1.json").read_text(encoding="utf-8"))["groups"])
    rows = [["first run (decode + sign + match)", f"{first:.1f}", f"{files / first:.1f}"],
            ["unchanged re-run (last plan reused)", f"{again:.1f}", f"{files / again:.1f}"]]
    print(machine_line())
    print(f"Command: {command_line()}")
    print(f"\nLibrary {lib}: {files} files, {size_mb:.0f} MB; {groups} groups found; "
          f"store {store_bytes / 1e6:.2f} MB = {store_bytes / max(files, 1):.0f} bytes/image; "
          f"re-run / first run = {again / first:.2f}\n")
    print(md_table(["local mode", "wall (s)", "images/s"], rows))
    if args.json:
        args.json.write_text(json.dumps({"files": files, "first_s": first, "rerun_s": again,
                                         "store_bytes": store_bytes, "groups": groups}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
