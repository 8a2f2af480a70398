"""What a person decided about each group of a report, and the report those decisions make.

Pure (no I/O, no server), so the rules of what will be applied are tested on their own. Only
groups the person decided on reach the reviewed report: a group still pending is not acted on.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Literal

Status = Literal["pending", "accepted", "distinct", "applied"]
REVIEWER_RULE = "reviewer"  # the rule of a group whose kept copy a person picked
MAX_PAGE = 200


class ReviewError(ValueError):
    """A report or a request that cannot be reviewed; the message is for the person."""


@dataclass(frozen=True, slots=True)
class Filters:
    """Which groups a page shows. ``folder`` is a substring of any file's folder; the distance
    range is over a group's least sure removal (its largest distance)."""

    folder: str = ""
    stage: str = ""  # an evidence stage any removal must have ("exact", "goldberg", ...)
    min_distance: float | None = None
    max_distance: float | None = None
    min_score: float | None = None  # every removal's pixel-verification score at least this
    status: str = ""


@dataclass
class GroupState:
    index: int
    group: dict  # the group as the input report has it
    files: list[str]  # [the proposed kept copy, *its removals]: file ids are indexes here
    status: Status = "pending"
    keep: int = 0
    distances: dict[str, float] = field(default_factory=dict)  # to a kept copy the person picked
    outcomes: dict[str, dict] = field(default_factory=dict)  # what Apply did to each removal

    def removals(self) -> list[str]:
        return [p for i, p in enumerate(self.files) if i != self.keep]

    def worst_distance(self) -> float:
        return max(self.group.get("distances", {}).values(), default=0.0)


def group_problem(group: object) -> str | None:
    """Why a report's group cannot be reviewed, or None: it must name a kept file and its
    removals, each once, each with its facts (size, mtime)."""
    if not isinstance(group, dict) or not isinstance(group.get("keep"), str) or not isinstance(group.get("remove"), list) \
            or not group["remove"] or not all(isinstance(p, str) for p in group["remove"]):
        return "not a group of 'keep' and 'remove' paths"
    files = [group["keep"], *group["remove"]]
    if len(set(files)) != len(files):
        return "lists a file twice"
    facts = group.get("files")
    if not isinstance(facts, dict) or not all(isinstance(facts.get(p), dict) and isinstance(facts[p].get("size"), int)
                                              and isinstance(facts[p].get("mtime_ns"), int) for p in files):
        return "holds no size and mtime of some file"
    distances, evidence = group.get("distances", {}), group.get("evidence", {})
    if not isinstance(distances, dict) or not all(isinstance(v, (int, float)) for v in distances.values()):
        return "its distances are not numbers"
    if not isinstance(evidence, dict) or not all(isinstance(v, dict) for v in evidence.values()):
        return "its evidence is not a mapping of files"
    metadata = group.get("metadata") or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, dict) for v in metadata.values()):
        return "its metadata is not a mapping of files"
    return None


class Review:
    """``problems``: one line per group of the report that was left out (malformed)."""

    def __init__(self, report: dict):
        if not isinstance(report, dict) or report.get("version") != 2 or not isinstance(report.get("groups"), list):
            raise ReviewError("not an image-dedup report of version 2 (write one with: image-dedup deduplicate --report)")
        self.report = report
        self.groups: list[GroupState] = []
        self.problems: list[str] = []
        for i, g in enumerate(report["groups"]):
            problem = group_problem(g)
            if problem:
                self.problems.append(f"group {i + 1} of the report left out: {problem}")
                continue
            self.groups.append(GroupState(len(self.groups), g, [g["keep"], *g["remove"]]))

    # -- lookups ------------------------------------------------------------------------------

    def group(self, gid: int) -> GroupState:
        if not 0 <= gid < len(self.groups):
            raise KeyError(gid)
        return self.groups[gid]

    def file(self, gid: int, fid: int) -> str:
        """The path behind a (group, file) id: the browser never names a path itself."""
        files = self.group(gid).files
        if not 0 <= fid < len(files):
            raise KeyError(fid)
        return files[fid]

    # -- decisions ----------------------------------------------------------------------------

    def decide(self, gid: int, action: str, keep: int | None = None, distances: dict[str, float] | None = None) -> GroupState:
        """``accept`` the group (as it is, or with the kept copy picked before), ``keep`` another
        copy (``distances`` from it to the others, if known), ``distinct`` (not duplicates), or
        ``reset`` to pending. A group already applied is done with."""
        g = self.group(gid)
        if g.status == "applied":
            raise ReviewError(f"group {gid + 1} was applied already")
        if action == "accept":
            g.status = "accepted"
        elif action == "keep":
            if keep is None or not 0 <= keep < len(g.files):
                raise ReviewError(f"group {gid} has no file {keep}")
            g.keep, g.status = keep, "accepted"
            g.distances = dict(distances or {}) if keep else {}
        elif action == "distinct":
            g.status = "distinct"
        elif action == "reset":
            g.status, g.keep, g.distances = "pending", 0, {}
        else:
            raise ReviewError(f"unknown action {action!r}")
        return g

    def applied(self, outcomes: list[dict]) -> None:
        """What Apply did: each accepted group with an outcome for every removal is applied
        (a dry run's checks leave it accepted), and each file's outcome is kept for the page."""
        by_path = {o["path"]: o for o in outcomes}
        for g in self.groups:
            if g.status != "accepted":
                continue
            g.outcomes = {p: {"status": by_path[p]["status"], "reason": by_path[p]["reason"]}
                          for p in g.removals() if p in by_path}
            if len(g.outcomes) == len(g.removals()) and all(o["status"] != "dry_run" for o in g.outcomes.values()):
                g.status = "applied"

    def distinct_pairs(self, g: GroupState) -> list[tuple[str, str]]:
        """A group marked "not duplicates": its proposed kept copy with each removal, the pairs
        the matcher proposed (two removals may still be copies of each other)."""
        return [(g.files[0], r) for r in g.files[1:]]

    # -- pages --------------------------------------------------------------------------------

    def matches(self, g: GroupState, f: Filters) -> bool:
        if f.status and g.status != f.status:
            return False
        if f.folder and not any(f.folder.lower() in os.path.dirname(p).lower() for p in g.files):
            return False
        evidence = g.group.get("evidence", {})
        if f.stage and not any(e.get("stage") == f.stage for e in evidence.values()):
            return False
        worst = g.worst_distance()
        if f.min_distance is not None and worst < f.min_distance:
            return False
        if f.max_distance is not None and worst > f.max_distance:
            return False
        if f.min_score is not None:
            scores = [evidence.get(p, {}).get("score") for p in g.group["remove"]]
            if any(s is None or s < f.min_score for s in scores):
                return False
        return True

    def page(self, offset: int, limit: int, filters: Filters) -> dict:
        """One page of the groups that pass ``filters``, as the page renders them."""
        limit = max(1, min(limit, MAX_PAGE))
        shown = [g for g in self.groups if self.matches(g, filters)]
        if offset >= len(shown):  # e.g. a filter shrank the list: show its last page
            offset = (len(shown) - 1) // limit * limit if shown else 0
        offset = max(0, offset)
        return {
            "total": len(shown),
            "offset": offset,
            "limit": limit,
            "groups": [self.view(g) for g in shown[offset:offset + limit]],
            "totals": self.totals(),
        }

    def _folder(self, path: str) -> str:
        """The folder as the person knows it: below its root's name, as the target mirrors it."""
        folder = os.path.dirname(path)
        for root in self.report.get("roots", []):
            if folder == root or folder.startswith(root.rstrip(os.sep) + os.sep):
                return os.path.join(os.path.basename(root), os.path.relpath(folder, root)).removesuffix(os.sep + ".")
        return folder

    def view(self, g: GroupState) -> dict:
        facts, group = g.group["files"], g.group
        return {
            "index": g.index,
            "status": g.status,
            "keep": g.keep,
            "proposed_keep": 0,
            "rule": REVIEWER_RULE if g.keep else group.get("rule", ""),
            "proposed_rule": group.get("rule", ""),
            "why": "" if g.keep else group.get("why", ""),  # in words: why the proposed copy is kept
            "files": [
                {
                    "id": i,
                    "name": os.path.basename(p),
                    "folder": self._folder(p),
                    **{k: facts[p].get(k) for k in ("size", "mtime_ns", "width", "height", "format", "frames")},
                    "distance": group.get("distances", {}).get(p),
                    "evidence": group.get("evidence", {}).get(p),
                    # the other files of its unit (RAW, sidecars, video), and what only it holds
                    "members": [os.path.basename(m["path"]) for m in facts[p].get("members") or []
                                if isinstance(m, dict) and isinstance(m.get("path"), str)],
                    "metadata": (group.get("metadata") or {}).get(p) or {},
                    "outcome": g.outcomes.get(p),
                    "kept_over": None if g.keep else group.get("kept_over", {}).get(p),
                }
                for i, p in enumerate(g.files)
            ],
        }

    def totals(self) -> dict:
        """What applying the reviewed report would free, and how far the review has got."""
        accepted = [g for g in self.groups if g.status == "accepted"]
        removed = [(g, p) for g in accepted for p in g.removals()]
        return {
            "groups": len(self.groups),
            "pending": sum(g.status == "pending" for g in self.groups),
            "accepted": len(accepted),
            "distinct": sum(g.status == "distinct" for g in self.groups),
            "applied": sum(g.status == "applied" for g in self.groups),
            "files": len(removed),
            "bytes": sum(g.group["files"][p]["size"] for g, p in removed),
        }

    # -- the reviewed report ------------------------------------------------------------------

    def reviewed_report(self) -> dict:
        """The input report with only the accepted groups not applied yet, each with the kept
        copy the person chose; the groups marked "not duplicates" are listed under
        ``reviewed.distinct``."""
        groups = []
        for g in self.groups:
            if g.status != "accepted":
                continue
            src = g.group
            if g.keep == 0:
                out = {**src, "outcomes": {}}
            else:
                keep, remove = g.files[g.keep], g.removals()
                known = {**g.distances, g.files[0]: src["distances"].get(keep)}
                out = {
                    **src,
                    "keep": keep,
                    "remove": remove,
                    "rule": REVIEWER_RULE,
                    # the distances to the new kept copy; the verdict's evidence was about the old one
                    "distances": {p: known[p] for p in remove if known.get(p) is not None},
                    "evidence": {},
                    "outcomes": {},
                }
            groups.append(out)
        distinct = [list(pair) for g in self.groups if g.status == "distinct" for pair in self.distinct_pairs(g)]
        return {
            **self.report,
            "groups": groups,
            "reviewed": {
                "groups": len(self.groups),
                "pending": sum(g.status == "pending" for g in self.groups),
                "applied": sum(g.status == "applied" for g in self.groups),
                "distinct": distinct,
            },
        }
