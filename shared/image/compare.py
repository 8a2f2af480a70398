"""Pixel comparison of two pictures: do they line up under one turn, scale and crop, and does
every part of one then sit exactly where it is in the other?

A copy (re-encoded, resized, recoloured, cropped, turned, mirrored, with a border, padding or a
caption bar) lines up under a single similarity transform, and after it no patch of the
picture is displaced. Distinct photos that look alike do not: a video frame or burst shot has
parts that moved, a stereo pair or another view of a scene has parallax, a different photo of
the same object does not line up at all, and two views of one scene side by side (a pan) each
show part of it the other does not. Local features (ORB, RANSAC) find the transform, or, for a
whole copy (one shape, under a turn, once bands added around a photo are left out:
``shared.image.bands``), the sizes are tried first, and a soft crop without keypoints is
looked for by its looks; phase correlation of each textured patch measures what is still
displaced, and a patch that holds other content is judged again on the colour planes, where an
edit of colour or tone of the whole picture explains it and a pasted object does not. Pure
computation: the caller decodes (``shared.image.signature.comparison_grey``, ``load_colour``).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import cv2
import numpy as np

from . import bands as bands_

cv2.setNumThreads(1)  # the process pool is the parallelism

MAX_SIDE = 512  # the long side pictures are compared at
NO_DETAILS = "too few details in common to line the pictures up"
TURNS_OFF = "turned against the other, and turned copies are not matched (match_orientations)"
UNMATCHED = "the details do not line up"
_ORB = cv2.ORB_create(nfeatures=600, fastThreshold=10)
_MATCHER = cv2.BFMatcher(cv2.NORM_HAMMING)
MIN_KEYPOINTS = 20
MIN_DETECT_SIDE = 400  # small pictures are enlarged for keypoint detection only
MIN_INLIERS = 20
#: of the keypoint matches agreeing with the fit: a soft picture's matches are ambiguous (a
#: wallpaper's preview lines up by 43%); what is left to chance, the patch test judges
MIN_INLIER_RATIO = 0.4
MAX_SCALE = 16.0  # both pictures are compared at up to MAX_SIDE: no copy differs more
MAX_TILT_DEGREES = 10.0  # off a quarter turn; copies are straightened by a few degrees at most
#: A copy shows the other picture's photo whole, give or take its edges (a crop, a border or a
#: caption added, a straightened copy's corners): pictures that each show this much less of
#: the other's are two views of one scene (a pan)...
CONTAINED = 0.9
#: ... and where bands were taken off a picture (``shared.image.bands``), what is left must lie
#: in the other to within its edges: a plain part of a photo taken for a band (a fog, a sky)
#: would otherwise let a pan pass when it happened to end near the other view's edge
CONTAINED_BANDED = 0.97
#: ... and the smaller photo must fill at least this share of the other: a crop keeps at least
#: half of each side (a quarter of the area); a photo shown small in a collage is not its copy
MIN_SHARE = 0.2
#: A band of one picture that lies on the other's photo is put back unless the other shows more
#: fine detail there (medians: a caption's text is a small part of its bar): over twice the
#: band's, and a grey level more (JPEG's noise on a plain area); or another grey level, by more
#: than a tenth of the range (a bar's colour against the photo's)
PLAIN_AS_BAND = 2.0
BAND_LEVEL = 25
PATCH_SHIFT_PX = 1.0  # a patch displaced by more (in the smaller picture's pixels) moved
PATCH_CONFIDENT = 0.2  # phase-correlation response above which a displacement is real
TOGETHER_PX = 1.5  # neighbouring displaced patches whose shifts agree this closely moved together
SUBJECT_SHIFT_PX = 2.5  # ... when displaced by at least this much: more than resampling noise
MIN_PATCHES = 4
REFINE_MIN_PATCHES = 6  # confidently measured patches a refinement of the alignment is fitted to
REFINE_MAX_PX = 4.0  # patch shifts the refinement uses, and the most it may move the picture
#: ... and the least: most whole copies lined up by their size are corrected by a few hundredths
#: of a pixel (median 0.02 on the kit's libraries), which changes no patch's measure
REFINE_MIN_PX = 0.1
SAME_CONTENT = 0.5  # correlation of an aligned patch below which it shows something else
#: ... or whose mismatch (1 - correlation) is this many times the picture's median mismatch,
#: and at least OTHER_CONTENT_MIN: an object pasted into an otherwise faithful copy
OTHER_CONTENT_RATIO = 20.0
OTHER_CONTENT_MIN = 0.08
#: ... or that is flat in one picture and textured in the other, its contrast changed this many
#: times more (or less) than the picture's
APPEARED_CONTRAST = 4.0
MAX_CHANGED_PATCHES = 2  # inner patches with other content that make it another picture
#: A patch whose grey levels differ this much or less may be an edit of colour or tone of the
#: whole picture, which changes some patches' grey levels unevenly (edges between colours of
#: one brightness appear or vanish): copies 0.08-0.19 on the kit's wide mix; content pasted
#: in differs by 0.4 and more in at least one patch. It is judged again on the colour planes.
RECOLOURED = 0.3
INNER_BAND = 0.15  # the outer band (share of each side) where overlays are allowed
CONVINCING = 0.95  # share of patches in place at which a look settles the pair
#: A pair of one shape (aspect ratios this close, under a turn) whose thumbnails (THUMBNAIL
#: px square) correlate this well in one of the 8 orientations is first lined up as a whole
#: copy (resized, turned, mirrored) by its size: no keypoints. The likeness spares the attempt
#: on most cropped copies (0.9 kept all but 2 of 791 resized copies on the kit's libraries).
SAME_SHAPE = 0.01
THUMBNAIL = 32
WHOLE_COPY_LIKENESS = 0.9
_TEXTURE = 6.0  # grey-level standard deviation below which a patch says nothing


class Features:
    """What the comparison needs of one picture; computed once per file and reused, each part
    when first needed (a picture kept from the analysis may never be compared). The mirrored
    keypoints are only computed when a pair does not line up unmirrored."""

    def __init__(self, grey: np.ndarray, colour: Callable[[], np.ndarray] | None = None):
        self.grey = np.ascontiguousarray(grey)
        self._colour = colour

    def colour(self) -> np.ndarray | None:
        """The same picture in luma and chroma (Y, Cb, Cr), decoded now and not kept (three
        times the grey's memory, and seldom needed); None when unknown."""
        found = self._colour() if self._colour is not None else None
        return found if found is not None and found.shape[:2] == self.grey.shape else None

    @functools.cached_property
    def keypoints(self) -> tuple[np.ndarray, np.ndarray | None]:
        return _keypoints(self.grey)

    @functools.cached_property
    def thumbnail(self) -> np.ndarray:  # THUMBNAIL x THUMBNAIL, zero mean, unit length
        return _thumbnail(self.grey)

    @functools.cached_property
    def bands(self) -> bands_.Bands:
        return bands_.find(self.grey)

    @property
    def mirrored(self) -> np.ndarray:  # not kept: cheap to make, and the cache counts only the grey
        return np.ascontiguousarray(self.grey[:, ::-1])

    @functools.cached_property
    def mirrored_keypoints(self) -> tuple[np.ndarray, np.ndarray | None]:
        return _keypoints(self.mirrored)


@dataclass(frozen=True)
class Agreement:
    """The outcome of a comparison; ``reason`` is set when the pictures do not line up."""

    score: float = 0.0  # share of textured patches in place after the alignment
    inliers: int = 0
    matches: int = 0
    orientation: int = 0  # 0..7 as shared.image.signature.orientations: turn (and mirror) of b
    scale: float = 1.0
    tilt: float = 0.0  # degrees off the quarter turn
    coverage: float = 0.0  # of the photo showing less, the share the other shows too
    shown_a: float = 0.0  # share of a's photo that b's shows too (bands added around it left out)
    shown_b: float = 0.0
    #: bands added around a's photo beyond b's whole picture (top, bottom, left, right): what a
    #: copy made from b by adding a border, padding or a caption shows more
    bands_a: tuple[int, int, int, int] = (0, 0, 0, 0)
    bands_b: tuple[int, int, int, int] = (0, 0, 0, 0)
    patches: int = 0
    placed: int = 0  # of the patches, those measured confidently in place
    reason: str = ""
    #: the alignment as a person would see it (the review page's compare view): where each
    #: point of b's picture, unmirrored, lies on a's, both spanning 0..1 across, as a 2x3
    #: matrix row by row; None when no alignment was fitted
    transform: tuple[float, ...] | None = None

    @property
    def refuses(self) -> bool:
        """The pictures were lined up (or could not be) and differ; too few details is no refusal."""
        return bool(self.reason) and self.reason != NO_DETAILS

    @property
    def convincing(self) -> bool:
        """Lined up with (nearly) every patch in place: a transform that good is the evidence."""
        return not self.reason and self.score >= CONVINCING

    def turned_round(self) -> Agreement:
        """The same look seen from the other picture: the inverse turn (the quarter turns swap;
        a half turn and every mirror undo themselves) and the inverse scale."""
        return dataclasses.replace(self, orientation={1: 3, 3: 1}.get(self.orientation, self.orientation),
                                   scale=round(1 / self.scale, 4) if self.scale else self.scale,
                                   shown_a=self.shown_b, shown_b=self.shown_a, bands_a=self.bands_b, bands_b=self.bands_a,
                                   transform=None if self.transform is None else _inverse(self.transform))


#: ``b`` against ``a``, then ``a`` against ``b`` (None when the first settles the pair)
BothWays = tuple[Agreement, Agreement | None]


def _keypoints(grey: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    h, w = grey.shape
    up = max(1.0, MIN_DETECT_SIDE / max(h, w))
    img = grey if up == 1.0 else cv2.resize(grey, (round(w * up), round(h * up)), interpolation=cv2.INTER_CUBIC)
    kp, des = _ORB.detectAndCompute(img, None)
    points = np.float32([k.pt for k in kp]).reshape(-1, 2) / up
    return points, des


def _transform(a: Features, b: Features, mirrored: bool):
    pa, da = a.keypoints
    pb, db = b.mirrored_keypoints if mirrored else b.keypoints
    if db is None or da is None or len(pb) < MIN_KEYPOINTS or len(pa) < MIN_KEYPOINTS:
        return None
    pairs = _MATCHER.knnMatch(db, da, k=2)
    good = [p[0] for p in pairs if len(p) == 2 and p[0].distance < 0.8 * p[1].distance]
    if len(good) < MIN_INLIERS:
        return None
    src = pb[[g.queryIdx for g in good]]
    dst = pa[[g.trainIdx for g in good]]
    m, inliers = cv2.estimateAffinePartial2D(
        src, dst, method=cv2.RANSAC, ransacReprojThreshold=3.0, maxIters=2000, confidence=0.995
    )
    if m is None:
        return None
    return m, int(inliers.sum()), len(good)


# quarter turns counter-clockwise (k) and mirror -> index of signature.orientations
_ORIENTATION_INDEX = {(0, False): 0, (1, False): 3, (2, False): 2, (3, False): 1,
                      (0, True): 4, (1, True): 7, (2, True): 5, (3, True): 6}


@functools.cache
def _even_dft_size(n: int) -> int:
    """The smallest fast DFT length >= n that is even: padded to an odd length, phase
    correlation (``cv2.phaseCorrelate`` too) reports identical pictures as moved by half a pixel."""
    m = cv2.getOptimalDFTSize(n)
    while m % 2:
        m = cv2.getOptimalDFTSize(m + 1)
    return m


_BOX = np.arange(-2, 3)  # the 5x5 box around the peak whose centroid is the shift


def phase_shifts(a: np.ndarray, b: np.ndarray, window: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Phase correlation of each pair of pictures ``a[i]``, ``b[i]`` (stacks of one shape): the
    shift (x, y) of ``b[i]`` against ``a[i]`` and the peak's response, measured as
    ``cv2.phaseCorrelate`` does (the centroid of the 5x5 box around the peak). The whole stack
    is one batched FFT (about 4x faster than a call per patch), in the windowed pictures
    zero-padded to an even fast length."""
    shape = (_even_dft_size(a.shape[1]), _even_dft_size(a.shape[2]))
    return _shifts(_spectra(a, window, shape), _spectra(b, window, shape), shape)


#: Loaded on first use, not at the top: SciPy's FFT takes a quarter of a second to load, and
#: only the processes that compare pictures need it (local mode's main process does not). A
#: pool of such processes loads it once, in the forkserver they are forked from.
PRELOAD = ("scipy.fft",)


def _spectra(stack: np.ndarray, window: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    import scipy.fft

    return scipy.fft.rfft2(stack * window, s=shape)


def _shifts(fa: np.ndarray, fb: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """``phase_shifts`` from the pictures' spectra. The peak and its box are read in the
    correlation surface as OpenCV centres it (no shift in the middle, outside it is 0), by
    index arithmetic on the surface as the inverse FFT gives it (no shift at (0, 0))."""
    ph, pw = shape
    n = len(fa)
    cross = fa * np.conj(fb)
    cross /= np.abs(cross) + np.finfo(np.float32).eps
    import scipy.fft

    surface = scipy.fft.irfft2(cross, s=shape)
    qy, qx = np.divmod(surface.reshape(n, -1).argmax(axis=1), pw)
    rows, cols = (qy + ph // 2) % ph, (qx + pw // 2) % pw  # the peak in the centred surface
    rows, cols = rows[:, None] + _BOX, cols[:, None] + _BOX  # (n, 5) each
    inside = ((rows >= 0) & (rows < ph))[:, :, None] & ((cols >= 0) & (cols < pw))[:, None, :]
    box = np.where(inside, surface[np.arange(n)[:, None, None], ((rows - ph // 2) % ph)[:, :, None],
                                   ((cols - pw // 2) % pw)[:, None, :]], 0.0)
    response = box.sum(axis=(1, 2))
    with np.errstate(divide="ignore", invalid="ignore"):
        y = (box.sum(axis=2) * rows).sum(axis=1) / response
        x = (box.sum(axis=1) * cols).sum(axis=1) / response
    return np.stack([pw / 2 - x, ph / 2 - y], axis=1), response


def _block_stats(x: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation of each whole ``size`` x ``size`` block of ``x`` (float32),
    by area-averaging ``x`` and its square (one C call each instead of numpy reductions)."""
    rows, cols = x.shape[0] // size, x.shape[1] // size
    crop = x[: rows * size, : cols * size]
    mean = cv2.resize(crop, (cols, rows), interpolation=cv2.INTER_AREA)
    square = cv2.resize(crop * crop, (cols, rows), interpolation=cv2.INTER_AREA)
    return mean, np.sqrt(np.maximum(square - mean * mean, 0.0))


@dataclass(frozen=True)
class _Patches:
    """The patches of two aligned pictures, each ``size`` square on a (rows, cols) grid: which
    are textured in both (``r``, ``c``: their grid positions), and for those the contrast-
    normalised mismatch and the shift of the second picture's patch against the first's."""

    size: int
    shape: tuple[int, int]
    overlapping: np.ndarray  # (rows, cols) bool: the patch lies inside both pictures
    textured: np.ndarray  # (rows, cols) bool: ... and has texture in both
    sa: np.ndarray  # (rows, cols) grey-level standard deviation in each picture
    sb: np.ndarray
    r: np.ndarray  # np.nonzero(textured): the per-patch arrays below follow this order
    c: np.ndarray
    mismatch: np.ndarray  # 1 - correlation, per textured patch
    shifts: np.ndarray  # (n, 2) x, y
    response: np.ndarray

    @property
    def centres(self) -> np.ndarray:
        return np.stack([self.c, self.r], axis=1).astype(np.float32) * self.size + self.size / 2.0


def _blocks(a: np.ndarray, size: int, grid: tuple[int, int]) -> np.ndarray:
    """(rows, cols, size, size) views of the ``size`` square patches of ``a``."""
    rows, cols = grid
    return a[: rows * size, : cols * size].reshape(rows, size, cols, size).swapaxes(1, 2)


class _Frame:
    """The frame picture's side of the patch test, the same in the first pass and in the
    refined one: its blurred grey levels, their block statistics, and each textured patch
    normalised and its spectrum, made when first asked for."""

    def __init__(self, grey: np.ndarray):
        h, w = grey.shape
        self.size = size = int(min(48, max(16, min(h, w) // 8)))
        self.grid = (h // size, w // size)
        self.dft = (_even_dft_size(size), _even_dft_size(size))
        self.window = cv2.createHanningWindow((size, size), cv2.CV_32F)
        self.blurred = cv2.GaussianBlur(grey.astype(np.float32), (0, 0), 1.0)
        self.mean, self.std = _block_stats(self.blurred, size)
        self._normalised = np.empty((*self.grid, size, size), np.float32)
        self._spectra = np.empty((*self.grid, self.dft[0], self.dft[1] // 2 + 1), np.complex64)
        self._made = np.zeros(self.grid, bool)

    def patches(self, r: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The normalised patches at grid positions (r, c) and their spectra."""
        new = ~self._made[r, c]
        if new.any():
            nr, nc = r[new], c[new]
            normalised = (_blocks(self.blurred, self.size, self.grid)[nr, nc] - self.mean[nr, nc][:, None, None]) \
                / self.std[nr, nc][:, None, None]
            self._normalised[nr, nc] = normalised
            self._spectra[nr, nc] = _spectra(normalised, self.window, self.dft)
            self._made[nr, nc] = True
        return self._normalised[r, c], self._spectra[r, c]


def _patches(frame: _Frame, y: np.ndarray, inside: np.ndarray) -> _Patches:
    size, grid = frame.size, frame.grid
    y = cv2.GaussianBlur(y.astype(np.float32), (0, 0), 1.0)
    mb, sb = _block_stats(y, size)
    overlapping = _blocks(inside, size, grid).all(axis=(2, 3))
    textured = overlapping & (frame.std >= _TEXTURE) & (sb >= _TEXTURE)
    r, c = np.nonzero(textured)
    na, fa = frame.patches(r, c)
    nb = (_blocks(y, size, grid)[r, c] - mb[r, c][:, None, None]) / sb[r, c][:, None, None]
    shifts, response = _shifts(fa, _spectra(nb, frame.window, frame.dft), frame.dft) if len(r) \
        else (np.zeros((0, 2)), np.zeros(0))
    return _Patches(size, y.shape, overlapping, textured, frame.std, sb, r, c, 1.0 - (na * nb).mean(axis=(1, 2)),
                    shifts, response)


def _refined(into: np.ndarray, patches: _Patches) -> np.ndarray | None:
    """``into`` corrected by the similarity transform that takes the confidently measured
    patches back by their shifts (least median of squares: a part that really moved, say a
    subject, is left out of the fit and stays displaced). Keypoints place a transform to a
    pixel or so; the patch test needs a fraction of one, in scale and turn too (a copy turned by
    3 degrees and cropped is off at its corners otherwise). None when it cannot be fitted,
    would move the picture by more than the keypoints' error, or by less than REFINE_MIN_PX:
    then the picture is in place already, and a second pass would measure the same."""
    ok = (patches.response >= PATCH_CONFIDENT) & (np.hypot(*patches.shifts.T) <= REFINE_MAX_PX)
    if ok.sum() < REFINE_MIN_PATCHES:
        return None
    centres = patches.centres[ok]
    back, _ = cv2.estimateAffinePartial2D(centres + patches.shifts[ok].astype(np.float32), centres, method=cv2.LMEDS)
    if back is None or not REFINE_MIN_PX <= np.abs(cv2.transform(centres[None], back)[0] - centres).max() <= REFINE_MAX_PX:
        return None
    return (np.vstack([back, (0, 0, 1)]) @ np.vstack([into, (0, 0, 1)]))[:2]


class _Changes(NamedTuple):
    textured: int  # patches compared
    moved: int  # ... displaced
    placed: int  # ... confidently in place
    changed: np.ndarray  # (k, 2) grid cells of the inner patches holding other content
    mismatch: np.ndarray  # (k,) ... their mismatch (1.0 for a patch textured in one picture only)
    together: bool  # two neighbouring patches moved together: a subject that moved
    threshold: float  # the mismatch above which a patch holds other content


def _patch_changes(patches: _Patches) -> _Changes:
    """Over the textured patches of two aligned pictures: how many there are, how many are
    displaced (moved), how many are confidently in place (placed), which inner ones hold
    other content (pasted in or taken out), and whether two neighbouring patches moved
    together (a subject that moved: another moment).
    Other content is judged against the picture's own faithfulness, so that a heavily
    re-encoded copy is not held to a pristine one's standard. Patches in the outer band are not
    held to the content test: watermarks, logos and caption bars are put there."""
    p = patches
    if len(p.r) == 0:
        return _Changes(0, 0, 0, np.zeros((0, 2), int), np.zeros(0), False, 1.0)
    (h, w), rows, cols = p.shape, *p.overlapping.shape
    top, left = np.arange(rows)[:, None] * p.size, np.arange(cols)[None, :] * p.size
    inner = (top >= INNER_BAND * h) & (top + p.size <= h - INNER_BAND * h) \
        & (left >= INNER_BAND * w) & (left + p.size <= w - INNER_BAND * w)
    # a patch flat in one picture and clearly textured in the other (an object pasted onto sky
    # or a wall) has no correlation to judge it by: its contrast, against the picture's own
    # change of contrast, tells
    contrast = (p.sb / np.maximum(p.sa, 1e-3)) / float(np.median(p.sb[p.textured] / p.sa[p.textured]))
    appeared = p.overlapping & ~p.textured & inner & (np.maximum(p.sa, p.sb) >= 2 * _TEXTURE) \
        & ((contrast > APPEARED_CONTRAST) | (contrast < 1 / APPEARED_CONTRAST))
    other_content = min(1.0 - SAME_CONTENT, max(OTHER_CONTENT_MIN, OTHER_CONTENT_RATIO * float(np.median(p.mismatch))))
    length = np.hypot(p.shifts[:, 0], p.shifts[:, 1])
    confident = p.response >= PATCH_CONFIDENT
    moved = (length > PATCH_SHIFT_PX) & confident
    changed = ~moved & (p.mismatch > other_content) & inner[p.r, p.c]
    subject = {(int(p.r[k]), int(p.c[k])): p.shifts[k] for k in np.flatnonzero(moved & (length >= SUBJECT_SHIFT_PX))}
    together = any(
        math.hypot(*(shift - subject[n])) <= TOGETHER_PX
        for (i, j), shift in subject.items() for n in ((i + 1, j), (i, j + 1)) if n in subject
    )
    placed = int((confident & ~moved & ~changed).sum())
    cells = np.concatenate([np.stack([p.r[changed], p.c[changed]], axis=1), np.argwhere(appeared)])
    mismatch = np.concatenate([p.mismatch[changed], np.ones(int(appeared.sum()))])
    return _Changes(len(p.r), int(moved.sum()), placed, cells, mismatch, together, other_content)


def _tone_and_colour(planes: np.ndarray) -> np.ndarray:
    """The terms a global edit of colour or tone maps a picture's grey levels from: its luma up
    to the third power (a tone curve: gamma, contrast, brightness clipped to white) and its two
    chroma planes (a hue turn, a tint, a grey conversion weigh the colours anew), centred."""
    y, cb, cr = (planes[..., i] / 255.0 for i in range(3))
    return np.stack([y, y * y, y * y * y, cb - 0.5, cr - 0.5], axis=-1)


def _unexplained(cells: np.ndarray, mismatch: np.ndarray, size: int, threshold: float, frame: np.ndarray,
                 moving: np.ndarray, where: np.ndarray) -> np.ndarray:
    """The cells of ``cells`` whose two patches differ by more than one edit of colour or tone
    of the whole picture explains. ``frame`` and ``moving``: the two pictures lined up, as
    (h, w, 3) luma and chroma planes; ``where``: the pixels both show. A hue turn, a tint, a
    grey conversion or a tone curve maps every pixel's colour to a grey level by one function,
    fitted here once over the whole picture (each way round: either may be the edited one);
    content pasted into part of the picture follows no such function. Only a patch that differs
    as an edit of colour can (``mismatch``: its grey levels' mismatch, at most RECOLOURED)."""
    picked = where[::4, ::4]
    found = []
    for source, target in ((frame, moving), (moving, frame)):
        x = _tone_and_colour(source)
        fit = np.linalg.lstsq(np.column_stack([x[::4, ::4][picked], np.ones(int(picked.sum()))]),
                              target[::4, ::4, 0][picked], rcond=None)[0]
        predicted = x @ fit[:-1] + fit[-1]
        found.append((predicted, target[..., 0]))
    left = []
    for (r, c), grey in zip(cells, mismatch):
        if grey > RECOLOURED:
            left.append((r, c))
            continue
        window = (slice(r * size, (r + 1) * size), slice(c * size, (c + 1) * size))
        best = 1.0
        for predicted, target in found:
            a, b = predicted[window].ravel(), target[window].ravel()
            if a.std() > 1e-6 and b.std() > 1e-6:
                best = min(best, 1.0 - float(np.corrcoef(a, b)[0, 1]))
        if best > threshold:
            left.append((r, c))
    return np.array(left, int).reshape(-1, 2)


def _lines_up(inliers: int, matches: int) -> bool:
    return inliers >= MIN_INLIERS and inliers >= MIN_INLIER_RATIO * matches


def _prefilter(grey: np.ndarray, shrink: float) -> np.ndarray:
    """Blur a picture about to be shrunk by ``shrink`` so that it does not alias."""
    if shrink <= 1.2:
        return grey
    return cv2.GaussianBlur(grey, (0, 0), 0.5 * shrink)


def agreement(a: Features, b: Features, turns: bool = True) -> Agreement:
    """Compare picture ``b`` (a candidate copy) with picture ``a``; ``turns``: turned and
    mirrored copies count. A mirrored ``b`` is tried only when the plain comparison is not
    convincing, mirrored copies being the rarer (and a symmetric picture's mirrored copy can
    line up unmirrored, then fail the patch test). When the keypoints could not line ``b`` up
    (or not well), it is looked for inside ``a`` as a crop by its looks (``_inside``)."""
    plain = _agreement(a, b, False)
    if not turns and plain.orientation != 0 and not plain.reason:
        return dataclasses.replace(plain, reason=TURNS_OFF)
    if plain.convincing:
        return plain
    flipped = _agreement(a, b, True) if turns else plain
    if plain.reason == NO_DETAILS or (not flipped.reason and (plain.reason or flipped.score > plain.score)):
        plain = flipped
    if not plain.reason or plain.reason == NO_DETAILS or plain.reason.startswith(UNMATCHED):
        inside = _inside(a, b)  # keypoints could not line it up, or not well
        if inside is not None and not inside.reason and (plain.reason or inside.score > plain.score):
            return inside
    return plain


def both_ways(a: Features, b: Features, turns: bool = True) -> BothWays:
    """A whole copy is settled by one look without keypoints (``_whole_copy``). Otherwise
    the comparison is not symmetric (keypoints are matched from one side, the transform is
    fitted to those matches), so a pair the first look does not settle is looked at the other
    way too. A refusal settles it; so does a convincing look, which no second fit can better
    (on the kit's libraries, a second look after one only ever refused true copies, by a worse
    fit, and was half of all looks)."""
    whole = _whole_copy(a, b, turns)
    if whole is not None:
        return whole, None
    forth = agreement(a, b, turns)
    settled = forth.refuses or forth.convincing
    return forth, (None if settled else agreement(b, a, turns))


def _pose(m: np.ndarray, mirrored: bool) -> dict:
    """The turn (orientation), scale and tilt of a similarity transform taking b onto a."""
    scale = math.hypot(m[0, 0], m[1, 0])
    angle = math.degrees(math.atan2(m[1, 0], m[0, 0]))
    quarter = round(angle / 90.0) % 4
    tilt = abs((angle - 90.0 * round(angle / 90.0) + 180.0) % 360.0 - 180.0)
    return dict(orientation=_ORIENTATION_INDEX[(quarter, mirrored)], scale=round(scale, 4), tilt=round(tilt, 2))


def _seen(b_onto_a: np.ndarray, b_shape: tuple[int, int], a_shape: tuple[int, int], mirrored: bool) -> tuple[float, ...]:
    """``Agreement.transform`` of a transform taking (mirrored, if so) b's pixels onto a's."""
    (ha, wa), (hb, wb) = a_shape, b_shape
    from_b = np.float64([[wb, 0, -0.5], [0, hb, -0.5], [0, 0, 1]])  # 0..1 across to pixel centres
    if mirrored:
        from_b = np.float64([[-1, 0, wb - 1], [0, 1, 0], [0, 0, 1]]) @ from_b
    to_a = np.float64([[1 / wa, 0, 0.5 / wa], [0, 1 / ha, 0.5 / ha], [0, 0, 1]])
    m = to_a @ np.vstack([b_onto_a, (0, 0, 1)]) @ from_b
    return tuple(round(float(v), 5) for v in m[:2].ravel())


def _inverse(transform: tuple[float, ...]) -> tuple[float, ...]:
    m = np.linalg.inv(np.vstack([np.float64(transform).reshape(2, 3), (0, 0, 1)]))
    return tuple(round(float(v), 5) for v in m[:2].ravel())


def _thumbnail(grey: np.ndarray) -> np.ndarray:
    x = cv2.resize(grey, (THUMBNAIL, THUMBNAIL), interpolation=cv2.INTER_AREA).astype(np.float32)
    x -= x.mean()
    return x / max(float(np.linalg.norm(x)), 1e-6)


def _quarter_turn(k: int, scale: float, moving: tuple[int, int], onto: tuple[int, int],
                  at: tuple[float, float] = (0.0, 0.0), to: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """The similarity transform that turns a picture of shape ``moving`` by k quarter turns
    (as the keypoints' fit measures its angle) and scales it, centre onto centre, onto a
    picture of shape ``onto``; the two lie at (x, y) ``at`` and ``to`` of larger ones."""
    c, s = (round(math.cos(k * math.pi / 2)), round(math.sin(k * math.pi / 2)))
    rotation = scale * np.float64([[c, -s], [s, c]])
    centre_b = np.float64([at[0] + (moving[1] - 1) / 2, at[1] + (moving[0] - 1) / 2])
    centre_a = np.float64([to[0] + (onto[1] - 1) / 2, to[1] + (onto[0] - 1) / 2])
    return np.hstack([rotation, (centre_a - rotation @ centre_b)[:, None]])


_TURNS = [(k, mirrored) for mirrored in (False, True) for k in range(4)]


def _photo_of(grey: np.ndarray, bands: bands_.Bands) -> np.ndarray:
    top, bottom, left, right = bands
    return grey[top:grey.shape[0] - bottom, left:grey.shape[1] - right]


def _whole_copy(a: Features, b: Features, turns: bool) -> Agreement | None:
    """b lined up as a whole copy of a, resized (and, with ``turns``, turned or mirrored) as
    its thumbnail fits a's best, by the sizes alone: no keypoints. Only when the shapes agree
    under that turn, and only a convincing look counts, with nearly every patch measured in
    place; anything else is looked at with keypoints (None). A picture with bands added
    around its photo (a border, padding, a caption) is lined up by its photo's size, so a soft
    photo framed or padded to a square needs no keypoints either."""
    found = _whole_photo(a, b, turns, (0, 0, 0, 0), (0, 0, 0, 0))
    if found is None and (any(a.bands) or any(b.bands)):
        found = _whole_photo(a, b, turns, a.bands, b.bands)
    return found


def _whole_photo(a: Features, b: Features, turns: bool, bands_a: bands_.Bands, bands_b: bands_.Bands) -> Agreement | None:
    square = (THUMBNAIL, THUMBNAIL)
    boxed = any(bands_a) or any(bands_b)
    photo_a = _photo_of(a.grey, bands_a)
    thumb_a = _thumbnail(photo_a) if boxed else a.thumbnail
    thumb_b = _thumbnail(_photo_of(b.grey, bands_b)) if boxed else b.thumbnail
    likeness = []
    for k, mirrored in _TURNS if turns else _TURNS[:1]:
        thumb = thumb_b[:, ::-1] if mirrored else thumb_b
        turned = cv2.warpAffine(np.ascontiguousarray(thumb), _quarter_turn(k, 1.0, square, square), square,
                                flags=cv2.INTER_NEAREST)
        likeness.append(float((thumb_a * turned).sum()))
    best = int(np.argmax(likeness))
    k, mirrored = _TURNS[best]
    if mirrored:
        bands_b = bands_.mirrored(bands_b)
    photo_b = _photo_of(b.grey, bands_b)
    (ha, wa), (hb, wb) = photo_a.shape, photo_b.shape
    if k % 2:
        hb, wb = wb, hb
    if likeness[best] < WHOLE_COPY_LIKENESS or abs(wa * hb - ha * wb) > SAME_SHAPE * wa * hb:
        return None
    m = _quarter_turn(k, math.sqrt(wa * ha / (wb * hb)), photo_b.shape, photo_a.shape,
                      (bands_b[2], bands_b[0]), (bands_a[2], bands_a[0]))
    found = _judged(a, b, m, mirrored, _pose(m, mirrored))
    return found if found.convincing and found.placed >= CONVINCING * found.patches else None


#: A crop of a soft picture (a sky, a wall, a blurred background) may hold too few keypoints to
#: line up by; it is then looked for in the other picture by its looks, at every scale at which
#: it keeps at least half of each side (MIN_CROP), in pictures SEARCH_SIDE px long, by steps of
#: SEARCH_STEP in scale, then SEARCH_FINE around the best; the normalised correlation of the
#: best place must be at least SEARCH_LIKENESS (a crop of the picture: 0.9 and more), and the
#: patch test decides as for any alignment.
MIN_CROP = 0.5
SEARCH_SIDE = 160
SEARCH_STEP = 1.04
SEARCH_FINE = 1.01
SEARCH_LIKENESS = 0.8


def _inside(a: Features, b: Features) -> Agreement | None:
    """b lined up as a crop of a (upright, unmirrored) by template matching, or None."""
    (ha, wa), (hb, wb) = a.grey.shape, b.grey.shape
    most = min(wa / wb, ha / hb)  # b's scale in a's frame when it spans a in one direction
    least = MIN_CROP * max(wa / wb, ha / hb)
    if least > most:
        return None

    def search(side: int, scales: np.ndarray) -> tuple[float, float, tuple[int, int]]:
        q = side / max(ha, wa)
        frame = cv2.resize(a.grey, (max(1, round(wa * q)), max(1, round(ha * q))), interpolation=cv2.INTER_AREA)
        best = (-1.0, 1.0, (0, 0))
        for k in scales:
            size = (round(wb * k * q), round(hb * k * q))
            if min(size) < 8 or size[0] > frame.shape[1] or size[1] > frame.shape[0]:
                continue
            found = cv2.matchTemplate(frame, cv2.resize(b.grey, size, interpolation=cv2.INTER_AREA), cv2.TM_CCOEFF_NORMED)
            _, likeness, _, at = cv2.minMaxLoc(found)
            if likeness > best[0]:
                best = (likeness, float(k), (at[0] / q, at[1] / q))
        return best

    steps = int(math.log(most / least) / math.log(SEARCH_STEP)) + 1
    _, k, _ = search(SEARCH_SIDE, least * SEARCH_STEP ** np.arange(steps + 1))
    likeness, k, (x, y) = search(2 * SEARCH_SIDE, k * SEARCH_FINE ** np.arange(-4, 5))
    if likeness < SEARCH_LIKENESS:
        return None
    m = np.float64([[k, 0, x], [0, k, y]])
    return _judged(a, b, m, False, _pose(m, False))


def _agreement(a: Features, b: Features, mirrored: bool) -> Agreement:
    t = _transform(a, b, mirrored)
    if t is None:
        return Agreement(reason=NO_DETAILS)
    m, inliers, matches = t
    base = dict(inliers=inliers, matches=matches, **_pose(m, mirrored))
    if not _lines_up(inliers, matches):
        return Agreement(**base, reason=f"{UNMATCHED} ({inliers} of {matches} matches agree)")
    return _judged(a, b, m, mirrored, base)


class _Detail:
    """``bands.fine_detail`` of the two pictures of one look, each made when first asked for
    (the bands are checked three times and grown twice in a look)."""

    def __init__(self) -> None:
        self._made: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def __call__(self, grey: np.ndarray) -> np.ndarray:
        if id(grey) not in self._made:  # the picture is kept with it, so its id stays its own
            self._made[id(grey)] = (grey, bands_.fine_detail(grey))
        return self._made[id(grey)][1]


def _photo(grey: np.ndarray, bands: bands_.Bands, other: np.ndarray, other_photo: np.ndarray,
           onto: np.ndarray, detail_of: _Detail) -> tuple[np.ndarray, bands_.Bands]:
    """The mask of the photo in ``grey`` with its added bands left out, and those bands. A band
    lying on the other picture's photo (``other`` brought onto ``grey`` by ``onto``) is put back
    when the other is as plain there, and as light: a fog or a wall, not a bar added to a copy."""
    if not any(bands):
        return bands_.mask(grey.shape, bands), bands
    h, w = grey.shape
    brought = cv2.warpAffine(other, onto, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    seen = bands_.fine_detail(brought)
    there = cv2.warpAffine(other_photo.astype(np.uint8), onto, (w, h), flags=cv2.INTER_NEAREST)
    there = cv2.erode(there, np.ones((9, 9), np.uint8)) > 0  # the other photo's edge is no detail of it
    mine = detail_of(grey)
    kept = list(bands)
    for side, lines in enumerate(bands):
        band = ~bands_.mask((h, w), tuple(lines if k == side else 0 for k in range(4))) & there  # type: ignore[arg-type]
        if band.sum() < 4 * max(h, w):  # hardly on the other's photo: a band added beyond it
            continue
        plain = float(np.median(seen[band])) <= PLAIN_AS_BAND * float(np.median(mine[band])) + 1.0
        if plain and abs(float(np.median(grey[band])) - float(np.median(brought[band]))) <= BAND_LEVEL:
            kept[side] = 0
    return bands_.mask((h, w), tuple(kept)), tuple(kept)  # type: ignore[arg-type, return-value]


def _apart(shown_a: float, banded_a: bool, shown_b: float, banded_b: bool) -> str:
    """Why two pictures are not one photo by what each shows of the other's, or ""."""
    if min(shown_a, shown_b) < MIN_SHARE:
        return f"only {min(shown_a, shown_b):.0%} of one photo shows in the other"
    if shown_a < (CONTAINED_BANDED if banded_a else CONTAINED) and shown_b < (CONTAINED_BANDED if banded_b else CONTAINED):
        return (f"each shows part of the scene the other does not ({1 - shown_a:.0%} and {1 - shown_b:.0%}): "
                "another view of it")
    return ""


def _judged(a: Features, b: Features, m: np.ndarray, mirrored: bool, base: dict) -> Agreement:
    """The patch test of b brought onto a by ``m``, whose pose ``base`` describes."""
    scale, tilt = base["scale"], base["tilt"]
    if tilt > MAX_TILT_DEGREES:
        return Agreement(**base, reason=f"turned by {tilt:.0f} degrees off a quarter turn")
    if not 1 / MAX_SCALE <= scale <= MAX_SCALE:  # a degenerate fit of a few stray matches
        return Agreement(**base, reason=f"the details line up only at {scale:.3g} times the size")
    bg = b.mirrored if mirrored else b.grey
    if scale > 1:  # b is the smaller picture: bring a into b's frame
        frame, other, into = bg, a.grey, cv2.invertAffineTransform(m)
    else:
        frame, other, into = a.grey, bg, m
    moving = _prefilter(other, max(scale, 1.0 / max(scale, 1e-6)))
    h, w = frame.shape
    ones = np.full(moving.shape, 255, np.uint8)

    def aligned(into: np.ndarray) -> tuple[np.ndarray, np.ndarray]:  # the moving picture, where it lies
        warped = cv2.warpAffine(moving, into, (w, h), flags=cv2.INTER_LINEAR)
        inside = cv2.warpAffine(ones, into, (w, h), flags=cv2.INTER_NEAREST)
        return warped, cv2.erode(inside & photos.view(np.uint8) * 255, np.ones((5, 5), np.uint8)) > 0

    def seen(into: np.ndarray) -> tuple[float, ...]:  # into takes the moving picture onto the frame
        return _seen(into if scale <= 1 else cv2.invertAffineTransform(into), bg.shape, a.grey.shape, mirrored)

    base["transform"] = seen(into)
    back = cv2.invertAffineTransform(into)
    frame_bands = bands_.mirrored(b.bands) if mirrored and scale > 1 else (b.bands if scale > 1 else a.bands)
    other_bands = a.bands if scale > 1 else (bands_.mirrored(b.bands) if mirrored else b.bands)
    detail_of = _Detail()
    frame_photo, frame_bands = _photo(frame, frame_bands, other, bands_.mask(other.shape, other_bands), into, detail_of)
    other_photo, other_bands = _photo(other, other_bands, frame, frame_photo, back, detail_of)
    frame_photo, frame_bands = _photo(frame, frame_bands, other, other_photo, into, detail_of)
    # what each picture shows beyond the other's whole picture: bands whose seam does not show
    # alone grow to it, and those it is all bands of are what a copy added
    beyond_frame = bands_.beyond(cv2.warpAffine(ones, into, (w, h), flags=cv2.INTER_NEAREST) > 0)
    beyond_other = bands_.beyond(cv2.warpAffine(np.full(frame.shape, 255, np.uint8), back, other.shape[::-1],
                                                flags=cv2.INTER_NEAREST) > 0)
    frame_bands = bands_.grown(frame, frame_bands, beyond_frame, detail_of)
    other_bands = bands_.grown(other, other_bands, beyond_other, detail_of)
    frame_photo, other_photo = bands_.mask(frame.shape, frame_bands) & frame_photo, bands_.mask(other.shape, other_bands) & other_photo
    in_frame = cv2.warpAffine(other_photo.astype(np.uint8), into, (w, h), flags=cv2.INTER_NEAREST) > 0
    in_other = cv2.warpAffine(frame_photo.astype(np.uint8), back, other.shape[::-1], flags=cv2.INTER_NEAREST) > 0
    shown = ((float(in_frame[frame_photo].mean()), frame_bands, bands_.added(frame_bands, beyond_frame)),
             (float(in_other[other_photo].mean()), other_bands, bands_.added(other_bands, beyond_other)))
    (shown_a, banded_a, bands_a), (shown_b, banded_b, bands_b) = shown if scale <= 1 else shown[::-1]
    if mirrored:
        bands_b = bands_.mirrored(bands_b)
    base.update(coverage=round(max(shown_a, shown_b), 3), shown_a=round(shown_a, 3), shown_b=round(shown_b, 3),
                bands_a=bands_a, bands_b=bands_b)
    refusal = _apart(shown_a, any(banded_a), shown_b, any(banded_b))
    if refusal:
        return Agreement(**base, reason=refusal)
    photos = frame_photo & in_frame
    warped, inside = aligned(into)
    frame_side = _Frame(frame)
    patches = _patches(frame_side, warped, inside)
    refined = _refined(into, patches)
    if refined is not None:
        into = refined
        warped, inside = aligned(into)
        patches = _patches(frame_side, warped, inside)
        base["transform"] = seen(into)
    found = _patch_changes(patches)
    base.update(patches=found.textured, placed=found.placed)
    if found.textured < MIN_PATCHES:
        return Agreement(**base, reason="too little structure to compare")
    score = round(1.0 - found.moved / found.textured, 4)
    if found.together:
        return Agreement(**base, score=score, reason="part of the picture moved against the rest (another moment)")
    changed = found.changed
    if len(changed) >= MAX_CHANGED_PATCHES:
        pictures = (b, a) if scale > 1 else (a, b)
        colours = [f.colour() for f in pictures]
        if all(x is not None for x in colours):
            frame_colour, other_colour = colours
            if mirrored:  # b's picture is compared mirrored
                frame_colour, other_colour = (frame_colour[:, ::-1], other_colour) if scale > 1 \
                    else (frame_colour, other_colour[:, ::-1])
            shrink = max(scale, 1.0 / max(scale, 1e-6))
            moving_colour = np.stack([cv2.warpAffine(_prefilter(np.ascontiguousarray(other_colour[:, :, i]), shrink), into,
                                                     (w, h), flags=cv2.INTER_LINEAR) for i in range(3)], axis=2)
            blur = [cv2.GaussianBlur(x.astype(np.float32), (0, 0), 1.0) for x in (frame_colour, moving_colour)]
            changed = _unexplained(changed, found.mismatch, frame_side.size, found.threshold, *blur, inside)
    if len(changed) >= MAX_CHANGED_PATCHES:
        return Agreement(**base, reason=f"part of the picture holds other content ({len(changed)} patches)")
    return Agreement(score=score, **base)
