"""Bands added around a photo: borders, frames, letterbox bars, square padding (a uniform colour
or a blurred fill) and caption bars. Pure computation on a grey picture.

A copy made by adding them shows the whole photo plus area that was never part of it; the
comparison leaves that area out (a caption is not "other content") and provenance reads it as
the sign of a copy ("padded to a square"). A band is found by its seam: the photo begins at a
straight line running the whole width (or height) of the picture, where a plain colour or a
blurred fill stops. A plain part of the photo itself (a fog, a wall) has no such line, or not
one matched on the opposite side, and the comparison checks every band against the other
picture: a band that shows what the other shows there is put back (``shared.image.compare``).
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np

Bands = tuple[int, int, int, int]  # lines added at the top, bottom, left and right
NONE: Bands = (0, 0, 0, 0)

#: A bar's colour: grey levels within this of the colour of its outermost two lines (a JPEG's
#: noise on a plain area stays within 2-3 levels at quality 40 and up)
BAR_TOLERANCE = 6
#: Lines whose share of pixels in the bar's colour is at least this are the bar's own: a
#: caption's one line of text (font at about half the bar's height) covers under half a line
CLEAN = 0.85
#: ... and the photo, in the SEAM_LINES lines just past the seam (past a line of resampling or
#: JPEG blur), has at most this share in that colour: a caption's text lines have more
PHOTO = 0.3
SEAM_LINES = 6
BAR_MEAN = 0.6  # the bar as a whole, text included, is mostly its colour
MAX_BAND = 0.45  # of a side: a copy pads a photo to a square or 9:16, it does not hide it
#: A blurred fill (Instagram's square padding) has almost no fine detail; where it meets the
#: photo the fine detail jumps (a sharp edge against a blurred one, often a dimmed one): the
#: seam's line has this many times the fill's detail, and at least this share of the photo's.
#: Fills are added on two opposite sides, the photo centred between them.
SEAM_OVER_FILL = 6.0
SEAM_OVER_PHOTO = 0.4
FILL_UNDER_PHOTO = 0.8
CENTRED_PX = 3  # the two fills differ by at most this (plus 1% of the side): the photo is centred
#: Lines by which an alignment may misplace the edge of one picture on another (the kit's copies
#: lined up: within a line or two at the compared size)
EDGE_PX = 2


def _lines(x: np.ndarray, side: int) -> np.ndarray:
    """``x`` seen from one side: its lines from the top, bottom, left or right edge inwards."""
    return (x, x[::-1], x.T, x.T[::-1])[side]


def _bar(grey: np.ndarray, fine: np.ndarray, side: int) -> int:
    """Lines of a plain bar along one side (a border, a letterbox bar, a caption), or 0;
    ``fine``: that side's fine-detail profile (``_profiles``)."""
    side_lines = _lines(grey, side)
    n = side_lines.shape[0]
    lines = side_lines[:int(MAX_BAND * n) + 2 + SEAM_LINES].astype(np.int16)  # all the seam test reads
    colour = int(np.median(lines[:2]))
    if (np.abs(lines[0] - colour) <= BAR_TOLERANCE).mean() < CLEAN:  # most pictures: no bar (one line read)
        return 0
    share = (np.abs(lines - colour) <= BAR_TOLERANCE).mean(axis=1)
    seams = []
    for k in range(2, int(MAX_BAND * n)):
        if share[k] >= CLEAN or share[max(0, k - 3):k].min() < CLEAN or share[:k].mean() < BAR_MEAN:
            continue
        past = slice(k + 2, k + 2 + SEAM_LINES)
        # the photo begins: other colours, or (a photo holding the bar's colour) detail the bar has not
        if share[past].mean() <= PHOTO or fine[past].mean() >= max(SEAM_OVER_FILL * float(np.median(fine[:k])), 1.0):
            seams.append(k)
    # a caption's line of text looks like the photo beginning, but the bar's colour comes back
    # after it, and the bar then ends at another such line: the last of a run of seams, each
    # within a text line's height (3 times the margin above it) of the one before
    found = seams[:1]
    for k in seams[1:]:
        if k - found[-1] > 8 + 4 * found[0]:
            break
        found.append(k)
    return found[-1] if found else 0


def _fill_ends(profile: np.ndarray, k: int, seam: float, found: bool = False) -> bool:
    """Does a blurred fill end at line ``k`` of a side's fine-detail ``profile``, its seam there
    showing ``seam``? ``found``: the line is known (where another picture's edge lies), so the
    seam need not stand out against the photo's own detail (a soft sky next to the fill)."""
    fill = profile[:k - 2]
    photo = float(np.median(profile[k + 3:k + 3 + max(8, len(profile) // 4)]))
    # the fill's median last: the costliest test, and on a photo's own lines the others fail
    return (found or seam >= SEAM_OVER_PHOTO * photo) and float(fill.mean()) <= FILL_UNDER_PHOTO * photo \
        and seam >= SEAM_OVER_FILL * float(np.median(fill))


def _fill(profile: np.ndarray) -> int:
    """Lines of a blurred fill along the side of a fine-detail ``profile``, ending at a seam, or 0."""
    lines = np.arange(4, int(MAX_BAND * len(profile)))
    if len(lines) == 0:
        return 0
    # the lines whose detail is the most of the 3 on each side (fewer past the end)
    around = np.lib.stride_tricks.sliding_window_view(np.r_[profile, np.full(3, -np.inf, profile.dtype)], 7)
    peaks = lines[profile[lines] >= around[lines - 3].max(axis=1)]
    # _fill_ends's tests for every peak at once, the fill's median by a count (at least half of
    # the fill at most the seam's share); a peak passing them by a hair under this batch's
    # rounding is judged again by _fill_ends itself, and only those (few: a photo's own peaks
    # fail here)
    window = max(8, len(profile) // 4)
    if len(peaks) and peaks[-1] + 3 + window <= len(profile):
        photo = np.median(np.lib.stride_tricks.sliding_window_view(profile, window)[peaks + 3], axis=1)
        fill = peaks - 2  # lines of the fill ending at each peak
        fill_mean = np.cumsum(profile, dtype=np.float64)[fill - 1] / fill
        slack = 1 + 1e-4
        seam = profile[peaks] * slack
        quiet = np.count_nonzero((profile[None, :] <= seam[:, None] / SEAM_OVER_FILL)
                                 & (np.arange(len(profile))[None, :] < fill[:, None]), axis=1)
        peaks = peaks[(seam >= SEAM_OVER_PHOTO * photo) & (fill_mean <= FILL_UNDER_PHOTO * photo * slack)
                      & (quiet >= (fill + 1) // 2)]
    return next((k for k in peaks.tolist() if _fill_ends(profile, k, float(profile[k]))), 0)


def fine_detail(grey: np.ndarray) -> np.ndarray:
    """How far each pixel stands out from its neighbourhood (grey levels): none on a plain bar
    or a blurred fill, some on a photo."""
    g = grey.astype(np.float32)
    return np.abs(g - cv2.GaussianBlur(g, (0, 0), 3.0))


def _profiles(detail: np.ndarray) -> tuple[np.ndarray, ...]:
    """Each side's fine-detail profile: the mean of each line, from that edge inwards."""
    rows, cols = detail.mean(axis=1), detail.T.mean(axis=1)
    return rows, rows[::-1], cols, cols[::-1]


def find(grey: np.ndarray) -> Bands:
    """The bands added around the photo in ``grey`` (uint8), in lines from each edge."""
    profiles = _profiles(fine_detail(grey))
    found = [_bar(grey, profiles[side], side) for side in range(4)]
    for first, second in ((0, 1), (2, 3)):
        n = grey.shape[0] if first == 0 else grey.shape[1]
        for one, two in ((first, second), (second, first)):  # padding is centred: a bar's twin
            if found[one] and not found[two] and _plain_as(grey, two, found[one], grey_of(grey, one, found[one])):
                found[two] = found[one]
        fills = [_fill(profiles[first]), _fill(profiles[second])]
        for i, (one, two) in enumerate(((first, second), (second, first))):  # a fill's seam may not show
            if fills[i] and not fills[1 - i] and _smooth(profiles[two], fills[i]):
                fills[1 - i] = fills[i]
        if all(fills) and abs(fills[0] - fills[1]) <= CENTRED_PX + 0.01 * n:
            found[first], found[second] = max(found[first], fills[0]), max(found[second], fills[1])
    return tuple(found)  # type: ignore[return-value]


def grey_of(grey: np.ndarray, side: int, lines: int) -> int:
    return int(np.median(_lines(grey, side)[:lines]))


def _plain_as(grey: np.ndarray, side: int, lines: int, colour: int) -> bool:
    """Are the first ``lines`` lines of ``side`` a bar of ``colour`` (where the photo meets it
    in the same colour, its seam does not show)?"""
    band = _lines(grey, side)[:lines].astype(np.int16)
    return bool((np.abs(band - colour) <= BAR_TOLERANCE).mean(axis=1).min() >= CLEAN)


def _smooth(profile: np.ndarray, lines: int) -> bool:
    """Have the first ``lines`` lines of a side (its fine-detail ``profile``) as little detail as a fill?"""
    return float(profile[:lines].mean()) <= FILL_UNDER_PHOTO * float(np.median(profile[lines:lines + max(8, len(profile) // 4)])) \
        and float(profile[:lines].max()) * SEAM_OVER_FILL <= float(profile[lines:lines + max(8, len(profile) // 4)].max())


def beyond(covered: np.ndarray) -> Bands:
    """Per side, the lines of a picture that lie wholly beyond another picture lined up with it
    (``covered``: True where the other lies): what it shows that the other does not, photo or
    bands."""
    rows = 2 * np.count_nonzero(covered, axis=1) >= covered.shape[1]  # at least half of the line
    cols = 2 * np.count_nonzero(covered, axis=0) >= covered.shape[0]
    return tuple(int(np.argmax(line)) if line.any() else 0  # type: ignore[return-value]
                 for line in (rows, rows[::-1], cols, cols[::-1]))


def grown(grey: np.ndarray, bands: Bands, lines: Bands, detail_of: Callable[[np.ndarray], np.ndarray]) -> Bands:
    """``bands`` grown, side by side, to the ``lines`` lying beyond another picture (``beyond``)
    where those lines are area without a photo, though no seam in ``grey`` alone shows where it
    ends: a caption bar on a photo of the bar's colour at that edge (a bar was found there, and
    past its text its colour runs on to the other picture's edge), or a blurred fill whose seam
    lies on that very line (a fill is found alone by its two seams; where the photo next to one
    is as plain as the fill, that seam does not show). A photo cropped there has no such
    line: it runs on across it. ``detail_of`` gives ``grey``'s ``fine_detail`` (a look makes
    each picture's once); it is asked only where a side needs it, and most need none."""
    out = list(bands)
    for side, (band, k) in enumerate(zip(bands, lines)):
        n = grey.shape[0] if side < 2 else grey.shape[1]
        if k <= band + EDGE_PX or k > MAX_BAND * n or k < 8:
            continue
        profile = _lines(detail_of(grey), side).mean(axis=1)
        if band and _bar_to(grey, side, k):
            out[side] = k
        elif (seam := float(profile[k - 3:k + 4].max())) >= 1.0 and _fill_ends(profile, k, seam, found=True):
            out[side] = k  # a seam of at least a grey level of detail, as a bar's (a clipped sky has none)
    return tuple(out)  # type: ignore[return-value]


def _bar_to(grey: np.ndarray, side: int, k: int) -> bool:
    """Is a bar, text included, all there is in the first ``k`` lines of ``side``, with only its
    colour in the lines next to line ``k`` (short of the EDGE_PX an alignment may be off)?"""
    lines = _lines(grey, side)[:k].astype(np.int16)
    share = (np.abs(lines - int(np.median(lines[:2]))) <= BAR_TOLERANCE).mean(axis=1)
    return bool(share[0] >= CLEAN and share.mean() >= BAR_MEAN and share[k - EDGE_PX - 4:k - EDGE_PX].min() >= CLEAN)


def added(bands: Bands, lines: Bands) -> Bands:
    """Of ``bands``, those that are all a picture shows beyond another (``beyond``): what a copy
    added around the other's whole picture (a band the other shows too is no addition)."""
    return tuple(k if k > EDGE_PX and band >= k - EDGE_PX else 0  # type: ignore[return-value]
                 for band, k in zip(bands, lines))


def mirrored(bands: Bands) -> Bands:
    top, bottom, left, right = bands
    return top, bottom, right, left


def mask(shape: tuple[int, int], bands: Bands) -> np.ndarray:
    """True on the photo, False on the bands."""
    top, bottom, left, right = bands
    out = np.zeros(shape, bool)
    out[top:shape[0] - bottom, left:shape[1] - right] = True
    return out
