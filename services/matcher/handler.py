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
# Records whose candidates are asked of the store at once: large enough that a store answers
# them in a few index passes and round trips, small enough to hold their records and hits.
BATCH = 2000


async def _candidates(records: Sequence[ImageRecord], store: Store, settings: Settings) -> list[list[ImageRecord]]:
    """Stage 1 for many records at once: what the indexes propose for each (never all pairs):
    the same digest, a signature near any orientation of it, an embedding near it."""
    # all at once: a store on a server (Elasticsearch) answers them side by side
    same, *near = await asyncio.gather(
        store.same_digest_many(records),
        store.candidates_many(records, settings.max_dist, CANDIDATE_LIMIT, turns=settings.match_orientations),
        store.similar_many(records, settings.min_similarity, SIMILAR_LIMIT),
    )
    out = []
    for k, record in enumerate(records):
        found: dict[str, ImageRecord] = {r.path: r for r in same[k]}
        for hits in near:
            for c in hits[k]:
                found.setdefault(c.record.path, c.record)
        out.append([
            r for r in found.values()
            if r.error is None and r.signature is not None and r.path != record.path
            # the store keeps the analyses of roots not scanned now: match across current roots only
            and (r.root == record.root or root_of(r.path, settings.source_directories) is not None)
            # a copy of a photo in a reference folder is one wherever it lies
            and pair_allowed(record, r, settings.across_dirs or settings.is_reference(record.path)
                             or settings.is_reference(r.path), settings.max_file_modification_time_diff)
            and not _same_file(record.path, r.path)
        ])
    return out


def _same_file(a: str, b: str) -> bool:
    """Hard links to one file (e.g. made by ``--action hardlink``) are not duplicates any more."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


class _Components:
    """Union-find over paths: the connected sets the candidate pairs make."""

    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, path: str) -> str:
        root = path
        while (up := self.parent.get(root, root)) != root:
            root = up
        while path != root:  # path halving keeps the trees flat
            path, self.parent[path] = self.parent[path], root
        return root

    def join(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def groups(self) -> list[list[str]]:
        out: dict[str, list[str]] = {}
        for path in self.parent:
            out.setdefault(self.find(path), []).append(path)
        return [sorted(members) for _, members in sorted(out.items())]


async def plan(
    paths: Iterable[str], *, store: Store, settings: Settings, ledger: Ledger | None = None,
    look: Look = look_in_thread, on_progress: Callable[[int], None] = lambda n: None,
    seeds: Mapping[str, ImageRecord] | None = None,
) -> list[Group]:
    """Plan the components that contain ``paths``: stage 1 (the indexes) links candidates into
    components, and each component is planned with the verdict (stage 2) as its judge. With a
    ledger, pixel comparisons made before are recalled from it, and the new ones kept there.
    ``seeds``: the stored records of ``paths``, when the caller has read them already.

    Stage 1 asks the store for ``BATCH`` records at a time (their neighbourhoods too: what they
    found that was not asked is asked next), so a whole library costs a few index passes per
    batch, not a query per record; only the records that have candidates are held, as
    components, and only one component's records at a time are read whole to be judged."""
    thresholds = Thresholds.of(settings)
    remembering = RememberingLook(look, ledger)
    folders = Folders(bundles.unit_extensions(settings.file_extensions))

    async def verdict(a: ImageRecord, b: ImageRecord) -> Evidence:
        await remembering.recall([(version(a), version(b))], thresholds.match_orientations)
        return await same_photo(a, b, thresholds, remembering)

    asked = sorted(dict.fromkeys(paths))
    seen = set(asked)
    components = _Components()
    edges: dict[tuple[str, str], float] = {}
    queue, at = list(asked), 0
    while at < len(queue):
        batch = queue[at : at + BATCH]
        at += len(batch)
        records = [seeds[p] for p in batch if p in seeds] if seeds is not None else []
        missing = [p for p in batch if seeds is None or p not in seeds]
        records += (await store.get_many(missing)).values() if missing else []
        records = [r for r in records if r.signature is not None]
        for record, found in zip(records, await _candidates(records, store, settings)):
            for c in found:
                pair = (record.path, c.path) if record.path < c.path else (c.path, record.path)
                if pair not in edges:
                    edges[pair] = goldberg(record, c, settings.match_orientations)[0]
                components.join(record.path, c.path)
                if c.path not in seen:
                    seen.add(c.path)
                    queue.append(c.path)
        on_progress(min(len(batch), max(0, len(asked) - (at - len(batch)))))
    by_component: dict[str, list[tuple[str, str, float]]] = {}
    for (a, b), d in edges.items():
        by_component.setdefault(components.find(a), []).append((a, b, d))

    groups: list[Group] = []
    done: set[str] = set()  # the files of the units planned already
    for members in components.groups():
        for part in _parts(members, by_component[components.find(members[0])]):
            component = await store.get_many([p for p in part if p not in done])
            part_edges = [e for e in by_component[components.find(members[0])] if e[0] in component and e[1] in component]
            if ledger is not None:
                part_edges = await drop_distinct(part_edges, component, ledger)
            # a RAW and the camera's JPEG beside it are one unit: planned as one, by its lead
            units = await units_of(component, store, verdict, folders)
            done.update(units)
            leads, part_edges = collapse(component, part_edges, units)

            async def judge(keeper: str, others: Sequence[str], leads=leads, units=units) -> list[Evidence]:
                await remembering.recall([(version(leads[keeper]), version(image)) for o in others
                                          for image in (units[o].images if o in units else [leads[o]])],
                                         thresholds.match_orientations)
                found = await asyncio.gather(*(judge_unit(leads[keeper], units.get(o), leads[o], verdict)
                                               for o in others))
                await remembering.save()
                return found

            found = await plan_groups(leads, part_edges, settings.prioritization_rules, settings.use_exif_data, judge,
                                      {p: u.unit for p, u in units.items()}, settings.is_reference)
            if found:  # most components hold no group
                groups += await asyncio.to_thread(_with_units, found, units)
    return groups


def _parts(members: list[str], edges: list[tuple[str, str, float]]) -> list[list[str]]:
    """A component, or for one larger than MAX_COMPONENT its parts of at most that many
    members in breadth-first order (neighbours together)."""
    if len(members) <= MAX_COMPONENT:
        return [members]
    neighbours: dict[str, list[str]] = {}
    for a, b, _ in edges:
        neighbours.setdefault(a, []).append(b)
        neighbours.setdefault(b, []).append(a)
    order: list[str] = []
    placed: set[str] = set()
    for start in members:
        if start in placed:
            continue
        placed.add(start)
        frontier = [start]
        while frontier:
            path = frontier.pop(0)
            order.append(path)
            for n in sorted(neighbours.get(path, ())):
                if n not in placed:
                    placed.add(n)
                    frontier.append(n)
    return [order[i : i + MAX_COMPONENT] for i in range(0, len(order), MAX_COMPONENT)]


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
