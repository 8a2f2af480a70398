"""What a camera RAW costs to analyse, against a JPEG of the same photo and size, and whether
its embedded preview is good enough (issue 19).

For each of the kit's photos (``../shared/bench/photos.py`` writes them to ``~/bench/photos``)
three files of the same pixel size are written: a JPEG (quality 92, as a camera writes), a DNG
with the whole photo as its embedded JPEG preview (as cameras write), and a DNG without one
(LibRaw must develop the sensor data). Each is analysed (``shared.image.signature.analyze``: the
whole analysis, embedding included) ``--repeat`` times in this process; the table gives the
median time per file and its ratio to the JPEG's, both measured in the same run. Then each DNG's
analysis is compared with the JPEG's, as the verdict would see the pair: the Goldberg distance,
the embedding's cosine and the verdict (``same_photo`` with the default thresholds).

    python bench/raw.py [--photos ~/bench/photos] [--limit 30] [--repeat 3] [--out DIR]

The DNGs are written with pidng (a test dependency: ``pip install -e '.[test]'``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from PIL import Image  # noqa: E402

from bench.common import machine_line  # noqa: E402
from shared.config import Settings  # noqa: E402
from shared.core.verdict import Thresholds, same_photo  # noqa: E402
from shared.image.embedding import cosine  # noqa: E402
from shared.image.pixels import look_in_thread  # noqa: E402
from shared.image.signature import analyze, distance, words  # noqa: E402
from shared.store import ImageRecord  # noqa: E402
from tests.library_support import write_dng  # noqa: E402

KINDS = ("jpeg", "dng+preview", "dng")


def _photos(folder: Path, limit: int) -> list[Path]:
    found = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".tif", ".tiff"))
    return found[:limit]


def _record(path: Path) -> ImageRecord:
    a = analyze(str(path))
    st = os.stat(path)
    return ImageRecord(str(path), str(path.parent), st.st_size, st.st_mtime_ns, a.format, a.width, a.height,
                       a.exif_tags, a.exif_date, a.signature, words(a.signature), None, a.digest, a.frames, a.embedding)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=Path, default=Path.home() / "bench" / "photos")
    parser.add_argument("--limit", type=int, default=30, help="photos used (default 30)")
    parser.add_argument("--repeat", type=int, default=3, help="analyses of each file (default 3; the median counts)")
    parser.add_argument("--out", type=Path, help="where the files are written (default: a temporary folder)")
    args = parser.parse_args()
    photos = _photos(args.photos, args.limit)
    if not photos:
        sys.exit(f"no photos in {args.photos} (run the kit's photos.py first)")
    out = args.out or Path(tempfile.mkdtemp(prefix="raw-bench-"))
    out.mkdir(parents=True, exist_ok=True)
    files: list[dict[str, Path]] = []
    for i, source in enumerate(photos):
        with Image.open(source) as img:
            rgb = img.convert("RGB")
        rgb = rgb.crop((0, 0, rgb.width // 2 * 2, rgb.height // 2 * 2))
        jpeg = out / f"{i:03d}.jpg"
        rgb.save(jpeg, quality=92)
        files.append({"jpeg": jpeg, "dng+preview": write_dng(out / f"{i:03d}p.dng", rgb, preview=True),
                      "dng": write_dng(out / f"{i:03d}.dng", rgb)})
    times: dict[str, list[float]] = {k: [] for k in KINDS}
    for f in files:
        for kind in KINDS:
            analyze(str(f[kind]))  # warm: the first call of a kind loads its decoder
            runs = []
            for _ in range(args.repeat):
                started = time.perf_counter()
                analyze(str(f[kind]))
                runs.append(time.perf_counter() - started)
            times[kind].append(statistics.median(runs))
    thresholds = Thresholds.of(Settings())
    agree: dict[str, list[tuple[float, float, bool]]] = {"dng+preview": [], "dng": []}
    for f in files:
        jpeg = _record(f["jpeg"])
        for kind in agree:
            raw = _record(f[kind])
            verdict = asyncio.run(same_photo(jpeg, raw, thresholds, look_in_thread))
            agree[kind].append((distance(jpeg.signature, raw.signature), cosine(jpeg.embedding, raw.embedding),
                                verdict.same))
    pixels = statistics.median(Image.open(f["jpeg"]).size[0] * Image.open(f["jpeg"]).size[1] for f in files)
    print(machine_line())
    print(f"{len(files)} photos of the kit, median {pixels / 1e6:.2f} MP; median of {args.repeat} analyses per file\n")
    print("| file | ms per file (median) | x JPEG | Goldberg distance to the JPEG (median / max) "
          "| embedding cosine (min) | same photo by the verdict |")
    print("|---|---:|---:|---|---:|---:|")
    jpeg_ms = statistics.median(times["jpeg"]) * 1000
    for kind in KINDS:
        ms = statistics.median(times[kind]) * 1000
        if kind == "jpeg":
            print(f"| JPEG q92 | {ms:.1f} | 1.00 | - | - | - |")
            continue
        d = [a[0] for a in agree[kind]]
        print(f"| {kind.upper().replace('DNG+PREVIEW', 'DNG with preview')} | {ms:.1f} | {ms / jpeg_ms:.2f} | "
              f"{statistics.median(d):.3f} / {max(d):.3f} | {min(a[1] for a in agree[kind]):.3f} | "
              f"{sum(a[2] for a in agree[kind])}/{len(files)} |")


if __name__ == "__main__":
    main()
