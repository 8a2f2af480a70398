"""Opening image files of every format the analysis reads, as Pillow images.

Most formats are Pillow's own (AVIF included since Pillow 11.3) or a registered plugin (HEIC
and HEIF through pillow-heif, JPEG XL through pillow-jxl-plugin). Camera RAW files go through
LibRaw (rawpy): their embedded preview when it is good enough, otherwise the sensor data
developed at half size. A RAW's preview is the camera's own JPEG rendering of the capture; it
is "good enough" when it holds every pixel the analysis looks at (short side at least the
analysis's draft size) and shows the whole frame (the developed image's aspect ratio).
docs/benchmarks.md measures both paths (bench/raw.py).
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass

import numpy as np
from PIL import Image

from ..core.bundles import RAW_EXTENSIONS

try:  # HEIC/HEIF support; registered once per process, at import
    import pillow_heif

    pillow_heif.register_heif_opener()
except Exception:  # pragma: no cover - optional dependency missing or broken
    pillow_heif = None

try:  # JPEG XL (registers the JXL format with Pillow on import)
    import pillow_jxl  # noqa: F401
except Exception:  # pragma: no cover - optional dependency missing or broken
    pillow_jxl = None


#: A preview whose aspect ratio differs from the developed image's by more than this is cut
#: (16:9 or letterboxed previews of a 3:2 sensor): the analysis would see another frame. 2%
#: is well above the rounding of a preview scaled from the sensor's size (a pixel or two).
PREVIEW_ASPECT_TOLERANCE = 0.02

# LibRaw's ``flip`` as the EXIF orientation it stands for
_FLIP_TO_ORIENTATION = {0: 1, 3: 3, 5: 8, 6: 6}


class RawError(Exception):
    """A RAW file LibRaw cannot read; ``str(exc)`` is one line."""


def is_raw(path: str) -> bool:
    return os.path.splitext(path)[1].lower() in RAW_EXTENSIONS


@dataclass(frozen=True, slots=True)
class Raw:
    """What a RAW file's analysis needs besides the picture."""

    format: str  # the file name ending in capitals: 'NEF', 'CR3', 'DNG'
    width: int  # the developed image, before the orientation
    height: int
    orientation: int  # EXIF orientation the picture still needs (1: none)
    source: str  # 'preview' or 'developed'


def open_raw(data: bytes, path: str, target: int) -> tuple[Image.Image, Raw]:
    """The picture of a RAW file: its embedded preview if it is good enough for an analysis
    at ``target`` px (0: full resolution, which only the developed image gives), else the
    sensor data developed at half size. The picture is not turned: ``Raw.orientation`` says
    how (a preview's own EXIF orientation is not trusted: the RAW's flip is the camera's)."""
    import rawpy

    fmt = os.path.splitext(path)[1][1:].upper() or "RAW"
    try:
        with rawpy.imread(io.BytesIO(data)) as raw:
            sizes = raw.sizes
            width, height, flip = sizes.width, sizes.height, sizes.flip
            orientation = _FLIP_TO_ORIENTATION.get(flip, 1)
            if not width or not height:
                raise RawError("no image in the RAW file")
            preview = _preview(raw, width, height, target)
            if preview is not None:
                return preview, Raw(fmt, width, height, orientation, "preview")
            rgb = raw.postprocess(half_size=True, use_camera_wb=True, output_bps=8, user_flip=0)
    except rawpy.LibRawError as exc:
        raise RawError(f"unreadable {fmt} file: {_libraw_reason(exc)}") from None
    return Image.fromarray(np.ascontiguousarray(rgb)), Raw(fmt, width, height, orientation, "developed")


def _preview(raw, width: int, height: int, target: int) -> Image.Image | None:
    import rawpy

    if not target:
        return None
    try:
        thumb = raw.extract_thumb()
    except (rawpy.LibRawNoThumbnailError, rawpy.LibRawUnsupportedThumbnailError):
        return None
    except rawpy.LibRawError:
        return None  # a broken preview: the sensor data may still be fine
    try:
        if thumb.format == rawpy.ThumbFormat.JPEG:
            img = Image.open(io.BytesIO(thumb.data))
        else:
            img = Image.fromarray(np.ascontiguousarray(thumb.data))
    except Exception:
        return None
    w, h = img.size
    if min(w, h) < min(target, width, height):
        return None
    if abs((w / h) / (width / height) - 1) > PREVIEW_ASPECT_TOLERANCE:
        return None
    return img


def _libraw_reason(exc: Exception) -> str:
    text = str(exc).strip()
    if text.startswith("b'") or text.startswith('b"'):
        text = text[2:-1]
    return " ".join(text.split()) or type(exc).__name__


_TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
              5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
              8: Image.Transpose.ROTATE_90}


def upright(img: Image.Image, orientation: int) -> Image.Image:
    """``img`` turned by an EXIF ``orientation`` (for a person to look at)."""
    method = _TRANSPOSE.get(orientation)
    return img if method is None else img.transpose(method)
