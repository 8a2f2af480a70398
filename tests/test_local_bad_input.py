"""Bad input never stops a run: each bad file is reported with a one-line reason, and odd file
names are handled like any other."""

from __future__ import annotations

import io
import os
import random
import re
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest
from PIL import Image

from .conftest import all_files, jpeg_bytes, png_bomb, save_photo, summary_rows

pytestmark = pytest.mark.usefixtures("isolated_env")


def _garbage_jpeg() -> bytes:
    raw = bytearray(jpeg_bytes(60))
    rng = random.Random(1)
    for i in range(700, len(raw) - 2):
        raw[i] = rng.randrange(256)
    return bytes(raw)


BAD = {
    "corrupt.jpg": (_garbage_jpeg, "corrupt"),
    "truncated.jpg": (lambda: jpeg_bytes(61)[:3000], "truncated"),
    "zero.jpg": (lambda: b"", "zero-byte"),
    "notes.jpg": (lambda: b"Dear diary, this is not a photo.\n" * 20, "not an image"),
    "bomb.png": (png_bomb, "decompression bomb"),
}


@pytest.fixture(scope="module")
def bomb_bytes() -> bytes:
    return png_bomb()


@pytest.fixture
def bad_lib(tmp_path, bomb_bytes) -> Path:
    lib = tmp_path / "lib"
    save_photo(lib / "good.jpg", 62, (640, 480))
    save_photo(lib / "good-dup.jpg", 62, (320, 240), quality=80)
    (lib / "bad").mkdir()
    for name, (make, _) in BAD.items():
        (lib / "bad" / name).write_bytes(bomb_bytes if name == "bomb.png" else make())
    return lib


def test_bomb_fixture_is_genuinely_large_and_small_on_disk(bomb_bytes, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # only to look at its header here
    assert len(bomb_bytes) < 200_000
    with Image.open(io.BytesIO(bomb_bytes)) as img:
        assert img.size == (20000, 20000) and img.mode == "1"
    assert 20000 * 20000 > 2 * 89_478_485  # above Pillow's error threshold (2x MAX_IMAGE_PIXELS)


def test_every_bad_file_is_reported_with_a_one_line_reason_and_the_run_goes_on(run_cli, bad_lib, tmp_path):
    result = run_cli("deduplicate", bad_lib, "--no-dry-run", "--target", tmp_path / "dups")
    assert result.code == 0, result.err
    assert "Traceback" not in result.out + result.err
    problems = {p["path"]: p["reason"] for p in result.report["problems"]}
    assert set(problems) == {str(bad_lib / "bad" / name) for name in BAD}
    for name, (_, expected) in BAD.items():
        reason = problems[str(bad_lib / "bad" / name)]
        assert expected in reason and "\n" not in reason and len(reason) < 200, (name, reason)
        assert f"problem: {bad_lib / 'bad' / name}: " in result.out
    # the good pair was still handled
    assert [(g["keep"], g["remove"]) for g in result.report["groups"]] == [
        (str(bad_lib / "good.jpg"), [str(bad_lib / "good-dup.jpg")])]
    assert (tmp_path / "dups" / "lib" / "good-dup.jpg").is_file()
    # bad files are never touched
    assert all_files(bad_lib / "bad") == set(BAD)
    rows = summary_rows(result.out)
    assert rows["errors"] == str(len(BAD))
    assert rows["files found"] == str(len(BAD) + 2)


def test_bad_files_are_reported_again_but_not_decoded_again(run_cli, bad_lib):
    run_cli("deduplicate", bad_lib)
    again = run_cli("deduplicate", bad_lib)
    assert {p["path"] for p in again.report["problems"]} == {str(bad_lib / "bad" / n) for n in BAD}
    rows = summary_rows(again.out)
    assert rows["analysed now"] == "0"
    # once fixed (a real photo now), the file is analysed and matched
    save_photo(bad_lib / "bad" / "zero.jpg", 62, (200, 150))
    third = run_cli("deduplicate", bad_lib)
    assert summary_rows(third.out)["analysed now"] == "1"
    assert str(bad_lib / "bad" / "zero.jpg") in third.report["groups"][0]["remove"]


def test_unreadable_file_and_folder_are_reported(run_cli, tmp_path):
    if os.geteuid() == 0:
        pytest.skip("running as root: chmod 000 does not make a file unreadable for root")
    lib = tmp_path / "lib"
    save_photo(lib / "a.jpg", 63)
    locked = save_photo(lib / "locked.jpg", 64)
    save_photo(lib / "closed" / "inside.jpg", 65)
    locked.chmod(0)
    (lib / "closed").chmod(0)
    try:
        result = run_cli("deduplicate", lib)
    finally:
        locked.chmod(0o644)
        (lib / "closed").chmod(0o755)
    assert result.code == 0
    problems = {p["path"]: p["reason"] for p in result.report["problems"]}
    assert "permission denied" in problems[str(locked)].lower()
    assert str(lib / "closed") in problems


ODD = {
    "keep": "-leading dash.jpg",
    "dups": ["with  two spaces.jpg", "📷 beach 🌅.jpg", unicodedata.normalize("NFD", "café crème.jpg"),
             unicodedata.normalize("NFC", "café crème.jpg"), "tab\there.jpg"],
}


def test_odd_and_unicode_names(run_cli, tmp_path, isolated_env):
    lib = tmp_path / "lib"
    keep = save_photo(lib / ODD["keep"], 66, (640, 480))
    for i, name in enumerate(ODD["dups"]):
        save_photo(lib / "sub" / name, 66, (320 - 20 * i, 240 - 15 * i), quality=85)
    assert len(os.listdir(lib / "sub")) == len(ODD["dups"])  # NFD and NFC are two files
    target = tmp_path / "dups"
    result = run_cli("deduplicate", lib, "--no-dry-run", "--target", target)
    assert result.code == 0, result.err
    [group] = result.report["groups"]
    assert group["keep"] == str(keep)
    assert sorted(group["remove"]) == sorted(str(lib / "sub" / n) for n in ODD["dups"])
    assert sorted(os.listdir(target / "lib" / "sub")) == sorted(ODD["dups"])  # byte-exact names
    assert os.listdir(lib / "sub") == []
    [journal] = list((isolated_env / "data" / "image-dedup" / "journals").glob("*.jsonl"))
    assert run_cli("undo", journal).code == 0
    assert sorted(os.listdir(lib / "sub")) == sorted(ODD["dups"])


def test_non_tty_output_is_clean(tmp_path):
    """Run the installed command with pipes (not a terminal): no ANSI escapes, no progress bars,
    just the summary; --quiet too."""
    lib = tmp_path / "lib"
    save_photo(lib / "a.jpg", 67, (640, 480))
    save_photo(lib / "b.jpg", 67, (320, 240))
    (lib / "broken.jpg").write_bytes(b"nope")
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGE_DEDUP_")}
    env.update(HOME=str(tmp_path / "home"), XDG_DATA_HOME=str(tmp_path / "data"), TERM="xterm-256color",
               XDG_CONFIG_HOME=str(tmp_path / "cfg"), COLUMNS="120")
    env.pop("NO_COLOR", None)
    env.pop("FORCE_COLOR", None)
    exe = Path(sys.executable).parent / "image-dedup"
    for extra in ([], ["--quiet"]):
        proc = subprocess.run([str(exe), "deduplicate", str(lib), "--store", str(tmp_path / "s.sqlite"),
                               "--threads", "2", *extra], capture_output=True, text=True, env=env, timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert "\x1b" not in proc.stdout and "\x1b" not in proc.stderr
        assert "\r" not in proc.stdout and "\r" not in proc.stderr
        assert proc.stderr == "", proc.stderr
        assert "image-dedup summary" in proc.stdout
        assert f"problem: {lib / 'broken.jpg'}: not an image" in proc.stdout
        assert not re.search(r"^\s*(count|analyse|match|act)\s", proc.stdout, flags=re.M)


def test_names_that_look_like_markup_are_printed_as_they_are(run_cli, tmp_path):
    lib = tmp_path / "lib"
    (lib / "x [").mkdir(parents=True)
    weird = [lib / "holiday [red] [b].jpg", lib / "x [" / "b] y.jpg"]  # the second path holds "[/b]"
    for p in weird:
        p.write_bytes(b"not a photo")
    result = run_cli("deduplicate", lib)
    assert result.code == 0
    for p in weird:
        assert f"problem: {p}: not an image" in result.out
