"""Same photo or not: the one function that decides, for the matcher and for the actuator's
last check alike, so that what is reported is exactly what would be acted on.

Two stages. Retrieval (the store's indexes) proposes pairs: the same content digest, a
Goldberg signature within ``max_dist`` in any of the 8 orientations, or a copy-detection
embedding with a cosine of at least ``min_similarity``. Verification then looks at the pixels
(``shared.image.compare``): the pictures must line up under one turn, scale and crop, with at
least ``min_agreement`` of their textured patches in place and nothing pasted in. Files with
too little structure (flat, near-blank, tiny) and animations or multi-page files only match a
byte-identical file. The rules here are pure; the pixel comparison is passed in as ``look``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import numpy as np

from ..image.compare import NO_DETAILS, Agreement, BothWays
from ..image.embedding import cosine
from ..image.pixels import FileVersion
from ..image.signature import distances, orientations
from ..messages import Evidence
from ..store import ImageRecord

#: Fewer non-zero signature values than this: a flat or near-blank picture (all-zero when flat).
MIN_STRUCTURE = 64
MIN_SIDE = 32  # pixels; smaller pictures hold too little to compare

#: Goldberg distance up to which a pair too plain to line up by keypoints still matches.
PLAIN_MAX_DIST = 0.10

Look = Callable[[FileVersion, FileVersion, bool], Awaitable[BothWays]]


@dataclass(frozen=True, slots=True)
class Thresholds:
    max_dist: float
    min_similarity: float
    min_agreement: float
    match_orientations: bool = True

    @classmethod
    def of(cls, settings) -> Thresholds:
        return cls(settings.max_dist, settings.min_similarity, settings.min_agreement, settings.match_orientations)


def version(record: ImageRecord) -> FileVersion:
    return (record.path, record.size, record.mtime_ns)


def too_plain(record: ImageRecord) -> bool:
    """Too little structure to tell one such picture from another by its looks."""
    sig = record.signature
    return sig is None or int(np.count_nonzero(sig)) < MIN_STRUCTURE or min(record.width, record.height) < MIN_SIDE


def goldberg(a: ImageRecord, b: ImageRecord, turns: bool) -> tuple[float, int]:
    """The smallest signature distance of b to a turned or mirrored a, and that orientation."""
    options = orientations(a.signature) if turns else [a.signature]
    found = distances(b.signature, np.stack(options))
    best = int(np.argmin(found))
    return float(found[best]), best


def looked(both: BothWays) -> Agreement:
    """What the pixels say of b against a, from one look or both ways (``shared.image.compare.
    both_ways``): a refusal from either look stands, otherwise the better fit of the two
    decides; when neither could line the pictures up, the first look says so."""
    forth, back = both
    looks = [forth] if back is None else [forth, back.turned_round()]
    refused = [r for r in looks if r.refuses]
    if refused:
        return refused[0]
    usable = [r for r in looks if not r.reason]
    return max(usable, key=lambda r: r.score) if usable else forth


def _no(reason: str, **facts) -> Evidence:
    return Evidence(same=False, stage="none", reason=reason, **facts)


async def same_photo(a: ImageRecord, b: ImageRecord, thresholds: Thresholds, look: Look) -> Evidence:
    """Whether ``b`` shows the same photo as ``a``, with the evidence either way."""
    if a.signature is None or b.signature is None:
        return _no("not analysed")
    if a.digest and a.digest == b.digest:
        return Evidence(same=True, stage="exact", distance=0.0, similarity=1.0, score=1.0)
    if a.frames > 1 or b.frames > 1:
        return _no("an animation or multi-page file only matches a byte-identical copy")
    if too_plain(a) or too_plain(b):
        return _no("too little structure to compare (flat, near-blank or tiny): only identical files match")
    dist, turn = goldberg(a, b, thresholds.match_orientations)
    similarity = None
    if a.embedding is not None and b.embedding is not None:
        similarity = round(cosine(a.embedding, b.embedding), 4)
    facts = dict(distance=round(dist, 6), orientation=turn, similarity=similarity)
    if dist <= thresholds.max_dist:
        stage = "goldberg"
    elif similarity is not None and similarity >= thresholds.min_similarity:
        stage = "embedding"
    else:
        return _no("neither the signature nor the embedding is close", **facts)
    found = looked(await look(version(a), version(b), thresholds.match_orientations))
    if found.refuses:
        facts.update(score=found.score, transform=found.transform)
        return _no(found.reason, **facts)
    if found.reason:
        if dist <= PLAIN_MAX_DIST:
            # pictures too plain for keypoints (graphics, soft shapes) are judged by the
            # signature alone, at the strict distance that kept every look-alike apart
            return Evidence(same=True, stage="goldberg", **facts)
        return _no(NO_DETAILS, **facts)
    facts.update(orientation=found.orientation, score=found.score, transform=found.transform)
    if found.score < thresholds.min_agreement:
        moved = 1.0 - found.score
        return _no(f"{moved:.0%} of the picture moved against the rest (another moment or viewpoint)", **facts)
    return Evidence(same=True, stage=stage, **facts)
