"""What a new user ran into that could lose a photo or a decision: an empty root that meant the
current folder, an undo that could not restore and said so with exit status 0, and pairs marked
"not duplicates" that could not be taken back."""

from __future__ import annotations

import asyncio
import json
import os

import pytest
from aiohttp.test_utils import TestClient, TestServer

from services.apply import apply_report
from services.review.server import make_app
from services.review.state import Review
from services.review.thumbs import Thumbnailer
from shared.config import load_settings
from shared.store.open import open_stores

from .conftest import save_photo, summary_rows

pytestmark = pytest.mark.usefixtures("isolated_env")


# -- an empty root ------------------------------------------------------------------------------


def test_an_empty_root_is_an_error_not_the_current_folder(run_cli, tmp_path, monkeypatch):
    """A script's unset $PHOTOS: ``image-dedup deduplicate ""`` in a folder full of photos."""
    here = tmp_path / "checkout"
    save_photo(here / "a.jpg", 90, (640, 480))
    save_photo(here / ".venv/a copy.jpg", 90, (320, 240))
    monkeypatch.chdir(here)
    for args in (["deduplicate", ""], ["deduplicate", " "], ["deduplicate", str(here), ""]):
        with pytest.raises(SystemExit) as exited:
            run_cli(*args)
        assert exited.value.code == 2, args
    assert not (tmp_path / "store.sqlite").exists(), "nothing was analysed"
    for value in ('[""]', '["  "]', f'["{here}", ""]'):
        monkeypatch.setenv("IMAGE_DEDUP_SOURCE_DIRECTORIES", value)
        result = run_cli("deduplicate")
        assert result.code == 2 and result.report is None, (value, result.out)
        assert result.err.startswith("image-dedup: invalid config: source_directories: an empty path"), result.err
    monkeypatch.delenv("IMAGE_DEDUP_SOURCE_DIRECTORIES")
    for key in ("DUPLICATES_TARGET_DIRECTORY", "STORE_PATH", "JOURNAL_DIRECTORY"):
        monkeypatch.setenv(f"IMAGE_DEDUP_{key}", "")
        result = run_cli("config", "show")
        assert result.code == 2 and f"{key.lower()}: an empty path" in result.err, result.err
        monkeypatch.delenv(f"IMAGE_DEDUP_{key}")


def test_a_missing_root_says_it_does_not_exist(run_cli, tmp_path):
    (tmp_path / "a-file.jpg").write_bytes(b"x")
    result = run_cli("deduplicate", tmp_path / "no-such-folder")
    assert result.code == 2 and result.err.rstrip().endswith("no-such-folder does not exist"), result.err
    result = run_cli("deduplicate", tmp_path / "a-file.jpg")
    assert result.code == 2 and result.err.rstrip().endswith("a-file.jpg is not a folder"), result.err


# -- undo ----------------------------------------------------------------------------------------


def test_undo_that_cannot_restore_a_file_exits_non_zero_and_counts_them(run_cli, tmp_path, isolated_env):
    lib = tmp_path / "lib"
    save_photo(lib / "a.jpg", 91, (640, 480))
    save_photo(lib / "a small.jpg", 91, (320, 240))
    save_photo(lib / "b.jpg", 92, (640, 480))
    save_photo(lib / "b small.jpg", 92, (320, 240))
    trashed = run_cli("deduplicate", lib, "--no-dry-run")
    assert summary_rows(trashed.out)["trashed (were)"] == "2", trashed.out
    [journal] = (isolated_env / "data/image-dedup/journals").glob("*.jsonl")
    (isolated_env / "data/Trash/files/b small.jpg").unlink()  # the trash was emptied of one of them
    undone = run_cli("undo", journal)
    assert undone.code == 1, undone.out
    assert (lib / "a small.jpg").is_file() and not (lib / "b small.jpg").exists()
    assert f"cannot restore {lib / 'b small.jpg'}" in undone.out
    assert undone.err == "image-dedup: 1 of 2 files were not restored (see above)\n"
    # undone again: the one that is back stays back, the lost one is still counted
    again = run_cli("undo", journal)
    assert again.code == 1 and f"already back: {lib / 'a small.jpg'}" in again.out
    (isolated_env / "data/Trash/files/b small.jpg").write_bytes(b"")  # not what was trashed
    assert run_cli("undo", journal).code == 1


def test_undo_of_everything_restored_exits_zero(run_cli, tmp_path, isolated_env):
    lib = tmp_path / "lib"
    save_photo(lib / "a.jpg", 93, (640, 480))
    save_photo(lib / "a small.jpg", 93, (320, 240))
    run_cli("deduplicate", lib, "--no-dry-run")
    [journal] = (isolated_env / "data/image-dedup/journals").glob("*.jsonl")
    undone = run_cli("undo", journal)
    assert undone.code == 0 and undone.err == "" and (lib / "a small.jpg").is_file()
    assert run_cli("undo", journal).code == 0, "a second undo restores nothing twice and loses nothing"


# -- "not duplicates" can be taken back -----------------------------------------------------------


@pytest.fixture
def marked(run_cli, tmp_path):
    """A library of three groups, reviewed: the first two marked "not duplicates" on the page."""
    lib = tmp_path / "lib"
    for seed in (94, 95, 96):
        save_photo(lib / f"{seed}.jpg", seed, (640, 480))
        save_photo(lib / f"{seed} small.jpg", seed, (320, 240))
    run = run_cli("deduplicate", lib)
    assert len(run.report["groups"]) == 3, run.out
    return lib, run.report


async def _page(report, lib, tmp_path):
    settings = load_settings(None, source_directories=[lib], store_path=tmp_path / "store.sqlite", threads=1)
    store, ledger = await open_stores(settings)
    thumbs = Thumbnailer(tmp_path / "thumbs", 1)
    app = make_app(Review(report), token="t0k", settings=settings, store=store, ledger=ledger, thumbs=thumbs,
                   out=tmp_path / "reviewed.json", apply_report=apply_report, apply_settings=settings, source="r")
    return app, (thumbs, store, ledger)


def test_resetting_not_duplicates_on_the_page_forgets_the_pair(run_cli, marked, tmp_path):
    lib, report = marked

    async def review() -> list[dict]:
        app, parts = await _page(report, lib, tmp_path)
        try:
            async with TestClient(TestServer(app)) as client:
                answers = []
                for gid, action in ((0, "distinct"), (1, "distinct"), (0, "reset"), (1, "accept")):
                    r = await client.post("/api/decide", json={"group": gid, "action": action}, headers={"X-Token": "t0k"})
                    assert r.status == 200, await r.text()
                    answers.append(await r.json())
                return answers
        finally:
            parts[0].close()
            for part in parts[1:]:
                await part.close()

    answers = asyncio.run(review())
    assert [(a["remembered"], a["forgotten"]) for a in answers] == [(1, 0), (1, 0), (0, 1), (0, 1)]
    assert answers[3]["totals"]["distinct"] == 0 and answers[3]["totals"]["accepted"] == 1
    again = run_cli("deduplicate", lib)
    assert len(again.report["groups"]) == 3, "the next run finds every group again"


def test_distinct_list_and_forget(run_cli, marked, tmp_path):
    lib, report = marked

    async def mark() -> None:
        settings = load_settings(None, store_path=tmp_path / "store.sqlite")
        store, ledger = await open_stores(settings)
        try:
            from services import distinct

            pairs = [(g["keep"], r) for g in report["groups"] for r in g["remove"]]
            assert await distinct.remember(store, ledger, pairs) == 3
        finally:
            await store.close()
            await ledger.close()

    asyncio.run(mark())
    assert run_cli("deduplicate", lib).report["groups"] == []
    store = ["--store", tmp_path / "store.sqlite"]
    listed = run_cli("distinct", "list", *store)
    assert listed.code == 0
    lines = listed.out.splitlines()
    assert lines[-1].startswith("3 pairs marked 'not duplicates'")
    listed_files = {line.lstrip(" 0123456789") for line in lines[:-1]}
    assert listed_files == {p for g in report["groups"] for p in (g["keep"], *g["remove"])}
    keep, [small] = report["groups"][0]["keep"], report["groups"][0]["remove"]
    assert run_cli("distinct", "forget", keep, small, *store).out == "forgot 1 pair: runs may propose it again\n"
    assert [g["keep"] for g in run_cli("deduplicate", lib).report["groups"]] == [keep]
    refused = run_cli("distinct", "forget", *store)
    assert refused.code == 2 and "--all" in refused.err
    missing = run_cli("distinct", "forget", lib / "not-analysed.jpg", *store)
    assert missing.code == 2 and "not-analysed.jpg is not in the store" in missing.err
    assert run_cli("distinct", "forget", "--all", *store).out == "forgot 2 pairs: runs may propose them again\n"
    assert run_cli("distinct", "list", *store).out == "no pairs are marked 'not duplicates'\n"
    assert len(run_cli("deduplicate", lib).report["groups"]) == 3
    assert json.loads(json.dumps(report))  # the report itself was never changed
    assert os.path.exists(keep)
