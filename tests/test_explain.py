"""``image-dedup explain A B``: what the verdict sees of a pair of each kind, and which is kept."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from .conftest import exif_bytes, make_photo


@pytest.fixture
def files(tmp_path):
    img = make_photo(300, (640, 480))
    paths = {}

    def save(name: str, picture: Image.Image, later: int = 0, **kw) -> None:
        paths[name] = tmp_path / name
        picture.convert("RGB").save(paths[name], quality=kw.pop("quality", 92), exif=exif_bytes(7), **kw)
        os.utime(paths[name], (1_600_000_000 + later, 1_600_000_000 + later))

    save("original.jpg", img, quality=95)
    save("upscaled.jpg", img.resize((1024, 768), Image.BICUBIC), later=3600)
    save("cropped.jpg", img.crop((100, 80, 500, 400)), later=3600)
    frame = make_photo(301, (640, 480))
    frame.paste(make_photo(302, (160, 160)), (200, 150))
    save("frame1.jpg", frame)
    frame.paste(make_photo(303, (640, 480)).crop((0, 0, 160, 160)), (0, 0))
    moved = make_photo(301, (640, 480))
    moved.paste(make_photo(302, (160, 160)), (228, 150))
    save("frame2.jpg", moved)
    blobs = np.random.default_rng(310).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    save("other.jpg", Image.fromarray(blobs).resize((640, 480), Image.BICUBIC))  # nothing like the others
    return paths


def _explain(run_cli, a, b, *flags):
    result = run_cli("explain", a, b, *flags)
    assert result.code == 0, result.err
    return result.out


def test_a_copy_is_explained_stage_by_stage_with_the_kept_file(run_cli, files):
    out = _explain(run_cli, files["upscaled.jpg"], files["original.jpg"])
    for line in ("digest: different bytes", "signature: Goldberg distance", "embedding: similarity",
                 "alignment:", "patches:", "verdict: the same photo"):
        assert line in out, (line, out)
    assert "kept: B (original.jpg): the original: the other was made from it (upscaled 1.6x)" in out, out


def test_a_crop_shows_how_much_of_each_photo_the_other_shows(run_cli, files):
    out = _explain(run_cli, files["original.jpg"], files["cropped.jpg"])
    assert "coverage: 42% of A's photo shows in B, 100% of B's in A" in out, out
    assert "kept: A (original.jpg): the original: the other was made from it (cropped to 42% of it)" in out, out


def test_a_look_alike_is_explained_with_the_reason_it_was_kept_apart(run_cli, files):
    out = _explain(run_cli, files["frame1.jpg"], files["frame2.jpg"])
    assert "verdict: not the same photo: part of the picture moved against the rest (another moment)" in out, out
    assert "kept: both" in out


def test_unrelated_photos_stop_at_the_indexes(run_cli, files):
    out = _explain(run_cli, files["original.jpg"], files["other.jpg"])
    assert "verdict: not the same photo: neither the signature nor the embedding is close" in out
    assert "alignment:" not in out, "no pixels were compared"


def test_json_for_scripts(run_cli, files):
    found = json.loads(_explain(run_cli, files["original.jpg"], files["upscaled.jpg"], "--json"))
    assert set(found) >= {"a", "b", "stages", "looks", "agreed", "verdict", "keep"}
    assert found["verdict"]["same_photo"] is True and found["stages"]["goldberg"]["close"] is True
    assert found["keep"]["keep"] == str(files["original.jpg"]) and found["keep"]["rule"] == "original"
    assert found["agreed"]["patches"]["in_place"] == found["agreed"]["patches"]["compared"] > 0


def test_a_file_that_cannot_be_read_is_one_line(run_cli, files, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    result = run_cli("explain", files["original.jpg"], broken)
    assert result.code == 2 and result.err.strip().count("\n") == 0 and "not an image" in result.err, result.err
