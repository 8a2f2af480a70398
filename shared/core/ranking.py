"""Which copy to keep, and which files each keeper may remove: pure functions, no I/O.

Grouping is greedy over a total order: the best-ranked image not yet claimed keeps, and takes
for removal every unclaimed candidate that the verdict judges the same photo as *it*. So a
removed file always matches its keeper itself (no chains X ~ Y ~ K), a keeper is never
removed, and because the
result of a connected component does not depend on anything outside it, the matcher can plan one
component at a time (services mode) and get what a whole-library plan (local mode) gets.

The order is the configured rules, first rule first (``shared.config.RuleName``). Each rule is
a value per file (smaller is better) and a sentence saying why the kept file won by it, with
the facts that decided ("bigger file: 2.1 MB vs 1.4 MB"). Most values are the file's own;
``original`` is learnt while planning: a would-be keeper found to have been made from one of
its copies (``shared.core.provenance``) goes back in the order behind it.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from ..config import RuleName
from ..messages import Evidence
from ..store import ImageRecord
from .bundles import Unit
from .provenance import Lineage

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
    why: str = ""  # why keep was kept over the runner-up, in words
    # per removal: why keep was kept over it, in words
    kept_over: Mapping[str, str] = field(default_factory=dict, compare=False)


def _stem(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0]


def rank_values(
    record: ImageRecord, rules: Sequence[RuleName], distance: float, score: int, use_exif: bool = True,
    unit: Unit | None = None, made_from: Lineage | None = None,
) -> tuple:
    """One value per rule, smaller is better. ``distance`` is the record's mean distance to its
    matches and ``score`` the number of its matches (both within its component); ``unit`` the
    files that go with it (``shared.core.bundles``), None for a lone file; ``made_from``: how
    it was made from another file of its component, when that is known."""
    values = {
        "original": lambda: 0 if made_from is None else 1,
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
    unit: Unit | None = None, made_from: Lineage | None = None,
) -> tuple:
    """Sort key: smaller is better; the path breaks the last tie."""
    return rank_values(record, rules, distance, score, use_exif, unit, made_from) + (record.path,)


#: Each rule in words, for the report and the review page: "kept: <words>".
RULE_WORDS = {
    "reference": "it lies in a reference folder",
    "original": "the other was made from it",
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


def _bytes(n: int) -> str:
    for unit, size in (("GB", 1 << 30), ("MB", 1 << 20), ("kB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} bytes"


def _when(mtime_ns: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(mtime_ns / 1e9))


def kept_over(rule: str, keep: ImageRecord, other: ImageRecord, made: str = "") -> str:
    """Why ``keep`` was kept over ``other`` by ``rule``, in words with the facts that decided;
    ``made``: how ``other`` was made from ``keep``, for the rule ``original``."""
    facts = {
        "original": lambda: f"the original: the other was made from it ({made})" if made else RULE_WORDS["original"],
        "more_pixels": lambda: f"more pixels: {keep.width}x{keep.height} vs {other.width}x{other.height}",
        "more_exif_data": lambda: f"more EXIF data: {keep.exif_tags} tags vs {other.exif_tags}",
        "bigger_file": lambda: f"bigger file: {_bytes(keep.size)} vs {_bytes(other.size)}",
        "newer_mtime": lambda: f"modified more recently: {_when(keep.mtime_ns)} vs {_when(other.mtime_ns)}",
        "identical_name_then_older": lambda: (
            "byte-identical; its name does not say it is a copy" if COPY_NAME.search(_stem(other.path))
            and not COPY_NAME.search(_stem(keep.path)) else
            f"byte-identical and older: {_when(keep.mtime_ns)} vs {_when(other.mtime_ns)}"
            if keep.mtime_ns < other.mtime_ns else "byte-identical; then the first rule that tells them apart"),
    }
    return facts[rule]() if rule in facts else rule_in_words(rule)


def identical_rank(record: ImageRecord, rules: Sequence[RuleName] = (), use_exif: bool = True) -> tuple:
    """Among byte-identical files (``cp a.jpg a_copy.jpg``) the one to keep: the name without a
    copy marker, then the older file, then the configured rules (``shorter_folder_path`` keeps
    ``DCIM/Camera/X.jpg`` over ``Backup/2024/DCIM/Camera/X.jpg``). Their pixels and sizes tie,
    and a newer file says nothing but that it was copied later."""
    return (1 if COPY_NAME.search(_stem(record.path)) else 0, record.mtime_ns,
            rank_values(record, rules, 0.0, 0, use_exif), record.path)


def deciding_rule(keep: tuple, runner_up: tuple, rules: Sequence[str]) -> str:
    """The first rule whose value sets the kept file before the runner-up."""
    for rule, a, b in zip((*rules, "identical_name_then_older", "path"), keep, runner_up):
        if a != b:
            return rule
    return "path"


Judge = Callable[[str, Sequence[str]], Awaitable[Sequence[Evidence]]]


class Provenance(Protocol):
    """What is known of how the files of a component were made from one another."""

    async def made_from(self, copy: str, source: str) -> Lineage | None:
        """Was ``copy`` made from ``source``? (may look at the pixels: asked of would-be keepers)"""
        ...

    async def seen(self, copy: str, source: str) -> str:
        """How ``copy`` was made from ``source`` by what their comparison saw, or "" (free)."""
        ...


async def plan_groups(
    records: Mapping[str, ImageRecord],
    edges: Iterable[tuple[str, str, float]],
    rules: Sequence[RuleName],
    use_exif: bool = True,
    judge: Judge | None = None,
    units: Mapping[str, Unit] | None = None,
    protected: Callable[[str], bool] = lambda path: False,
    provenance: Provenance | None = None,
) -> list[Group]:
    """Decide keepers and removals for the images in ``records``.

    ``edges`` are the candidate pairs (each once or twice, any order) with their signature
    distance. Going down the ranking, each file not yet taken keeps, and ``judge(keeper,
    others)`` gives the verdict on each of its candidates not yet taken; those judged the same
    photo are its removals. So a file is only ever judged against a would-be keeper: k
    verdicts for a group of k copies, not k squared. Without ``judge`` every edge is taken as
    the same photo (the caller has judged them already). ``units``: the files that go with
    each record (format-aware rules); ``protected`` files (reference folders) rank first and
    are never removed. With ``provenance`` and the rule ``original``, a would-be keeper made
    from one of its would-be removals goes back in the order (and its byte-identical twins
    with it), so the file it was made from is considered first.
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
    derived: dict[str, Lineage] = {}  # by content (digest, else path): made from another file here

    def content(path: str) -> str:
        return records[path].digest or path

    def twin_rank(record: ImageRecord) -> tuple:
        return identical_rank(record, rules, use_exif)

    def key(path: str) -> tuple:
        near = neighbours[path]
        mean = sum(near.values()) / len(near) if near else 0.0
        record = records[path]
        siblings = twins.get(record.digest or "", [])
        # byte-identical files rank as one, then among themselves by identical_rank
        face = min(siblings, key=twin_rank) if len(siblings) > 1 else record
        values = rank_values(face, rules, round(mean, 6), len(near), use_exif, units.get(path), derived.get(content(path)))
        return (0 if protected(path) else 1, *values, twin_rank(record), record.path)

    async def same_as_edges(keeper: str, others: Sequence[str]) -> list[Evidence]:
        return [Evidence(same=True, stage="goldberg", distance=neighbours[keeper][o]) for o in others]

    async def source_of(path: str, removals: Sequence[str]) -> Lineage | None:
        for other in sorted(removals, key=key):
            if records[other].digest and records[other].digest == records[path].digest:
                continue
            found = await provenance.made_from(path, other)  # type: ignore[union-attr]
            if found is not None:
                return found
        return None

    judge = judge or same_as_edges
    ask = provenance is not None and "original" in rules
    groups: list[Group] = []
    taken: set[str] = set()
    order = sorted((p for p in records if neighbours[p]), key=key)
    while order:
        path = order.pop(0)
        if path in taken:
            continue
        others = sorted(o for o in neighbours[path] if o not in taken and not protected(o))
        removals = [(o, e) for o, e in zip(others, await judge(path, others) if others else []) if e.same]
        if ask and removals and not protected(path) and content(path) not in derived:
            found = await source_of(path, [o for o, _ in removals])
            if found is not None:  # it goes back in the order, behind the file it was made from
                derived[content(path)] = found
                order = sorted([path, *order], key=key)
                continue
        taken.add(path)
        if not removals:
            continue
        taken.update(o for o, _ in removals)
        keep = records[path]
        decided: dict[str, tuple[str, str]] = {}  # per removal: the rule, and it in words
        for o, _ in removals:
            lineage = derived.get(content(o))
            made = lineage.how if lineage is not None and lineage.source == path else ""
            if not made and provenance is not None:
                made = await provenance.seen(o, path)
            rule = "original" if made else deciding_rule(key(path), key(o), ("reference", *rules))
            decided[o] = rule, kept_over(rule, keep, records[o], made)
        rule, why = decided[min((o for o, _ in removals), key=key)]
        groups.append(Group(keep, tuple((records[o], e) for o, e in removals), rule, why=why,
                            kept_over={o: words for o, (_, words) in decided.items()}))
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
