"""Matcher: finds each signed image's duplicates through the store index and publishes one
decision per group. Whole connected components are planned at once, so the verdict is the one
a whole-library plan would give (see shared.core.ranking)."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Awaitable, Callable, Iterable, Mapping

from shared.config import Settings
from shared.messages import Decision, FileRef, Removal
from shared.core.ranking import Group, pair_allowed, plan_groups
from shared.core.safety import root_of
from shared.image.signature import orientations, words
from shared.store import Candidate, ImageRecord, Ledger, Store

# A component larger than this is planned in parts; it only happens when thousands of files
# look alike (a burst of near-identical frames), and the parts are still safe on their own.
MAX_COMPONENT = 5000
CANDIDATE_LIMIT = 100


async def _neighbours(record: ImageRecord, store: Store, settings: Settings) -> list[Candidate]:
    queries = [record]
    if settings.match_orientations:
        queries += [
            dataclasses.replace(record, signature=o, words=words(o)) for o in orientations(record.signature)[1:]
        ]
    best: dict[str, Candidate] = {}
    for query in queries:
        for c in await store.candidates(query, settings.max_dist, CANDIDATE_LIMIT):
            if c.record.path not in best or c.distance < best[c.record.path].distance:
                best[c.record.path] = c
    return [
        c for c in best.values()
        if c.record.error is None
        # the store keeps the analyses of roots not scanned now: match across current roots only
        and (c.record.root == record.root or root_of(c.record.path, settings.source_directories) is not None)
        and pair_allowed(record, c.record, settings.across_dirs, settings.max_file_modification_time_diff)
        and not (c.distance == 0 and _same_file(record.path, c.record.path))
    ]


def _same_file(a: str, b: str) -> bool:
    """Hard links to one file (e.g. made by ``--action hardlink``) are not duplicates any more."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


async def plan(
    paths: Iterable[str], *, store: Store, settings: Settings, on_progress: Callable[[int], None] = lambda n: None
) -> list[Group]:
    """Plan the components that contain ``paths``."""
    seeds = await store.get_many(list(dict.fromkeys(paths)))
    pending = [p for p, r in sorted(seeds.items()) if r.signature is not None]
    done: set[str] = set()
    groups: list[Group] = []
    while pending:
        start = pending.pop()
        if start in done:
            continue
        component: dict[str, ImageRecord] = {start: seeds.get(start) or (await store.get_many([start]))[start]}
        edges: list[tuple[str, str, float]] = []
        frontier = [start]
        while frontier and len(component) < MAX_COMPONENT:
            path = frontier.pop()
            done.add(path)
            on_progress(1)
            for c in await _neighbours(component[path], store, settings):
                edges.append((path, c.record.path, c.distance))
                if c.record.path not in component:
                    component[c.record.path] = c.record
                    frontier.append(c.record.path)
        done.update(component)  # a component cut at MAX_COMPONENT is not planned twice
        groups += plan_groups(component, edges, settings.prioritization_rules, settings.use_exif_data)
    return groups


# -- pairs a person marked "not duplicates" -----------------------------------------------------


async def drop_distinct(
    edges: list[tuple[str, str, float]], records: Mapping[str, ImageRecord], ledger: Ledger
) -> list[tuple[str, str, float]]:
    """``edges`` without the pairs whose two content digests the ledger has marked distinct: a
    person said they show different photos, so they are never proposed again, whatever their
    distance. One ledger query for all the edges; a file without a digest keeps its edges."""
    digest = {p: r.digest for p, r in records.items() if r.digest}
    marked = await ledger.distinct(sorted({digest[p] for a, b, _ in edges for p in (a, b) if p in digest}))
    return [e for e in edges if frozenset((digest.get(e[0]), digest.get(e[1]))) not in marked]


def _facts(record: ImageRecord) -> dict:
    """What a person reviewing the group sees of each file besides its path."""
    return dict(path=record.path, size=record.size, mtime_ns=record.mtime_ns, width=record.width,
                height=record.height, format=record.format, frames=record.frames)


def to_decision(group: Group) -> Decision:
    return Decision(
        keep=FileRef(**_facts(group.keep)),
        remove=[Removal(**_facts(r), distance=round(d, 6)) for r, d in group.remove],
    )


async def handle_signed(
    paths: Iterable[str], *, store: Store, settings: Settings, publish: Callable[[Decision], Awaitable[None]]
) -> list[Decision]:
    """Match a batch of freshly signed images and publish a decision per duplicate group."""
    decisions = [to_decision(g) for g in await plan(paths, store=store, settings=settings)]
    for decision in decisions:
        await publish(decision)
    return decisions
