"""What the command costs before any photo is analysed: ``image-dedup --version``, the time to
its first line on a terminal, and the walk of a large tree with the check of every path that
clean-up and the live watch make (``wanted``), which now also skips trash, NAS metadata and the
target folder.

    python bench/command_overhead.py --files 100000 --tree ~/bench/<you>/walk-100k
    python bench/command_overhead.py --code ../other-checkout ...   # the same of another checkout

``--code`` names the checkout whose ``services`` and ``shared`` are measured, so two builds are
compared in one run (ratios; absolute times on a shared machine are noise). The tree is made
once (empty files: the walk reads folders, not photos) with 1% of its files in trash and NAS
folders.
"""

from __future__ import annotations

import argparse
import json
import os
import pty
import select
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import machine_line  # noqa: E402

NEVER_SCANNED = [".Trash-1000/files", "@eaDir", "#recycle", ".thumbnails"]


def make_tree(tree: Path, files: int) -> None:
    """``files`` empty .jpg files in folders of 1000, 1% of them in folders never scanned."""
    if (tree / ".complete").exists():
        return
    per = 1000
    for i in range(files):
        folder = tree / f"{i // per:04d}"
        if i % 100 == 99:
            folder = folder / NEVER_SCANNED[(i // 100) % len(NEVER_SCANNED)]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"IMG_{i:07d}.jpg").touch()
    (tree / ".complete").touch()


def _first_line(code: Path, argv: list[str], env: dict[str, str]) -> float:
    """Seconds until the command writes anything to a terminal."""
    started = time.perf_counter()
    pid, fd = pty.fork()
    if pid == 0:
        os.chdir(code)
        os.execve(sys.executable, [sys.executable, "-m", "services.cli", *argv], env)
    first = None
    while True:
        ready, _, _ = select.select([fd], [], [], 300)
        if not ready:
            break
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            break
        if not chunk:
            break
        if first is None and chunk.strip():
            first = time.perf_counter() - started
    os.waitpid(pid, 0)
    return first if first is not None else float("nan")


def startup(code: Path, photos: Path, work: Path, repeat: int) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGE_DEDUP_")}
    env.update(HOME=str(work), XDG_CONFIG_HOME=str(work / "config"), XDG_DATA_HOME=str(work / "data"))
    version = []
    for _ in range(repeat):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "services.cli", "--version"], cwd=code, env=env, check=True,
                       capture_output=True)
        version.append(time.perf_counter() - started)
    first = [_first_line(code, ["deduplicate", str(photos), "--store", str(work / "s.sqlite"), "--threads", "1"], env)
             for _ in range(repeat)]  # the first analyses; the others find the store up to date
    return {"version_s": statistics.median(version), "first_line_s": statistics.median(first)}


def walking(code: Path, tree: Path) -> dict:
    sys.path.insert(0, str(code))
    from services.watcher.handler import walk, wanted
    from shared.config import load_settings

    settings = load_settings(None, source_directories=[tree], exclusions=[])
    started = time.perf_counter()
    found = [f.path for f in walk(settings)]
    walk_s = time.perf_counter() - started
    every = [str(p) for p in sorted(tree.rglob("*.jpg"))]
    started = time.perf_counter()
    kept = sum(wanted(p, settings) for p in every)
    wanted_s = time.perf_counter() - started
    return {"found": len(found), "paths": len(every), "wanted": kept, "walk_s": walk_s,
            "walk_files_per_s": len(found) / walk_s, "wanted_s": wanted_s, "wanted_per_s": len(every) / wanted_s}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--tree", type=Path, required=True, help="where the synthetic tree is made (once)")
    parser.add_argument("--photos", type=Path, help="a folder of photos for the time to the first line")
    parser.add_argument("--code", type=Path, default=Path(__file__).resolve().parent.parent,
                        help="the checkout measured (default: this one)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args()
    code = args.code.resolve()
    make_tree(args.tree, args.files)
    out = {"code": str(code), "files": args.files, **walking(code, args.tree)}
    if args.photos:
        out.update(startup(code, args.photos, args.tree.parent / f"{args.tree.name}-home", args.repeat))
    print(machine_line())
    for key, value in out.items():
        print(f"{key:>20}: {value:.3f}" if isinstance(value, float) else f"{key:>20}: {value}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
