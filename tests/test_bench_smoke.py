"""Smoke tests of the benchmark scripts (bench/), tiny sizes, so they cannot rot (< 30 s)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
KIT = REPO.parent / "shared" / "bench"  # the benchmark kit lives next to the repository


def _run(*args: str, timeout: float = 60) -> str:
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=REPO, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.parametrize("script", ["matcher_scale.py", "accuracy.py", "end_to_end.py", "reference_tools.py", "store_scale.py",
                                    "raw.py", "library_plan.py", "library_scale.py", "ann_choice.py",
                                    "command_overhead.py", "compare_cost.py", "scan.py"])
def test_help(script: str) -> None:
    assert "usage" in _run(f"bench/{script}", "--help").lower()


def test_matcher_scale_tiny() -> None:
    out = _run("bench/matcher_scale.py", "--sizes", "300", "--queries", "5")
    assert "Machine:" in out and "| sqlite | 300 |" in out and "| numpy | 300 |" in out
    for line in out.splitlines():
        if line.startswith(("| sqlite", "| numpy")):
            cells = [c.strip() for c in line.strip("|").split("|")]
            assert cells[-1] == "0", line  # no wrong removals on planted groups
            assert float(cells[-2]) > 0.9, line  # recall


def test_scan_tiny() -> None:
    """Each query of the batch meets at least itself, with a busy thread beside the scan or not."""
    for extra in ((), ("--busy",)):
        row = _run("bench/scan.py", "--records", "3000", "--queries", "300", "--repeat", "1", *extra).splitlines()[-1]
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[:2] == ["3,000", "300"] and int(cells[4]) >= 300, row
        assert (cells[5] == "-") == (not extra), row


def test_library_scale_tiny(tmp_path: Path) -> None:
    out = _run("bench/library_scale.py", "--records", "600", "--add", "60", "--json", str(tmp_path / "ls.json"))
    assert "Machine:" in out and "| sqlite | 600 |" in out
    result = json.loads((tmp_path / "ls.json").read_text())
    assert result["wrong"] == 0 and result["recall"] >= 0.99 and result["rerun_same"]
    assert result["add_recall"] == 1.0 and result["add_wrong"] == 0  # the copies added later are found too
    assert result["recall_after_add"] == 1.0  # and the groups planned before still stand
    assert {"insert_s", "plan_s", "peak_rss_mb", "recall", "wrong"} <= set(result)


def test_numpy_index_matches_product_words() -> None:
    sys.path.insert(0, str(REPO))
    from bench.matcher_scale import NumpyWordIndex, synthesize, synthesize_chunks
    from shared.image.signature import distance, words

    sigs, group = synthesize(500, seed=3)
    index, g2, _ = NumpyWordIndex.build_from_chunks(synthesize_chunks(500, seed=3), 500)
    assert (g2 == group).all() and (index.unpack(np.arange(500)) == sigs).all()
    i = int(np.flatnonzero(group >= 0)[0])
    w = words(sigs[i])
    for p in range(63):
        assert index.words[p][np.flatnonzero(index.ids[p] == i)[0]] == w[p]
    hits = index.query(sigs[i], 0.25, exclude=i)
    mates = set(np.flatnonzero(group == group[i]).tolist()) - {i}
    assert mates and mates <= {j for j, _ in hits}
    for j, d in hits:
        assert d == pytest.approx(distance(sigs[i], sigs[j]), abs=1e-5)


def _tiny_library(root: Path) -> Path:
    """Two photos, a re-encoded copy of one, and a truth file in the kit's format."""
    from PIL import Image

    lib = root / "lib"
    lib.mkdir()
    rng = np.random.default_rng(0)
    files, best = {}, {}
    for k in range(2):
        grid = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
        img = Image.fromarray(grid).resize((320, 240), Image.NEAREST)  # sharp corners, as photos have
        name = f"IMG_{k}.JPG"
        img.save(lib / name, quality=95)
        files[name] = {"source": f"src/{k}", "variant": "original", "difficulty": "original"}
        best[f"src/{k}"] = name
        if k == 0:
            img.resize((160, 120)).save(lib / "IMG_0_small.jpg", quality=70)
            files["IMG_0_small.jpg"] = {"source": "src/0", "variant": "resize50", "difficulty": "easy"}
    truth = root / "lib.truth.json"
    truth.write_text(json.dumps({"version": 1, "root": str(lib), "seed": 0, "variants": "default",
                                 "files": files, "best": best, "negative_pairs": []}))
    return lib


@pytest.mark.skipif(not (KIT / "score.py").is_file(), reason=f"benchmark kit not found at {KIT} (../shared/bench)")
def test_accuracy_tiny(tmp_path: Path) -> None:
    lib = _tiny_library(tmp_path)
    out = _run("bench/accuracy.py", "--lib", str(lib), "--kit", str(KIT), "--setting", "min_agreement=0.95",
               "--threads", "1", "--json", str(tmp_path / "acc.json"))
    assert "Machine:" in out and "CLI defaults" in out and "min_agreement=0.95" in out and "imagehash pHash" in out
    raw = json.loads((tmp_path / "acc.json").read_text())[str(lib.resolve())]
    for setting in ("CLI defaults", "min_agreement=0.95"):
        assert raw[setting]["wrong_removals"] == 0
        assert raw[setting]["recall"] == 1.0


def test_compare_cost_tiny(tmp_path: Path) -> None:
    lib = _tiny_library(tmp_path)
    out = _run("bench/compare_cost.py", "--lib", str(lib))
    assert "Machine:" in out and "lib: 1 pairs" in out and "all: 1 pairs" in out


def test_end_to_end_tiny(tmp_path: Path) -> None:
    lib = _tiny_library(tmp_path)
    out = _run("bench/end_to_end.py", "--lib", str(lib), "--threads", "1")
    assert "first run" in out and "unchanged re-run" in out and "3 files" in out


def test_reference_tools_summary(tmp_path: Path) -> None:
    """The tables of docs/reference_tools.md from a score file (no reference tool needed)."""
    m = {"tool": "imagehash", "library": "lib-s1", "wrong_removals": 1, "recall": 0.5,
         "recall_by_difficulty": {"exact": 1.0, "easy": 0.5, "medium": None, "hard": 0.0, "natural": 1.0},
         "negatives_grouped": 2, "negatives": 20, "negative_pairs_grouped": 1, "negative_pairs": 10,
         "pair_precision": 0.99, "keep_accuracy": 0.7, "cpu_ms_per_image": 12.5,
         "wrong_removal_pairs": [{"removed_source": "a/x", "kept_source": "a/y"}]}
    path = tmp_path / "imagehash.score.json"
    path.write_text(json.dumps(m), encoding="utf-8")
    out = _run("bench/reference_tools.py", "--summary", str(path))
    assert "| lib-s1 | imagehash | 1 | 0.500 | 1.000 | 0.500 | n/a | 0.000 | 1.000 | 2/20 | 1/10 |" in out
    assert "a/x removed for a/y" in out


def test_command_overhead_tiny(tmp_path) -> None:
    out = _run("bench/command_overhead.py", "--files", "300", "--tree", str(tmp_path / "tree"))
    assert "found: 297" in out and "wanted: 297" in out, out
