"""Keep the original: whether one copy of a photo was made from the other, and how, in words.

The comparison has already lined the two pictures up (``shared.image.compare.Agreement``),
and what it saw tells much of how one was made from the other, for free:

* a copy cropped from the other shows less of the photo, all of it inside the other's;
* bands added around the photo (a border, padding to a square, a caption bar) are area
  without the photo, the photo itself lying wholly inside the other's;
* a copy turned or mirrored without an orientation tag, against an older file with EXIF.

Other evidence needs the full pixels (``shared.image.lineage``, measured only when it could
decide which file is kept): an upscale holds no detail beyond its source's resolution; a
lossless re-save holds exactly its source's decoded pixels; a JPEG re-encode is its source's
pixels encoded again with its own tables, to the grey level, while no encoding of it gives
back the source's finer detail.

A file is never taken for a copy of a file newer than itself (by modification time): a copy
is written after what it was made from. That guards against a plain part of an original
taken for a border, and spares the measures wherever the newer file is the smaller one (as
copies usually are).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from ..image.compare import Agreement
from ..image.lineage import LOSSLESS
from ..image.pixels import FileVersion
from ..store import ImageRecord
from .verdict import Look, looked, version

#: A photo shows all of the other's when this share of it lies in the other's (give or take
#: the edges an alignment leaves); less, and the other shows more of the photo
WHOLE = 0.97
#: Seconds by which a copy's modification time may precede its source's (file systems that
#: keep times to the second or two, copies that kept their source's time)
SAME_TIME_S = 2.0
#: An upscale is enlarged at least this much (linear); a smaller difference is a re-encode's
UPSCALE = 1.15
#: ``shared.image.lineage.upscaled``'s second answer at most this: what the smaller leaves
#: unexplained of the larger is no more than the files' encoding noise, so the larger holds no
#: detail the smaller lacks. The noise is measured, so the bound is the noise itself, not a
#: margin: the 300 upscales (1.3-2x) of the keeper sets of seeds 1, 12, 23, 34, 45 measure
#: 0.68-0.94; the 106 originals against their reductions of 1.25x and more (downscales,
#: thumbnails, previews) in the wide mix, seeds 1-3, measure 1.07-196
NOISE_ONLY = 1.0
#: ... asked from this enlargement on: below it the band an enlargement leaves empty (above 0.8
#: of the larger's resolution) is too narrow to hold a soft photo's detail above the noise (an
#: original 1.16x its copy measures 0.80). Below it, and where a file's encoding noise cannot
#: be measured (a lossy format other than JPEG), the first answer decides, at most this: the
#: larger explains the smaller better than the other way round (upscales of 24 of the kit's
#: photos by 1.25-2x: 0.02-0.92; reductions of them to the same sizes: 1.17-34)
UPSCALE_NOISE = 1.25
UPSCALED = 1.0
#: A lossless re-save differs from its source's pixels by at most this many grey levels (a
#: decoder's rounding)
RESAVED = 1.0
#: A re-encode is reproduced to this mean grey level (the same encoder: 0.00), and the other
#: way round it is not, by at least twice that and this margin (re-encoding the kit's q95
#: originals at q98 and back: 0.03-0.13)
REPRODUCED = 0.05
NOT_REPRODUCED = 0.015
TURNS = {1: "turned a quarter", 2: "turned upside down", 3: "turned a quarter", 4: "mirrored", 5: "flipped",
         6: "turned and mirrored", 7: "turned and mirrored"}


@dataclass(frozen=True, slots=True)
class Lineage:
    """``copy`` was made from ``source``; ``how``, in words ("upscaled 1.6x")."""

    copy: str
    source: str
    how: str


#: A measure of ``shared.image.lineage`` by name, on (copy, source, turn): run where the
#: pixels are decoded (the decoder pool), maybe remembered
Measure = Callable[[str, FileVersion, FileVersion, int], Awaitable[object]]


def _not_older(copy: ImageRecord, source: ImageRecord) -> bool:
    return copy.mtime_ns >= source.mtime_ns - SAME_TIME_S * 1e9


def _back(turn: int) -> int:
    """The turn of a picture against the other from the other's turn against it."""
    return {1: 3, 3: 1}.get(turn, turn)


def _bands(bands: tuple[int, int, int, int]) -> str:
    top, bottom, left, right = (b > 0 for b in bands)
    if all((top, bottom, left, right)):
        return "framed"
    sides = [name for name, on in (("top", top), ("bottom", bottom), ("left", left), ("right", right)) if on]
    if len(sides) == 1:
        return f"a bar added at the {sides[0]}"
    return "padded at the " + " and ".join(sides)


def seen(copy: ImageRecord, source: ImageRecord, agreement: Agreement) -> str:
    """How ``copy`` was made from ``source`` by what the comparison saw of it (``agreement``
    is ``copy`` against ``source``: its ``b`` is the copy), in words, or "" when it does not
    show. Free: no pixels are looked at again."""
    if agreement.reason or not _not_older(copy, source):
        return ""
    whole_copy = agreement.shown_b >= WHOLE  # all of the copy's photo lies in the source's
    if not whole_copy:
        return ""
    how = []
    if agreement.shown_a < WHOLE:  # ... and the source shows more of it: cropped
        if agreement.tilt >= 0.5:
            how.append(f"straightened by {agreement.tilt:.0f}° and cropped")
        else:
            how.append(f"cropped to {agreement.shown_a:.0%} of it")
    if any(agreement.bands_b) and not any(agreement.bands_a):
        how.append(_bands(agreement.bands_b))
    if not how and agreement.orientation and source.exif_date and copy.mtime_ns > source.mtime_ns + SAME_TIME_S * 1e9:
        # one of two whole copies turned against the other without a tag: the newer, against
        # an older one with the camera's EXIF date
        how.append(f"{TURNS[agreement.orientation]} (the other is older and has its EXIF date)")
    return ", ".join(how)


async def made_from(copy: ImageRecord, source: ImageRecord, agreement: Agreement, measure: Measure) -> Lineage | None:
    """Whether ``copy`` was made from ``source`` (``agreement``: ``copy`` against ``source``),
    by what the comparison saw or, for whole copies, by the full pixels."""
    how = seen(copy, source, agreement)
    if how:
        return Lineage(copy.path, source.path, how)
    whole = not agreement.reason and min(agreement.shown_a, agreement.shown_b) >= WHOLE and agreement.tilt < 0.5 \
        and not any(agreement.bands_a) and not any(agreement.bands_b)
    if not whole or not _not_older(copy, source):
        return None
    turn = agreement.orientation
    factor = (copy.pixels / max(source.pixels, 1)) ** 0.5
    if factor >= UPSCALE:
        explained, noise_only = await measure("upscaled", version(copy), version(source), turn)  # type: ignore[misc]
        if noise_only <= NOISE_ONLY if factor >= UPSCALE_NOISE and noise_only != float("inf") else explained <= UPSCALED:
            return Lineage(copy.path, source.path, f"upscaled {factor:.1f}x")
        return None
    if copy.pixels != source.pixels:
        return None
    if copy.format in LOSSLESS and source.format not in LOSSLESS:
        if float(await measure("resaved", version(copy), version(source), turn)) <= RESAVED:  # type: ignore[arg-type]
            return Lineage(copy.path, source.path, f"a lossless {copy.format} copy of its pixels")
        return None
    if copy.format == "JPEG":
        if source.format in LOSSLESS and float(await measure("resaved", version(source), version(copy),
                                                               _back(turn))) <= RESAVED:  # type: ignore[arg-type]
            return None  # the other holds exactly this one's decoded pixels: it was made from this one
        forth, back = await measure("reencoded", version(copy), version(source), turn)  # type: ignore[misc]
        if forth <= REPRODUCED and (back is None or back >= 2 * forth + NOT_REPRODUCED):
            return Lineage(copy.path, source.path, "encoded again" + (f" from a {source.format} file" if source.format != "JPEG" else ""))
    return None


class Known:
    """Provenance within one component of the plan (``shared.core.ranking.Provenance``): the
    records, the comparisons (a remembering look: the pairs were judged already, so the
    comparisons are answered from memory) and the measures, each made once."""

    def __init__(self, records: Mapping[str, ImageRecord], look: Look, turns: bool, measure: Measure):
        self._records, self._look, self._turns, self._measure = records, look, turns, measure
        self._measured: dict[tuple, object] = {}

    async def _agreement(self, copy: str, source: str) -> Agreement:
        a, b = self._records[source], self._records[copy]
        return looked(await self._look(version(a), version(b), self._turns))

    async def _remembered(self, kind: str, copy: FileVersion, source: FileVersion, turn: int) -> object:
        key = (kind, copy, source, turn)
        if key not in self._measured:
            self._measured[key] = await self._measure(kind, copy, source, turn)
        return self._measured[key]

    async def made_from(self, copy: str, source: str) -> Lineage | None:
        return await made_from(self._records[copy], self._records[source], await self._agreement(copy, source),
                               self._remembered)

    async def seen(self, copy: str, source: str) -> str:
        return seen(self._records[copy], self._records[source], await self._agreement(copy, source))
