"""``image-dedup apply REPORT``: a reviewed, edited report is carried out exactly, with every
safety check made again (services/apply.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from .conftest import FIXTURE_MAX_DIST, all_files, save_photo, summary_rows, tree_state
from .test_local_phases import EXPECTED, SINGLES, plant

pytestmark = pytest.mark.usefixtures("isolated_env")


@pytest.fixture
def reviewed(run_cli, tmp_path, monkeypatch):
    """A library, its dry-run report, and the report's path; apply checks matches with the
    fixtures' max_dist too."""
    monkeypatch.setenv("IMAGE_DEDUP_MAX_DIST", str(FIXTURE_MAX_DIST))
    lib = plant(tmp_path / "lib")
    result = run_cli("deduplicate", lib)
    assert result.code == 0, result.err
    path = tmp_path / "reviewed.json"
    path.write_text(json.dumps(result.report))
    return lib, result.report, path


def _group(report: dict, keep: str) -> dict:
    [group] = [g for g in report["groups"] if g["keep"].endswith(keep)]
    return group


def _apply(run_cli, report: dict, path: Path, *args):
    path.write_text(json.dumps(report))
    return run_cli("apply", path, *args, "--store", path.parent / "store.sqlite")


def test_apply_moves_exactly_what_the_edited_report_lists(run_cli, reviewed, tmp_path):
    lib, report, path = reviewed
    before = tree_state(lib)
    # the reviewer drops the scan group, keeps one beach copy, and keeps the cat copy instead
    report["groups"].remove(_group(report, "docs/scan_hq.jpg"))
    beach = _group(report, "2020/beach.jpg")
    beach["remove"] = [str(lib / "phone/beach-1.jpg")]
    cat = _group(report, "pets/cat.jpg")
    cat["keep"], cat["remove"] = str(lib / "pets/cat copy.jpg"), [str(lib / "pets/cat.jpg")]
    target = tmp_path / "dups"
    result = _apply(run_cli, report, path, lib, "--no-dry-run", "--target", target)
    assert result.code == 0, result.err
    moved = {"phone/beach-1.jpg", "pets/cat.jpg", "misc/old/flower.jpg"}
    assert all_files(target) == {f"lib/{p}" for p in moved}
    assert all_files(lib) == {*EXPECTED, *(r for v in EXPECTED.values() for r in v), *SINGLES, "notes.txt"} - moved
    after = tree_state(lib)
    for p, state in before.items():
        if os.path.relpath(p, lib) not in moved and state[0] == "file":
            assert after[p] == state, f"{p} was not listed and must be untouched"
    rows = summary_rows(result.out)
    assert rows["moved (were)"] == "3" and rows["duplicate groups"] == "3" and "files found" not in rows
    assert "journal:" in result.out


def test_apply_skips_a_file_changed_since_the_report_with_its_reason(run_cli, reviewed, tmp_path):
    lib, report, path = reviewed
    changed = lib / "pets/cat copy.jpg"
    save_photo(changed, 12, quality=60)  # same photo, other bytes: not what was reviewed
    result = _apply(run_cli, report, path, lib, "--no-dry-run", "--target", tmp_path / "dups")
    assert result.code == 0, result.err
    assert f"skipped: {changed}: the duplicate changed since it was analysed" in result.out
    assert changed.exists()
    assert summary_rows(result.out)["moved (were)"] == "4"


def test_apply_refuses_paths_outside_the_roots_and_unknown_files(run_cli, reviewed, tmp_path):
    lib, report, path = reviewed
    outside = save_photo(tmp_path / "outside" / "x.jpg", 12)
    st = outside.stat()
    group = _group(report, "pets/cat.jpg")
    group["remove"] += [str(outside), str(lib / "solo/a.jpg"), str(lib / "pets/../../outside/x.jpg")]
    group["files"][str(outside)] = group["files"][str(lib / "pets/../../outside/x.jpg")] = {
        "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    before = tree_state(lib, outside.parent)
    result = _apply(run_cli, report, path, lib)  # a dry run: the configured default
    assert result.code == 0, result.err
    assert tree_state(lib, outside.parent) == before, "a dry run changes nothing"
    assert f"skipped: {outside}: {outside} is not below a configured root" in result.out
    assert f"skipped: {lib / 'solo/a.jpg'}: the report holds no size and mtime of this file" in result.out
    assert "pets/../../outside/x.jpg is not below a configured root" in result.out
    assert summary_rows(result.out)["trashed (would be)"] == "5"


def test_apply_needs_the_reports_roots_to_be_configured(run_cli, reviewed, tmp_path):
    lib, report, path = reviewed
    report["roots"] = [str(tmp_path)]
    result = _apply(run_cli, report, path, lib)
    assert result.code == 2
    assert result.err.strip() == (f"image-dedup: the report's root {tmp_path} is not a configured root; "
                                  "give it on the command line to allow it")
    result = _apply(run_cli, report, path)
    assert result.code == 2 and "no folder given" in result.err
    report["roots"] = [str(lib)]
    assert _apply(run_cli, report, path, lib).code == 0


@pytest.mark.parametrize("content, message", [
    ("[1, 2]", "not an image-dedup report"),
    ('{"version": 1, "groups": []}', "not an image-dedup report of version 2"),
    ("{", "is not JSON"),
])
def test_apply_of_something_that_is_not_a_report_says_so_in_one_line(run_cli, reviewed, content, message):
    lib, _, path = reviewed
    path.write_text(content)
    result = run_cli("apply", path, lib)
    assert result.code == 2 and message in result.err and result.err.count("\n") == 1
