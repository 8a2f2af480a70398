"""Which copy to keep, and which files each keeper may remove: pure functions, no I/O.

Grouping is greedy over a total order: the best-ranked image not yet claimed keeps, and takes
for removal every unclaimed image *directly* within ``max_dist`` of it. So a removed file always
matches its keeper itself (no chains X ~ Y ~ K), a keeper is never removed, and because the
result of a connected component does not depend on anything outside it, the matcher can plan one
component at a time (services mode) and get what a whole-library plan (local mode) gets.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from ..config import RuleName
from ..messages import Evidence
from ..store import ImageRecord

# "copy of X", "X - Copy", "X_copy2", "X - Kopie", "X (1)"; not "copyright"
COPY_NAME = re.compile(r"(?<![a-z])(copy|kopie|copie|kopia)(?![a-z])|\(\d+\)\s*$", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Group:
    keep: ImageRecord
    remove: tuple[tuple[ImageRecord, Evidence], ...]  # (record, the verdict against keep)
    rule: str = ""  # the ranking rule that put keep before the runner-up


def _stem(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0]


def rank_values(
    record: ImageRecord, rules: Sequence[RuleName], distance: float, score: int, use_exif: bool = True
) -> tuple:
    """One value per rule, smaller is better. ``distance`` is the record's mean distance to its
    matches and ``score`` the number of its matches (both within its component)."""
    values = {
        "more_pixels": lambda: -record.pixels,
        "more_exif_data": lambda: -record.exif_tags if use_exif else 0,
        "bigger_file": lambda: -record.size,
        "newer_mtime": lambda: -record.mtime_ns,
        "smaller_distance": lambda: distance,
        "name_without_copy": lambda: 1 if COPY_NAME.search(_stem(record.path)) else 0,
        "longer_file_name": lambda: -len(os.path.basename(record.path)),
        "shorter_folder_path": lambda: len(os.path.dirname(record.path)),
        "higher_score": lambda: -score,
    }
    return tuple(values[rule]() for rule in rules)


def rank_key(
    record: ImageRecord, rules: Sequence[RuleName], distance: float, score: int, use_exif: bool = True
) -> tuple:
    """Sort key: smaller is better; the path breaks the last tie."""
    return rank_values(record, rules, distance, score, use_exif) + (record.path,)


def identical_rank(record: ImageRecord) -> tuple:
    """Among byte-identical files (``cp a.jpg a_copy.jpg``) the one to keep: the name without a
    copy marker, then the older file. Their pixels and sizes tie, and a newer or longer name
    says nothing but that it was copied later."""
    return (1 if COPY_NAME.search(_stem(record.path)) else 0, record.mtime_ns, record.path)


def deciding_rule(keep: tuple, runner_up: tuple, rules: Sequence[str]) -> str:
    """The first rule whose value sets the kept file before the runner-up."""
    for rule, a, b in zip((*rules, "identical_name_then_older", "path"), keep, runner_up):
        if a != b:
            return rule
    return "path"


def plan_groups(
    records: Mapping[str, ImageRecord],
    edges: Iterable[tuple[str, str, Evidence]],
    rules: Sequence[RuleName],
    use_exif: bool = True,
) -> list[Group]:
    """Decide keepers and removals for the images in ``records`` given the verdict ``edges``
    (pairs judged the same photo; each pair once or twice, any order)."""
    neighbours: dict[str, dict[str, Evidence]] = {path: {} for path in records}
    for a, b, evidence in edges:
        if a in neighbours and b in neighbours and a != b and evidence.same:
            neighbours[a][b] = evidence
            neighbours[b][a] = evidence
    twins: dict[str, list[ImageRecord]] = {}
    for record in records.values():
        if record.digest and neighbours[record.path]:
            twins.setdefault(record.digest, []).append(record)

    def key(path: str) -> tuple:
        near = neighbours[path]
        dists = [e.distance or 0.0 for e in near.values()]
        mean = sum(dists) / len(dists) if dists else 0.0
        record = records[path]
        siblings = twins.get(record.digest or "", [])
        # byte-identical files rank as one, then among themselves by identical_rank
        face = min(siblings, key=identical_rank) if len(siblings) > 1 else record
        values = rank_values(face, rules, round(mean, 6), len(near), use_exif)
        return values + (identical_rank(record), record.path)

    groups: list[Group] = []
    taken: set[str] = set()
    order = sorted((p for p in records if neighbours[p]), key=key)
    for path in order:
        if path in taken:
            continue
        taken.add(path)
        removals = sorted((other, e) for other, e in neighbours[path].items() if other not in taken)
        if not removals:
            continue
        taken.update(other for other, _ in removals)
        runner_up = min((key(other) for other, _ in removals))
        groups.append(Group(records[path], tuple((records[o], e) for o, e in removals),
                            deciding_rule(key(path), runner_up, rules)))
    return groups


def pair_allowed(
    a: ImageRecord, b: ImageRecord, across_dirs: bool, max_mtime_diff: float | None
) -> bool:
    """The configured limits on what may count as a duplicate pair at all."""
    if not across_dirs and a.root != b.root:
        return False
    if max_mtime_diff is not None and abs(a.mtime_ns - b.mtime_ns) > max_mtime_diff * 1e9:
        return False
    return True
