"""Real-library fixtures: camera RAW files (DNG, written with pidng from a generated photo and
read back by LibRaw), with or without the embedded full-size preview cameras write."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

# sRGB's XYZ-to-linear-RGB matrix: the "camera" of these DNGs sees linear sRGB, so LibRaw
# develops them back to the photo they were made from (as rationals of 1/10000)
_XYZ_TO_SRGB = [32406, -15372, -4986, -9689, 18758, 415, 557, -2040, 10570]


def write_dng(path: Path, photo: Image.Image, *, preview: bool = False, orientation: int = 1) -> Path:
    """A DNG of ``photo``: its linear light in an RGGB mosaic (12 bits), with the whole photo
    as an embedded JPEG preview if asked (as cameras do)."""
    from pidng.core import RAW2DNG, DNGTags, Tag
    from pidng.defs import CalibrationIlluminant, CFAPattern, DNGVersion, PhotometricInterpretation

    rgb = np.asarray(photo.convert("RGB"))
    h, w = rgb.shape[0] // 2 * 2, rgb.shape[1] // 2 * 2
    linear = (rgb[:h, :w].astype(np.float64) / 255.0) ** 2.2
    mosaic = np.empty((h, w))
    mosaic[0::2, 0::2] = linear[0::2, 0::2, 0]
    mosaic[0::2, 1::2] = linear[0::2, 1::2, 1]
    mosaic[1::2, 0::2] = linear[1::2, 0::2, 1]
    mosaic[1::2, 1::2] = linear[1::2, 1::2, 2]
    tags = DNGTags()
    for tag, value in [
        (Tag.ImageWidth, w), (Tag.ImageLength, h), (Tag.TileWidth, w), (Tag.TileLength, h),
        (Tag.Orientation, orientation), (Tag.PhotometricInterpretation, PhotometricInterpretation.Color_Filter_Array),
        (Tag.SamplesPerPixel, 1), (Tag.BitsPerSample, 16), (Tag.CFARepeatPatternDim, [2, 2]),
        (Tag.CFAPattern, CFAPattern.RGGB), (Tag.BlackLevel, 64), (Tag.WhiteLevel, 4095 + 64),
        (Tag.ColorMatrix1, [[v, 10000] for v in _XYZ_TO_SRGB]), (Tag.CalibrationIlluminant1, CalibrationIlluminant.D65),
        (Tag.AsShotNeutral, [[1, 1], [1, 1], [1, 1]]), (Tag.BaselineExposure, [[0, 1]]),
        (Tag.Make, "image-dedup"), (Tag.Model, "Test Camera"),
        (Tag.DNGVersion, DNGVersion.V1_4), (Tag.DNGBackwardVersion, DNGVersion.V1_2),
    ]:
        tags.set(tag, value)
    writer = RAW2DNG()
    writer.options(tags, path="", compress=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(writer.convert((mosaic * 4095 + 64).astype(np.uint16))))
    if preview:
        import pyexiv2

        buf = io.BytesIO()
        photo.convert("RGB").save(buf, "JPEG", quality=90)
        img = pyexiv2.Image(str(path))
        try:
            img.modify_thumbnail(buf.getvalue())
        finally:
            img.close()
    return path
