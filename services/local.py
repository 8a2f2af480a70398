"""Local mode: the four handlers wired in one process over the in-process bus and the store
(SQLite, or Elasticsearch when configured), run as the six phases of a de-duplication."""

from __future__ import annotations

import asyncio
import bisect
import hashlib
import itertools
import json
from importlib import metadata
from collections.abc import Awaitable, Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from services.actuator.handler import ActionOutcome, handle_decision
from services.hasher.handler import HashOutcome, ProcessSigner, Sign, handle_file_event
from services.matcher.handler import plan, plan_mark, to_decision
from services.matcher.units import companion_facts
from services.watcher.handler import FoundFile, clean_up, walk
from shared.actions import Journal, recover, remove_empty_folders
from shared.bus import InProcessBus
from shared.config import Settings
from shared.core.verdict import Look
from shared.core.provenance import Measure
from shared.image.pixels import look_in_thread, measure_in_thread
from shared.messages import Decision, FileEvent, Message
from shared.store import ImageRecord, Ledger, Store
from shared.store.comparisons import COMPARE_VERSION, ledger_key
from shared.store.open import open_stores


REPORT_VERSION = 2
T = TypeVar("T")


@dataclass
class Summary:
    files: int = 0
    signed: int = 0
    unchanged: int = 0
    upgraded: int = 0  # unchanged, but analysed again: the store was written by an older analysis
    forgotten: int = 0
    problems: list[tuple[str, str]] = field(default_factory=list)  # (path, one-line reason)
    decisions: list[Decision] = field(default_factory=list)
    outcomes: list[ActionOutcome] = field(default_factory=list)
    removed_folders: list[Path] = field(default_factory=list)
    journal: Path | None = None
    #: pairs of files in different roots that the indexes proposed but that were not compared
    #: because across_dirs is off: the summary says so, and which option compares them
    across_roots_left_out: int = 0
    interrupted: bool = False  # stopped by the user (Ctrl-C): the summary is of what was done

    def count(self, status: str) -> int:
        return sum(1 for o in self.outcomes if o.status == status)

    def report(self, settings: Settings) -> dict:
        """The report format of the benchmark kit (``groups`` of ``keep`` and ``remove``), with
        per group the rule that chose the kept copy, each file's facts, the verdict's evidence
        per removal and what happened to it. ``image-dedup apply`` reads it back."""
        by_path = {o.path: o for o in self.outcomes}

        def facts(f) -> dict:
            return f.model_dump(mode="json", exclude={"path", "distance", "evidence", "metadata"})

        return {
            "version": REPORT_VERSION,
            "roots": [str(r) for r in settings.source_directories],
            "groups": [
                {
                    "keep": d.keep.path,
                    "remove": [r.path for r in d.remove],
                    "rule": d.rule,
                    "why": d.why,  # why the kept copy was kept over the runner-up, in words
                    "kept_over": {r.path: r.why for r in d.remove if r.why},  # ... and over each removal
                    "distances": {r.path: r.distance for r in d.remove},
                    "evidence": {r.path: r.evidence.model_dump() for r in d.remove if r.evidence},
                    "files": {f.path: facts(f) for f in (d.keep, *d.remove)},
                    # what only a removed copy holds of a person's metadata, in words per field
                    "metadata": {r.path: r.metadata for r in d.remove if r.metadata},
                    "outcomes": {
                        r.path: {"status": by_path[r.path].status, "reason": by_path[r.path].reason,
                                 "files": list(by_path[r.path].files)}
                        for r in d.remove if r.path in by_path
                    },
                }
                for d in self.decisions
            ],
            "problems": [{"path": p, "reason": r} for p, r in self.problems],
        }


class Phases:
    """Progress bars per phase (rich); silent when quiet or not on a terminal."""

    def __init__(self, console: Console, quiet: bool):
        self.progress = Progress(
            TextColumn("{task.description:<10}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"), TimeElapsedColumn(),
            TimeRemainingColumn(), console=console, disable=quiet or not console.is_terminal,
        )

    @contextmanager
    def phase(self, name: str, total: int | None) -> Iterator[Callable[..., None]]:
        task = self.progress.add_task(name, total=total, rate="")

        def advance(n: int = 1) -> None:
            self.progress.advance(task, n)
            if not self.progress.disable:  # the rate is a pass over the task's samples
                speed = self.progress.tasks[task].speed
                self.progress.update(task, rate=f"{speed:.0f}/s" if speed else "")

        try:
            yield advance
        finally:  # a phase may do less than announced (files that vanished): end the bar full
            done = self.progress.tasks[task].completed
            self.progress.update(task, total=done)


async def deduplicate(
    settings: Settings, console: Console | None = None, quiet: bool = False, sign: Sign | None = None,
    stop: asyncio.Event | None = None, summary: Summary | None = None,
) -> Summary:
    """Run the six phases; ``sign`` defaults to a process pool of ``settings.threads``. Once
    ``stop`` is set (Ctrl-C), no further file is analysed and no further group acted on: the
    run ends after what is in hand, with ``summary.interrupted`` (filled in as the run goes,
    so a caller that cancels the run at once still has what was done)."""
    console = console or Console(stderr=True)
    summary = summary if summary is not None else Summary()
    stop = stop or asyncio.Event()
    store, ledger = await open_stores(settings)
    bus = InProcessBus()
    phases = Phases(console, quiet)
    signer = ProcessSigner(settings.threads, keep_pixels=True) if sign is None else None
    sign = sign or signer
    try:
        if signer is not None:
            await signer.start()
        if not settings.dry_run:  # a run killed part-way through a unit: finished or rolled back now
            for line in recover(settings.journal_directory):
                console.print(f"journal: {line}", highlight=False, markup=False, soft_wrap=True)
        with phases.progress:
            # 1. forget what vanished
            summary.forgotten = len(await clean_up(store, settings))

            # 2. count
            found: list[FoundFile] = []
            with phases.phase("count", None) as advance:
                for f in walk(settings, on_error=lambda p, r: summary.problems.append((p, r))):
                    found.append(f)
                    advance()
                    if len(found) % 500 == 0:
                        await asyncio.sleep(0)  # a long walk still hears Ctrl-C
                    if stop.is_set():
                        break
            summary.files = len(found)

            # 3. analyse (incremental: the hasher skips files whose size and mtime are unchanged)
            with phases.phase("analyse", len(found)) as advance:
                async def hash_one(message: Message) -> None:
                    try:
                        if stop.is_set():
                            return
                        outcome: HashOutcome = await handle_file_event(
                            message, store=store, settings=settings, sign=sign, publish=_unheard
                        )
                        if outcome.status == "signed":
                            summary.signed += 1
                        elif outcome.status == "unchanged":
                            summary.unchanged += 1
                        elif outcome.status == "upgraded":
                            summary.upgraded += 1
                    finally:
                        advance()

                await bus.subscribe("file.event", hash_one, concurrency=settings.threads * 2)
                for f in found:
                    if stop.is_set():
                        break
                    await bus.publish(FileEvent(path=f.path))
                await bus.join("file.event")
            if summary.upgraded:
                console.print(f"{summary.upgraded} unchanged files were analysed again: the store was written "
                              "by an older version of the analysis", highlight=False)
            summary.problems += [(d.message.path, d.reason) for d in bus.dead]
            bus.dead.clear()

            # 4. match every file of the library, not only the ones signed in this run
            if not stop.is_set():
                with phases.phase("match", len(found)) as advance:
                    matched = await _unless_stopped(stop, match_library(
                        [f.path for f in found], store, ledger, settings,
                        signer.look if signer is not None else look_in_thread, advance,
                        signer.measure if signer is not None else measure_in_thread))
                if matched is not None:
                    summary.decisions, summary.across_roots_left_out = matched

            # 5. and 6.
            if not stop.is_set():
                await act(summary, settings, store, ledger, bus, phases, stop)
            summary.interrupted = stop.is_set()
    finally:
        await bus.close()
        if signer is not None:
            signer.close()
        await store.close()
        await ledger.close()
    return summary


async def _unheard(message: Message) -> None:
    """Local mode plans the whole library after the analysis: an ``image.signed`` needs no listener."""


async def _unless_stopped(stop: asyncio.Event, work: Awaitable[T]) -> T | None:
    """``work``'s result, or None when ``stop`` is set first (``work`` is then cancelled: only
    what changes nothing on disk is run this way)."""
    task = asyncio.ensure_future(work)
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait([task, stopped], return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
    if task.done():
        return task.result()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    return None


FACTS_BATCH = 5000  # records read at a time to tell whether anything changed since the last plan
#: What the plan reads of the settings; a change of any of them plans the library again.
PLAN_SETTINGS = {"source_directories", "reference_directories", "max_dist", "min_similarity", "min_agreement", "match_orientations",
                 "across_dirs", "max_file_modification_time_diff", "prioritization_rules", "use_exif_data"}


def local_mark(settings: Settings) -> str:
    """Local mode's plan mark: its own, so a dry run's marks never tell the services that a
    record's group was decided, and theirs never tell local mode that its last plan holds it."""
    return plan_mark(settings) + "-local"


async def match_library(
    paths: list[str], store: Store, ledger: Ledger, settings: Settings, look: Look, advance: Callable[[int], None],
    measure: Measure = measure_in_thread,
) -> tuple[list[Decision], int]:
    """Phase 4: the decisions, and how many pairs across roots were left out (across_dirs
    off). The plan depends only on the files (their versions and contents), the settings
    it reads, the pairs marked distinct and the code: when none of them changed since the last
    run over these roots, that run's plan is the plan, and no index is queried again. When only
    files changed, only the changed files and the components they meet are planned again (the
    records planned carry local mode's plan mark and their neighbours, so the others are read
    back, not looked up); the last plan's other groups stand. The actuator checks every removal
    against the disk and the verdict all the same. The records are read a batch at a time, so a
    library of a million files is never held whole."""
    mark = local_mark(settings)
    files = hashlib.blake2b(digest_size=20)
    distinct = await ledger.marked_distinct()  # people mark few pairs: those of these files count
    wanted, digests = {d for pair in distinct for d in pair}, set()
    library = _Library(paths)
    ordered = library.ordered
    for start in range(0, len(ordered), FACTS_BATCH):
        records = await store.get_many(ordered[start : start + FACTS_BATCH])
        for at, path in enumerate(ordered[start : start + FACTS_BATCH], start):
            if (r := records.get(path)) is not None:
                files.update(repr((path, r.size, r.mtime_ns, r.digest, r.error)).encode("utf-8", "surrogateescape"))
                digests.update([r.digest] if r.digest in wanted else [])
                if r.signature is not None and r.planned != mark:
                    library.changed_at(at, r.revision)
    marked = {frozenset(pair) for pair in distinct if pair[0] in digests and pair[1] in digests}
    facts = (
        metadata.version("image-dedup"), COMPARE_VERSION, mark,
        settings.model_dump_json(include=PLAN_SETTINGS), sorted(sorted(pair) for pair in marked),
        companion_facts(paths),  # sidecars and videos rank units and travel with them
    )
    base, fingerprint = ledger_key(*facts), ledger_key(*facts, files.hexdigest())
    key = "plan-" + ledger_key(*sorted(map(str, settings.source_directories)))
    last = (await ledger.recall([key])).get(key)
    if last is not None and last["fingerprint"] == fingerprint and (kept := await _recall_plan(ledger, key, last)) is not None:
        advance(len(paths))
        return [_decision(d) for d in kept], last.get("across_roots_left_out", 0)

    def stale(files: Iterable[str]) -> bool:
        return any(library.changed(p) or p not in library for p in files)

    asked, standing, left_out = ordered, [], set()
    if last is not None and last.get("mark") == mark:  # the records read back bring no new pairs
        left_out = {frozenset(pair) for pair in last.get("left_out", []) if not stale(pair)}
    previous = await _recall_plan(ledger, key, last) if last is not None and last.get("base") == base else None
    if previous is not None:  # only files changed: plan them and what they meet
        # the decisions that stand are held as they were kept (JSON text: 1 KB, where a
        # Decision is 9) until the plan is made: with a million photos', the indexes are held
        met: set[str] = set()
        for kept in previous:
            files = _kept_paths(kept)
            if stale(files):
                met.update(p for p in files if p in library)
            else:
                standing.append((files, kept))
        asked = sorted({*(p for p, _ in library.all_changed()), *met})
        advance(len(paths) - len(asked))
    del previous
    planned: list[ImageRecord] = []
    groups = await plan(asked, store=store, settings=settings, ledger=ledger, look=look, on_progress=advance,
                        across_roots_left_out=left_out, measure=measure, mark=mark, planned=planned,
                        set_aside=True) if asked else []
    replanned = {r.path for r in planned}
    decisions = [_decision(kept) for files, kept in standing if not any(p in replanned for p in files)]
    del standing
    while groups:  # each group given back as it is made a decision: a million photos' are 300 MB
        decisions.append(to_decision(groups.pop()))
    decisions.sort(key=lambda d: d.keep.path)
    await _remember_plan(ledger, key, decisions, {
        "fingerprint": fingerprint, "base": base, "mark": mark, "across_roots_left_out": len(left_out),
        "left_out": sorted(sorted(pair) for pair in left_out)})
    # marked only once the plan that holds their groups is remembered: a run cut off before
    # that finds them unmarked and plans them again
    await _mark(store, planned, library, replanned, mark)
    return decisions, len(left_out)


class _Library:
    """The paths of a library in order, and which of them are not planned at their stored
    revision (and that revision): arrays beside the sorted paths, where a set of the paths and
    a dict of a revision tuple per path held ~200 MB at a million photos."""

    def __init__(self, paths: Iterable[str]):
        self.ordered = sorted(paths)
        self._changed = np.zeros(len(self.ordered), bool)
        self._revisions = np.zeros((len(self.ordered), 3), np.int64)

    def __contains__(self, path: str) -> bool:
        return self._at(path) >= 0

    def _at(self, path: str) -> int:
        at = bisect.bisect_left(self.ordered, path)
        return at if at < len(self.ordered) and self.ordered[at] == path else -1

    def changed_at(self, at: int, revision: tuple[int, int, int]) -> None:
        self._changed[at], self._revisions[at] = True, revision

    def changed(self, path: str) -> bool:
        return (at := self._at(path)) >= 0 and bool(self._changed[at])

    def all_changed(self) -> Iterator[tuple[str, tuple[int, int, int]]]:
        """The paths not planned at their revision, in order, with that revision."""
        for at in np.flatnonzero(self._changed).tolist():
            yield self.ordered[at], tuple(self._revisions[at].tolist())


#: Decisions per ledger entry of a remembered plan. One entry of a million photos' plan (50,000
#: groups) held every decision three times more at once, as JSON text, as one document and as
#: its bytes for SQLite (+520 MB); a part of 2,000 holds ~20 MB of them, and a plan of a small
#: library is still one part.
PLAN_PART = 2000


async def _remember_plan(ledger: Ledger, key: str, decisions: list[Decision], head: dict) -> None:
    """The plan as parts of ``PLAN_PART`` decisions, each under the plan's fingerprint, then
    its head (which says how many parts): a run cut off before the head leaves parts of
    another plan than the head's, which ``_recall_plan`` refuses. Each decision is kept as
    its JSON text: a part is never held as dicts besides the decisions (``json``, not
    pydantic's, writes and reads it, as a name that is not UTF-8 needs)."""
    starts = range(0, len(decisions), PLAN_PART)
    for n, start in enumerate(starts):
        await ledger.remember({f"{key}-part-{n}": {"fingerprint": head["fingerprint"], "decisions": [
            json.dumps(d.model_dump(mode="json")) for d in decisions[start : start + PLAN_PART]]}})
    await ledger.remember({key: {**head, "parts": len(starts)}})


async def _recall_plan(ledger: Ledger, key: str, head: dict) -> list[str | dict] | None:
    """The decisions of the plan remembered under ``key`` as they were kept (``_decision``
    makes them Decisions), a part at a time; None when a part is missing or of another plan (a
    run cut off while writing it: the plan is made again). Builds before parts kept them all
    in the head, as JSON text or as dicts."""
    if "decisions" in head:
        return head["decisions"]
    decisions: list[str | dict] = []
    for n in range(head["parts"]):
        part = (await ledger.recall([f"{key}-part-{n}"])).get(f"{key}-part-{n}")
        if part is None or part["fingerprint"] != head["fingerprint"]:
            return None
        decisions += part["decisions"]
    return decisions


def _decision(kept: str | dict) -> Decision:
    return Decision.model_validate(json.loads(kept) if isinstance(kept, str) else kept)


def _kept_paths(kept: str | dict) -> list[str]:
    """The files of a decision as it was kept, without making it a Decision."""
    d = json.loads(kept) if isinstance(kept, str) else kept
    return [d["keep"]["path"], *(r["path"] for r in d["remove"])]


async def _mark(store: Store, planned: list[ImageRecord], library: _Library, replanned: set[str], mark: str) -> None:
    """Local mode's plan mark on the records planned: those of the components with their
    neighbours, the others not planned before (only at the revision planned, which the store
    checks) with none."""
    for start in range(0, len(planned), FACTS_BATCH):
        await store.mark_planned(planned[start : start + FACTS_BATCH], mark)
    # the others by the path and revision planned, which is all the store reads of them (it
    # marks a record only at that revision): reading them whole first cost a read of every
    # record of a library without copies
    alone = (ImageRecord(p, "", size, mtime_ns, analysis=analysis)
             for p, (size, mtime_ns, analysis) in library.all_changed() if p not in replanned)
    while batch := list(itertools.islice(alone, FACTS_BATCH)):
        await store.mark_planned(batch, mark)


async def act(
    summary: Summary, settings: Settings, store: Store, ledger: Ledger, bus: InProcessBus, phases: Phases,
    stop: asyncio.Event | None = None,
) -> None:
    """Phases 5 and 6 for ``summary.decisions``, shared by ``deduplicate`` and ``apply``: each
    decision goes through the actuator (every safety check, journaled), then the folders this
    run emptied are removed. Once ``stop`` is set, the groups not begun are left alone."""
    journal = Journal.new(settings.journal_directory)
    try:
        # 5. act (or, in a dry run, check and say what would be done)
        with phases.phase("act", sum(len(d.remove) for d in summary.decisions)) as advance:
            async def on_decision(decision: Message) -> None:
                if stop is not None and stop.is_set():
                    return
                outcomes = await handle_decision(
                    decision, store=store, ledger=ledger, settings=settings, journal=journal, publish=bus.publish
                )
                summary.outcomes += outcomes
                advance(len(outcomes))

            await bus.subscribe("group.decision", on_decision, concurrency=1)
            for decision in summary.decisions:
                await bus.publish(decision)
            await bus.join("group.decision")
        summary.problems += [(d.message.keep.path, d.reason) for d in bus.dead]
    finally:
        journal.close()
    if journal.written:
        summary.journal = journal.path

    # 6. remove the folders this run emptied
    if settings.remove_empty_folders and not settings.dry_run:
        emptied = [Path(o.path).parent for o in summary.outcomes if o.status == "done" and o.action != "hardlink"]
        summary.removed_folders = remove_empty_folders(emptied, settings.source_directories)


def write_report(summary: Summary, settings: Settings, path: Path) -> None:
    """UTF-8 JSON; a file name that is not valid UTF-8 (surrogate escapes) becomes the JSON
    escape ``\\udcXX``, which ``json.loads`` turns back into the same name."""
    text = json.dumps(summary.report(settings), indent=1, ensure_ascii=False)
    path.write_bytes(text.encode("utf-8", "backslashreplace"))  # only lone surrogates need it
