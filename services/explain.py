"""``image-dedup explain A B [--json]``: what the verdict sees of two files, stage by stage,
and which of the two would be kept and why.

It is how a person learns why two copies were not grouped, or why a look-alike was kept apart:
the same functions decide as in a run (``shared.core.verdict.same_photo``, the ranking with the
configured rules and provenance), on the two files analysed now; no store is read or written.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from pathlib import Path

from shared.config import Settings
from shared.core.provenance import Known
from shared.core.ranking import plan_groups
from shared.core.verdict import Thresholds, goldberg, looked, same_photo, version
from shared.image.compare import Agreement, BothWays
from shared.image.embedding import cosine
from shared.image.pixels import FileVersion, analyze_with_picture, compare_files, measure_in_thread
from shared.image.signature import ImageError
from shared.store import ImageRecord

TURN_WORDS = ["as it is", "turned a quarter clockwise", "turned upside down", "turned a quarter anticlockwise",
              "mirrored", "flipped upside down", "turned a quarter and mirrored", "turned a quarter and mirrored"]


class ExplainError(Exception):
    """A file that cannot be explained; one line for the person."""


def _record(path: Path) -> tuple[ImageRecord, object]:
    try:
        analysis, found, picture = analyze_with_picture(str(path))
    except ImageError as exc:
        raise ExplainError(f"{path}: {exc}") from None
    _, size, mtime_ns = found
    return ImageRecord(
        path=str(path), root=str(path.parent), size=size, mtime_ns=mtime_ns, format=analysis.format,
        width=analysis.width, height=analysis.height, exif_tags=analysis.exif_tags, exif_date=analysis.exif_date,
        signature=analysis.signature, digest=analysis.digest, frames=analysis.frames, embedding=analysis.embedding,
    ), picture


def _file(record: ImageRecord) -> dict:
    return {"path": record.path, "format": record.format, "width": record.width, "height": record.height,
            "size": record.size, "mtime_ns": record.mtime_ns, "exif_tags": record.exif_tags,
            "exif_date": record.exif_date, "digest": record.digest, "frames": record.frames}


def _look_at(agreement: Agreement) -> dict:
    """The alignment and the patch test of one look, as the comparison found them."""
    moved = round((1.0 - agreement.score) * agreement.patches) if not agreement.reason else None
    return {
        "turn": TURN_WORDS[agreement.orientation], "orientation": agreement.orientation,
        "scale": agreement.scale, "tilt_degrees": agreement.tilt,
        "keypoints": {"inliers": agreement.inliers, "matches": agreement.matches},
        "shown": {"of_a_in_b": agreement.shown_a, "of_b_in_a": agreement.shown_b},
        "bands": {"a": list(agreement.bands_a), "b": list(agreement.bands_b)},
        "patches": {"compared": agreement.patches, "in_place": agreement.placed, "moved": moved},
        "score": agreement.score, "reason": agreement.reason,
    }


async def explain(a_path: Path, b_path: Path, settings: Settings) -> dict:
    """Everything ``explain`` prints, as one JSON-able object."""
    (a, picture_a), (b, picture_b) = _record(a_path), _record(b_path)
    pictures = {version(a): picture_a, version(b): picture_b}
    looks: dict[tuple[FileVersion, FileVersion], BothWays] = {}

    async def look(x: FileVersion, y: FileVersion, turns: bool) -> BothWays:
        if (x, y) not in looks:
            looks[(x, y)] = await asyncio.to_thread(compare_files, x, y, turns, (pictures.get(x), pictures.get(y)))
        return looks[(x, y)]

    thresholds = Thresholds.of(settings)
    evidence = await same_photo(a, b, thresholds, look)
    out: dict = {"a": _file(a), "b": _file(b)}
    distance, turn = goldberg(a, b, thresholds.match_orientations) if a.signature is not None else (None, 0)
    out["stages"] = {
        "digest": {"same_bytes": bool(a.digest) and a.digest == b.digest},
        "goldberg": {"distance": round(distance, 4), "orientation": turn, "turn": TURN_WORDS[turn],
                     "max_dist": thresholds.max_dist, "close": distance <= thresholds.max_dist},
        "embedding": {"similarity": round(cosine(a.embedding, b.embedding), 4)
                      if a.embedding is not None and b.embedding is not None else None,
                      "min_similarity": thresholds.min_similarity},
    }
    out["stages"]["embedding"]["close"] = (out["stages"]["embedding"]["similarity"] or -1) >= thresholds.min_similarity
    if looks:
        forth, back = next(iter(looks.values()))
        out["looks"] = {"b_against_a": _look_at(forth), "a_against_b": None if back is None else _look_at(back)}
        out["agreed"] = _look_at(looked((forth, back)))
    out["verdict"] = {"same_photo": evidence.same, "stage": evidence.stage, "score": evidence.score,
                      "min_agreement": thresholds.min_agreement, "reason": evidence.reason}
    if evidence.same:
        records = {a.path: a, b.path: b}

        async def judge(keeper: str, others) -> list:
            return [await same_photo(records[keeper], records[o], thresholds, look) for o in others]

        [group] = await plan_groups(records, [(a.path, b.path, evidence.distance or 0.0)], settings.prioritization_rules,
                                    settings.use_exif_data, judge,
                                    provenance=Known(records, look, thresholds.match_orientations, measure_in_thread))
        removed = group.remove[0][0].path
        out["keep"] = {"keep": group.keep.path, "remove": removed, "rule": group.rule, "why": group.kept_over[removed]}
    else:
        out["keep"] = None
    return out


def _text(found: dict) -> list[str]:
    """The explanation for a person, one fact a line."""
    a, b, stages = found["a"], found["b"], found["stages"]
    lines = [f"A: {a['path']} ({a['format']}, {a['width']}x{a['height']}, {a['size']:,} bytes, "
             f"{a['exif_tags']} EXIF tags{', taken ' + a['exif_date'] if a['exif_date'] else ''})",
             f"B: {b['path']} ({b['format']}, {b['width']}x{b['height']}, {b['size']:,} bytes, "
             f"{b['exif_tags']} EXIF tags{', taken ' + b['exif_date'] if b['exif_date'] else ''})",
             f"digest: {'the same bytes' if stages['digest']['same_bytes'] else 'different bytes'}"]
    g, e = stages["goldberg"], stages["embedding"]
    lines.append(f"signature: Goldberg distance {g['distance']:.3f} ({g['turn']}); "
                 f"{'within' if g['close'] else 'beyond'} max_dist {g['max_dist']}")
    if e["similarity"] is not None:
        lines.append(f"embedding: similarity {e['similarity']:.3f}; "
                     f"{'at least' if e['close'] else 'below'} min_similarity {e['min_similarity']}")
    agreed = found.get("agreed")
    if agreed is not None:
        k, p = agreed["keypoints"], agreed["patches"]
        lines.append(f"alignment: B {agreed['turn']}, scale {agreed['scale']}, tilt {agreed['tilt_degrees']}°, "
                     + (f"{k['inliers']} of {k['matches']} keypoint matches agree" if k["matches"]
                        else "lined up without keypoints"))
        shown = agreed["shown"]
        lines.append(f"coverage: {shown['of_a_in_b']:.0%} of A's photo shows in B, {shown['of_b_in_a']:.0%} of B's in A"
                     + "".join(f"; {side} has bands added (top, bottom, left, right: {tuple(v)})"
                               for side, v in agreed["bands"].items() if any(v)))
        if p["compared"]:
            lines.append(f"patches: {p['compared']} compared, {p['in_place']} in place"
                         + (f", {p['moved']} moved" if p["moved"] is not None else ""))
    verdict = found["verdict"]
    lines.append("verdict: the same photo" + (f" ({verdict['stage']} stage, score {verdict['score']})"
                                               if verdict["score"] is not None else f" ({verdict['stage']})")
                 if verdict["same_photo"] else f"verdict: not the same photo: {verdict['reason']}")
    keep = found["keep"]
    if keep is not None:
        lines.append(f"kept: {'A' if keep['keep'] == a['path'] else 'B'} ({os.path.basename(keep['keep'])}): {keep['why']}")
    else:
        lines.append("kept: both (neither is a copy of the other)")
    return lines


def run(args: argparse.Namespace, settings: Settings) -> int:
    found = asyncio.run(explain(args.first, args.second, settings))
    if args.json:
        print(json.dumps(found, indent=1, ensure_ascii=False))
    else:
        print("\n".join(_text(found)))
    return 0
