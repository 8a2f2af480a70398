"""Which copy to keep, and which files each keeper may remove: pure functions, no I/O.

Grouping is greedy over a total order: the best-ranked image not yet claimed keeps, and takes
for removal every unclaimed candidate that the verdict judges the same photo as *it*. So a
removed file always matches its keeper itself (no chains X ~ Y ~ K), a keeper is never
removed, and because the
result of a connected component does not depend on anything outside it, the matcher can plan one
component at a time (services mode) and get what a whole-library plan (local mode) gets.
"""

from __future__ import annotations

import os
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from ..config import RuleName
from ..messages import Evidence
from ..store import ImageRecord
from .bundles import Unit

# "copy of X", "X - Copy", "X_copy2", "X - Kopie", "X (1)"; not "copyright"
COPY_NAME = re.compile(r"(?<![a-z])(copy|kopie|copie|kopia)(?![a-z])|\(\d+\)\s*$", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Group:
    keep: ImageRecord
    remove: tuple[tuple[ImageRecord, Evidence], ...]  # (record, the verdict against keep)
    rule: str = ""  # the ranking rule that put keep before the runner-up
    # per path of keep and each removal: the other files of its unit (shared.messages.Member)
    members: Mapping[str, tuple] = field(default_factory=dict, compare=False)
    # per removal: what only it holds of a person's metadata, in words per field
    metadata: Mapping[str, dict[str, str]] = field(default_factory=dict, compare=False)


def _stem(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0]


def rank_values(
    record: ImageRecord, rules: Sequence[RuleName], distance: float, score: int, use_exif: bool = True,
    unit: Unit | None = None,
) -> tuple:
    """One value per rule, smaller is better. ``distance`` is the record's mean distance to its
    matches and ``score`` the number of its matches (both within its component); ``unit`` the
    files that go with it (``shared.core.bundles``), None for a lone file."""
    values = {
        "with_raw": lambda: 0 if unit is not None and unit.has_raw else 1,
        "with_video": lambda: 0 if unit is not None and unit.has_video else 1,
        "with_sidecar": lambda: 0 if unit is not None and unit.has_sidecar else 1,
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
    record: ImageRecord, rules: Sequence[RuleName], distance: float, score: int, use_exif: bool = True,
    unit: Unit | None = None,
) -> tuple:
    """Sort key: smaller is better; the path breaks the last tie."""
    return rank_values(record, rules, distance, score, use_exif, unit) + (record.path,)


#: Each rule in words, for the report and the review page: "kept: <words>".
RULE_WORDS = {
    "reference": "it lies in a reference folder",
    "with_raw": "it comes with its RAW file",
    "with_video": "it comes with its Live Photo video",
    "with_sidecar": "it has sidecar edits",
    "more_pixels": "it has more pixels",
    "more_exif_data": "it has more EXIF data",
    "bigger_file": "it is the bigger file",
    "newer_mtime": "it was modified more recently",
    "smaller_distance": "it is the closest to the other copies",
    "name_without_copy": "its name does not say it is a copy",
    "longer_file_name": "it has the longer file name",
    "shorter_folder_path": "it lies in the shorter folder path",
    "higher_score": "it matches the most copies",
    "identical_name_then_older": "its name is not a copy's, or it is the older identical file",
    "path": "its path comes first",
}


def rule_in_words(rule: str) -> str:
    return RULE_WORDS.get(rule, rule.replace("_", " "))


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


Judge = Callable[[str, Sequence[str]], Awaitable[Sequence[Evidence]]]


async def plan_groups(
    records: Mapping[str, ImageRecord],
    edges: Iterable[tuple[str, str, float]],
    rules: Sequence[RuleName],
    use_exif: bool = True,
    judge: Judge | None = None,
    units: Mapping[str, Unit] | None = None,
    protected: Callable[[str], bool] = lambda path: False,
) -> list[Group]:
    """Decide keepers and removals for the images in ``records``.

    ``edges`` are the candidate pairs (each once or twice, any order) with their signature
    distance. Going down the ranking, each file not yet taken keeps, and ``judge(keeper,
    others)`` gives the verdict on each of its candidates not yet taken; those judged the same
    photo are its removals. So a file is only ever judged against a would-be keeper: k
    verdicts for a group of k copies, not k squared. Without ``judge`` every edge is taken as
    the same photo (the caller has judged them already). ``units``: the files that go with
    each record (format-aware rules); ``protected`` files (reference folders) rank first and
    are never removed.
    """
    units = units or {}
    neighbours: dict[str, dict[str, float]] = {path: {} for path in records}
    for a, b, d in edges:
        if a in neighbours and b in neighbours and a != b:
            neighbours[a][b] = d
            neighbours[b][a] = d
    twins: dict[str, list[ImageRecord]] = {}
    for record in records.values():
        if record.digest and neighbours[record.path]:
            twins.setdefault(record.digest, []).append(record)

    def key(path: str) -> tuple:
        near = neighbours[path]
        mean = sum(near.values()) / len(near) if near else 0.0
        record = records[path]
        siblings = twins.get(record.digest or "", [])
        # byte-identical files rank as one, then among themselves by identical_rank
        face = min(siblings, key=identical_rank) if len(siblings) > 1 else record
        values = rank_values(face, rules, round(mean, 6), len(near), use_exif, units.get(path))
        return (0 if protected(path) else 1, *values, identical_rank(record), record.path)

    async def same_as_edges(keeper: str, others: Sequence[str]) -> list[Evidence]:
        return [Evidence(same=True, stage="goldberg", distance=neighbours[keeper][o]) for o in others]

    judge = judge or same_as_edges
    groups: list[Group] = []
    taken: set[str] = set()
    for path in sorted((p for p in records if neighbours[p]), key=key):
        if path in taken:
            continue
        taken.add(path)
        others = sorted(o for o in neighbours[path] if o not in taken and not protected(o))
        if not others:
            continue
        removals = [(o, e) for o, e in zip(others, await judge(path, others)) if e.same]
        if not removals:
            continue
        taken.update(o for o, _ in removals)
        runner_up = min(key(o) for o, _ in removals)
        groups.append(Group(records[path], tuple((records[o], e) for o, e in removals),
                            deciding_rule(key(path), runner_up, ("reference", *rules))))
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
