"""Local mode end to end through the command (services/cli.py -> services/local.py), phase by
phase: clean-up, count, analysis (incremental), matching, actions, empty folders."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import sqlite3
import urllib.parse
from pathlib import Path

import pytest
from rich.console import Console

from services import local
from shared.config import load_settings
from shared.image import pixels
from shared.image.signature import analyze
from shared.store.sqlite import SQLiteStore

from .conftest import FIXTURE_MAX_DIST, all_files, save_photo, summary_rows, tree_state

pytestmark = pytest.mark.usefixtures("isolated_env")

# keep -> removed, relative to the root
EXPECTED = {
    "2020/beach.jpg": ["2020/beach small.jpg", "phone/beach-1.jpg"],  # most pixels
    "pets/cat.jpg": ["pets/cat copy.jpg"],  # same pixels, more EXIF
    "docs/scan_hq.jpg": ["docs/scan_lq.jpg"],  # same pixels and EXIF, bigger file (the other is newer)
    "misc/flower.png": ["misc/old/flower.jpg"],  # bigger file; empties misc/old
}
SINGLES = ["solo/a.jpg", "solo/b.png", "solo/UPPER.JPG"]


def plant(root: Path) -> Path:
    save_photo(root / "2020/beach.jpg", 11, (640, 480), exif_tags=2)
    save_photo(root / "2020/beach small.jpg", 11, (320, 240), exif_tags=5)
    save_photo(root / "phone/beach-1.jpg", 11, (200, 150), quality=80, exif_tags=7)
    save_photo(root / "pets/cat.jpg", 12, exif_tags=5, quality=85)
    save_photo(root / "pets/cat copy.jpg", 12, quality=85)
    save_photo(root / "docs/scan_hq.jpg", 13, quality=95, mtime=1_600_000_000)
    save_photo(root / "docs/scan_lq.jpg", 13, quality=70, mtime=1_700_000_000)
    save_photo(root / "misc/flower.png", 14)
    save_photo(root / "misc/old/flower.jpg", 14, quality=90)
    save_photo(root / "solo/a.jpg", 15)
    save_photo(root / "solo/b.png", 16)
    save_photo(root / "solo/UPPER.JPG", 17)
    (root / "notes.txt").write_text("not a photo")
    (root / "empty-before").mkdir()
    return root


@pytest.fixture
def lib(tmp_path) -> Path:
    return plant(tmp_path / "lib")


N_IMAGES = sum(len(v) + 1 for v in EXPECTED.values()) + len(SINGLES)


def _groups(report: dict, root: Path) -> dict[str, list[str]]:
    return {
        str(Path(g["keep"]).relative_to(root)): sorted(str(Path(r).relative_to(root)) for r in g["remove"])
        for g in report["groups"]
    }


def _store_paths(store: Path) -> set[str]:
    with sqlite3.connect(store) as db:
        return {row[0] for row in db.execute("SELECT path FROM images")}


def test_dry_run_finds_the_planted_groups_keeps_the_best_and_changes_nothing(run_cli, lib, tmp_path, isolated_env):
    before = tree_state(lib)
    result = run_cli("deduplicate", lib)
    assert result.code == 0, result.err
    assert _groups(result.report, lib) == EXPECTED
    rows = summary_rows(result.out)
    assert rows["files found"] == str(N_IMAGES)
    assert rows["analysed now"] == str(N_IMAGES)
    assert rows["duplicate groups"] == "4"
    assert rows["trashed (would be)"] == "5" and rows["deleted (would be)"] == "0"
    assert rows["errors"] == "0"
    assert "dry run" in result.out
    assert tree_state(lib) == before, "a dry run changes nothing on disk"
    assert not (isolated_env / "data" / "image-dedup" / "journals").exists(), "and writes no journal"
    for group in result.report["groups"]:
        assert all(o["status"] == "dry_run" for o in group["outcomes"].values())
        assert all(0 <= d <= 0.25 for d in group["distances"].values())


def test_report_has_the_benchmark_kit_format(run_cli, lib):
    report = run_cli("deduplicate", lib).report
    assert set(report) >= {"groups"}
    assert isinstance(report["groups"], list) and report["groups"]
    for group in report["groups"]:
        assert isinstance(group["keep"], str) and os.path.isabs(group["keep"])
        assert isinstance(group["remove"], list) and all(isinstance(p, str) for p in group["remove"])
        assert group["keep"] not in group["remove"]
    assert report["problems"] == []


def test_move_to_target_keeps_the_relative_path_and_undo_restores(run_cli, lib, tmp_path, isolated_env):
    before = tree_state(lib)
    target = tmp_path / "dups"
    result = run_cli("deduplicate", lib, "--no-dry-run", "--target", target)
    assert result.code == 0, result.err
    removed = sorted(p for v in EXPECTED.values() for p in v)
    assert all_files(target) == {f"lib/{p}" for p in removed}
    assert all_files(lib) == {*EXPECTED, *SINGLES, "notes.txt"}
    for rel in removed:
        assert tree_state(target)[str(target / "lib" / rel)][1] == before[str(lib / rel)][1]
    rows = summary_rows(result.out)
    assert rows["moved (were)"] == "5" and rows["deleted (were)"] == "0"
    assert (lib / "misc" / "old").is_dir(), "folders stay unless remove_empty_folders"

    [journal] = list((isolated_env / "data" / "image-dedup" / "journals").glob("*.jsonl"))
    assert "journal:" in result.out and "image-dedup undo" in result.out
    undone = run_cli("undo", journal)
    assert undone.code == 0
    assert tree_state(lib) == before, "undo brings every moved file back, bytes, inode and mtime"
    assert all_files(target) == set()


def test_without_target_duplicates_go_to_the_trash_and_undo_brings_them_back(run_cli, lib, isolated_env):
    before = tree_state(lib)
    result = run_cli("deduplicate", lib, "--no-dry-run")
    assert result.code == 0, result.err
    assert all_files(lib) == {*EXPECTED, *SINGLES, "notes.txt"}
    for keep in EXPECTED:  # kept files untouched
        assert tree_state(lib)[str(lib / keep)] == before[str(lib / keep)]
    rows = summary_rows(result.out)
    assert rows["trashed (were)"] == "5" and rows["deleted (were)"] == "0"
    assert rows["bytes freed (were)"] == "0", "the trash still holds them"
    trash = isolated_env / "data" / "Trash"
    removed = [lib / p for v in EXPECTED.values() for p in v]
    assert sorted(os.listdir(trash / "files")) == sorted(p.name for p in removed)
    for p in removed:
        assert hashlib.sha256((trash / "files" / p.name).read_bytes()).hexdigest() == before[str(p)][1]
        assert f"Path={urllib.parse.quote(str(p))}" in (trash / "info" / f"{p.name}.trashinfo").read_text()
    # the journal says where each went; undo puts them back and removes their .trashinfo
    [journal] = list((isolated_env / "data" / "image-dedup" / "journals").glob("*.jsonl"))
    done = [json.loads(line) for line in journal.read_text().splitlines() if '"done"' in line]
    assert sorted(Path(e["target"]).name for e in done) == sorted(p.name for p in removed)
    assert all(Path(e["trashinfo"]).parent == trash / "info" for e in done)
    undone = run_cli("undo", journal)
    assert undone.code == 0 and undone.out.count("restored") == 5, undone.out
    assert tree_state(lib) == before
    assert os.listdir(trash / "files") == [] and os.listdir(trash / "info") == []


def test_delete_only_when_asked_for(run_cli, lib, isolated_env):
    result = run_cli("deduplicate", lib, "--no-dry-run", "--action", "delete")
    assert result.code == 0, result.err
    assert all_files(lib) == {*EXPECTED, *SINGLES, "notes.txt"}
    rows = summary_rows(result.out)
    assert rows["deleted (were)"] == "5" and rows["bytes freed (were)"] != "0"
    assert not (isolated_env / "data" / "Trash").exists()
    # a second run finds nothing left to do
    again = run_cli("deduplicate", lib, "--no-dry-run")
    assert again.report["groups"] == []


def test_hardlink_action_links_duplicates_of_the_same_format_only(run_cli, lib):
    result = run_cli("deduplicate", lib, "--no-dry-run", "--action", "hardlink")
    assert result.code == 0, result.err
    same_format = {k: v for k, v in EXPECTED.items() if k != "misc/flower.png"}
    for keep, removes in same_format.items():
        for rel in removes:
            assert (lib / rel).stat().st_ino == (lib / keep).stat().st_ino
        assert (lib / keep).stat().st_nlink == 1 + len(removes)
    # a .jpg name must not end up holding the kept PNG's bytes
    assert (lib / "misc/old/flower.jpg").stat().st_nlink == 1
    assert (lib / "misc/old/flower.jpg").read_bytes()[:2] == b"\xff\xd8"
    assert f"skipped: {lib / 'misc/old/flower.jpg'}: not hard-linked: the kept file is PNG, the duplicate JPEG" in result.out
    rows = summary_rows(result.out)
    assert rows["hard-linked (were)"] == "4" and rows["skipped (safety checks)"] == "1"


def test_remove_empty_folders_removes_only_folders_the_run_emptied(run_cli, lib, tmp_path):
    (lib / "phone" / "already-empty").mkdir()
    root2 = tmp_path / "second"
    save_photo(root2 / "beach-dup.jpg", 11, (160, 120), quality=80)
    result = run_cli("deduplicate", lib, root2, "--no-dry-run", "--target", tmp_path / "dups",
                     "--remove-empty-folders", "--across-dirs")
    assert result.code == 0, result.err
    assert not (lib / "misc" / "old").exists(), "emptied by the run"
    assert (lib / "misc").is_dir(), "still holds the kept flower"
    assert (lib / "empty-before").is_dir(), "was empty before the run"
    assert (lib / "phone" / "already-empty").is_dir() and (lib / "phone").is_dir(), "held an empty folder"
    assert root2.is_dir() and list(root2.iterdir()) == [], "a root is never removed, even when emptied"
    assert (tmp_path / "dups" / "second" / "beach-dup.jpg").is_file()
    assert summary_rows(result.out)["empty folders removed"] == "1"


def test_remove_empty_folders_does_nothing_in_a_dry_run(run_cli, lib):
    before = tree_state(lib)
    run_cli("deduplicate", lib, "--remove-empty-folders")
    assert tree_state(lib) == before


def test_clean_up_forgets_vanished_and_newly_excluded_files(run_cli, lib, tmp_path):
    store = tmp_path / "store.sqlite"
    assert run_cli("deduplicate", lib).code == 0
    assert _store_paths(store) == {str(lib / p) for p in [*EXPECTED, *(r for v in EXPECTED.values() for r in v), *SINGLES]}
    (lib / "solo" / "a.jpg").unlink()
    cfg = tmp_path / "c.yaml"
    cfg.write_text("exclusions: ['/pets/']\n")
    result = run_cli("--config", cfg, "deduplicate", lib)
    assert result.code == 0, result.err
    paths = _store_paths(store)
    assert str(lib / "solo" / "a.jpg") not in paths
    assert not any("/pets/" in p for p in paths)
    assert len(paths) == N_IMAGES - 3
    assert "pets/cat.jpg" not in _groups(result.report, lib)
    assert summary_rows(result.out)["files found"] == str(N_IMAGES - 3)


def test_counting_follows_extensions_recursion_and_never_symlinks(run_cli, lib, tmp_path, monkeypatch):
    outside = tmp_path / "outside"
    save_photo(outside / "x.jpg", 30)
    (lib / "link-to-outside").symlink_to(outside)
    (lib / "link.jpg").symlink_to(lib / "solo" / "a.jpg")
    result = run_cli("deduplicate", lib)
    assert summary_rows(result.out)["files found"] == str(N_IMAGES)
    all_paths = {g["keep"] for g in result.report["groups"]} | {p for g in result.report["groups"] for p in g["remove"]}
    assert not any("link" in p for p in all_paths)

    monkeypatch.setenv("IMAGE_DEDUP_RECURSIVE", "false")
    save_photo(lib / "top.jpg", 31)
    result = run_cli("deduplicate", lib)
    assert summary_rows(result.out)["files found"] == "1"
    monkeypatch.delenv("IMAGE_DEDUP_RECURSIVE")
    monkeypatch.setenv("IMAGE_DEDUP_FILE_EXTENSIONS", '["png"]')
    result = run_cli("deduplicate", lib)
    assert summary_rows(result.out)["files found"] == "2"


def test_second_run_over_unchanged_files_decodes_nothing(run_cli, lib):
    first = run_cli("deduplicate", lib)
    assert summary_rows(first.out)["analysed now"] == str(N_IMAGES)
    second = run_cli("deduplicate", lib)
    rows = summary_rows(second.out)
    assert rows["analysed now"] == "0"
    assert rows["unchanged since last run"] == str(N_IMAGES)
    assert second.report["groups"] == first.report["groups"], "matching still covers the whole library"


calls: list[str] = []


async def _counting_sign(path: str):
    """Signs in a thread (not the process pool) so that the decoded paths can be recorded."""
    calls.append(path)
    return await asyncio.to_thread(analyze, path)


def _run(settings):
    return asyncio.run(local.deduplicate(settings, Console(file=io.StringIO()), quiet=True, sign=_counting_sign))


def test_incremental_analysis_decodes_only_new_and_changed_files(lib, tmp_path, monkeypatch):
    settings = load_settings(source_directories=[lib], store_path=tmp_path / "s.sqlite", threads=2,
                             max_dist=FIXTURE_MAX_DIST)
    calls.clear()
    first = _run(settings)
    assert sorted(calls) == sorted(str(lib / p) for p in [*EXPECTED, *(r for v in EXPECTED.values() for r in v), *SINGLES])
    assert (first.signed, first.unchanged) == (N_IMAGES, 0)

    calls.clear()
    second = _run(settings)
    assert calls == [], "nothing decoded on an unchanged library"
    assert (second.signed, second.unchanged, second.files) == (0, N_IMAGES, N_IMAGES)

    # one file's content changes (a different picture), one only its mtime, one is new
    calls.clear()
    save_photo(lib / "solo" / "a.jpg", 16, quality=80)  # now a copy of solo/b.png
    st = (lib / "pets" / "cat.jpg").stat()
    os.utime(lib / "pets" / "cat.jpg", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    save_photo(lib / "new.jpg", 40)
    third = _run(settings)
    assert sorted(calls) == sorted(str(lib / p) for p in ("solo/a.jpg", "pets/cat.jpg", "new.jpg"))
    assert (third.signed, third.unchanged) == (3, N_IMAGES - 2)
    groups = {d.keep.path: [r.path for r in d.remove] for d in third.decisions}
    assert groups[str(lib / "solo" / "b.png")] == [str(lib / "solo" / "a.jpg")], "re-analysed, so re-matched"


def test_an_unchanged_rerun_plans_nothing_again_and_compares_no_pixels(lib, tmp_path, monkeypatch):
    looked: list[tuple[str, str]] = []
    compare = pixels.compare_files

    def counting_compare(a, b, turns):
        looked.append((a[0], b[0]))
        return compare(a, b, turns)

    monkeypatch.setattr(pixels, "compare_files", counting_compare)
    planned = _counting_plans(monkeypatch)
    settings = load_settings(source_directories=[lib], store_path=tmp_path / "s.sqlite", threads=2,
                             max_dist=FIXTURE_MAX_DIST)
    first = _run(settings)
    assert planned == [N_IMAGES] and looked, "the first run plans and looks at pixels"

    looked.clear()
    second = _run(settings)
    assert planned == [N_IMAGES] and looked == [], "the last plan is the plan: no query, no comparison"
    assert second.decisions == first.decisions
    assert second.count("dry_run") == first.count("dry_run") > 0, "every removal is still checked"

    # a setting the plan reads: planned again, from the comparisons already made
    third = _run(settings.model_copy(update={"min_agreement": 0.9}))
    assert planned == [N_IMAGES] * 2 and looked == []
    assert third.decisions == first.decisions

    # one file's mtime changes: planned again, and only its own pairs are compared again
    st = (lib / "pets" / "cat.jpg").stat()
    os.utime(lib / "pets" / "cat.jpg", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    fourth = _run(settings)
    assert planned == [N_IMAGES] * 3
    assert looked and all(str(lib / "pets" / "cat.jpg") in pair for pair in looked), looked
    assert {d.keep.path for d in fourth.decisions} == {d.keep.path for d in first.decisions}


def _remembered_plan(store: Path) -> tuple[str, dict, dict[str, dict]]:
    """The key and head of the plan local mode remembered, and its parts by key."""
    with sqlite3.connect(store) as db:
        rows = dict(db.execute("SELECT key, result FROM comparisons WHERE key LIKE 'plan-%'").fetchall())
    [key] = [k for k in rows if "-part-" not in k]
    return key, json.loads(rows.pop(key)), {k: json.loads(v) for k, v in rows.items()}


def _counting_plans(monkeypatch) -> list[int]:
    planned: list[int] = []
    plan = local.plan

    async def counting_plan(paths, **kwargs):
        planned.append(len(paths))
        return await plan(paths, **kwargs)

    monkeypatch.setattr(local, "plan", counting_plan)
    return planned


def test_a_plan_is_remembered_in_parts_and_a_torn_one_is_made_again(lib, tmp_path, monkeypatch):
    """A million photos' plan is written a part at a time; a run cut off between the parts
    and the head leaves parts of another plan, which are not taken for the plan."""
    monkeypatch.setattr(local, "PLAN_PART", 2)
    planned = _counting_plans(monkeypatch)
    set_aside: list[int] = []
    give_back = SQLiteStore.set_aside

    async def counting_set_aside(self):
        set_aside.append(1)
        await give_back(self)

    monkeypatch.setattr(SQLiteStore, "set_aside", counting_set_aside)
    settings = load_settings(source_directories=[lib], store_path=tmp_path / "s.sqlite", threads=2,
                             max_dist=FIXTURE_MAX_DIST)
    first = _run(settings)
    key, head, parts = _remembered_plan(tmp_path / "s.sqlite")
    assert "decisions" not in head and head["parts"] == len(parts) == -(-len(first.decisions) // 2) > 1
    assert all(len(p["decisions"]) <= 2 and p["fingerprint"] == head["fingerprint"] for p in parts.values())
    assert _run(settings).decisions == first.decisions and planned == [N_IMAGES], "read back, part by part"
    assert set_aside == [1], "the first plan gave the indexes back; the re-run searched nothing"

    with sqlite3.connect(tmp_path / "s.sqlite") as db:  # the last part as another plan wrote it
        last = f"{key}-part-{head['parts'] - 1}"
        db.execute("UPDATE comparisons SET result = ? WHERE key = ?",
                   (json.dumps({**parts[last], "fingerprint": "another plan"}), last))
    assert _run(settings).decisions == first.decisions and planned == [N_IMAGES] * 2, "planned again"
    assert _remembered_plan(tmp_path / "s.sqlite")[2][last] == parts[last], "and remembered whole"


def test_a_plan_remembered_by_an_earlier_build_is_still_the_plan(lib, tmp_path, monkeypatch):
    """Builds before parts kept the decisions in the plan's one entry, as JSON text or (before
    that) as dicts: read either."""
    looked: list[tuple[str, str]] = []
    compare = pixels.compare_files
    monkeypatch.setattr(pixels, "compare_files", lambda a, b, turns: looked.append((a[0], b[0])) or compare(a, b, turns))
    settings = load_settings(source_directories=[lib], store_path=tmp_path / "s.sqlite", threads=2,
                             max_dist=FIXTURE_MAX_DIST)
    first = _run(settings)
    key, head, parts = _remembered_plan(tmp_path / "s.sqlite")
    texts = [d for part in sorted(parts, key=lambda k: int(k.rsplit("-", 1)[1])) for d in parts[part]["decisions"]]
    assert texts and all(isinstance(d, str) for d in texts)
    for decisions in (texts, [json.loads(d) for d in texts]):
        with sqlite3.connect(tmp_path / "s.sqlite") as db:
            db.execute("DELETE FROM comparisons WHERE key LIKE ?", (f"{key}-part-%",))
            db.execute("UPDATE comparisons SET result = ? WHERE key = ?", (json.dumps(
                {k: v for k, v in head.items() if k != "parts"} | {"decisions": decisions}), key))
        looked.clear()
        assert _run(settings).decisions == first.decisions and looked == []


def test_a_changed_library_plans_only_what_changed_and_what_it_meets(lib, tmp_path, monkeypatch):
    """A new copy, a new photo and a copy gone: the next plan asks only about the changed files
    and the groups they touch (the other records are read back with their neighbours), and its
    decisions are those of a whole plan of the library into a fresh store."""
    asked: list[list[str]] = []
    plan = local.plan

    async def counting_plan(paths, **kwargs):
        asked.append(sorted(paths))
        return await plan(paths, **kwargs)

    monkeypatch.setattr(local, "plan", counting_plan)
    settings = load_settings(source_directories=[lib], store_path=tmp_path / "s.sqlite", threads=2,
                             max_dist=FIXTURE_MAX_DIST)
    _run(settings)
    assert len(asked[0]) == N_IMAGES
    save_photo(lib / "pets/cat again.jpg", 12, quality=70)
    save_photo(lib / "solo/new.jpg", 18)
    (lib / "phone/beach-1.jpg").unlink()
    changed = _run(settings)
    assert asked[1] == sorted(str(lib / p) for p in (
        "pets/cat again.jpg", "solo/new.jpg",  # new (the cat's group is met through the indexes)
        "2020/beach.jpg", "2020/beach small.jpg"))  # the group that lost a copy
    groups = {d.keep.path: sorted(r.path for r in d.remove) for d in changed.decisions}
    assert groups[str(lib / "pets/cat.jpg")] == [str(lib / "pets/cat again.jpg"), str(lib / "pets/cat copy.jpg")]
    assert groups[str(lib / "2020/beach.jpg")] == [str(lib / "2020/beach small.jpg")]
    fresh = _run(settings.model_copy(update={"store_path": tmp_path / "fresh.sqlite"}))
    assert len(asked[2]) == N_IMAGES + 1
    assert changed.decisions == fresh.decisions

    # cut off after the plan was remembered, before the records were marked: planned again
    with sqlite3.connect(settings.store_path) as db:
        db.execute("UPDATE images SET planned = NULL WHERE path = ?", (str(lib / "solo/a.jpg"),))
    (lib / "solo/UPPER.JPG").unlink()  # a change, so the last plan is not the plan
    again = _run(settings)
    assert asked[3] == [str(lib / "solo/a.jpg")]
    assert again.decisions == changed.decisions


def test_progress_is_shown_on_a_terminal_and_silent_when_quiet(lib, tmp_path):
    settings = load_settings(source_directories=[lib], store_path=tmp_path / "s.sqlite", threads=2,
                             max_dist=FIXTURE_MAX_DIST)
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=100)
    asyncio.run(local.deduplicate(settings, console, quiet=False))
    shown = buf.getvalue()
    for phase in ("count", "analyse", "match", "act"):
        assert phase in shown
    buf = io.StringIO()
    asyncio.run(local.deduplicate(settings, Console(file=buf, force_terminal=True, width=100), quiet=True))
    assert buf.getvalue() == ""


def test_across_dirs_and_mtime_limit_end_to_end(run_cli, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    save_photo(one / "a.jpg", 50, (640, 480), mtime=1_600_000_000)
    save_photo(two / "a.jpg", 50, (320, 240), mtime=1_600_000_100)
    assert run_cli("deduplicate", one, two).report["groups"] == []
    groups = run_cli("deduplicate", one, two, "--across-dirs").report["groups"]
    assert groups == [{**groups[0], "keep": str(one / "a.jpg"), "remove": [str(two / "a.jpg")]}]
    cfg = tmp_path / "c.yaml"
    cfg.write_text("max_file_modification_time_diff: 60\n")
    assert run_cli("--config", cfg, "deduplicate", one, two, "--across-dirs").report["groups"] == []
    cfg.write_text("max_file_modification_time_diff: 100\n")
    assert len(run_cli("--config", cfg, "deduplicate", one, two, "--across-dirs").report["groups"]) == 1


def test_a_kept_file_changed_between_matching_and_acting_is_not_removed_for(lib, tmp_path, monkeypatch):
    """Phase 5 re-checks at the moment of acting: the kept file vanishing after phase 4 means
    its duplicates stay."""
    settings = load_settings(source_directories=[lib], store_path=tmp_path / "s.sqlite", threads=2,
                             max_dist=FIXTURE_MAX_DIST, dry_run=False)
    real_plan = local.plan

    async def plan_then_lose_the_keeper(*args, **kwargs):
        groups = await real_plan(*args, **kwargs)
        (lib / "2020" / "beach.jpg").unlink()
        return groups

    monkeypatch.setattr(local, "plan", plan_then_lose_the_keeper)
    summary = asyncio.run(local.deduplicate(settings, Console(file=io.StringIO()), quiet=True))
    skipped = {o.path: o.reason for o in summary.outcomes if o.status == "skipped"}
    assert set(skipped) == {str(lib / "2020" / "beach small.jpg"), str(lib / "phone" / "beach-1.jpg")}
    assert all("no longer exists" in reason for reason in skipped.values())
    assert (lib / "2020" / "beach small.jpg").exists() and (lib / "phone" / "beach-1.jpg").exists()
    assert not (lib / "pets" / "cat copy.jpg").exists(), "the other groups still act"


@pytest.mark.parametrize("older", [dict(embedding=None, digest=None), dict(analysis=1)],
                         ids=["before the embedding", "an older analysis"])
def test_a_store_written_by_an_older_version_is_brought_up_to_date(run_cli, lib, tmp_path, older):
    from shared.store.sqlite import SQLiteStore
    import dataclasses

    first = run_cli("deduplicate", lib)

    async def make_it_older():  # what an older version's store holds
        store = SQLiteStore(tmp_path / "store.sqlite")
        try:
            paths = [p async for p in store.iter_paths()]
            records = await store.get_many(paths)
            await store.upsert_many([dataclasses.replace(r, **older) for r in records.values()])
        finally:
            await store.close()

    asyncio.run(make_it_older())
    second = run_cli("deduplicate", lib)
    rows = summary_rows(second.out)
    assert rows["analysed again (older store)"] == str(N_IMAGES)
    assert rows["unchanged since last run"] == "0"
    assert f"{N_IMAGES} unchanged files were analysed again" in second.err
    assert summary_rows(run_cli("deduplicate", lib).out)["analysed again (older store)"] == "0"
    assert second.report["groups"] == first.report["groups"]


def test_two_photos_of_one_stem_in_a_folder_are_each_planned_with_their_own_copies(run_cli, tmp_path):
    """shot.jpg and shot.png beside it are two units (neither is a RAW): planning the one's
    component reads the other to tell, and must not count it as planned, or its own copy is lost."""
    root = tmp_path / "lib"
    save_photo(root / "downloads/shot.jpg", 21, (200, 150))
    save_photo(root / "downloads/shot.png", 22, (200, 150))
    save_photo(root / "camera/first.jpg", 21, (640, 480), exif_tags=5)
    save_photo(root / "camera/second.jpg", 22, (640, 480), exif_tags=5)
    result = run_cli("deduplicate", root)
    assert result.code == 0, result.err
    assert _groups(result.report, root) == {"camera/first.jpg": ["downloads/shot.jpg"],
                                            "camera/second.jpg": ["downloads/shot.png"]}
