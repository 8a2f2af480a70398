"""Matcher: finds each signed image's duplicates through the store index and publishes one
decision per group. Whole connected components are planned at once, so the verdict is the one
a whole-library plan would give (see shared.core.ranking).

The plan mark (``ImageRecord.planned``, ``neighbors``) makes each new image planned once: once
its group was decided, the record keeps the paths retrieval linked it with, and a later batch
that meets it reads them back instead of asking the indexes again. Several matchers share the
work through the ledger's claims: every record of a component is claimed before it is looked
at, so a component is planned by one matcher at a time, and one that meets a record claimed
by another matcher is left to it (its seeds are tried again once that one is done).
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import os
import random
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from shared.config import Settings
from shared.core.verdict import Look, Thresholds, goldberg, same_photo, version
from shared.image.pixels import look_in_thread, measure_in_thread
from shared.messages import Decision, Evidence, FileRef, Removal
from shared.core import bundles
from shared.core.provenance import Known, Measure
from shared.core.ranking import Group, pair_allowed, plan_groups
from shared.core.safety import root_of
from shared.store import ImageRecord, Ledger, Store
from shared.store.comparisons import RememberingLook, ledger_key
from shared.image import metadata as meta
from services.matcher.units import Folders, PlannedUnit, collapse, judge_unit, units_of

# A component larger than this is planned in parts; it only happens when thousands of files
# look alike (a burst of near-identical frames), and the parts are still safe on their own.
MAX_COMPONENT = 5000
CANDIDATE_LIMIT = 100
# The embedding's nearest neighbours are its copies; beyond them it proposes look-alikes of the
# same kind (a series of similar shots), each costing a pixel comparison, so fewer are asked.
SIMILAR_LIMIT = 24
# Bump when what retrieval proposes changes (the indexes, the limits above, _admissible): the
# records planned before are then looked up again rather than trusted.
RETRIEVAL_VERSION = 2  # 2: SQLite's embedding retrieval exact (was HNSW)
#: The settings that retrieval reads: planned under others, a record is looked up again.
RETRIEVAL_SETTINGS = {"source_directories", "max_dist", "min_similarity", "match_orientations", "across_dirs",
                      "max_file_modification_time_diff", "reference_directories"}
# Records whose candidates are asked of the store at once: large enough that a store answers
# them in a few index passes and round trips, small enough to hold their records and hits.
BATCH = 2000
# A matcher's claim on the records it plans lasts this long and is renewed a third of the way
# through: long enough for any one component, short enough that the claims of a matcher that
# was killed hold its component back for at most this long.
CLAIM_SECONDS = 30.0
# A batch is planned this many new images at a time: the components of a few dozen images are
# claimed at once, so a second matcher finds most of the others free, while each round still
# asks the indexes about many records together.
CHUNK = 50
# Components of up to this many records have what the ledger holds about every pair of their
# records asked for with the others read beside them (one round trip for a run of components);
# nearly all are this small (copies come in twos and threes, bursts in tens). A larger one asks
# for the pairs it judges: its n² pairs would outgrow them.
RECALL_WITHIN = 8


def plan_mark(settings: Settings) -> str:
    """The mark of a record planned under these settings and this retrieval code."""
    return "plan-" + ledger_key(RETRIEVAL_VERSION, CANDIDATE_LIMIT, SIMILAR_LIMIT,
                                settings.model_dump_json(include=RETRIEVAL_SETTINGS))


def _admissible(record: ImageRecord, r: ImageRecord, settings: Settings, across_dirs: bool | None = None) -> bool:
    """May ``r`` be proposed as a duplicate of ``record`` at all (with ``across_dirs`` instead
    of the configured one, if given)?"""
    across = settings.across_dirs if across_dirs is None else across_dirs
    return (
        r.error is None and r.signature is not None and r.path != record.path
        # the store keeps the analyses of roots not scanned now: match across current roots only
        and (r.root == record.root or root_of(r.path, settings.source_directories) is not None)
        # a copy of a photo in a reference folder is one wherever it lies
        and pair_allowed(record, r, across or settings.is_reference(record.path)
                         or settings.is_reference(r.path), settings.max_file_modification_time_diff)
        and not _same_file(record.path, r.path)
    )


def _near(record: ImageRecord, r: ImageRecord, settings: Settings) -> bool:
    """Would retrieval propose this pair now: an admissible pair with the same digest, a
    signature within ``max_dist`` or an embedding cosine of at least ``min_similarity``? (A
    stored neighbour is read back only while it still is one: the file may have changed.)"""
    if not _admissible(record, r, settings) or record.signature is None:
        return False
    if record.digest and record.digest == r.digest:
        return True
    if goldberg(record, r, settings.match_orientations)[0] <= settings.max_dist:
        return True
    if record.embedding is None or r.embedding is None:
        return False
    a, b = record.embedding.astype(np.float64), r.embedding.astype(np.float64)
    norms = float(np.linalg.norm(a) * np.linalg.norm(b))
    return bool(norms) and float(a @ b) / norms >= settings.min_similarity


async def _candidates(
    records: Sequence[ImageRecord], store: Store, settings: Settings,
    across_roots_left_out: set[frozenset[str]] | None = None,
) -> list[list[ImageRecord]]:
    """Stage 1 for many records at once: what the indexes propose for each (never all pairs):
    the same digest, a signature near any orientation of it, an embedding near it. A pair that
    only across_dirs keeps apart is added to ``across_roots_left_out`` when the same content or
    a near signature proposed it (the embedding alone also proposes mere look-alikes of a series:
    not counted)."""
    # All at once, the embedding scan asked first: it is the longest and runs on threads of its
    # own once its queries are read, while the other two take the store's (SQLite's one thread
    # served them in the order asked: the scan began only after the word lookups, and a plan
    # at a million records waited for the two one after the other).
    similar, same, signed = await asyncio.gather(
        store.similar_many(records, settings.min_similarity, SIMILAR_LIMIT),
        store.same_digest_many(records),
        store.candidates_many(records, settings.max_dist, CANDIDATE_LIMIT, turns=settings.match_orientations),
    )
    near = (signed, similar)
    out = []
    for k, record in enumerate(records):
        found: dict[str, ImageRecord] = {r.path: r for r in same[k]}
        for hits in near:
            for c in hits[k]:
                found.setdefault(c.record.path, c.record)
        out.append([r for r in found.values() if _admissible(record, r, settings)])
        if across_roots_left_out is not None and not settings.across_dirs:
            across_roots_left_out.update(
                frozenset((record.path, r.path)) for r in (*same[k], *(c.record for c in near[0][k]))
                if r.root != record.root and not _admissible(record, r, settings)
                and _admissible(record, r, settings, across_dirs=True))
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
        while path != root:  # path compression keeps the trees flat
            self.parent[path], path = root, self.parent[path]
        return root

    def join(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def groups(self) -> list[list[str]]:
        out: dict[str, set[str]] = {}
        for path in self.parent:  # every joined path but the roots, which join never makes keys
            root = self.find(path)
            out.setdefault(root, {root}).add(path)
        return [sorted(members) for _, members in sorted(out.items())]


Edges = list[tuple[str, str, float]]
Claim = Callable[[Sequence[str]], Awaitable[set[str]]]


@dataclass
class Retrieved:
    """What stage 1 found: the connected sets of the records met, their candidate pairs (each
    once, with its Goldberg distance), and the paths another matcher held (``blocked``)."""

    components: _Components
    edges: dict[tuple[str, str], float]
    blocked: set[str]
    read: dict[str, ImageRecord]  # with claims: the records read (a few dozen)

    def alone(self) -> list[ImageRecord]:
        """The records read that retrieval linked to nothing: planned, with no group."""
        linked = {p for pair in self.edges for p in pair}
        return [r for p, r in self.read.items() if p not in linked]

    def parts(self) -> Iterator[tuple[list[str], Edges]]:
        """Each component to plan (a part at a time, for one larger than MAX_COMPONENT) with its
        pairs; none that holds a path another matcher held."""
        by_component: dict[str, Edges] = {}
        for (a, b), d in self.edges.items():
            by_component.setdefault(self.components.find(a), []).append((a, b, d))
        held = {self.components.find(p) for p in self.blocked}
        for members in self.components.groups():
            root = self.components.find(members[0])
            if root not in held and root in by_component:
                for part in _parts([p for p in members if p not in self.blocked], by_component[root]):
                    yield part, by_component[root]

    def deferred(self, seeds: Iterable[str]) -> list[str]:
        """The seeds left for later: held, or in a component that holds a path held elsewhere."""
        held = {self.components.find(p) for p in self.blocked}
        return [p for p in seeds if p in self.blocked or self.components.find(p) in held]


async def retrieve(
    paths: Iterable[str], *, store: Store, settings: Settings, seeds: Mapping[str, ImageRecord] | None = None,
    claim: Claim | None = None, on_progress: Callable[[int], None] = lambda n: None,
    across_roots_left_out: set[frozenset[str]] | None = None, mark: str | None = None,
) -> Retrieved:
    """Stage 1 for ``paths`` and everything connected to them, ``BATCH`` records at a time
    (what a batch finds that was not asked is asked next), so a whole library costs a few index
    passes per batch, not a query per record. A record without the current plan mark is looked
    up in the indexes; a planned one has its stored neighbours read back (those still near).
    With ``claim`` (several matchers), every record is claimed before it is read; a path
    refused is ``blocked``, and an asked path found planned meanwhile is left out (done).
    ``across_roots_left_out`` collects the pairs across roots that the records looked up in the
    indexes would have had with across_dirs on (a planned record's are not looked up again).
    ``mark``: the plan mark that counts as planned (the services': ``plan_mark``)."""
    mark = mark or plan_mark(settings)
    asked = sorted(dict.fromkeys(paths))
    seen, first = set(asked), set(asked)
    found = Retrieved(_Components(), {}, set(), {})

    def link(record: ImageRecord, c: ImageRecord) -> None:
        pair = (record.path, c.path) if record.path < c.path else (c.path, record.path)
        if pair not in found.edges:
            found.edges[pair] = goldberg(record, c, settings.match_orientations)[0]
        found.components.join(record.path, c.path)
        if c.path not in seen:
            seen.add(c.path)
            queue.append(c.path)

    queue, at = list(asked), 0
    while at < len(queue):
        batch = queue[at : at + BATCH]
        at += len(batch)
        if claim is not None:
            refused = await claim(batch)
            found.blocked |= refused
            batch = [p for p in batch if p not in refused]
        known = seeds if seeds is not None and claim is None else {}
        records = [known[p] for p in batch if p in known]
        missing = [p for p in batch if p not in known]
        records += (await store.get_many(missing)).values() if missing else []
        records = [r for r in records if r.signature is not None
                   and not (claim is not None and r.path in first and r.planned == mark)]
        if claim is not None:
            found.read.update((r.path, r) for r in records)
        looked_up = [r for r in records if r.planned != mark]
        for record, hits in zip(looked_up, await _candidates(looked_up, store, settings, across_roots_left_out)):
            for c in hits:
                link(record, c)
        read_back = [r for r in records if r.planned == mark]
        stored = await store.get_many(sorted({n for r in read_back for n in r.neighbors}))
        for record in read_back:
            for c in (stored[n] for n in record.neighbors if n in stored):
                if _near(record, c, settings):
                    link(record, c)
        on_progress(min(len(batch), max(0, len(asked) - (at - len(batch)))))
    return found


def _parts(members: list[str], edges: Edges) -> list[list[str]]:
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


def _marked(records: Mapping[str, ImageRecord], edges: Edges) -> list[ImageRecord]:
    """The records with their neighbours, as ``Store.mark_planned`` keeps them."""
    near: dict[str, set[str]] = {p: set() for p in records}
    for a, b, _ in edges:
        if a in near and b in near:
            near[a].add(b)
            near[b].add(a)
    return [dataclasses.replace(r, neighbors=tuple(sorted(near[p]))) for p, r in records.items()]


def slim(record: ImageRecord) -> ImageRecord:
    """What ``Store.mark_planned`` reads of a record (its revision and neighbours), without the
    descriptors: a plan holds one for every record it marks."""
    return dataclasses.replace(record, signature=None, embedding=None)


def _slimmed(group: Group) -> Group:
    """``group`` with its records ``slim``: a whole-library plan holds every group until it is
    done, and what becomes of a group (a decision, a report) reads none of the descriptors."""
    return dataclasses.replace(group, keep=slim(group.keep), remove=tuple((slim(r), e) for r, e in group.remove))


class Judge:
    """Stage 2 for the components of one plan: the verdict on each pair (pixel comparisons
    recalled from the ledger and kept there), folder listings and the pairs marked distinct
    read once (people mark few pairs; asking the ledger for each component's was three round
    trips to Elasticsearch per component)."""

    def __init__(self, settings: Settings, ledger: Ledger | None, look: Look, measure: Measure = measure_in_thread):
        self.settings, self.ledger, self.measure = settings, ledger, measure
        self._distinct: set[frozenset[str]] | None = None
        self.thresholds = Thresholds.of(settings)
        self.remembering = RememberingLook(look, ledger)
        self.folders = Folders(bundles.unit_extensions(settings.file_extensions))

    async def verdict(self, a: ImageRecord, b: ImageRecord) -> Evidence:
        await self.remembering.recall([(version(a), version(b))], self.thresholds.match_orientations)
        return await same_photo(a, b, self.thresholds, self.remembering)

    async def recall_within(self, components: Iterable[Mapping[str, ImageRecord]]) -> None:
        """What the ledger holds about every pair of records of each component of up to
        ``RECALL_WITHIN``, asked at once."""
        await self.remembering.recall([(version(a), version(b)) for records in components if len(records) <= RECALL_WITHIN
                                       for a, b in itertools.combinations(records.values(), 2)],
                                      self.thresholds.match_orientations)

    async def units(self, records: Mapping[str, ImageRecord], store: Store) -> dict[str, PlannedUnit]:
        """The unit of every file of a component (a RAW and the camera's JPEG beside it are
        one), its other images read from the store."""
        return await units_of(records, store, self.verdict, self.folders)

    async def groups(self, records: Mapping[str, ImageRecord], edges: Edges,
                     units: Mapping[str, PlannedUnit]) -> list[Group]:
        """A component's groups, each removal judged by the verdict against its keeper; a unit
        is planned as one, by its lead."""
        edges = [e for e in edges if e[0] in records and e[1] in records]
        if self.ledger is not None:
            if self._distinct is None:
                self._distinct = {frozenset(pair) for pair in await self.ledger.marked_distinct()}
            edges = drop_distinct(edges, records, self._distinct)
        leads, edges = collapse(records, edges, units)
        remembering = self.remembering

        async def judge(keeper: str, others: Sequence[str]) -> list[Evidence]:
            await remembering.recall([(version(leads[keeper]), version(image)) for o in others
                                      for image in (units[o].images if o in units else [leads[o]])],
                                     self.thresholds.match_orientations)
            found = await asyncio.gather(*(judge_unit(leads[keeper], units.get(o), leads[o], self.verdict) for o in others))
            await remembering.save_some()
            return found

        found = await plan_groups(leads, edges, self.settings.prioritization_rules, self.settings.use_exif_data, judge,
                                  {p: u.unit for p, u in units.items()}, self.settings.is_reference,
                                  Known(leads, remembering, self.thresholds.match_orientations, self.measure))
        return await asyncio.to_thread(_with_units, found, units) if found else []  # most components hold none


async def plan(
    paths: Iterable[str], *, store: Store, settings: Settings, ledger: Ledger | None = None,
    look: Look = look_in_thread, on_progress: Callable[[int], None] = lambda n: None,
    seeds: Mapping[str, ImageRecord] | None = None, across_roots_left_out: set[frozenset[str]] | None = None,
    measure: Measure = measure_in_thread, mark: str | None = None, planned: list[ImageRecord] | None = None,
    set_aside: bool = False,
) -> list[Group]:
    """Plan the components that contain ``paths``: stage 1 (the indexes) links candidates into
    components, and each component is planned with the verdict (stage 2) as its judge. With a
    ledger, pixel comparisons made before are recalled from it, and the new ones kept there.
    ``seeds``: the stored records of ``paths``, when the caller has read them already;
    ``across_roots_left_out`` and ``mark``: as for ``retrieve``; ``planned`` receives the records
    of the components planned (``slim``, with their neighbours), for the caller to mark.
    ``set_aside``: the caller searches no more for a while (local mode's plan of a whole
    library): the store's indexes are given back once stage 1 is done, as stage 2 reads records.

    Only the records that have candidates are held, as components, and only a run of
    components of up to ``BATCH`` files at a time is read whole to be judged."""
    await store.refresh()  # every record written before this call is found
    found = await retrieve(paths, store=store, settings=settings, seeds=seeds, on_progress=on_progress,
                           across_roots_left_out=across_roots_left_out, mark=mark)
    if set_aside:
        await store.set_aside()
    judge = Judge(settings, ledger, look, measure)
    groups: list[Group] = []
    done: set[str] = set()  # the files of the units planned already
    for parts in _read_together(found.parts()):
        # the records of components holding up to BATCH files read at once: one read per
        # component was a round trip to Elasticsearch for each of a library's groups
        read = await store.get_many([p for part, _ in parts for p in part if p not in done])
        await judge.recall_within({p: read[p] for p in part if p in read} for part, _ in parts)
        for part, edges in parts:
            records = {p: read[p] for p in part if p not in done and p in read}
            # a RAW and the camera's JPEG beside it are one unit: planned as one, by its lead
            units = await judge.units(records, store)
            # the files of the units planned here; an image of the same stem read only to tell
            # (a photo.png beside photo.jpg, each a unit of its own) is planned in its own component
            done.update(p for p, u in units.items() if any(i.path in records for i in u.images))
            groups += map(_slimmed, await judge.groups(records, edges, units))
            if planned is not None:
                planned += map(slim, _marked(records, edges))
        # nothing recalled is held from one run to the next (no pair is judged in two
        # components); the last run's new comparisons are written
        await judge.remembering.forget()
    await judge.remembering.save()
    return groups


def _read_together(parts: Iterable[tuple[list[str], Edges]]) -> Iterator[list[tuple[list[str], Edges]]]:
    """The components in runs of at most ``BATCH`` files (a larger one alone)."""
    run: list[tuple[list[str], Edges]] = []
    files = 0
    for part, edges in parts:
        if run and files + len(part) > BATCH:
            yield run
            run, files = [], 0
        run.append((part, edges))
        files += len(part)
    if run:
        yield run


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


def drop_distinct(
    edges: list[tuple[str, str, float]], records: Mapping[str, ImageRecord], marked: set[frozenset[str]]
) -> list[tuple[str, str, float]]:
    """``edges`` without the pairs whose two content digests are ``marked`` distinct (in the
    ledger): a person said they show different photos, so they are never proposed again,
    whatever their distance. A file without a digest keeps its edges."""
    digest = {p: r.digest for p, r in records.items() if r.digest}
    return [e for e in edges if frozenset((digest.get(e[0]), digest.get(e[1]))) not in marked]


def _facts(record: ImageRecord) -> dict:
    """What a person reviewing the group sees of each file besides its path."""
    return dict(path=record.path, size=record.size, mtime_ns=record.mtime_ns, width=record.width,
                height=record.height, format=record.format, frames=record.frames)


def to_decision(group: Group) -> Decision:
    def facts(record: ImageRecord) -> dict:
        return {**_facts(record), "members": group.members.get(record.path, ())}

    return Decision(
        keep=FileRef(**facts(group.keep)), rule=group.rule, why=group.why,
        remove=[Removal(**facts(r), distance=e.distance or 0.0, evidence=e, metadata=group.metadata.get(r.path, {}),
                        why=group.kept_over.get(r.path, "")) for r, e in group.remove],
    )


class Claims:
    """One matcher's claims in the ledger (``claim`` as ``retrieve`` wants it), renewed in the
    background while it holds them, and all given up when it leaves (``async with``)."""

    def __init__(self, ledger: Ledger, owner: str, seconds: float = CLAIM_SECONDS):
        self.ledger, self.owner, self.seconds = ledger, owner, seconds
        self.held: set[str] = set()
        self._renewing: asyncio.Task[None] | None = None

    async def claim(self, paths: Sequence[str]) -> set[str]:
        refused = await self.ledger.claim(paths, self.owner, self.seconds)
        self.held.update(p for p in paths if p not in refused)
        return refused

    async def release(self, paths: Iterable[str]) -> None:
        paths = [p for p in paths if p in self.held]
        if paths:
            await self.ledger.unclaim(paths, self.owner)
            self.held.difference_update(paths)

    async def _renew(self) -> None:
        while True:
            await asyncio.sleep(self.seconds / 3)
            if self.held:
                try:
                    await self.ledger.claim(sorted(self.held), self.owner, self.seconds)
                except Exception:  # noqa: BLE001 - a renewal missed is tried again; the work itself reports
                    pass

    async def __aenter__(self) -> Claims:
        self._renewing = asyncio.create_task(self._renew())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._renewing is not None:
            self._renewing.cancel()
        if self.held:  # a batch that failed: its claims expire anyway, but others need not wait
            try:
                await asyncio.shield(self.release(list(self.held)))
            except Exception:  # noqa: BLE001 - the store is down: they expire on their own
                pass


async def handle_signed(
    paths: Iterable[str], *, store: Store, settings: Settings, ledger: Ledger,
    publish: Callable[[Decision], Awaitable[None]], owner: str, look: Look = look_in_thread,
) -> list[Decision]:
    """Match a batch of freshly signed images and publish a decision per duplicate group.

    Each image is planned once: those already planned (by another batch or matcher, which met
    them in its component) are done. Components are claimed record by record (``owner``); one
    that meets a record another matcher holds is tried again after a short wait, by which time
    that matcher has usually planned it. After a component's decisions were published its
    records get the plan mark, then the claims end: a crash in between plans it again (the same
    decisions, which the actuator settles once), never not at all."""
    mark = plan_mark(settings)
    judge = Judge(settings, ledger, look)
    published: list[Decision] = []
    pending = list(dict.fromkeys(paths))
    random.shuffle(pending)  # two matchers with one backlog start on different components
    deferred: list[str] = []
    pause = 0.2
    await store.refresh()  # every image announced was written before its message: all are found
    async with Claims(ledger, owner) as claims:
        while pending or deferred:
            if not pending:  # only what another matcher holds is left: give it time to finish
                await asyncio.sleep(pause * (1 + random.random()))
                pause = min(pause * 2, CLAIM_SECONDS / 3)
                pending, deferred = deferred, []
            chunk, pending = pending[:CHUNK], pending[CHUNK:]
            found = await retrieve(chunk, store=store, settings=settings, claim=claims.claim)
            left = set(found.deferred(chunk))
            for part, edges in found.parts():
                records = await store.get_many(part)
                units = await judge.units(records, store)
                # the other images of its units (same stem, not linked by retrieval) are the
                # component's too for as long as it is planned
                if await claims.claim([p for p in units if p not in records]):
                    left |= {p for p in part if p in chunk}
                    continue
                decisions = [to_decision(g) for g in await judge.groups(records, edges, units)]
                await judge.remembering.save()  # an actuator's dry run recalls them rather than look again
                for decision in decisions:
                    await publish(decision)
                published += decisions
                await store.mark_planned(_marked(records, edges), mark)
                await claims.release([*part, *units])
            await store.mark_planned([r for r in found.alone() if r.path not in left], mark)
            await judge.remembering.forget()  # a chunk's comparisons are not held through the next
            await claims.release(list(claims.held))  # those of the components left to another matcher
            deferred += sorted(left)
    return published
