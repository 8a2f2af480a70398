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
from ..store import ImageRecord

# "copy of X", "X - Copy", "X_copy2", "X - Kopie", "X (1)"; not "copyright"
COPY_NAME = re.compile(r"(?<![a-z])(copy|kopie|copie|kopia)(?![a-z])|\(\d+\)\s*$", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Group:
    keep: ImageRecord
    remove: tuple[tuple[ImageRecord, float], ...]  # (record, distance to keep)


def _stem(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0]


def rank_key(
    record: ImageRecord, rules: Sequence[RuleName], distance: float, score: int, use_exif: bool = True
) -> tuple:
    """Sort key: smaller is better. ``distance`` is the record's mean distance to its matches
    and ``score`` the number of its matches (both within its component)."""
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
    return tuple(values[rule]() for rule in rules) + (record.path,)


def plan_groups(
    records: Mapping[str, ImageRecord],
    edges: Iterable[tuple[str, str, float]],
    rules: Sequence[RuleName],
    use_exif: bool = True,
) -> list[Group]:
    """Decide keepers and removals for the images in ``records`` given their match ``edges``
    (pairs within max_dist; each pair once or twice, any order)."""
    neighbours: dict[str, dict[str, float]] = {path: {} for path in records}
    for a, b, d in edges:
        if a in neighbours and b in neighbours and a != b:
            neighbours[a][b] = d
            neighbours[b][a] = d

    def key(path: str) -> tuple:
        near = neighbours[path]
        mean = sum(near.values()) / len(near) if near else 0.0
        return rank_key(records[path], rules, round(mean, 6), len(near), use_exif)

    groups: list[Group] = []
    taken: set[str] = set()
    for path in sorted((p for p in records if neighbours[p]), key=key):
        if path in taken:
            continue
        taken.add(path)
        removals = sorted((other, d) for other, d in neighbours[path].items() if other not in taken)
        if not removals:
            continue
        taken.update(other for other, _ in removals)
        groups.append(Group(records[path], tuple((records[o], d) for o, d in removals)))
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
