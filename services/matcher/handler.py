"""Matcher: finds each signed image's duplicates through the store index and publishes one
decision per group. Whole connected components are planned at once, so the verdict is the one
a whole-library plan would give (see shared.core.ranking)."""

from __future__ import annotations

import asyncio
import dataclasses
import os
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence

from shared.config import Settings
from shared.core.verdict import Look, Thresholds, goldberg, same_photo, version
from shared.image.pixels import look_in_thread
from shared.messages import Decision, Evidence, FileRef, Removal
from shared.core import bundles
from shared.core.ranking import Group, pair_allowed, plan_groups, rule_in_words
from shared.core.safety import root_of
from shared.store import ImageRecord, Ledger, Store
from shared.store.comparisons import RememberingLook
from shared.image import metadata as meta
from services.matcher.units import Folders, PlannedUnit, collapse, judge_unit, units_of

# A component larger than this is planned in parts; it only happens when thousands of files
# look alike (a burst of near-identical frames), and the parts are still safe on their own.
MAX_COMPONENT = 5000
CANDIDATE_LIMIT = 100
# The embedding's nearest neighbours are its copies; beyond them it proposes look-alikes of the
# same kind (a series of similar shots), each costing a pixel comparison, so fewer are asked.
SIMILAR_LIMIT = 24


async def _candidates(record: ImageRecord, store: Store, settings: Settings) -> list[ImageRecord]:
    """Stage 1: what the indexes propose for ``record`` (never all pairs): the same digest, a
    signature near any orientation of it, an embedding near it."""
    # all at once: a store on a server (Elasticsearch) answers them side by side
    same, *near = await asyncio.gather(
        store.same_digest(record),
        store.candidates(record, settings.max_dist, CANDIDATE_LIMIT, turns=settings.match_orientations),
        store.similar(record, settings.min_similarity, SIMILAR_LIMIT),
    )
    found: dict[str, ImageRecord] = {r.path: r for r in same}
    for hits in near:
        for c in hits:
            found.setdefault(c.record.path, c.record)
    return [
        r for r in found.values()
        if r.error is None and r.signature is not None and r.path != record.path
        # the store keeps the analyses of roots not scanned now: match across current roots only
        and (r.root == record.root or root_of(r.path, settings.source_directories) is not None)
        # a copy of a photo in a reference folder is one wherever it lies
        and pair_allowed(record, r, settings.across_dirs or settings.is_reference(record.path)
                         or settings.is_reference(r.path), settings.max_file_modification_time_diff)
        and not _same_file(record.path, r.path)
    ]


def _same_file(a: str, b: str) -> bool:
    """Hard links to one file (e.g. made by ``--action hardlink``) are not duplicates any more."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


async def plan(
    paths: Iterable[str], *, store: Store, settings: Settings, ledger: Ledger | None = None,
    look: Look = look_in_thread, on_progress: Callable[[int], None] = lambda n: None,
    seeds: Mapping[str, ImageRecord] | None = None,
) -> list[Group]:
    """Plan the components that contain ``paths``: stage 1 (the indexes) links candidates into
    components, and each component is planned with the verdict (stage 2) as its judge. With a
    ledger, pixel comparisons made before are recalled from it, and the new ones kept there.
    ``seeds``: the stored records of ``paths``, when the caller has read them already."""
    thresholds = Thresholds.of(settings)
    remembering = RememberingLook(look, ledger)
    folders = Folders(bundles.unit_extensions(settings.file_extensions))

    async def verdict(a: ImageRecord, b: ImageRecord) -> Evidence:
        await remembering.recall([(version(a), version(b))], thresholds.match_orientations)
        return await same_photo(a, b, thresholds, remembering)

    if seeds is None:
        seeds = await store.get_many(list(dict.fromkeys(paths)))
    pending = [p for p, r in sorted(seeds.items()) if r.signature is not None]
    done: set[str] = set()
    groups: list[Group] = []
    while pending:
        start = pending.pop()
        if start in done:
            continue
        component: dict[str, ImageRecord] = {start: seeds[start]}
        edges: list[tuple[str, str, float]] = []
        frontier = [start]
        while frontier and len(component) < MAX_COMPONENT:
            path = frontier.pop()
            done.add(path)
            on_progress(1)
            record = component[path]
            for c in await _candidates(record, store, settings):
                edges.append((path, c.path, goldberg(record, c, settings.match_orientations)[0]))
                if c.path not in component:
                    component[c.path] = c
                    frontier.append(c.path)
        done.update(component)  # a component cut at MAX_COMPONENT is not planned twice
        if ledger is not None:
            edges = await drop_distinct(edges, component, ledger)
        # a RAW and the camera's JPEG beside it are one unit: planned as one, by its lead
        units = await units_of(component, store, verdict, folders)
        done.update(units)
        leads, edges = collapse(component, edges, units)

        async def judge(keeper: str, others: Sequence[str], leads=leads, units=units) -> list[Evidence]:
            await remembering.recall([(version(leads[keeper]), version(image)) for o in others
                                      for image in (units[o].images if o in units else [leads[o]])],
                                     thresholds.match_orientations)
            found = await asyncio.gather(*(judge_unit(leads[keeper], units.get(o), leads[o], verdict) for o in others))
            await remembering.save()
            return found

        found = await plan_groups(leads, edges, settings.prioritization_rules, settings.use_exif_data, judge,
                                  {p: u.unit for p, u in units.items()}, settings.is_reference)
        if found:  # most components hold no group
            groups += await asyncio.to_thread(_with_units, found, units)
    return groups


def _with_units(groups: list[Group], units: Mapping[str, PlannedUnit]) -> list[Group]:
    """Each group with the other files of its units, and what only a removed unit holds of a
    person's metadata (read from the files and their sidecars now)."""
    out = []
    for group in groups:
        members = {r.path: units[r.path].members() for r in (group.keep, *(r for r, _ in group.remove)) if r.path in units}

        def read(record: ImageRecord) -> meta.Metadata:
            return meta.read(record.path, [m.path for m in members.get(record.path, ()) if m.kind == "sidecar"])

        kept = read(group.keep)
        notes = {r.path: meta.missing(kept, read(r)).described() for r, _ in group.remove}
        out.append(dataclasses.replace(group, members=members, metadata={p: n for p, n in notes.items() if n}))
    return out


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
    def facts(record: ImageRecord) -> dict:
        return {**_facts(record), "members": group.members.get(record.path, ())}

    return Decision(
        keep=FileRef(**facts(group.keep)), rule=group.rule, why=rule_in_words(group.rule),
        remove=[Removal(**facts(r), distance=e.distance or 0.0, evidence=e, metadata=group.metadata.get(r.path, {}))
                for r, e in group.remove],
    )


async def handle_signed(
    paths: Iterable[str], *, store: Store, settings: Settings, ledger: Ledger | None = None, publish: Callable[[Decision], Awaitable[None]]
) -> list[Decision]:
    """Match a batch of freshly signed images and publish a decision per duplicate group."""
    decisions = [to_decision(g) for g in await plan(paths, store=store, settings=settings, ledger=ledger)]
    for decision in decisions:
        await publish(decision)
    return decisions
