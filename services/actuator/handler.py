"""Actuator: carries out a decision, but only after checking again, at that moment, that the
kept twin exists, is unchanged and still matches. Paths in a decision are untrusted input."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from shared.actions import IDENTICAL, Journal, hardlink_file, move_file, trash_file
from shared.config import Settings
from shared.messages import Decision, FileRemoved
from shared.bus import Reject
from shared.core.safety import Unsafe, below_root, confine, observe, removal_refusal, root_of
from shared.core.verdict import Look, Thresholds, same_photo, version
from shared.image.pixels import look_in_thread
from shared.store import Ledger, Store
from shared.store.comparisons import RememberingLook


@dataclass(frozen=True, slots=True)
class ActionOutcome:
    path: str
    keep: str
    action: Literal["move", "trash", "delete", "hardlink"]
    status: Literal["done", "dry_run", "skipped", "error"]
    distance: float
    reason: str = ""
    target: str | None = None
    size: int = 0
    freed: bool = False  # did the bytes leave this filesystem (not just another folder or the trash)?


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


def _act(action: str, victim: Path, keep: Path, settings: Settings, journal: Journal, distance_: float) -> tuple[str | None, str]:
    target = target_for(victim, settings) if action == "move" else None
    st = os.stat(victim)
    intent = journal.write(
        state="intent", action=action, path=str(victim), keep=str(keep),
        target=None if target is None else str(target), distance=distance_,
        size=st.st_size, mtime_ns=st.st_mtime_ns,
    )
    how, trashinfo = "", None
    if action == "move":
        target, how = move_file(victim, target)
    elif action == "trash":
        target, trashinfo = trash_file(victim)
        how = "moved to the trash"
    elif action == "hardlink":
        hardlink_file(keep, victim)
    else:
        os.unlink(victim)
    journal.write(state="done", intent=intent, target=None if target is None else str(target), how=how,
                  trashinfo=None if trashinfo is None else str(trashinfo))
    return (None if target is None else str(target)), how


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
    instead of reporting it as skipped (local mode, where nothing retries)."""
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
    except Unsafe as exc:
        for r in decision.remove:
            skip(r.path, r.distance, f"kept file refused: {exc}")
        return outcomes
    records = await store.get_many([decision.keep.path, *(r.path for r in decision.remove)])
    keep_record = records.get(decision.keep.path)

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
    approved = []
    for removal in decision.remove:
        try:
            victim = confine(removal.path, roots)
        except Unsafe as exc:
            skip(removal.path, removal.distance, str(exc))
            continue
        victim_record = records.get(removal.path)
        current = None
        if keep_record is not None and victim_record is not None:
            if (keep_record.size, keep_record.mtime_ns) == (decision.keep.size, decision.keep.mtime_ns) and (
                    victim_record.size, victim_record.mtime_ns) == (removal.size, removal.mtime_ns):
                current = await same_photo(keep_record, victim_record, Thresholds.of(settings), look)
        refusal = refusal_now(victim, removal, current)
        if refusal is None and action == "hardlink":
            refusal = _format_refusal(keep_record, victim_record)
        if refusal:
            skip(removal.path, removal.distance, refusal)
        else:
            approved.append((victim, removal, current))
    if not approved:
        return outcomes
    if settings.dry_run:
        for victim, removal, _ in approved:
            outcomes.append(ActionOutcome(
                str(victim), str(keep), action, "dry_run", removal.distance, "dry run", None, removal.size,
                _frees_space(action, "")))
        return outcomes
    # the same decision delivered again (after a crash) is the same owner and may go on at once
    owner = "decision-" + hashlib.blake2b(repr(decision).encode("utf-8", "surrogateescape"), digest_size=16).hexdigest()
    busy = False
    for victim, removal, verdict in approved:
        if not await _lease(ledger, str(keep), str(victim), owner):
            busy = True
            skip(str(victim), removal.distance, BUSY)
            continue
        # checked again under the lease: another actuator may have removed the kept file
        # between the first check and the lease
        refusal = refusal_now(victim, removal, verdict)
        if refusal:
            await ledger.release(str(keep), str(victim), owner)
            skip(str(victim), removal.distance, refusal)
            continue
        try:
            try:
                target, how = await asyncio.to_thread(_act, action, victim, keep, settings, journal, removal.distance)
            except OSError as exc:
                skip(str(victim), removal.distance, f"{action} failed: {exc.strerror or exc}", "error")
                continue
            await store.delete(str(victim))
        finally:
            await ledger.release(str(keep), str(victim), owner)
        outcomes.append(
            ActionOutcome(str(victim), str(keep), action, "done", removal.distance, how, target, removal.size,
                          _frees_space(action, how))
        )
        await publish(FileRemoved(path=str(victim), keep=str(keep), action=action, target=target))
    if busy and retry_refused:
        raise PairBusy([o for o in outcomes if o.reason != BUSY])
    return outcomes


def _format_refusal(keep, victim) -> str | None:
    """A hard link gives the duplicate's name the kept file's bytes: only between files of one
    format, or a ``.png`` name would hold JPEG data."""
    if keep is not None and victim is not None and keep.format != victim.format:
        return f"not hard-linked: the kept file is {keep.format or 'unknown'}, the duplicate {victim.format or 'unknown'}"
    return None
