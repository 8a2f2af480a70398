"""Thumbnails (and browser-viewable renditions) for the review page: made once in a process
pool, EXIF orientation honoured, cached under the data directory keyed by path, size and mtime
so that a changed file gets a new one."""

from __future__ import annotations

import asyncio
import hashlib
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from PIL import Image, ImageOps

from shared.image import decode  # registers the HEIF and JPEG XL openers in each worker

THUMB_SIZE = 256
LARGE_SIZE = 2048  # the full-size view of a format a browser cannot show (HEIC, TIFF)
BROWSER_FORMATS = {"JPEG", "PNG", "WEBP", "GIF", "BMP"}


def _opened(src: str, size: int) -> Image.Image:
    """The picture, turned upright: a camera RAW's preview or developed sensor data, else the
    file itself (JPEGs decoded at a reduced DCT scale, much faster)."""
    if decode.is_raw(src):
        with open(src, "rb") as fh:
            img, raw = decode.open_raw(fh.read(), src, size)
        img.draft("RGB", (size, size))
        return decode.upright(img, raw.orientation)
    with Image.open(src) as img:
        img.draft("RGB", (size, size))
        return ImageOps.exif_transpose(img)


def render(src: str, dest: str, size: int) -> None:
    """Write ``src`` as a JPEG of at most ``size`` px to ``dest`` (atomically). Runs in a worker."""
    with _opened(src, size) as img:
        img.thumbnail((size, size))
        if img.mode in ("RGBA", "LA", "P"):
            rgba = img.convert("RGBA")
            img = Image.new("RGB", rgba.size, (128, 128, 128))
            img.paste(rgba, mask=rgba.getchannel("A"))
        elif img.mode != "RGB":
            img = img.convert("RGB")
        tmp = f"{dest}.{os.getpid()}.tmp"
        img.save(tmp, "JPEG", quality=82)
    os.replace(tmp, dest)


class Thumbnailer:
    """Cached renditions; concurrent requests for one rendition wait for a single decode."""

    def __init__(self, cache_dir: Path, processes: int):
        self.cache_dir = cache_dir
        self._pool = ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("forkserver"))
        self._pending: dict[Path, asyncio.Future] = {}

    def path_for(self, path: Path, size: int) -> Path:
        st = os.stat(path)
        key = hashlib.blake2b(f"{path}\0{st.st_size}\0{st.st_mtime_ns}".encode(), digest_size=16).hexdigest()
        return self.cache_dir / f"{key}-{size}.jpg"

    async def get(self, path: Path, size: int = THUMB_SIZE) -> Path:
        """The rendition's file; raises OSError or a decoder error for a file it cannot make."""
        dest = self.path_for(path, size)
        if dest.exists():
            return dest
        if dest not in self._pending:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            loop = asyncio.get_running_loop()
            self._pending[dest] = loop.run_in_executor(self._pool, render, str(path), str(dest), size)
            self._pending[dest].add_done_callback(lambda _: self._pending.pop(dest, None))
        await asyncio.shield(self._pending[dest])
        return dest

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
