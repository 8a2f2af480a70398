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


#: Formats that keep every grey level
LOSSLESS = {"PNG", "TIFF", "BMP"}
#: What a lossless file adds to a picture: the rounding to whole grey levels (variance 1/12)
_ROUNDING = 1 / 12
#: Pixels a picture is shifted by before it is encoded again with its own tables, so that its
#: 8x8 blocks fall across the file's: what the encoding then changes is what it changes in a
#: fresh picture (the calibration of JPEG steganalysis); re-encoding on the file's own grid
#: would change next to nothing
_SHIFT = 4


def _encoded_again(stored: np.ndarray, file: Image.Image) -> tuple[Image.Image, Image.Image] | None:
    """A picture like the file's (its stored pixels, shifted off its block grid) and that
    picture encoded as the file is: their difference is noise like the file's encoding noise.
    ``None`` for a lossy format other than JPEG (its encoder's settings are not in the file)."""
    shifted = Image.fromarray(np.ascontiguousarray(stored[_SHIFT:, _SHIFT:]))
    if file.format in LOSSLESS:
        return shifted, shifted
    if file.format != "JPEG":
        return None
    return shifted, Image.open(io.BytesIO(_encoded_as(shifted, file))).convert("RGB")


def _mse(a: np.ndarray, b: np.ndarray | float = 0.0) -> float:
    return float(np.mean(_inner(a - b) ** 2))


def _resized(grey: np.ndarray, size: tuple[int, int], resample: Image.Resampling) -> np.ndarray:
    return np.asarray(Image.fromarray(grey.astype(np.float32)).resize(size, resample))


def _above(grey: np.ndarray, size: tuple[int, int], resample: Image.Resampling) -> np.ndarray:
    """What of a picture lies above the resolution of ``size`` (reduced to it and enlarged
    back with ``resample``, the filter an upscale was made with, the difference)."""
    back = _resized(_resized(grey, size, Image.Resampling.LANCZOS), (grey.shape[1], grey.shape[0]), resample)
    return grey - back


@_image_errors
def upscaled(big: str, small: str, turn: int) -> tuple[float, float]:
    """Whether the larger picture holds detail beyond the smaller one's resolution, two ways.

    First, how much of ``big`` the smaller one does not explain (the mean squared difference
    of its grey levels from ``small`` enlarged onto it) against how much of ``small`` the
    larger explains (``small`` against ``big`` reduced onto it), each with the resampling
    filter that fits best: an upscale's two are both its encodings' noise; an original's first
    holds what its reduced copy lost.

    Second, what ``small`` leaves unexplained of ``big`` against what the files' encoding
    noise alone would leave, the larger of two ratios: over the whole picture (``big``'s noise
    plus ``small``'s enlarged as ``small`` was), and above the smaller's resolution (there
    only ``big``'s noise, which a copy made from ``big``'s decoded pixels cannot have taken
    with it). An upscale leaves its encodings' noise, an original also the detail its copy
    lost: this holds for a soft photo, where the first's residuals are both noise and the
    larger file's noisier encoding can tip it over 1. Both ratios with one filter, the one that
    fits best (an upscale made with another leaves that filter's leakage above the smaller's
    resolution). A file's noise is measured by encoding a picture like it as the file is.
    ``inf`` where an encoding is not known (a lossy format other than JPEG)."""
    x_shown, x_file = _rgb(big)
    y_shown, y_file = _rgb(small)
    x = Image.fromarray(np.ascontiguousarray(ONTO[turn](x_shown)))
    y = Image.fromarray(y_shown)
    lx, ly = _luma(np.asarray(x)), _luma(np.asarray(y))
    residuals = {f: lx - _luma(np.asarray(y.resize(x.size, f))) for f in _ENLARGING}
    explains = min(_mse(ly, _luma(np.asarray(x.resize(y.size, f)))) for f in _REDUCING)
    first = min(_mse(r) for r in residuals.values()) / max(explains, 1e-6)
    x_noise = _encoded_again(np.asarray(x_file.convert("RGB")), x_file)
    y_noise = _encoded_again(np.asarray(y_file.convert("RGB")), y_file)
    if x_noise is None or y_noise is None:
        return first, float("inf")
    scale = (x.width * x.height / (y.width * y.height)) ** 0.5
    enlarged = (round(y_noise[0].width * scale), round(y_noise[0].height * scale))
    reduced = (round(x_noise[0].width / scale), round(x_noise[0].height / scale))
    x_rounding, y_rounding = (_ROUNDING * (f.format in LOSSLESS) for f in (x_file, y_file))
    x_grey = [_luma(np.asarray(p)) for p in x_noise]

    def against_noise(f: Image.Resampling) -> float:
        """The larger of the two ratios for an upscale made with ``f``."""
        whole = _mse(*x_grey) + x_rounding + _mse(*(_luma(np.asarray(p.resize(enlarged, f))) for p in y_noise)) + y_rounding
        above = _mse(_above(x_grey[0] - x_grey[1], reduced, f)) + x_rounding
        return max(_mse(residuals[f]) / max(whole, 1e-6), _mse(_above(residuals[f], y.size, f)) / max(above, 1e-6))

    return first, min(against_noise(f) for f in _ENLARGING)


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
    return _rgb_of(_encoded_as(stored, like), orientation)


def _encoded_as(stored: Image.Image, like: Image.Image) -> bytes:
    """``stored`` encoded with the quantisation tables and chroma subsampling of the JPEG ``like``."""
    sampling = JpegImagePlugin.get_sampling(like)
    out = io.BytesIO()
    stored.save(out, "JPEG", qtables=like.quantization, subsampling=sampling if sampling >= 0 else 2)
    return out.getvalue()


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
_UNKNOWN = {"upscaled": (float("inf"), float("inf")), "resaved": 255.0, "reencoded": (255.0, None)}


def measure(kind: str, copy: str, source: str, turn: int) -> object:
    """One of the measures above by name (for the decoder pool); a file that cannot be read
    (gone, changed, broken since it was analysed) gives no evidence."""
    try:
        return {"upscaled": upscaled, "resaved": resaved, "reencoded": reencoded}[kind](copy, source, turn)
    except ImageError:
        return _UNKNOWN[kind]
