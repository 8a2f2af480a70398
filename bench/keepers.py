"""A held-out keeper set: is the original kept, whatever its copies' pixels, bytes or dates?

Each photo of the benchmark kit (``--photos``, made by the kit's photos.py) becomes a
camera-like original (JPEG quality 95, 4:4:4, EXIF with Make, Model, DateTimeOriginal,
Orientation 1 and the pixel size) in a dated event folder, next to copies made from it that
the seed's rules would keep instead: each has more pixels, a bigger file, a later date or a
shorter folder, and every copy carries the original's EXIF:

* upscaled 1.3-2x (bicubic or Lanczos), JPEG quality 90;
* a caption bar (12-20% of the height, white or black, one line of text) added to the full photo;
* padded to a square (a uniform colour or a blurred fill) around the full photo;
* encoded again at quality 98-100 (a bigger file);
* saved again as PNG (lossless: a bigger file);
* turned a quarter either way, no orientation tag, JPEG quality 95-98;
* byte-identical in a backup folder (same time: the shorter folder path must win).

Each copy's time is its original's, or later (hours to a year); its folder is deeper or
shallower than the original's. The answer key is written next to the set in the kit's format
(``SET.truth.json``, the original as ``best``), so the kit's ``score.py`` scores a report.

    python bench/keepers.py --photos ~/bench/photos --out ~/bench/keepers [--seed 1] [--limit 60]
    image-dedup deduplicate ~/bench/keepers --report r.json
    python ../shared/bench/score.py ~/bench/keepers.truth.json r.json
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import shutil
import sys
from datetime import datetime, timedelta
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter, ImageFont

CAMERAS = [("Canon", "Canon EOS 80D"), ("NIKON CORPORATION", "NIKON D7200"), ("SONY", "ILCE-6000"),
           ("Apple", "iPhone 12 Pro"), ("Google", "Pixel 6"), ("FUJIFILM", "X-T20")]
EVENTS = ["Beach weekend", "Birthday party", "Road trip", "Zoo visit", "Garden", "Hiking trip", "Museum day"]
CAPTIONS = ["Summer holidays", "Good times", "With love", "Best day ever", "Happy birthday"]
MAKE, MODEL, ORIENTATION, DATETIME = 0x010F, 0x0110, 0x0112, 0x0132
EXIF_IFD, DATE_ORIGINAL, PIXEL_X, PIXEL_Y = 0x8769, 0x9003, 0xA002, 0xA003
KINDS = ("upscale", "caption", "square", "reencode", "png", "turn", "backup")


def exif_for(camera: tuple[str, str], when: datetime, size: tuple[int, int]) -> bytes:
    exif = Image.Exif()
    stamp = when.strftime("%Y:%m:%d %H:%M:%S")
    exif.update({MAKE: camera[0], MODEL: camera[1], ORIENTATION: 1, DATETIME: stamp})
    exif[EXIF_IFD] = {DATE_ORIGINAL: stamp, PIXEL_X: size[0], PIXEL_Y: size[1]}
    return exif.tobytes()


def jpeg(image: Image.Image, quality: int, exif: bytes) -> bytes:
    out = io.BytesIO()
    image.convert("RGB").save(out, "JPEG", quality=quality, subsampling=0 if quality >= 90 else 2, exif=exif)
    return out.getvalue()


def font(size: int) -> ImageFont.ImageFont:
    for name in ("DejaVuSans-Bold.ttf", "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf"):
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            continue
    return ImageFont.load_default()


def caption(photo: Image.Image, rng: random.Random) -> Image.Image:
    bar = round(photo.height * rng.uniform(0.12, 0.20))
    white = rng.random() < 0.5
    canvas = Image.new("RGB", (photo.width, photo.height + bar), "white" if white else "black")
    top = rng.random() < 0.5
    canvas.paste(photo, (0, bar if top else 0))
    draw = ImageDraw.Draw(canvas)
    draw.text((round(photo.width * 0.04), (0 if top else photo.height) + bar // 4), rng.choice(CAPTIONS),
              font=font(max(8, bar // 2)), fill="black" if white else "white")
    return canvas


def square(photo: Image.Image, rng: random.Random) -> Image.Image:
    side = max(photo.size)
    if rng.random() < 0.5:
        canvas = Image.new("RGB", (side, side), tuple(rng.randint(0, 255) for _ in range(3)))
    else:
        canvas = photo.resize((side, side), Image.Resampling.BICUBIC).filter(ImageFilter.GaussianBlur(side * 0.04))
    canvas.paste(photo, ((side - photo.width) // 2, (side - photo.height) // 2))
    return canvas


def copy_of(kind: str, photo: Image.Image, original: bytes, exif: bytes, rng: random.Random) -> tuple[bytes, str]:
    """(bytes, file extension) of one copy."""
    if kind == "upscale":
        factor = rng.uniform(1.3, 2.0)
        size = (round(photo.width * factor), round(photo.height * factor))
        return jpeg(photo.resize(size, rng.choice([Image.Resampling.BICUBIC, Image.Resampling.LANCZOS])), 90, exif), ".jpg"
    if kind == "caption":
        return jpeg(caption(photo, rng), 92, exif), ".jpg"
    if kind == "square":
        return jpeg(square(photo, rng), 92, exif), ".jpg"
    if kind == "reencode":
        return jpeg(Image.open(io.BytesIO(original)), rng.randint(98, 100), exif), ".jpg"
    if kind == "png":
        out = io.BytesIO()
        Image.open(io.BytesIO(original)).save(out, "PNG", exif=exif)
        return out.getvalue(), ".png"
    if kind == "turn":
        turned = Image.open(io.BytesIO(original)).transpose(
            rng.choice([Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_270]))
        return jpeg(turned, rng.randint(95, 98), exif), ".jpg"
    return original, ".JPG"  # backup: byte-identical


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photos", type=Path, required=True, help="the kit's photos folder (with catalog.json)")
    ap.add_argument("--out", type=Path, required=True, help="the set's folder (its truth file goes next to it)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--limit", type=int, default=60, help="originals (default 60)")
    ap.add_argument("--max-side", type=int, default=1600, help="originals are reduced to at most this (default 1600)")
    ap.add_argument("--force", action="store_true", help="replace a set this script made before")
    args = ap.parse_args(argv)
    catalog = json.loads((args.photos / "catalog.json").read_text(encoding="utf-8"))
    photos = sorted(p["id"] for p in catalog["photos"] if not p["relations"])  # no look-alike, no second copy
    rng = random.Random(args.seed)
    chosen = rng.sample(photos, min(args.limit, len(photos)))
    truth_path = Path(str(args.out) + ".truth.json")
    if args.out.exists():
        if not args.force:
            ap.error(f"{args.out} exists (--force replaces it)")
        shutil.rmtree(args.out)
    files: dict[str, dict] = {}
    best: dict[str, str] = {}
    for number, photo_id in enumerate(chosen):
        entry = next(p for p in catalog["photos"] if p["id"] == photo_id)
        photo = Image.open(args.photos / entry["file"]).convert("RGB")
        photo.thumbnail((args.max_side, args.max_side), Image.Resampling.LANCZOS)
        when = datetime(2015, 1, 1) + timedelta(days=rng.randint(0, 3000), seconds=rng.randint(0, 86400))
        camera = rng.choice(CAMERAS)
        exif = exif_for(camera, when, photo.size)
        original = jpeg(photo, 95, exif)
        folder = f"Pictures/Camera roll/{when:%Y}/{when:%Y-%m-%d} {rng.choice(EVENTS)}"
        name = f"IMG_{1000 + number:04d}"
        placed = [(f"{folder}/{name}.JPG", original, when, "original")]
        for kind in KINDS:
            data, ext = copy_of(kind, photo, original, exif, rng)
            if kind == "backup":
                place, later = f"Backup/NAS 2024/{folder}/{name}{ext}", timedelta(0)
            else:
                shallow = rng.random() < 0.5
                place = f"{'Export' if shallow else folder + '/Edited/' + kind}/{name}_{kind}{ext}"
                later = timedelta(0) if shallow and rng.random() < 0.5 else timedelta(hours=rng.randint(1, 24 * 365))
            placed.append((place, data, when + later, kind))
        for rel, data, stamp, kind in placed:
            path = args.out / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            os.utime(path, (stamp.timestamp(), stamp.timestamp()))
            files[rel] = {"source": photo_id, "variant": kind,
                          "difficulty": {"original": "original", "backup": "exact", "reencode": "easy",
                                         "png": "easy"}.get(kind, "medium")}
        best[photo_id] = placed[0][0]
        print(f"  [{number + 1}/{len(chosen)}] {placed[0][0]}", file=sys.stderr)
    truth = {"version": 1, "root": str(args.out.resolve()), "seed": args.seed, "variants": "keepers",
             "files": files, "best": best, "negative_pairs": []}
    truth_path.write_text(json.dumps(truth, indent=1, ensure_ascii=False), encoding="utf-8")
    print(f"{len(files)} files, {len(best)} originals; truth: {truth_path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
