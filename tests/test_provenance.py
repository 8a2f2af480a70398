"""Keep the original (shared/core/provenance.py, the rule ``original`` of shared/core/ranking.py):
each kind of copy made from a photo is removed in favour of the photo, whatever its pixels,
bytes, date or folder, and the report says why in words."""

from __future__ import annotations

import asyncio
import io
import os
from pathlib import Path

import pytest
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from shared.config import DEFAULT_RULES
from shared.core import provenance
from shared.core.provenance import Lineage
from shared.core.ranking import plan_groups
from shared.image.compare import Agreement
from shared.image.lineage import reencoded, resaved, upscaled
from shared.store import ImageRecord

from .conftest import exif_bytes, make_photo

TAKEN = 1_600_000_000  # the original's time; copies are made an hour later unless said
EXIF = exif_bytes(7)  # Make, Model, ... and a date: every copy carries the original's


def _jpeg(img: Image.Image, quality: int = 95) -> bytes:
    out = io.BytesIO()
    img.convert("RGB").save(out, "JPEG", quality=quality, subsampling=0, exif=EXIF)
    return out.getvalue()


def _captioned(img: Image.Image) -> Image.Image:
    canvas = Image.new("RGB", (img.width, round(img.height * 1.18)), "white")
    canvas.paste(img, (0, 0))
    ImageDraw.Draw(canvas).text((20, img.height + 25), "Holidays 2021", fill="black")
    return canvas


def _padded(img: Image.Image) -> Image.Image:
    side = max(img.size)
    canvas = Image.new("RGB", (side, side), (30, 30, 30))
    canvas.paste(img, (0, (side - img.height) // 2))
    return canvas


def _plain_at_top(img: Image.Image, colour: str, share: float) -> Image.Image:
    """The photo with its top ``share`` one plain colour (a white wall, a night sky)."""
    img = img.copy()
    ImageDraw.Draw(img).rectangle((0, 0, img.width, round(img.height * share)), fill=colour)
    return img


def _caption_on_top(img: Image.Image) -> Image.Image:
    """A white caption bar above the photo, one line of large text: on a photo white at its top
    the bar's seam does not show."""
    bar = round(img.height * 0.16)
    canvas = Image.new("RGB", (img.width, img.height + bar), "white")
    canvas.paste(img, (0, bar))
    ImageDraw.Draw(canvas).text((25, bar // 4), "Good times", fill="black", font=ImageFont.load_default(bar // 2))
    return canvas


def _blurred_square(img: Image.Image) -> Image.Image:
    """Padded to a square with the photo itself blurred (Instagram's fill)."""
    side = max(img.size)
    canvas = img.resize((side, side), Image.Resampling.BICUBIC).filter(ImageFilter.GaussianBlur(side * 0.04))
    canvas.paste(img, (0, (side - img.height) // 2))
    return canvas


def _png(data: bytes) -> bytes:
    out = io.BytesIO()
    Image.open(io.BytesIO(data)).save(out, "PNG", exif=EXIF)
    return out.getvalue()


#: kind: (the copy's bytes from the photo and the original's bytes, name, seconds after the
#: original, words the report gives)
COPIES = {
    "upscale": (lambda img, data: _jpeg(img.resize((1024, 768), Image.BICUBIC), 90), "big.jpg", 3600, "upscaled 1.6x"),
    "caption": (lambda img, data: _jpeg(_captioned(img), 92), "captioned.jpg", 3600, "a bar added at the bottom"),
    "padding": (lambda img, data: _jpeg(_padded(img), 92), "square.jpg", 3600, "padded at the top and bottom"),
    "re-encode up": (lambda img, data: _jpeg(Image.open(io.BytesIO(data)), 100), "best.jpg", 3600, "encoded again"),
    "PNG re-save": (lambda img, data: _png(data), "lossless.png", 0, "a lossless PNG copy"),
    "turn": (lambda img, data: _jpeg(Image.open(io.BytesIO(data)).transpose(Image.Transpose.ROTATE_90), 97),
             "upright.jpg", 0, "encoded again"),
    # the photo's edge is as plain as what was added there: the comparison tells where it ends
    "caption on a white edge": (lambda img, data: _jpeg(_caption_on_top(img), 92), "titled.jpg", 0,
                                "a bar added at the top"),
    "fill on a dark edge": (lambda img, data: _jpeg(_blurred_square(img), 92), "insta.jpg", 0,
                            "padded at the top and bottom"),
    # nothing above a fraction of its resolution: the files' noise tells the upscale
    "upscale of a soft photo": (lambda img, data: _jpeg(img.resize((1088, 816), Image.BICUBIC), 90), "soft.jpg", 0,
                                "upscaled 1.7x"),
}
#: the photo each kind is made from, when it is not the plain one
PHOTOS = {"caption on a white edge": lambda img: _plain_at_top(img, "white", 0.2),
          "fill on a dark edge": lambda img: _plain_at_top(img, "black", 0.25),
          "upscale of a soft photo": lambda img: img.filter(ImageFilter.GaussianBlur(2.5))}


@pytest.fixture
def library(tmp_path) -> Path:
    """One photo per kind of copy, the original deep in a dated folder, each copy in a shorter
    one, later (or at the same time) and with the original's EXIF."""
    lib = tmp_path / "lib"
    for n, (kind, (make, name, later, _)) in enumerate(sorted(COPIES.items())):
        img = PHOTOS.get(kind, lambda img: img)(make_photo(200 + n, (640, 480)))
        original = lib / "Pictures" / "2020" / f"2020-09-13 Trip {n}" / f"IMG_{n:04d}.JPG"
        original.parent.mkdir(parents=True)
        data = _jpeg(img)
        original.write_bytes(data)
        copy = lib / f"{n}-{name}"
        copy.write_bytes(make(img, data))
        os.utime(original, (TAKEN, TAKEN))
        os.utime(copy, (TAKEN + later, TAKEN + later))
    return lib


def _groups(report: dict) -> dict[str, dict]:
    return {Path(g["keep"]).name: g for g in report["groups"]}


def test_each_kind_of_copy_keeps_its_original_and_says_why(run_cli, library):
    result = run_cli("deduplicate", library, "--max-dist", "0.4")
    assert result.code == 0, result.err
    groups = _groups(result.report)
    for n, (kind, (_, name, _, words)) in enumerate(sorted(COPIES.items())):
        group = groups.get(f"IMG_{n:04d}.JPG")
        assert group is not None, (kind, sorted(groups))
        assert [Path(p).name for p in group["remove"]] == [f"{n}-{name}"], kind
        assert group["rule"] == "original" and words in group["why"], (kind, group["why"])
        assert group["kept_over"][group["remove"][0]] == group["why"]


def test_without_the_rule_the_plain_order_decides(run_cli, library, tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("prioritization_rules: [" + ", ".join(r for r in DEFAULT_RULES if r != "original") + "]\n")
    result = run_cli("deduplicate", library, "--config", config, "--max-dist", "0.4")
    assert result.code == 0, result.err
    kept = {Path(g["keep"]).name for g in result.report["groups"]}
    assert "0-big.jpg" in kept or any(name.endswith("big.jpg") for name in kept), kept  # more pixels
    big = next(g for g in result.report["groups"] if g["keep"].endswith("big.jpg"))
    assert big["rule"] == "more_pixels" and big["why"] == "more pixels: 1024x768 vs 640x480"


def test_a_soft_original_is_kept_over_its_reduction_of_the_same_time(run_cli, tmp_path):
    """A reduction made from the original's file and given its time (copied with it): the two
    explain each other alike, but the reduction carries the original's noise and none of its
    own above its resolution, so the original is not taken for an upscale of it."""
    lib = tmp_path / "lib"
    original, small = lib / "DCIM" / "IMG_0001.JPG", lib / "web" / "IMG_0001_web.jpg"
    for path in (original, small):
        path.parent.mkdir(parents=True)
    original.write_bytes(_jpeg(_soft(251)))
    small.write_bytes(_jpeg(Image.open(original).resize((384, 288), Image.LANCZOS), 85))
    for path in (original, small):
        os.utime(path, (TAKEN, TAKEN))
    result = run_cli("deduplicate", lib, "--max-dist", "0.4")
    assert result.code == 0, result.err
    [group] = result.report["groups"]
    assert group["keep"] == str(original), group
    assert "upscaled" not in group["why"], group["why"]


def test_byte_identical_files_keep_the_one_in_the_shorter_folder(run_cli, tmp_path):
    """After "no copy marker" and "older", the configured rules decide: shorter_folder_path
    keeps DCIM/Camera/X.jpg over the same bytes in a backup, whatever the paths' order."""
    lib = tmp_path / "lib"
    camera = lib / "DCIM" / "Camera" / "PXL_0001.jpg"
    backup = lib / "Backup" / "NAS 2024" / "DCIM" / "Camera" / "PXL_0001.jpg"
    for path in (camera, backup):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(_jpeg(make_photo(230, (640, 480))))
        os.utime(path, (TAKEN, TAKEN))
    result = run_cli("deduplicate", lib)
    [group] = result.report["groups"]
    assert group["keep"] == str(camera) and group["remove"] == [str(backup)]
    assert group["rule"] == "identical_name_then_older" and "byte-identical" in group["why"]


# --------------------------------------------------------------------------------------------
# the measures and the rules on their own


@pytest.fixture
def pair(tmp_path) -> tuple[Path, bytes]:
    img = make_photo(240, (640, 480))
    data = _jpeg(img)
    path = tmp_path / "original.jpg"
    path.write_bytes(data)
    return path, data


def test_an_upscale_holds_no_detail_its_source_lacks_and_an_original_does(pair, tmp_path):
    original, data = pair
    up = tmp_path / "up.jpg"
    up.write_bytes(_jpeg(Image.open(original).resize((1024, 768), Image.LANCZOS), 90))
    down = tmp_path / "down.jpg"
    down.write_bytes(_jpeg(Image.open(original).resize((400, 300), Image.LANCZOS), 90))
    assert upscaled(str(up), str(original), 0)[0] <= provenance.UPSCALED
    assert upscaled(str(up), str(original), 0)[1] <= provenance.NOISE_ONLY
    assert upscaled(str(original), str(down), 0)[0] > provenance.UPSCALED
    assert upscaled(str(original), str(down), 0)[1] > provenance.NOISE_ONLY


def _soft(seed: int) -> Image.Image:
    """A soft photo (out of focus, shaken): nothing above a fraction of its resolution but its
    encoding's noise, so an upscale of it and the photo itself explain each other alike."""
    return make_photo(seed, (640, 480)).filter(ImageFilter.GaussianBlur(2.5))


def test_the_encoding_noise_tells_an_upscale_of_a_soft_photo_from_its_original(tmp_path):
    """Where both residuals are noise, the first answer is no evidence (an upscale over 1, an
    original against a reduction made from its file under 1); the second, measured against the
    files' noise, is."""
    photo = _soft(250)
    original, up, down = tmp_path / "original.jpg", tmp_path / "up.jpg", tmp_path / "down.jpg"
    original.write_bytes(_jpeg(photo))
    up.write_bytes(_jpeg(photo.resize((1088, 816), Image.BICUBIC), 90))
    down.write_bytes(_jpeg(Image.open(original).resize((384, 288), Image.LANCZOS), 85))
    first, second = upscaled(str(up), str(original), 0)
    assert first > provenance.UPSCALED and second <= provenance.NOISE_ONLY
    first, second = upscaled(str(original), str(down), 0)
    assert first <= provenance.UPSCALED and second > provenance.NOISE_ONLY


def test_a_lossless_re_save_and_a_re_encode_reproduce_their_source_and_not_the_other_way(pair, tmp_path):
    original, data = pair
    png, better = tmp_path / "copy.png", tmp_path / "better.jpg"
    png.write_bytes(_png(data))
    better.write_bytes(_jpeg(Image.open(original), 100))
    assert resaved(str(png), str(original), 0) <= provenance.RESAVED
    forth, back = reencoded(str(better), str(original), 0)
    assert forth <= provenance.REPRODUCED and back >= 2 * forth + provenance.NOT_REPRODUCED
    forth, back = reencoded(str(original), str(better), 0)
    assert forth > provenance.REPRODUCED


def _rec(name: str, mtime_s: float = TAKEN, **kw) -> ImageRecord:
    return ImageRecord(path=f"/r/{name}", root="/r", size=kw.pop("size", 1000), mtime_ns=int(mtime_s * 1e9),
                       width=kw.pop("width", 640), height=kw.pop("height", 480), **kw)


def test_what_the_comparison_saw_tells_how_a_copy_was_made():
    source, copy = _rec("a.jpg", exif_date="2020:09:13 10:00:00"), _rec("b.jpg", TAKEN + 60)
    crop = Agreement(score=1.0, shown_a=0.6, shown_b=1.0)
    assert provenance.seen(copy, source, crop) == "cropped to 60% of it"
    assert provenance.seen(source, copy, Agreement(score=1.0, shown_a=1.0, shown_b=0.6)) == "", \
        "the source shows more of the photo"
    framed = Agreement(score=1.0, shown_a=1.0, shown_b=1.0, bands_b=(10, 10, 12, 12))
    assert provenance.seen(copy, source, framed) == "framed"
    turned = Agreement(score=1.0, shown_a=1.0, shown_b=1.0, orientation=1)
    assert provenance.seen(copy, source, turned).startswith("turned a quarter")
    assert provenance.seen(source, copy, turned) == "", "never a copy of a newer file"
    assert provenance.seen(copy, _rec("c.jpg"), turned) == "", "the other has no EXIF date"


def test_a_keeper_made_from_one_of_its_copies_goes_back_behind_it():
    recs = {r.path: r for r in (_rec("up.jpg", TAKEN + 60, width=1024, height=768), _rec("orig.jpg"),
                                _rec("small.jpg", TAKEN + 60, width=320, height=240))}

    class Known:
        asked: list = []

        async def made_from(self, copy: str, source: str) -> Lineage | None:
            self.asked.append((copy, source))
            return Lineage(copy, source, "upscaled 1.6x") if (copy, source) == ("/r/up.jpg", "/r/orig.jpg") else None

        async def seen(self, copy: str, source: str) -> str:
            return ""

    edges = [("/r/up.jpg", "/r/orig.jpg", 0.1), ("/r/orig.jpg", "/r/small.jpg", 0.1), ("/r/up.jpg", "/r/small.jpg", 0.1)]
    known = Known()
    [group] = asyncio.run(plan_groups(recs, edges, DEFAULT_RULES, provenance=known))
    assert group.keep.path == "/r/orig.jpg" and {r.path for r, _ in group.remove} == {"/r/up.jpg", "/r/small.jpg"}
    assert group.kept_over["/r/up.jpg"] == "the original: the other was made from it (upscaled 1.6x)"
    assert group.kept_over["/r/small.jpg"] == "more pixels: 640x480 vs 320x240"
    assert ("/r/up.jpg", "/r/orig.jpg") in known.asked
    [plain] = asyncio.run(plan_groups(recs, edges, [r for r in DEFAULT_RULES if r != "original"], provenance=known))
    assert plain.keep.path == "/r/up.jpg", "without the rule, more pixels keeps the upscale"
