"""Trash, NAS metadata and the target: folders that are never scanned, whatever the exclusions
say, and a file in a trash that is never the kept copy (emptying the trash would lose it)."""

from __future__ import annotations

import json

import pytest

from services.watcher.handler import companion, wanted
from shared.config import load_settings

from .conftest import save_photo, summary_rows, tree_state

pytestmark = pytest.mark.usefixtures("isolated_env")

# where systems put what they threw away, or what they made of the photos beside them
NEVER_SCANNED = [
    ".Trash-1000/files", ".Trash/1000/files", ".Trashes/501", "$RECYCLE.BIN/S-1-5-21", "$Recycle.Bin/S-1-5-21",
    "#recycle", "@Recycle", "@eaDir/sea.jpg", ".@__thumb", "2020/.thumbnails/normal", "#snapshot/daily",
    ".snapshot/hourly.0", ".zfs/snapshot/today", "@Recently-Snapshot/GMT+01_2024",
]


def test_trash_and_nas_folders_are_never_scanned_whatever_the_exclusions_say(run_cli, tmp_path):
    """The top of a USB stick or NAS share as the root: its trash holds a bigger copy of a
    photo of the library, which must neither be found nor kept."""
    lib = tmp_path / "stick"
    save_photo(lib / "sea_small.jpg", 80, (320, 240))
    save_photo(lib / "2020/boat.jpg", 81, (640, 480))
    save_photo(lib / "2020/boat copy.jpg", 81, (320, 240), quality=80)
    for i, folder in enumerate(NEVER_SCANNED):
        save_photo(lib / folder / f"sea{i}.jpg", 80, (1280, 960), exif_tags=5)
    (lib / ".Trash-1000/info").mkdir()
    (lib / ".Trash-1000/info/sea0.jpg.trashinfo").write_text("[Trash Info]\nPath=sea0.jpg\n")
    for flags in ([], ["--exclude", "nothing-matches-this"], ["--exclude", "^$"]):
        result = run_cli("deduplicate", lib, *flags)
        assert result.code == 0, result.err
        assert summary_rows(result.out)["files found"] == "3", (flags, result.out)
        assert [(g["keep"], g["remove"]) for g in result.report["groups"]] == [
            (str(lib / "2020/boat.jpg"), [str(lib / "2020/boat copy.jpg")])], flags


def test_the_desktop_trash_and_thumbnail_caches_below_a_root_are_never_scanned(run_cli, isolated_env):
    """Home as the root: the desktop trash ($XDG_DATA_HOME/Trash), the review page's thumbnails
    next to the store and the desktop's ($XDG_CACHE_HOME/thumbnails) hold copies of its photos."""
    home = isolated_env
    save_photo(home / "Pictures/sea.jpg", 82, (320, 240))
    save_photo(home / "data/Trash/files/sea.jpg", 82, (1280, 960))
    save_photo(home / ".cache/thumbnails/large/1b2c.png", 82, (256, 192))
    save_photo(home / "data/image-dedup/thumbs/0a1b-256.jpg", 82, (256, 192))
    result = run_cli("deduplicate", home, store=home / "data/image-dedup/store.sqlite")
    assert result.code == 0, result.err
    assert summary_rows(result.out)["files found"] == "1" and result.report["groups"] == []


def test_the_target_below_a_root_is_never_scanned(run_cli, tmp_path):
    lib = tmp_path / "lib"
    save_photo(lib / "keep.jpg", 83, (640, 480))
    save_photo(lib / "dup.jpg", 83, (320, 240), quality=80)
    target = lib / "duplicates"
    moved = run_cli("deduplicate", lib, "--no-dry-run", "--target", target)
    assert moved.code == 0, moved.err
    assert (target / "lib/dup.jpg").is_file() and not (lib / "dup.jpg").exists()
    # the next run, with exclusions of its own, finds the moved copy neither as a file nor as a duplicate
    again = run_cli("deduplicate", lib, "--target", target, "--exclude", "nothing-matches-this")
    assert summary_rows(again.out)["files found"] == "1" and again.report["groups"] == []


def test_a_file_in_a_trash_is_never_kept_even_when_a_report_says_so(run_cli, tmp_path):
    lib = tmp_path / "lib"
    save_photo(lib / "sea_small.jpg", 84, (320, 240))
    trashed = save_photo(lib / ".Trash-1000/files/sea.jpg", 84, (1280, 960))
    run = run_cli("deduplicate", lib)
    assert run.code == 0 and run.report["groups"] == [], run.out
    # a report (edited, or from an older version) that keeps the trashed copy
    report = {**run.report, "groups": [{
        "keep": str(trashed), "remove": [str(lib / "sea_small.jpg")], "rule": "more_pixels",
        "files": {str(p): {"size": p.stat().st_size, "mtime_ns": p.stat().st_mtime_ns}
                  for p in (trashed, lib / "sea_small.jpg")},
    }]}
    (tmp_path / "edited.json").write_text(json.dumps(report))
    before = tree_state(lib)
    applied = run_cli("apply", tmp_path / "edited.json", lib, "--no-dry-run")
    assert applied.code == 0, applied.err
    assert tree_state(lib) == before
    [line] = [line for line in applied.out.splitlines() if line.startswith("skipped")]
    assert "sea_small.jpg: kept file refused:" in line and "is in a trash folder" in line


def test_the_live_watch_wants_nothing_in_a_trash_not_even_a_sidecar(tmp_path):
    settings = load_settings(source_directories=[tmp_path], duplicates_target_directory=tmp_path / "dups")
    for folder in (".Trash-1000/files", "@eaDir/x", "dups/lib"):
        assert not wanted(str(tmp_path / folder / "IMG_1.jpg"), settings), folder
        assert not companion(str(tmp_path / folder / "IMG_1.xmp"), settings), folder
    assert wanted(str(tmp_path / "2020" / "IMG_1.jpg"), settings) and companion(str(tmp_path / "IMG_1.xmp"), settings)
