"""Thumbnails (and browser-viewable renditions) for the review page: made once in a process
pool, EXIF orientation honoured, cached in a folder of this user's only next to the store,
keyed by path, size and mtime so that a changed file gets a new one. And the check that a file
the page shows in full decodes as an image of a type a browser shows."""

from __future__ import annotations

import asyncio
import hashlib
import io
import multiprocessing
import os
import signal
import stat
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from shared.actions import private_folder
from shared.image import decode  # registers the HEIF and JPEG XL openers in each worker

THUMB_SIZE = 256
LARGE_SIZE = 2048  # the full-size view of a format a browser cannot show (HEIC, TIFF)
#: What browsers show, by the format Pillow finds in the file (MPO: a camera's JPEG with a preview)
BROWSER_TYPES = {"JPEG": "image/jpeg", "MPO": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp",
                 "GIF": "image/gif", "BMP": "image/bmp"}


class NotAnImage(Exception):
    """A file the page will not show; ``str(exc)`` says why in one line."""


def verified_image(path: Path) -> tuple[bytes, str]:
    """The bytes of ``path`` and the image format they decode as (``BROWSER_TYPES`` keys are
    what a browser shows as they are). The bytes checked are the bytes served: the file is read
    once, not through a symbolic link; whatever does not decode as an image is refused."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        with open(fd, "rb") as fh:
            if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                raise NotAnImage(f"{path.name} is not a regular file")
            data = fh.read()
    except OSError as exc:
        raise NotAnImage(f"cannot read {path.name}: {exc.strerror}") from None
    try:
        with Image.open(io.BytesIO(data)) as img:
            fmt = img.format or ""
            if fmt in BROWSER_TYPES:
                img.draft("RGB", (THUMB_SIZE, THUMB_SIZE))  # a JPEG decodes whole, at a reduced scale
                img.load()
    except Exception as exc:  # Pillow raises many kinds for what is not (or not wholly) an image
        raise NotAnImage(f"{path.name} does not decode as an image: {type(exc).__name__}") from None
    return data, fmt


def _eight_bit(img: Image.Image) -> Image.Image:
    """An image of 16-bit or float grey levels (16-bit PNG, TIFF) as 8-bit grey, its range kept."""
    values = np.asarray(img, dtype=np.float32)
    top = 65535.0 if img.mode.startswith("I;16") else max(float(values.max()), 1.0)
    return Image.fromarray(np.clip(values * (255.0 / top), 0, 255).astype(np.uint8), "L")


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
        if img.mode.startswith(("I", "F")):
            img = _eight_bit(img)
        if img.mode in ("RGBA", "LA", "P", "PA"):
            rgba = img.convert("RGBA")
            img = Image.new("RGB", rgba.size, (128, 128, 128))
            img.paste(rgba, mask=rgba.getchannel("A"))
        elif img.mode != "RGB":
            img = img.convert("RGB")
        tmp = f"{dest}.{os.getpid()}.tmp"
        img.save(tmp, "JPEG", quality=82)
    os.replace(tmp, dest)


def _worker() -> None:
    """Ctrl-C is the server's to handle: a worker that got it too would print a traceback."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class Thumbnailer:
    """Cached renditions; concurrent requests for one rendition wait for a single decode."""

    def __init__(self, cache_dir: Path, processes: int):
        self.cache_dir = cache_dir
        self._pool = ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("forkserver"),
                                         initializer=_worker)
        self._pending: dict[Path, asyncio.Future] = {}

    def path_for(self, path: Path, size: int) -> Path:
        st = os.stat(path)
        key = hashlib.blake2b(b"\0".join([os.fsencode(path), b"%d" % st.st_size, b"%d" % st.st_mtime_ns]),
                              digest_size=16).hexdigest()
        return self.cache_dir / f"{key}-{size}.jpg"

    async def get(self, path: Path, size: int = THUMB_SIZE) -> Path:
        """The rendition's file; raises OSError or a decoder error for a file it cannot make."""
        dest = self.path_for(path, size)
        if dest.exists():
            return dest
        if dest not in self._pending:
            private_folder(self.cache_dir)
            loop = asyncio.get_running_loop()
            self._pending[dest] = loop.run_in_executor(self._pool, render, str(path), str(dest), size)
            self._pending[dest].add_done_callback(lambda _: self._pending.pop(dest, None))
        await asyncio.shield(self._pending[dest])
        return dest

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
