"""Measures on the full pixels that tell whether one file was made from another: an upscale,
a lossless re-save, a JPEG re-encode. Pure computation from two files (decoded here, at full
resolution, only when provenance asks: ``shared.core.provenance``).

Each measure takes the two files and the turn that brings the first onto the second as the
comparison found it (``shared.image.compare.Agreement.orientation``).
"""

from __future__ import annotations

import io

import cv2
import numpy as np
from PIL import Image, ImageOps, JpegImagePlugin

from .signature import ImageError, _image_errors

#: The numpy transform that brings a picture onto the other, per orientation of
#: ``shared.image.signature.orientations`` (as the comparison reports the turn of its ``b``)
ONTO = {
    0: lambda x: x,
    1: lambda x: np.rot90(x, 1),
    2: lambda x: np.rot90(x, 2),
    3: lambda x: np.rot90(x, 3),
    4: lambda x: x[:, ::-1],
    5: lambda x: x[::-1],
    6: lambda x: np.swapaxes(x, 0, 1),
    7: lambda x: np.swapaxes(np.rot90(x, 2), 0, 1),
}
#: The transform that undoes each one
BACK = {0: 0, 1: 3, 2: 2, 3: 1, 4: 4, 5: 5, 6: 6, 7: 7}
_EXIF_ORIENTATION = 0x0112
EDGE = 4  # pixels left out at each side: resampling and JPEG blocks differ most there


def _rgb(path: str) -> tuple[np.ndarray, Image.Image]:
    """The file's pixels as a viewer shows them (EXIF orientation honoured), RGB uint8, and
    the file opened (for its JPEG tables)."""
    img = Image.open(path)
    shown = ImageOps.exif_transpose(img)
    if shown.mode in ("RGBA", "LA", "PA") or "transparency" in shown.info:
        rgba = shown.convert("RGBA")
        shown = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    return np.asarray(shown.convert("RGB")), img


def _luma(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float32)


def _inner(x: np.ndarray) -> np.ndarray:
    return x[EDGE:-EDGE, EDGE:-EDGE]


#: The resampling filters an upscale or a reduction is tried with (the one it was made with fits
#: best; editors use these)
_ENLARGING = (Image.Resampling.BICUBIC, Image.Resampling.LANCZOS, Image.Resampling.BILINEAR)
_REDUCING = (*_ENLARGING, Image.Resampling.BOX)


@_image_errors
def upscaled(big: str, small: str, turn: int) -> float:
    """How much of the larger picture the smaller one does not explain, against how much of
    the smaller one the larger explains: the mean squared difference of ``big``'s grey levels
    from ``small`` enlarged onto it, over that of ``small`` from ``big`` reduced onto it, each
    with the resampling filter that fits best. An upscale holds no detail beyond its source's
    resolution, so both are the encodings' noise (at most about 1); an original holds what its
    reduced copy lost (1.2 and more on the kit's photos)."""
    x = Image.fromarray(np.ascontiguousarray(ONTO[turn](_rgb(big)[0])))
    y = Image.fromarray(_rgb(small)[0])
    lx, ly = _luma(np.asarray(x)), _luma(np.asarray(y))
    explained = min(float(np.mean(_inner(lx - _luma(np.asarray(y.resize(x.size, f)))) ** 2)) for f in _ENLARGING)
    explains = min(float(np.mean(_inner(ly - _luma(np.asarray(x.resize(y.size, f)))) ** 2)) for f in _REDUCING)
    return explained / max(explains, 1e-6)


@_image_errors
def resaved(copy: str, source: str, turn: int) -> float:
    """The largest difference of a grey level between the two files' pixels (0: a lossless
    re-save of the other's decoded pixels)."""
    x = np.ascontiguousarray(ONTO[turn](_rgb(copy)[0])).astype(np.int16)
    y = _rgb(source)[0].astype(np.int16)
    if x.shape != y.shape:
        return 255.0
    return float(np.abs(x - y).max())


def _jpeg(rgb: np.ndarray, like: Image.Image) -> np.ndarray:
    """``rgb`` encoded with the quantisation tables and chroma subsampling of the JPEG ``like``
    (as a viewer shows it, its EXIF orientation undone for the encoding), and decoded."""
    orientation = like.getexif().get(_EXIF_ORIENTATION, 1)
    stored = Image.fromarray(rgb)
    undo = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
            5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_90, 7: Image.Transpose.TRANSVERSE,
            8: Image.Transpose.ROTATE_270}.get(orientation)
    if undo is not None:
        stored = stored.transpose(undo)
    sampling = JpegImagePlugin.get_sampling(like)
    out = io.BytesIO()
    stored.save(out, "JPEG", qtables=like.quantization, subsampling=sampling if sampling >= 0 else 2)
    return _rgb_of(out.getvalue(), orientation)


def _rgb_of(data: bytes, orientation: int) -> np.ndarray:
    img = Image.open(io.BytesIO(data))
    exif = img.getexif()
    exif[_EXIF_ORIENTATION] = orientation
    img.info["exif"] = exif.tobytes()
    return np.asarray(ImageOps.exif_transpose(img).convert("RGB"))


@_image_errors
def reencoded(copy: str, source: str, turn: int) -> tuple[float, float | None]:
    """How closely the JPEG ``copy`` is ``source``'s pixels encoded again with the copy's own
    tables (the mean difference of the grey levels), and how closely ``source``, if a JPEG
    itself, is the copy's pixels encoded with its tables. A re-encode carries its source's
    loss plus its own: encoding the source again reproduces it nearly exactly, while no
    encoding of the copy gives back the source's finer detail."""
    x, x_file = _rgb(copy)
    y, y_file = _rgb(source)
    onto = np.ascontiguousarray(ONTO[turn](x))  # the copy lined up with the source
    if onto.shape != y.shape or x_file.format != "JPEG":
        return 255.0, None
    y_as_x = np.ascontiguousarray(ONTO[BACK[turn]](y))
    forth = float(np.mean(np.abs(_inner(_luma(_jpeg(y_as_x, x_file)) - _luma(x)))))
    back = None
    if y_file.format == "JPEG":
        back = float(np.mean(np.abs(_inner(_luma(_jpeg(onto, y_file)) - _luma(y)))))
    return forth, back


#: What each measure answers for a file that cannot be read: no evidence of anything
_UNKNOWN = {"upscaled": float("inf"), "resaved": 255.0, "reencoded": (255.0, None)}


def measure(kind: str, copy: str, source: str, turn: int) -> object:
    """One of the measures above by name (for the decoder pool); a file that cannot be read
    (gone, changed, broken since it was analysed) gives no evidence."""
    try:
        return {"upscaled": upscaled, "resaved": resaved, "reencoded": reencoded}[kind](copy, source, turn)
    except ImageError:
        return _UNKNOWN[kind]
