"""Image signatures: image-match's Goldberg signature, reimplemented in numpy and made fast.

Pure functions, no store or bus code. ``analyze`` runs inside ProcessPoolExecutor workers, so it
is a top-level function and ``Analysis`` is picklable.

The signature follows ``image_match.goldberg.ImageSignature`` (Goldberg et al., "An image
signature for any kind of image") step by step: grey levels in [0, 1]; crop to the 5%-95% range
of the cumulative absolute row/column differences; a 9x9 grid; the mean grey of a P x P square
at each grid point (P = max(2, int(0.5 + min(h, w) / 20)), clamped at the image edge exactly like
image-match); 8 differences per point, *centre minus neighbour*, in image-match's order (upper
left, up, upper right, left, right, lower left, down, lower right; 0 where a neighbour is off the
grid); differences below 2/255 set to 0; positives and negatives each split at their median into
1/2 and -1/-2. Given the same grey array, :func:`signature_from_grey` returns image-match's
signature bit for bit (tests/test_signature.py checks it).

Where we differ from image-match (documented in the tests too):

* Grey conversion: ITU-R 601 luma, the Y channel a JPEG stores (Pillow's ``convert("L")``),
  where image-match uses skimage's 709 luma (0.2125 R + 0.7154 G + 0.0721 B). Two reasons: a
  JPEG's luma can be decoded alone, without the chroma, which is the fastest decode there is;
  and grey and saturation edits made by common tools (Pillow's among them) keep 601 luma, so
  such copies get the very same signature. The price: on saturated photos our signature lies
  further from image-match's (tests compare on neutral images, where both lumas agree, and
  :func:`signature_from_grey` is image-match's bit for bit on the same grey array). Files that
  are already greyscale are scaled to [0, 1] (image-match's skimage reader leaves them at
  0..255, which makes its 2/255 tolerance useless); alpha is composited on white, as skimage's
  ``rgba2rgb`` does; 16-bit greys are scaled, not clipped.
* EXIF orientation is honoured (image-match ignores it).
* Speed: JPEGs are decoded with ``draft`` at 1/2..1/8 DCT scale so the short side stays at
  least ``DRAFT_TARGET`` px; other formats larger than that are box-reduced with
  ``Image.reduce``. The grid averages P x P squares of about min(h, w)/20 px, so this changes
  the signature very little (see DRAFT_TARGET for measured distances).
"""

from __future__ import annotations

import functools
import hashlib
import io
import math
import os
import re
import warnings
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError
from threadpoolctl import threadpool_limits

from . import decode, embedding
from .metadata import raw_exif

# numpy's BLAS (OpenBLAS) keeps a thread per core that spin-waits between calls: on the small
# products here (signature distances) they gain nothing, and on two free cores they burned more
# CPU than the rest of local mode's main process (lib-hard: 13.5 s against 4.7 s). The process
# pool is the parallelism.
threadpool_limits(1, user_api="blas")

SIGNATURE_LENGTH = 648  # 9x9 grid x 8 neighbours
WORD_COUNT = 63
WORD_LENGTH = 16

GRID = 9
CROP_PERCENTILES = (5, 95)
IDENTICAL_TOLERANCE = 2 / 255.0

#: JPEGs are decoded at the largest DCT scale (1/2, 1/4, 1/8) that keeps the short side at least
#: this many pixels; other formats are box-reduced (``Image.reduce``) to no less than this.
#: Measured on 130 real photos (JPEG/PNG, 256 px to 5120 px wide) against our own
#: full-resolution signature, mean / max distance: 128 px 0.093 / 0.36, 256 px 0.043 / 0.19,
#: 384 px 0.022 / 0.09, 512 px 0.015 / 0.085, 768 px 0.008 / 0.09. A 12 MP JPEG decodes at 1/4
#: DCT scale (1000x750) in about 1.1-1.2x the time of 1/8, and the signature of a 1000x750 uint8
#: array takes about 1.3 ms, so 512 halves the error of 256 at little cost.
DRAFT_TARGET = 512

#: What the analysis computes: a stored record of an older version is analysed again (records
#: from before versions were kept count as 1). 2: the embedding at 192 px (was 224).
ANALYSIS_VERSION = 2

_FORMAT_NAMES = {"MPO": "JPEG"}  # camera multi-picture JPEGs: report the JPEG they are

# array transform per EXIF orientation (the same as ImageOps.exif_transpose's transposes)
_ORIENTATION_TRANSFORMS = {
    2: lambda g: g[:, ::-1],  # FLIP_LEFT_RIGHT
    3: lambda g: g[::-1, ::-1],  # ROTATE_180
    4: lambda g: g[::-1, :],  # FLIP_TOP_BOTTOM
    5: lambda g: np.swapaxes(g, 0, 1),  # TRANSPOSE (grey or RGB arrays)
    6: lambda g: np.rot90(g, -1),  # ROTATE_270 (counter-clockwise), i.e. 90 clockwise
    7: lambda g: np.swapaxes(g[::-1, ::-1], 0, 1),  # TRANSVERSE
    8: lambda g: np.rot90(g, 1),  # ROTATE_90
}

_EXIF_IFD = 0x8769
_GPS_IFD = 0x8825
_INTEROP_IFD = 0xA005
_DATE_TIME_ORIGINAL = 0x9003
_DATE_TIME = 0x0132
_ORIENTATION = 0x0112
_DATE_RE = re.compile(r"^\s*(\d{4})[:\-/](\d{2})[:\-/](\d{2})[ T](\d{2}):(\d{2}):(\d{2})")
_BOMB_RE = re.compile(r"\((\d+) pixels\)")


class ImageError(Exception):
    """A file that cannot be analysed; ``str(exc)`` is a clear one-line reason for users."""

    def __init__(self, reason: str) -> None:
        super().__init__(" ".join(str(reason).split()) or "unreadable image")


@dataclass(frozen=True, slots=True)
class Analysis:
    format: str  # 'JPEG', 'PNG', 'WEBP', 'GIF', 'BMP', 'TIFF', 'HEIF'
    width: int  # full resolution, after EXIF orientation
    height: int
    exif_tags: int  # tags in IFD0 + Exif IFD + GPS IFD (IFD pointer entries not counted)
    exif_date: str | None  # 'YYYY:MM:DD HH:MM:SS'
    signature: np.ndarray  # int8, shape (648,), values in {-2..2}
    digest: str = ""  # BLAKE2b-128 of the file's bytes, hex
    frames: int = 1  # animation frames or pages
    embedding: np.ndarray | None = None  # int8 copy-detection embedding (shared.image.embedding)


# --------------------------------------------------------------------------------------------
# the signature


def _percentile(sorted_values: np.ndarray, q: float) -> float:
    """``np.percentile(values, q)`` (method 'linear') of an already sorted 1-D array, with the
    same floating-point operations as numpy (so the same bits), without its ~50 us overhead."""
    n = sorted_values.shape[0]
    vi = (n - 1) * (q / 100)
    prev = math.floor(vi)
    if vi >= n - 1:
        prev = nxt = n - 1
    else:
        nxt = prev + 1
    gamma = vi - prev
    a = sorted_values[prev].item()
    b = sorted_values[nxt].item()
    diff = b - a
    if gamma >= 0.5:
        return b - diff * (1 - gamma)
    return a + diff * gamma


def _crop_limits(grey: np.ndarray) -> tuple[int, int, int, int]:
    """image-match's ``crop_image``: (top, bottom, left, right).

    For uint8 grey (levels 0..255) the absolute differences are summed exactly in integers, by
    OpenCV; percentiles and searchsorted are scale-invariant, so this equals the float
    computation up to rounding in the last bits.
    """
    lower_p, upper_p = CROP_PERCENTILES
    if grey.dtype == np.uint8 and min(grey.shape) > 1:
        row_sums = cv2.reduce(cv2.absdiff(grey[:, 1:], grey[:, :-1]), 1, cv2.REDUCE_SUM, dtype=cv2.CV_32S)
        rw = np.cumsum(row_sums.ravel(), dtype=np.int64)
        col_sums = cv2.reduce(cv2.absdiff(grey[1:], grey[:-1]), 0, cv2.REDUCE_SUM, dtype=cv2.CV_32S)
        cw = np.cumsum(col_sums.ravel(), dtype=np.int64)
    else:
        grey = grey.astype(np.float64, copy=False)
        rw = np.cumsum(np.sum(np.abs(np.diff(grey, axis=1)), axis=1))
        cw = np.cumsum(np.sum(np.abs(np.diff(grey, axis=0)), axis=0))
    # cumulative sums of non-negative values are sorted already
    upper_col = int(np.searchsorted(cw, _percentile(cw, upper_p), side="left"))
    lower_col = int(np.searchsorted(cw, _percentile(cw, lower_p), side="right"))
    upper_row = int(np.searchsorted(rw, _percentile(rw, upper_p), side="left"))
    lower_row = int(np.searchsorted(rw, _percentile(rw, lower_p), side="right"))
    if lower_row > upper_row:  # nearly featureless
        lower_row = int(lower_p / 100.0 * grey.shape[0])
        upper_row = int(upper_p / 100.0 * grey.shape[0])
    if lower_col > upper_col:
        lower_col = int(lower_p / 100.0 * grey.shape[1])
        upper_col = int(upper_p / 100.0 * grey.shape[1])
    return lower_row, upper_row, lower_col, upper_col


def _box_limits(coords: np.ndarray, p: float, size: int) -> list[tuple[int, int]]:
    out = []
    for x in coords.tolist():
        lo = int(max(x - p / 2, 0))
        out.append((lo, int(min(lo + p, size))))
    return out


def _mean_levels(grey: np.ndarray, window: tuple[int, int, int, int]) -> np.ndarray:
    """image-match's ``compute_grid_points`` + ``compute_mean_level`` (9 x 9 means)."""
    top, bottom, left, right = window
    rows = np.linspace(top, bottom, GRID + 2, dtype=int)[1:-1]
    cols = np.linspace(left, right, GRID + 2, dtype=int)[1:-1]
    p = max(2.0, int(0.5 + min(grey.shape) / 20.0))  # from the whole image, as image-match
    row_lims = _box_limits(rows, p, grey.shape[0])
    col_lims = _box_limits(cols, p, grey.shape[1])
    avg = np.empty((GRID, GRID))
    if grey.dtype == np.uint8:
        # exact integer box sums: per row band, column sums, then a cumulative sum across
        c0s = np.array([c0 for c0, _ in col_lims])
        c1s = np.array([c1 for _, c1 in col_lims])
        counts = (c1s - c0s).astype(np.float64)
        for i, (r0, r1) in enumerate(row_lims):
            cum = np.zeros(grey.shape[1] + 1, dtype=np.int64)
            np.cumsum(grey[r0:r1].sum(axis=0, dtype=np.int64), out=cum[1:])
            avg[i] = (cum[c1s] - cum[c0s]) / ((r1 - r0) * counts)
        avg /= 255.0
        return avg
    for i, (r0, r1) in enumerate(row_lims):
        band = grey[r0:r1]
        for j, (c0, c1) in enumerate(col_lims):
            avg[i, j] = band[:, c0:c1].mean()
    return avg


# neighbour offsets in image-match's order; value = g[centre] - g[centre + offset]
_NEIGHBOURS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))


def _differentials(avg: np.ndarray) -> np.ndarray:
    n = avg.shape[0]
    padded = np.full((n + 2, n + 2), np.nan)
    padded[1:-1, 1:-1] = avg
    out = np.empty((n, n, 8))
    for k, (dr, dc) in enumerate(_NEIGHBOURS):
        out[:, :, k] = avg - padded[1 + dr : 1 + dr + n, 1 + dc : 1 + dc + n]
    out[np.isnan(out)] = 0.0
    return out


def _normalize_and_threshold(diff: np.ndarray) -> None:
    """image-match's ``normalize_and_threshold`` (n_levels=2), in place, same order of updates."""
    mask = np.abs(diff) < IDENTICAL_TOLERANCE
    diff[mask] = 0.0
    if mask.all():
        return
    positives = np.sort(diff[diff > 0.0])
    negatives = np.sort(diff[diff < 0.0])
    pos = [_percentile(positives, q) for q in (0.0, 50.0, 100.0)]
    neg = [_percentile(negatives, q) for q in (100.0, 50.0, 0.0)]
    for level in (0, 1):
        lo, hi = pos[level], pos[level + 1]
        diff[(diff >= lo) & (diff <= hi)] = level + 1
    for level in (0, 1):
        hi, lo = neg[level], neg[level + 1]
        diff[(diff <= hi) & (diff >= lo)] = -(level + 1)


def signature_from_grey(grey: np.ndarray) -> np.ndarray:
    """The signature of a 2-D grey array (image-match's steps 2-5).

    ``grey`` is either float levels in [0, 1] (then the result is image-match's, bit for bit)
    or uint8 levels 0..255 (the fast path, same result up to floating-point ties).
    """
    grey = np.asarray(grey)
    if grey.dtype != np.uint8:
        grey = grey.astype(np.float64, copy=False)
    if grey.ndim != 2 or grey.size == 0:
        raise ValueError(f"expected a non-empty 2-D grey array, got shape {grey.shape}")
    diff = _differentials(_mean_levels(grey, _crop_limits(grey)))
    _normalize_and_threshold(diff)
    return diff.ravel().astype(np.int8)


def _grey_array(img: Image.Image) -> np.ndarray:
    """Grey levels: ITU-R 601 luma (see the module doc), alpha composited on white.

    Returns uint8 0..255 (luma rounded by Pillow's matrix conversion) for 8-bit images, with or
    without alpha - the fast path - and float64 in [0, 1] for 16-bit/float ones (scaled rather
    than clipped).
    """
    mode = img.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        a = np.asarray(img).astype(np.float64)
        return np.clip(a / 65535.0, 0.0, 1.0)
    if mode == "F":
        a = np.nan_to_num(np.asarray(img, dtype=np.float64))
        hi = a.max(initial=0.0)
        return np.clip(a if hi <= 1.0 else a / 255.0, 0.0, 1.0)
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        mode in ("P", "L", "RGB") and "transparency" in img.info
    )
    if has_alpha:  # composite the luma on white, rounded like the rest to uint8
        if mode not in ("LA", "RGBA"):
            img = img.convert("RGBA")
        luma = _grey_array(img.convert("L" if img.mode == "LA" else "RGB")).astype(np.uint32)
        alpha = np.asarray(img.getchannel("A")).astype(np.uint32)
        return ((luma * alpha + 255 * (255 - alpha) + 127) // 255).astype(np.uint8)
    if mode == "L":
        return np.asarray(img)
    if mode == "1":
        return np.asarray(img.convert("L"))
    if mode != "RGB":
        img = img.convert("RGB")
    return np.asarray(img.convert("L"))


def signature_from_image(img: Image.Image) -> np.ndarray:
    """The signature of a Pillow image as it is (no EXIF orientation, no reduction)."""
    return signature_from_grey(_grey_array(img))


# --------------------------------------------------------------------------------------------
# words, distances, orientations

_WORD_POSITIONS = np.linspace(0, SIGNATURE_LENGTH, WORD_COUNT, endpoint=False).astype(int)
# gather index per word; past the end points at an appended 0 (image-match pads with zeros)
_WORD_INDEX = np.minimum(_WORD_POSITIONS[:, None] + np.arange(WORD_LENGTH)[None, :], SIGNATURE_LENGTH)
_WORD_CODING = 3 ** np.arange(WORD_LENGTH, dtype=np.int64)
_HALF = WORD_LENGTH // 2


def _word_weights() -> tuple[np.ndarray, np.ndarray]:
    """(649, 63) float32: what each value (and the zero past the end) weighs in each word, the
    low 8 digits' powers of 3 in the first matrix, the high 8 digits' (over 3**8) in the second."""
    low, high = np.zeros((2, SIGNATURE_LENGTH + 1, WORD_COUNT), np.float32)
    for j in range(WORD_LENGTH):
        (low if j < _HALF else high)[_WORD_INDEX[:, j], np.arange(WORD_COUNT)] += _WORD_CODING[j % _HALF]
    return low, high


_WORD_LOW, _WORD_HIGH = _word_weights()


def words(signature: np.ndarray) -> tuple[int, ...] | list[tuple[int, ...]]:
    """image-match's words: ``words_to_int(max_contrast(get_words(sig, 16, 63)))``; for several
    signatures (shape (k, 648)) at once, a list of them.

    Word i covers the 16 values from ``int(i * 648 / 63)`` (image-match's
    ``np.linspace(0, 648, 63, endpoint=False)``; the last words run past the end and are padded
    with zeros), clipped to {-1, 0, 1} and read as a base-3 number, first value least significant.
    """
    sig = np.asarray(signature)
    if sig.shape[-1:] != (SIGNATURE_LENGTH,) or sig.ndim > 2:
        raise ValueError(f"signature must have shape ({SIGNATURE_LENGTH},), got {sig.shape}")
    found = [tuple(row) for row in word_array(sig.reshape(-1, SIGNATURE_LENGTH)).tolist()]
    return found[0] if sig.ndim == 1 else found


def word_array(signatures: np.ndarray) -> np.ndarray:
    """The words of signatures of shape (k, 648) as an int64 array of shape (k, 63): two float32
    products, the low and the high 8 digits of every word (each sum below 3**8: exact in
    float32), in place of the 16 digits gathered and multiplied as int64, which numpy does
    without BLAS: 44 against 164 ms for 16,000 signatures (a whole-library plan makes the words
    of every query in all 8 orientations)."""
    signatures = np.asarray(signatures)
    digits = np.empty((len(signatures), SIGNATURE_LENGTH + 1), np.float32)
    np.clip(signatures, -1, 1, out=digits[:, :SIGNATURE_LENGTH], casting="unsafe")
    digits[:, SIGNATURE_LENGTH] = 0  # image-match pads with zeros
    digits += 1
    high = (digits @ _WORD_HIGH).astype(np.int64)
    high *= _WORD_CODING[_HALF]
    high += (digits @ _WORD_LOW).astype(np.int64)
    return high


def distance(a: np.ndarray, b: np.ndarray) -> float:
    """||a - b|| / (||a|| + ||b||); 0.0 for two all-zero signatures."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    den = math.sqrt(float(a @ a)) + math.sqrt(float(b @ b))
    if den == 0.0:
        return 0.0
    d = a - b
    return math.sqrt(float(d @ d)) / den


def distances(a: np.ndarray, many: np.ndarray) -> np.ndarray:
    """``distance(a, m)`` for every row m of ``many`` (shape (n, 648)), as float64; for several
    signatures ``a`` (shape (k, 648)) at once, shape (k, n)."""
    many = np.asarray(many)
    if many.ndim != 2:
        many = many.reshape(-1, SIGNATURE_LENGTH)
    af = np.asarray(a, dtype=np.float32)
    single = af.ndim == 1
    af = af.reshape(-1, SIGNATURE_LENGTH)
    mf = many.astype(np.float32)
    # all terms are small integers (< 2**24), so float32 arithmetic is exact here
    na2 = np.einsum("ij,ij->i", af, af)
    nb2 = np.einsum("ij,ij->i", mf, mf)
    d2 = np.maximum(na2[:, None] + nb2[None, :] - 2.0 * (af @ mf.T), 0.0).astype(np.float64)
    den = np.sqrt(na2.astype(np.float64))[:, None] + np.sqrt(nb2.astype(np.float64))[None, :]
    out = np.zeros(d2.shape)
    np.divide(np.sqrt(d2), den, out=out, where=den > 0)
    return out[0] if single else out


def _orientation_permutations() -> list[np.ndarray]:
    """Index arrays: new_sig = sig[perm] for each of the 8 dihedral transforms (identity first).

    A transform maps grid point p (centred coordinates) to L p, and the grid onto itself; the
    value at (L p, direction d) is g[p] - g[p + L^-1 d], i.e. the old value at (p, L^-1 d).
    Centre-minus-neighbour differences keep their sign, only positions and directions move.
    """
    mats = [
        ((1, 0), (0, 1)),  # identity
        ((0, 1), (-1, 0)),  # Image.Transpose.ROTATE_270 (90 degrees clockwise)
        ((-1, 0), (0, -1)),  # ROTATE_180
        ((0, -1), (1, 0)),  # ROTATE_90 (counter-clockwise)
        ((1, 0), (0, -1)),  # FLIP_LEFT_RIGHT
        ((-1, 0), (0, 1)),  # FLIP_TOP_BOTTOM
        ((0, 1), (1, 0)),  # TRANSPOSE
        ((0, -1), (-1, 0)),  # TRANSVERSE
    ]
    half = GRID // 2
    dir_index = {d: k for k, d in enumerate(_NEIGHBOURS)}
    perms = []
    for m in mats:
        lm = np.array(m)
        inv = np.round(np.linalg.inv(lm)).astype(int)
        perm = np.empty(SIGNATURE_LENGTH, dtype=np.intp)
        for r in range(GRID):
            for c in range(GRID):
                q = np.array([r - half, c - half])
                p = inv @ q  # source grid point
                for k, d in enumerate(_NEIGHBOURS):
                    sd = tuple(int(v) for v in inv @ np.array(d))
                    src = ((int(p[0]) + half) * GRID + (int(p[1]) + half)) * 8 + dir_index[sd]
                    perm[(r * GRID + c) * 8 + k] = src
        perms.append(perm)
    return perms


_ORIENTATION_PERMS = _orientation_permutations()


def orientations(signature: np.ndarray) -> list[np.ndarray]:
    """The 8 signatures of the image rotated by 0/90/180/270 degrees, plain and mirrored
    (identity first), by permuting the 648 values."""
    sig = np.asarray(signature)
    return [sig[perm] for perm in _ORIENTATION_PERMS]


# --------------------------------------------------------------------------------------------
# files


def _exif_info(img: Image.Image) -> tuple[int, str | None, int]:
    """(tag count, date, orientation); never raises (broken EXIF counts as none)."""
    try:
        exif = img.getexif()
    except Exception:
        return 0, None, 1
    count = 0
    date = None
    orientation = 1
    try:
        pointers = (_EXIF_IFD, _GPS_IFD, _INTEROP_IFD)
        count = sum(1 for tag in exif if tag not in pointers)
        sub: dict = {}
        for ifd in (_EXIF_IFD, _GPS_IFD):
            try:
                tags = exif.get_ifd(ifd)
            except Exception:
                tags = {}
            count += sum(1 for tag in tags if tag not in pointers)
            if ifd == _EXIF_IFD:
                sub = tags
        for raw in (sub.get(_DATE_TIME_ORIGINAL), exif.get(_DATE_TIME)):
            date = _parse_date(raw)
            if date:
                break
        o = exif.get(_ORIENTATION, 1)
        orientation = int(o[0] if isinstance(o, (tuple, list)) else o)
    except Exception:
        pass
    return count, date, orientation


def _parse_date(raw: object) -> str | None:
    if isinstance(raw, bytes):
        raw = raw.decode("ascii", "replace")
    if not isinstance(raw, str):
        return None
    m = _DATE_RE.match(raw.strip("\x00 "))
    if not m or int(m.group(1)) == 0:
        return None
    y, mo, d, h, mi, s = m.groups()
    return f"{y}:{mo}:{d} {h}:{mi}:{s}"


def _reduce_factor(w: int, h: int, target: int) -> int:
    return max(1, min(w, h) // target)


@dataclass(frozen=True, slots=True)
class _Decoded:
    format: str
    width: int
    height: int
    exif_tags: int
    exif_date: str | None
    grey: np.ndarray
    digest: str
    frames: int
    rgb: Image.Image | None  # small RGB image for the embedding, when asked for
    version: tuple[str, int, int]  # path, size, mtime_ns of the file as it was read
    colour: np.ndarray | None = None  # luma and chroma (Y, Cb, Cr) at the grey's size, when asked for


def _rgb(img: Image.Image) -> Image.Image:
    """RGB with alpha composited on white (the grey path does the same)."""
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


#: Larger files are not images anyone photographs; reading them whole would only fill memory.
MAX_FILE_BYTES = 1 << 30


def _decode(path: str, target: int, rgb_target: int = 0, digest: bool = True, colour: bool = False) -> _Decoded:
    with open(path, "rb") as fh:
        st = os.fstat(fh.fileno())
        size = st.st_size
        if size == 0:
            raise ImageError("zero-byte file")
        if size > MAX_FILE_BYTES:
            raise ImageError(f"file too large for an image ({size:,} bytes)")
        data = fh.read()
    content = hashlib.blake2b(data, digest_size=16).hexdigest() if digest else ""
    raw = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        if decode.is_raw(path):
            img, raw = decode.open_raw(data, path, target)
        else:
            img = Image.open(io.BytesIO(data))
    rgb = None
    with img:
        fmt = _FORMAT_NAMES.get(img.format or "", img.format or "unknown") if raw is None else raw.format
        width, height = img.size if raw is None else (raw.width, raw.height)
        frames = int(getattr(img, "n_frames", 1) or 1)
        jpeg = _FORMAT_NAMES.get(img.format or "", img.format) == "JPEG"  # a RAW's preview too
        if jpeg and target:
            # DCT-scaled, and the decoder's own colour space: its luma is the grey levels, and
            # the colour for the embedding comes from the same decode (it is entropy decoding,
            # not the scale, that costs)
            img.draft("YCbCr" if rgb_target or colour else "L", (target, target))
        img.load()
        tags, date, orientation = _exif_info(img) if raw is None else (*raw_exif(path), raw.orientation)
        ycc = img if colour and img.mode == "YCbCr" else None
        if img.mode == "YCbCr":
            if rgb_target:
                rgb = img.reduce(_reduce_factor(*img.size, rgb_target)).convert("RGB")
            img = img.getchannel(0)
        if not jpeg and target:
            factor = _reduce_factor(*img.size, target)
            if factor > 1:
                if img.mode == "P":
                    img = img.convert("RGBA" if "transparency" in img.info else "RGB")
                try:
                    img = img.reduce(factor)
                except ValueError:  # modes reduce() does not support
                    pass
        if rgb_target and rgb is None:
            rgb = _rgb(img)
        if colour and ycc is None:
            ycc = _rgb(img).convert("YCbCr")
        planes = None if ycc is None else np.asarray(ycc)
        grey = _grey_array(img)
    transform = _ORIENTATION_TRANSFORMS.get(orientation)
    if transform is not None:
        grey = np.ascontiguousarray(transform(grey))
        if planes is not None:
            planes = np.ascontiguousarray(transform(planes))
        if rgb is not None:
            rgb = Image.fromarray(np.ascontiguousarray(transform(np.asarray(rgb))))
        if orientation >= 5:  # 5-8 swap the axes
            width, height = height, width
    return _Decoded(fmt, width, height, tags, date, grey, content, frames, rgb, (path, size, st.st_mtime_ns), planes)


def _image_errors(fn):
    """Turn every way a file can fail to decode into an ImageError with a one-line reason."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ImageError:
            raise
        except decode.RawError as exc:
            raise ImageError(str(exc)) from None
        except Image.DecompressionBombError as exc:
            m = _BOMB_RE.search(str(exc))
            pixels = m.group(1) if m else "too many"
            raise ImageError(f"decompression bomb: {pixels} pixels exceeds limit") from None
        except UnidentifiedImageError:
            raise ImageError("not an image (unrecognised format)") from None
        except FileNotFoundError:
            raise ImageError("file not found") from None
        except IsADirectoryError:
            raise ImageError("is a directory, not a file") from None
        except PermissionError:
            raise ImageError("permission denied") from None
        except MemoryError:
            raise ImageError("out of memory while decoding the image") from None
        except OSError as exc:
            if exc.errno is not None and exc.filename is not None:  # an I/O error, not a decoder one
                raise ImageError(f"cannot read file: {exc.strerror or exc}") from None
            raise ImageError(f"truncated or corrupt image: {exc}") from None
        except Exception as exc:  # decoders raise SyntaxError, ValueError, struct.error, EOFError, ...
            raise ImageError(f"truncated or corrupt image: {type(exc).__name__}: {exc}") from None

    return wrapper


@_image_errors
def analyze(path: str, target: int = DRAFT_TARGET, embed: bool = True) -> Analysis:
    """Decode ``path`` once and compute its signature, digest, embedding and metadata.

    ``target`` is the draft/reduce size (0 = full resolution). Raises :class:`ImageError` with
    a one-line reason for every file that cannot be analysed, and nothing else for bad files.
    """
    return _analysis(_decode(os.fspath(path), target, embedding.INPUT_SIZE if embed else 0), embed)


@_image_errors
def analyze_for_comparison(path: str, max_side: int) -> tuple[Analysis, tuple[str, int, int], np.ndarray]:
    """``analyze``, and from the same decode the file's version (path, size, mtime_ns) and its
    ``comparison_grey``, for a caller that compares the pixels next (``shared.image.pixels``)."""
    d = _decode(os.fspath(path), DRAFT_TARGET, embedding.INPUT_SIZE)
    return _analysis(d, True), d.version, comparison_grey(d.grey, max_side)


def _analysis(d: _Decoded, embed: bool) -> Analysis:
    vector = embedding.embed(d.rgb) if embed and d.rgb is not None else None
    return Analysis(d.format, d.width, d.height, d.exif_tags, d.exif_date, signature_from_grey(d.grey), d.digest,
                    d.frames, vector)


def comparison_grey(grey: np.ndarray, max_side: int) -> np.ndarray:
    """What the verdict's pixel comparison looks at, from a file's grey levels decoded at
    ``DRAFT_TARGET``: uint8, the long side reduced to at most ``max_side``. The analysis and
    ``load_grey`` both make it this way, so a picture kept from the analysis is exactly the one
    a fresh decode gives."""
    if grey.dtype != np.uint8:
        grey = np.round(np.clip(grey, 0, 1) * 255).astype(np.uint8)
    h, w = grey.shape
    k = max_side / max(h, w)
    if k < 1:
        img = Image.fromarray(grey).resize((max(1, round(w * k)), max(1, round(h * k))), Image.Resampling.BOX)
        grey = np.asarray(img)
    return np.ascontiguousarray(grey)


@_image_errors
def load_colour(path: str, max_side: int) -> np.ndarray:
    """The file's picture as ``load_grey`` makes it, in luma and chroma: (h, w, 3) uint8 planes
    Y, Cb, Cr. The comparison asks for it only where grey levels alone cannot tell a colour
    edit from other content."""
    planes = _decode(os.fspath(path), DRAFT_TARGET, digest=False, colour=True).colour
    assert planes is not None
    h, w = planes.shape[:2]
    k = max_side / max(h, w)
    if k < 1:
        size = (max(1, round(w * k)), max(1, round(h * k)))
        planes = np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(planes[:, :, i])).resize(size, Image.Resampling.BOX))
                           for i in range(3)], axis=2)
    return np.ascontiguousarray(planes)


@_image_errors
def load_grey(path: str, max_side: int) -> np.ndarray:
    """The file's ``comparison_grey`` (EXIF orientation honoured), decoded now."""
    return comparison_grey(_decode(os.fspath(path), DRAFT_TARGET, digest=False).grey, max_side)
