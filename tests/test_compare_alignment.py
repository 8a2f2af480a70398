"""The alignment a comparison hands to people (``Agreement.transform``, the review page's compare
view): where each point of the copy lies on the kept picture, for a turned, cropped, scaled and
mirrored copy, whichever way the pair was looked at."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageOps

from shared.image.compare import MAX_SIDE, Features, both_ways

from .conftest import make_photo

CORNERS = np.float64([[0, 0], [1, 0], [0, 1], [1, 1]])  # of the copy, 0..1 across


def _features(img: Image.Image) -> Features:
    img = img.convert("L")
    img.thumbnail((MAX_SIDE, MAX_SIDE))
    return Features(np.asarray(img))


def _onto(transform, points: np.ndarray) -> np.ndarray:
    m = np.float64(transform).reshape(2, 3)
    return points @ m[:, :2].T + m[:, 2]


# (what is done to the 960x720 original, where the copy's corners lie on it: top left, top
# right, bottom left, bottom right, each 0..1 across the original)
CASES = {
    "resized": (lambda im: im.resize((480, 360)), [[0, 0], [1, 0], [0, 1], [1, 1]]),
    "cropped": (lambda im: im.crop((96, 72, 864, 648)), [[0.1, 0.1], [0.9, 0.1], [0.1, 0.9], [0.9, 0.9]]),
    "turned": (lambda im: im.transpose(Image.Transpose.ROTATE_90), [[1, 0], [1, 1], [0, 0], [0, 1]]),
    "cropped and turned": (lambda im: im.crop((192, 0, 960, 576)).transpose(Image.Transpose.ROTATE_270).resize((300, 400)),
                           [[0.2, 0.8], [0.2, 0], [1, 0.8], [1, 0]]),
    "mirrored": (ImageOps.mirror, [[1, 0], [0, 0], [1, 1], [0, 1]]),
}


@pytest.mark.parametrize("case", CASES)
def test_the_transform_puts_the_copys_corners_where_they_lie_on_the_original(case):
    made, corners = CASES[case]
    original = make_photo(101, (960, 720))
    forth, back = both_ways(_features(original), _features(made(original)))
    assert not forth.reason and forth.transform is not None, forth
    assert np.abs(_onto(forth.transform, CORNERS) - np.float64(corners)).max() < 0.02, (case, forth.transform)
    # seen from the copy, the same alignment the other way round
    inverse = forth.turned_round().transform
    assert np.abs(_onto(inverse, np.float64(corners)) - CORNERS).max() < 0.02


def test_no_alignment_no_transform():
    forth, _ = both_ways(_features(Image.new("RGB", (300, 200), "grey")), _features(make_photo(102)))
    assert forth.reason and forth.transform is None
