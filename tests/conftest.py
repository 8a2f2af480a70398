"""Shared fixtures: photo-like test images made with Pillow, an isolated environment, and a
helper to run the ``image-dedup`` command in-process.

Images are deterministic per seed: a two-colour gradient, a few filled shapes and a little
noise, so different seeds give clearly different signatures while a resized or re-encoded copy
of one seed stays close to it.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import signal
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter


# --------------------------------------------------------------------------------------------
# images

# The generated photos are small and flat (shapes on a gradient), so a re-encoded or resized copy
# lies up to ~0.14 from its original, further than real photos' copies (see docs/benchmarks.md),
# while different seeds stay above 0.5. Tests about phases and safety use this threshold.
FIXTURE_MAX_DIST = 0.25


def make_photo(seed: int, size: tuple[int, int] = (320, 240)) -> Image.Image:
    """A photo-like RGB image, distinct per ``seed``."""
    rng = np.random.default_rng(seed)
    w, h = size
    c0, c1 = rng.integers(0, 120, 3), rng.integers(136, 256, 3)  # a gradient with contrast
    if rng.random() < 0.5:
        c0, c1 = c1, c0
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:h, 0:w]
    t = (np.cos(angle) * xx / w + np.sin(angle) * yy / h + 1.5) / 3.0
    base = c0[None, None, :] * (1 - t[..., None]) + c1[None, None, :] * t[..., None]
    img = Image.fromarray(base.astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(6, 10))):
        x0, y0 = int(rng.integers(0, w - 20)), int(rng.integers(0, h - 20))
        x1, y1 = x0 + int(rng.integers(w // 8, w // 2)), y0 + int(rng.integers(h // 8, h // 2))
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        if rng.random() < 0.5:
            draw.ellipse((x0, y0, x1, y1), fill=colour)
        else:
            draw.rectangle((x0, y0, x1, y1), fill=colour)
    img = img.filter(ImageFilter.GaussianBlur(1))  # soft edges, like a lens
    # fine detail, as every photo has (foliage, fabric, grain): what keypoints are found on
    detail = Image.fromarray(rng.integers(0, 256, (h // 6, w // 6), dtype=np.uint8)).resize((w, h), Image.NEAREST)
    detail = np.asarray(detail.filter(ImageFilter.GaussianBlur(0.8))).astype(np.int16) - 128
    arr = np.asarray(img).astype(np.int16) + (detail[..., None] * 0.25).astype(np.int16)
    arr += rng.normal(0, 2, (h, w, 3)).astype(np.int16)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


def exif_bytes(tags: int) -> bytes:
    """EXIF with ``tags`` entries (Make, Model, Software, Artist, ...)."""
    exif = Image.Exif()
    pool = [(0x010F, "Maker"), (0x0110, "Model X"), (0x0131, "Soft"), (0x013B, "Artist"),
            (0x8298, "(c)"), (0x010E, "Description"), (0x0132, "2021:05:06 07:08:09")]
    for tag, value in pool[:tags]:
        exif[tag] = value
    return exif.tobytes()


#: The size each seed's photo is taken at: the sizes the tests ask for are reductions of it, so
#: a larger copy is never an upscale of a smaller one (keep the original would keep the smaller)
CAMERA_SIZE = (1280, 960)


@functools.lru_cache(maxsize=64)
def _camera_photo(seed: int) -> Image.Image:
    return make_photo(seed, CAMERA_SIZE)


def photo_at(seed: int, size: tuple[int, int] = (320, 240)) -> Image.Image:
    """The photo of ``seed`` reduced to ``size`` from its camera size."""
    return _camera_photo(seed).resize(size, Image.LANCZOS)


def save_photo(
    path: Path,
    seed: int,
    size: tuple[int, int] = (320, 240),
    *,
    quality: int = 92,
    exif_tags: int = 0,
    fmt: str | None = None,
    mtime: float | None = None,
) -> Path:
    """Write the photo of ``seed`` at ``size`` (``photo_at``: copies of one seed are
    near-duplicates, the larger the original of the smaller) to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    img = photo_at(seed, size)
    fmt = fmt or {".png": "PNG", ".webp": "WEBP", ".bmp": "BMP"}.get(path.suffix.lower(), "JPEG")
    kwargs: dict = {}
    if fmt == "JPEG":
        kwargs["quality"] = quality
    if exif_tags:
        kwargs["exif"] = exif_bytes(exif_tags)
    img.save(path, fmt, **kwargs)
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


def jpeg_bytes(seed: int, size: tuple[int, int] = (320, 240), quality: int = 90) -> bytes:
    buf = io.BytesIO()
    photo_at(seed, size).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def png_bomb(width: int = 20000, height: int = 20000) -> bytes:
    """A genuine 1-bit greyscale PNG of ``width`` x ``height`` (all black): a few tens of KB
    on disk, but more pixels than Pillow's decompression-bomb limit allows."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte + packed bits
    comp = zlib.compressobj(9)
    parts = [comp.compress(row * 1000) for _ in range(height // 1000)]
    parts.append(comp.compress(row * (height % 1000)))
    parts.append(comp.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b"")


# --------------------------------------------------------------------------------------------
# file-tree helpers


def tree_state(*roots: Path) -> dict[str, tuple]:
    """Every path below the roots with its kind, content hash and inode: equal before and
    after means nothing on disk changed."""
    state: dict[str, tuple] = {}
    for root in roots:
        if not root.exists():
            continue
        for dirpath, dirnames, filenames in os.walk(root):
            for d in dirnames:
                state[os.path.join(dirpath, d)] = ("dir",)
            for f in filenames:
                p = os.path.join(dirpath, f)
                st = os.lstat(p)
                digest = hashlib.sha256(Path(p).read_bytes()).hexdigest() if not os.path.islink(p) else ""
                state[p] = ("file", digest, st.st_ino, st.st_mtime_ns, st.st_nlink)
    return state


def all_files(root: Path) -> set[str]:
    """Relative paths of all files below ``root``."""
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


# --------------------------------------------------------------------------------------------
# environment and CLI


@pytest.fixture
def isolated_env(tmp_path_factory, monkeypatch):
    """No user config, no IMAGE_DEDUP_* settings from the caller's environment, and data
    (store, journals) under a temporary folder."""
    home = tmp_path_factory.mktemp("home")
    for key in list(os.environ):
        if key.startswith("IMAGE_DEDUP_") and not key.startswith("IMAGE_DEDUP_TEST_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / "config"))
    monkeypatch.setenv("XDG_DATA_HOME", str(home / "data"))
    return home


@dataclass
class CliResult:
    code: int
    out: str
    err: str
    report: dict | None = None


@pytest.fixture
def run_cli(isolated_env, capsys, tmp_path):
    """Run ``image-dedup ARGS`` in-process; for ``deduplicate`` a report is always written and
    parsed, and the store defaults to one per test."""
    from services import cli

    def run(*args: str | Path, store: Path | None = None, report: bool = True, threads: int | None = 2) -> CliResult:
        argv = [str(a) for a in args]
        report_path = None
        if "deduplicate" in argv:
            if "--store" not in argv:
                argv += ["--store", str(store or tmp_path / "store.sqlite")]
            if "--max-dist" not in argv and "--config" not in argv:  # a config file may set it
                argv += ["--max-dist", str(FIXTURE_MAX_DIST)]
            if "--threads" not in argv and threads is not None:
                argv += ["--threads", str(threads)]
            if report and "--report" not in argv:
                report_path = tmp_path / "report.json"
                if report_path.exists():
                    report_path.unlink()
                argv += ["--report", str(report_path)]
            elif "--report" in argv:
                report_path = Path(argv[argv.index("--report") + 1])
        capsys.readouterr()
        ctrl_c = signal.getsignal(signal.SIGINT)
        try:
            code = cli.main(argv)
        finally:  # a run leaves Ctrl-C to its end (services/cli.py: _interruptible); the tests go on
            signal.signal(signal.SIGINT, ctrl_c)
        captured = capsys.readouterr()
        data = None
        if report_path is not None and report_path.exists():
            data = json.loads(report_path.read_text(encoding="utf-8"))
        return CliResult(code, captured.out, captured.err, data)

    return run


def summary_rows(out: str) -> dict[str, str]:
    """The rows of the summary table printed by ``deduplicate`` (name -> count)."""
    rows = {}
    for line in out.splitlines():
        cells = [c.strip() for c in line.replace("│", "|").replace("┃", "|").split("|")]
        cells = [c for c in cells if c]
        if len(cells) == 2 and cells[0] not in ("what",):
            rows[cells[0]] = cells[1]
    return rows
