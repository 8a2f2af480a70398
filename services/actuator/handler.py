"""Actuator: carries out a decision, but only after checking again, at that moment, that the
kept twin exists, is unchanged and still matches. Paths in a decision are untrusted input."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from services.hasher.companions import gone_unit
from services.watcher.handler import companion
from shared.actions import IDENTICAL, Journal, Step, act_on_unit, journaled_write, unit_targets
from shared.core.bundles import renamed
from shared.config import Settings
from shared.messages import Decision, Evidence, FileRemoved
from shared.bus import Reject
from shared.core.safety import Unsafe, below_root, confine, in_trash, observe, removal_refusal, root_of
from shared.core import bundles
from shared.core.verdict import Look, Thresholds, same_photo, version
from shared.image import metadata as meta
from shared.image.pixels import look_in_thread
from shared.store import Ledger, Store
from shared.store.comparisons import RememberingLook


log = logging.getLogger("image_dedup.actuator")


@dataclass(frozen=True, slots=True)
class ActionOutcome:
    path: str
    keep: str
    action: Literal["move", "trash", "delete", "hardlink"]
    status: Literal["done", "dry_run", "skipped", "error"]
    distance: float
    reason: str = ""
    target: str | None = None
    size: int = 0  # of every file of the unit
    freed: bool = False  # did the bytes leave this filesystem (not just another folder or the trash)?
    files: tuple[str, ...] = ()  # every file of the unit acted on (would be, in a dry run), path first


BUSY = "another action on this pair is in progress"


class PairBusy(Exception):
    """A lease was refused (services mode): the decision is retried later, by the bus policy.
    ``outcomes`` are those of the decision's other removals, already carried out."""

    def __init__(self, outcomes: list[ActionOutcome]):
        super().__init__(BUSY)
        self.outcomes = outcomes


def target_for(path: Path, settings: Settings) -> Path:
    """Where a moved duplicate goes: its path below its root, under the target directory,
    itself under the root's name so that two roots cannot collide."""
    assert settings.duplicates_target_directory is not None
    root = root_of(path, settings.source_directories)
    assert root is not None
    return settings.duplicates_target_directory / root.name / path.relative_to(root)


def _steps(action: str, images: list[Path], companions: list[Path], kept_images: list[tuple[Path, str]],
           formats: dict[Path, str], settings: Settings) -> list[Step] | str:
    """What happens to each file of a unit, or why it cannot happen. A hard link gives each of
    its images the bytes of the kept unit's image of the same format (all or none); its
    sidecars and video stay, beside an image that keeps its name."""
    if action == "hardlink":
        steps = []
        for image in images:
            twin = next((k for k, fmt in kept_images if fmt and fmt == formats.get(image)), None)
            if twin is None:
                kept = ", ".join(sorted({fmt or "unknown" for _, fmt in kept_images}))
                return f"not hard-linked: the kept file is {kept}, the duplicate {formats.get(image) or 'unknown'}"
            steps.append(Step(image, link_to=twin))
        return steps
    files = [*images, *companions]
    if action == "move":
        return [Step(f, target=t) for f, t in zip(files, unit_targets(files, lambda f: target_for(f, settings)))]
    return [Step(f) for f in files]


def _frees_space(action: str, how: str) -> bool:
    """A delete or hard link frees the duplicate's bytes; a move only when it left the
    filesystem (or found an identical file there already); the trash keeps them until emptied."""
    return action in ("delete", "hardlink") or how in (IDENTICAL, "copied across filesystems and verified")


LEASE_TRIES = 20
LEASE_WAIT_S = 0.1


async def _lease(ledger: Ledger, keep: str, victim: str, owner: str) -> bool:
    """A lease is held for one action only: wait a little for another one to end before
    giving up (the caller then retries the whole decision later)."""
    for attempt in range(LEASE_TRIES):
        if await ledger.acquire(keep, victim, owner):
            return True
        await asyncio.sleep(LEASE_WAIT_S)
    return False


async def handle_decision(
    decision: Decision,
    *,
    store: Store,
    ledger: Ledger,
    settings: Settings,
    journal: Journal,
    publish: Callable[[FileRemoved], Awaitable[None]],
    retry_refused: bool = False,
    look: Look = look_in_thread,
) -> list[ActionOutcome]:
    """``retry_refused``: raise PairBusy when a pair is leased by another action (services)
    instead of reporting it as skipped (local mode, where nothing retries).

    Each removal is a unit (``shared.core.bundles``): its images (a RAW with its JPEG) must
    each be unchanged and show the same photo as the kept file now, and its companions
    (sidecars, a Live Photo's video) are found in its folder now, so one that arrived since
    the plan goes too; the unit is acted on whole, as one journaled action, or not at all."""
    action = settings.effective_action
    roots = settings.source_directories
    outcomes: list[ActionOutcome] = []
    for path in (decision.keep.path, *(r.path for r in decision.remove)):
        try:
            below_root(path, roots)
        except Unsafe as exc:  # a decision that can never be carried out: dead-lettered whole
            raise Reject(str(exc)) from None

    def skip(path: str, d: float, reason: str, status: str = "skipped") -> None:
        outcomes.append(ActionOutcome(path, decision.keep.path, action, status, d, reason))  # type: ignore[arg-type]

    try:
        keep = confine(decision.keep.path, roots)
        if in_trash(keep):
            raise Unsafe(f"{keep} is in a trash folder, and emptying the trash would lose the photo")
    except Unsafe as exc:
        for r in decision.remove:
            skip(r.path, r.distance, f"kept file refused: {exc}")
        return outcomes
    kept_members = [m for m in decision.keep.members if m.kind == "image"]
    images_of = {r.path: [r, *(m for m in r.members if m.kind == "image")] for r in decision.remove}
    records = await store.get_many([decision.keep.path, *(m.path for m in kept_members),
                                    *(m.path for ms in images_of.values() for m in ms)])
    keep_record = records.get(decision.keep.path)
    # the kept unit's images by format (a hard link takes the bytes of the one of its format)
    kept_images = [(Path(f.path), records[f.path].format if f.path in records else f.format)
                   for f in (decision.keep, *kept_members) if observe(Path(f.path))]

    def refusal_now(victim: Path, removal, verdict) -> str | None:
        """The disk as it is now, both files as analysed, and the verdict on them."""
        return removal_refusal(
            keep=observe(keep), keep_expected=(decision.keep.size, decision.keep.mtime_ns),
            victim=observe(victim), victim_expected=(removal.size, removal.mtime_ns),
            verdict_now=verdict,
            same_file=os.path.samefile(keep, victim) if os.path.exists(victim) and os.path.exists(keep) else False,
        )

    if settings.dry_run and keep_record is not None:
        # nothing is removed: what was compared before for these same file versions will do;
        # a real action looks at the pixels again
        remembering = RememberingLook(look, ledger)
        await remembering.recall([(version(keep_record), version(r)) for p, r in records.items() if p != keep_record.path],
                                 settings.match_orientations)
        look = remembering
    thresholds = Thresholds.of(settings)

    async def unit_refusal(removal) -> tuple[str | None, list[Path], list[tuple[Path, object, Evidence | None]]]:
        """(why the unit cannot go, its images, each image's (path, as planned, verdict now))."""
        checked = []
        for planned in images_of[removal.path]:
            try:
                image = confine(planned.path, roots)
            except Unsafe as exc:
                return str(exc), [], []
            if settings.is_reference(str(image)):
                return f"{planned.path} lies in a reference folder: nothing there is removed", [], []
            record, current = records.get(planned.path), None
            if keep_record is not None and record is not None and (
                    (keep_record.size, keep_record.mtime_ns) == (decision.keep.size, decision.keep.mtime_ns)
                    and (record.size, record.mtime_ns) == (planned.size, planned.mtime_ns)):
                current = await same_photo(keep_record, record, thresholds, look)
            refusal = refusal_now(image, planned, current)
            if refusal:
                if planned is not removal:
                    refusal = f"{os.path.basename(planned.path)}, of the same unit: {refusal}"
                return refusal, [], []
            checked.append((image, planned, current))
        return None, [c[0] for c in checked], checked

    approved = []
    for removal in decision.remove:
        if companion(removal.path, settings):  # a sidecar or video that outlived its removed unit
            outcomes.append(await _follow(removal, keep, settings, ledger, journal))
            continue
        refusal, images, checked = await unit_refusal(removal)
        steps: list[Step] | str = refusal or ""
        if not refusal:
            companions = _companions(images, settings)
            if isinstance(companions, str):
                steps = companions
            else:
                formats = {image: records[planned.path].format if planned.path in records else ""
                           for image, planned, _ in checked}
                steps = _steps(action, images, companions, kept_images, formats, settings)
        if isinstance(steps, str):
            skip(removal.path, removal.distance, steps)
        else:
            approved.append((removal, checked, steps))
    if not approved:
        return outcomes
    if settings.dry_run:
        for removal, _, steps in approved:
            outcomes.append(ActionOutcome(
                removal.path, str(keep), action, "dry_run", removal.distance, "dry run", None, _size(steps),
                _frees_space(action, ""), tuple(str(st.path) for st in steps)))
        return outcomes
    # the same decision delivered again (after a crash) is the same owner and may go on at once
    owner = "decision-" + hashlib.blake2b(repr(decision).encode("utf-8", "surrogateescape"), digest_size=16).hexdigest()
    busy = False
    merged: list[tuple[str, list[Path]]] = []  # the units removed, for the metadata merge
    for removal, checked, steps in approved:
        victim = checked[0][0]
        if not await _lease(ledger, str(keep), str(victim), owner):
            busy = True
            skip(str(victim), removal.distance, BUSY)
            continue
        try:
            # checked again under the lease: another actuator may have removed the kept file
            # between the first check and the lease
            refusal = next((r for image, planned, verdict in checked if (r := refusal_now(image, planned, verdict))), None)
            if refusal:
                skip(str(victim), removal.distance, refusal)
                continue
            size, sidecars = _size(steps), [st.path for st in steps if st.path.suffix.casefold() in _XMP_OR_JSON]
            before = await asyncio.to_thread(meta.read, victim, sidecars) if settings.merge_metadata == "xmp" else None
            try:
                results = await asyncio.to_thread(act_on_unit, action, steps, keep, journal, removal.distance)
            except OSError as exc:
                skip(str(victim), removal.distance, f"{action} failed: {exc.strerror or exc}", "error")
                continue
            for image, _, _ in checked:
                await store.delete(str(image))
        finally:
            await ledger.release(str(keep), str(victim), owner)
        if before is not None:
            merged.append((str(victim), before))
        if not images_left(victim.parent, os.path.splitext(victim.name)[0]):  # a companion arriving later follows it
            await ledger.remember({bundles.gone_key(str(victim.parent), os.path.splitext(victim.name)[0]): {
                "keep": str(keep), "action": action, "lead": str(victim), "target": results[0].get("target")}})
        target, how = results[0].get("target"), results[0].get("how", "")
        outcomes.append(ActionOutcome(str(victim), str(keep), action, "done", removal.distance, how, target, size,
                                      _frees_space(action, how), tuple(str(st.path) for st in steps)))
        await publish(FileRemoved(path=str(victim), keep=str(keep), action=action, target=target,
                                  files=tuple(str(st.path) for st in steps)))
    if merged:
        await asyncio.to_thread(_merge_metadata, keep, decision, [m for _, m in merged], journal)
    if busy and retry_refused:
        raise PairBusy([o for o in outcomes if o.reason != BUSY])
    return outcomes


_XMP_OR_JSON = {".xmp", ".json"}


def images_left(folder: Path, stem: str) -> list[str]:
    """The files of ``stem`` in ``folder`` that are not sidecars or videos: its images."""
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    return [n for n in names if os.path.splitext(n)[0].casefold() == stem.casefold() and not bundles.is_companion_name(n)]


async def _follow(removal, keep: Path, settings: Settings, ledger: Ledger, journal: Journal) -> ActionOutcome:
    """A sidecar or video that arrived after its unit was removed in favour of ``keep`` goes
    where its unit went (the same action, its name beside the unit's new one), so it is never
    left without its image; checked against the ledger, not the message."""
    gone_action = settings.effective_action

    def out(status: str, reason: str, target: str | None = None, files: tuple[str, ...] = ()) -> ActionOutcome:
        return ActionOutcome(removal.path, str(keep), gone_action, status, 0.0, reason, target,  # type: ignore[arg-type]
                             removal.size, False, files)

    try:
        path = confine(removal.path, settings.source_directories)
    except Unsafe as exc:
        return out("skipped", str(exc))
    found = await gone_unit(ledger, str(path))
    if found is None or found[1].get("keep") != str(keep):
        return out("skipped", f"its image was not removed in favour of {keep}")
    stem, gone = found
    gone_action = gone["action"]
    if images_left(path.parent, stem):
        return out("skipped", "an image of its name is in its folder again")
    if gone_action == "hardlink":
        return out("skipped", "a hard-linked image stays where it was, with its companions")
    if settings.dry_run:
        return out("dry_run", "dry run", files=(str(path),))
    target = None
    if gone_action == "move":
        moved_to = Path(gone["target"])
        target = moved_to.with_name(renamed(path.name, stem, os.path.splitext(moved_to.name)[0]))
    try:
        results = await asyncio.to_thread(act_on_unit, gone_action, [Step(path, target=target)], keep, journal, 0.0)
    except OSError as exc:
        return out("error", f"{gone_action} failed: {exc.strerror or exc}")
    return out("done", f"followed its image ({gone_action})", results[0].get("target"), (str(path),))


def _size(steps: list[Step]) -> int:
    total = 0
    for step in steps:
        try:
            total += os.stat(step.path).st_size
        except OSError:
            pass
    return total


def _companions(images: list[Path], settings: Settings) -> list[Path] | str:
    """The sidecars and videos that go with ``images`` (one folder), as the folder is now, or
    why the unit cannot go whole."""
    folder = images[0].parent
    try:
        names = [e.name for e in os.scandir(folder)]
    except OSError as exc:
        return f"cannot read its folder: {exc.strerror}"
    found = []
    for name in bundles.companions(names, [i.name for i in images], bundles.unit_extensions(settings.file_extensions)):
        try:
            found.append(confine(folder / name, settings.source_directories))
        except Unsafe as exc:  # a sidecar that is a symbolic link, say: the unit cannot go whole
            return f"{name}, of the same unit, cannot go with it: {exc}"
    return found


def _merge_metadata(keep: Path, decision: Decision, removed: list[meta.Metadata], journal: Journal) -> None:
    """What only the removed copies held, written to the kept file's XMP sidecar (its own
    ``X.JPG.xmp`` or ``X.xmp`` if it has one, else a new ``X.JPG.xmp``), journaled."""
    sidecars = [Path(m.path) for m in decision.keep.members if m.kind == "sidecar"]
    xmps = [p for p in sidecars if p.suffix.casefold() == ".xmp" and p.exists()]
    kept = meta.read(keep, [p for p in sidecars if p.exists()])
    added = meta.Metadata()
    for found in removed:
        added = added.merged(meta.missing(kept.merged(added), found))
    if meta.is_empty(added):
        return
    own = [p for p in xmps if p.name.casefold() == (keep.name + ".xmp").casefold()]
    sidecar = (own or xmps or [keep.with_name(keep.name + ".xmp")])[0]
    try:
        journaled_write(journal, sidecar, keep, lambda path: meta.write_sidecar(path, added))
    except Exception as exc:  # the removals stand; the report says the merge did not happen
        log.warning("metadata not merged into %s: %s", sidecar, " ".join(str(exc).split()) or type(exc).__name__)
