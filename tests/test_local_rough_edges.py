"""The command's rough edges: odd names, one-line errors, output paths checked before acting,
clean-up across roots, and the smaller flags."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import save_photo, summary_rows, tree_state

pytestmark = pytest.mark.usefixtures("isolated_env")


def _pair(root: Path, seed: int = 70) -> tuple[Path, Path]:
    return save_photo(root / "keep.jpg", seed, (640, 480)), save_photo(root / "dup.jpg", seed, (320, 240), quality=80)


def _one_line_error(result, code: int = 2) -> str:
    assert result.code == code, (result.out, result.err)
    assert "Traceback" not in result.err and result.err.count("\n") == 1, result.err
    return result.err


def test_names_that_are_not_utf8_or_hold_a_newline_survive_the_whole_run(run_cli, tmp_path, isolated_env):
    lib = tmp_path / "lib"
    save_photo(lib / "keep.jpg", 71, (640, 480))
    dup = os.path.join(os.fsencode(lib), b"caf\xe9.jpg")
    os.rename(save_photo(lib / "x.jpg", 71, (320, 240)), dup)
    os.rename(save_photo(lib / "y.jpg", 71, (280, 210)), lib / "new\nline.jpg")
    open(os.path.join(os.fsencode(lib), b"bad\xff.jpg"), "wb").write(b"not a photo")
    (lib / "bad\nname.jpg").write_bytes(b"not a photo")
    target = tmp_path / "dups"
    result = run_cli("deduplicate", lib, "--no-dry-run", "--target", target)
    assert result.code == 0, result.err
    # printed on one line each, undecodable bytes and the newline escaped
    lines = result.out.splitlines()
    assert any(line.startswith(f"problem: {lib}/bad\\xff.jpg: not an image") for line in lines), result.out
    assert any(line.startswith(f"problem: {lib}/bad\\nname.jpg: not an image") for line in lines), result.out
    # the report holds them reversibly
    [group] = result.report["groups"]
    assert sorted(os.fsencode(p) for p in group["remove"]) == sorted([dup, os.fsencode(lib / "new\nline.jpg")])
    assert os.path.exists(os.path.join(os.fsencode(target), b"lib", b"caf\xe9.jpg"))
    # and the journal too: undo brings the byte-exact names back
    [journal] = list((isolated_env / "data" / "image-dedup" / "journals").glob("*.jsonl"))
    assert run_cli("undo", journal).code == 0
    assert os.path.exists(dup) and (lib / "new\nline.jpg").exists()


def test_move_without_a_target_is_a_config_error(run_cli, tmp_path):
    lib = tmp_path / "lib"
    _pair(lib)
    err = _one_line_error(run_cli("deduplicate", lib, "--no-dry-run", "--action", "move"))
    assert "action move needs duplicates_target_directory" in err


@pytest.mark.parametrize("flags, message", [
    (["--action", "hardlink", "--target", "{tmp}/dups"], "only used by action move, not hardlink"),
    (["--target", "{tmp}/afile"], "is a file, not a folder"),
])
def test_target_that_cannot_be_used_is_refused(run_cli, tmp_path, flags, message):
    lib = tmp_path / "lib"
    _pair(lib)
    (tmp_path / "afile").write_text("x")
    err = _one_line_error(run_cli("deduplicate", lib, "--no-dry-run", *(f.format(tmp=tmp_path) for f in flags)))
    assert message in err


def test_output_paths_are_checked_before_anything_is_done(run_cli, tmp_path, monkeypatch):
    lib = tmp_path / "lib"
    _pair(lib)
    before = tree_state(lib)
    store = tmp_path / "store.sqlite"
    err = _one_line_error(run_cli("deduplicate", lib, "--no-dry-run", "--target", tmp_path / "dups",
                                  "--report", tmp_path / "no-such-folder" / "r.json"))
    assert "no-such-folder does not exist" in err
    (tmp_path / "blocker").write_text("a file where the journal folder should be")
    monkeypatch.setenv("IMAGE_DEDUP_JOURNAL_DIRECTORY", str(tmp_path / "blocker" / "journals"))
    err = _one_line_error(run_cli("deduplicate", lib, "--no-dry-run", "--target", tmp_path / "dups"))
    assert "journal_directory" in err and "is not a folder" in err
    assert tree_state(lib) == before and not store.exists() and not (tmp_path / "dups").exists()


def test_store_that_is_a_folder_or_not_sqlite_is_one_line(run_cli, tmp_path):
    lib = tmp_path / "lib"
    _pair(lib)
    (tmp_path / "folder").mkdir()
    assert "is a folder" in _one_line_error(run_cli("deduplicate", lib, store=tmp_path / "folder"))
    (tmp_path / "notes.txt").write_text("just text")
    assert "is not an SQLite database" in _one_line_error(run_cli("deduplicate", lib, store=tmp_path / "notes.txt"))


def test_undo_of_a_missing_file_or_a_non_journal_is_one_line(run_cli, tmp_path):
    assert "cannot read journal" in _one_line_error(run_cli("undo", tmp_path / "missing.jsonl"), 1)
    (tmp_path / "photo.jpg").write_bytes(b"\xff\xd8 not a journal")
    assert "cannot read journal" in _one_line_error(run_cli("undo", tmp_path / "photo.jpg"), 1)


def test_decoder_processes_that_cannot_start_are_one_line_not_one_per_file(tmp_path):
    """A temporary folder whose path is too long for the forkserver's Unix socket (107 bytes):
    the run stops at once with one line, instead of a traceback for every file."""
    _pair(tmp_path / "lib")
    long_tmp = tmp_path / ("t" * 100)
    long_tmp.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGE_DEDUP_")}
    env.update(TMPDIR=str(long_tmp), HOME=str(tmp_path / "home"), XDG_CONFIG_HOME=str(tmp_path / "config"))
    done = subprocess.run([str(Path(sys.executable).with_name("image-dedup")), "deduplicate", str(tmp_path / "lib"),
                           "--store", str(tmp_path / "s.sqlite")], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("image-dedup: cannot start the decoder processes:") and done.stderr.count("\n") == 1, \
        done.stderr


def test_rescan_without_a_broker_is_one_line(run_cli, monkeypatch):
    monkeypatch.setenv("IMAGE_DEDUP_BROKER_URL", "amqp://guest:secret@127.0.0.1:1/")
    err = _one_line_error(run_cli("rescan"), 1)
    assert "cannot publish the rescan to amqp://127.0.0.1:1/" in err and "secret" not in err


def test_scanning_a_second_folder_keeps_the_first_ones_analyses(run_cli, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    _pair(one, 72)
    _pair(two, 73)
    save_photo(one / "twin of two.jpg", 73, (800, 600))  # would be the best copy of two's photo
    store = tmp_path / "store.sqlite"
    assert run_cli("deduplicate", one).code == 0
    assert run_cli("deduplicate", two).code == 0
    with sqlite3.connect(store) as db:
        assert {Path(p).parent.name for (p,) in db.execute("SELECT path FROM images")} == {"one", "two"}
    (one / "dup.jpg").unlink()  # vanished from disk: forgotten, even though not scanned now
    third = run_cli("deduplicate", two, "--across-dirs")
    assert summary_rows(third.out)["analysed now"] == "0"
    assert [(g["keep"], g["remove"]) for g in third.report["groups"]] == [(str(two / "keep.jpg"), [str(two / "dup.jpg")])], \
        "a root not scanned now takes no part"
    with sqlite3.connect(store) as db:
        assert str(one / "dup.jpg") not in {p for (p,) in db.execute("SELECT path FROM images")}
    assert summary_rows(run_cli("deduplicate", one).out)["analysed now"] == "0"


def test_exclude_recursive_and_config_after_the_subcommand(run_cli, tmp_path):
    lib = tmp_path / "lib"
    _pair(lib)
    save_photo(lib / "sub" / "deep.jpg", 74)
    save_photo(lib / "raw" / "skip.jpg", 75)
    assert summary_rows(run_cli("deduplicate", lib).out)["files found"] == "4"
    assert summary_rows(run_cli("deduplicate", lib, "--exclude", "/raw/", "--exclude", "deep").out)["files found"] == "2"
    assert summary_rows(run_cli("deduplicate", lib, "--no-recursive").out)["files found"] == "2"
    cfg = tmp_path / "c.yaml"
    cfg.write_text("exclusions: ['dup']\n")
    assert summary_rows(run_cli("deduplicate", lib, "--config", cfg).out)["files found"] == "3"
    assert summary_rows(run_cli("--config", cfg, "deduplicate", lib).out)["files found"] == "3"


def test_a_root_given_twice_or_inside_another_is_counted_once(run_cli, tmp_path):
    lib = tmp_path / "lib"
    _pair(lib)
    save_photo(lib / "sub" / "deep.jpg", 74)
    result = run_cli("deduplicate", lib, lib, lib / "sub")
    assert summary_rows(result.out)["files found"] == "3"
    assert result.report["roots"] == [str(lib)]


def test_version_and_unknown_environment_variables(run_cli, tmp_path, capsys, monkeypatch, caplog):
    from services import cli

    with pytest.raises(SystemExit) as exit_:
        cli.main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.startswith("image-dedup 0.")
    monkeypatch.setenv("IMAGE_DEDUP_TAGRET", "/somewhere")
    lib = tmp_path / "lib"
    _pair(lib)
    with caplog.at_level("WARNING"):
        assert run_cli("deduplicate", lib).code == 0
    [line] = [r.getMessage() for r in caplog.records if "IMAGE_DEDUP_TAGRET" in r.getMessage()]
    assert "unknown environment variable" in line and "\n" not in line


def test_a_move_within_one_filesystem_frees_no_bytes(run_cli, tmp_path):
    lib = tmp_path / "lib"
    _, dup = _pair(lib)
    size = dup.stat().st_size
    rows = summary_rows(run_cli("deduplicate", lib, "--no-dry-run", "--target", tmp_path / "dups").out)
    assert rows["moved (were)"] == "1"
    assert rows["bytes freed (were)"] == "0" and rows["bytes moved, not freed (were)"] == f"{size:,}"


def test_the_report_is_json_that_round_trips_names(run_cli, tmp_path):
    lib = tmp_path / "lib"
    save_photo(lib / "k.jpg", 76, (640, 480))
    os.rename(save_photo(lib / "d.jpg", 76, (320, 240)), os.path.join(os.fsencode(lib), b"\xe9t\xe9.jpg"))
    result = run_cli("deduplicate", lib)
    raw = (tmp_path / "report.json").read_bytes()
    raw.decode("utf-8")  # valid UTF-8 throughout
    assert b"\\udce9t\\udce9.jpg" in raw
    assert os.fsencode(json.loads(raw)["groups"][0]["remove"][0]).endswith(b"/\xe9t\xe9.jpg")
    assert result.code == 0
