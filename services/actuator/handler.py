"""Actuator: carries out a decision, but only after checking again, at that moment, that the
kept twin exists, is unchanged and still matches. Paths in a decision are untrusted input."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from shared.actions import Journal, hardlink_file, move_file
from shared.config import Settings
from shared.messages import Decision, FileRemoved
from shared.bus import Reject
from shared.core.safety import Unsafe, below_root, confine, observe, removal_refusal, root_of
from shared.image.signature import distance
from shared.store import Store


@dataclass(frozen=True, slots=True)
class ActionOutcome:
    path: str
    keep: str
    action: Literal["move", "delete", "hardlink"]
    status: Literal["done", "dry_run", "skipped", "error"]
    distance: float
    reason: str = ""
    target: str | None = None
    bytes_freed: int = 0


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
    how = ""
    if action == "move":
        final, how = move_file(victim, target)
        target = final
    elif action == "hardlink":
        hardlink_file(keep, victim)
    else:
        os.unlink(victim)
    journal.write(state="done", intent=intent, target=None if target is None else str(target))
    return (None if target is None else str(target)), how


async def handle_decision(
    decision: Decision,
    *,
    store: Store,
    settings: Settings,
    journal: Journal,
    publish: Callable[[FileRemoved], Awaitable[None]],
) -> list[ActionOutcome]:
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
            if keep_record.signature is not None and victim_record.signature is not None:
                if (keep_record.size, keep_record.mtime_ns) == (decision.keep.size, decision.keep.mtime_ns) and (
                    victim_record.size, victim_record.mtime_ns) == (removal.size, removal.mtime_ns):
                    current = distance(keep_record.signature, victim_record.signature)
        refusal = removal_refusal(
            keep=observe(keep), keep_expected=(decision.keep.size, decision.keep.mtime_ns),
            victim=observe(victim), victim_expected=(removal.size, removal.mtime_ns),
            distance_now=current, max_dist=settings.max_dist,
            same_file=os.path.samefile(keep, victim) if os.path.exists(victim) and os.path.exists(keep) else False,
        )
        if refusal:
            skip(removal.path, removal.distance, refusal)
        else:
            approved.append((victim, removal))
    if not approved:
        return outcomes
    if settings.dry_run:
        for victim, removal in approved:
            outcomes.append(ActionOutcome(
                str(victim), str(keep), action, "dry_run", removal.distance, "dry run", None, removal.size))
        return outcomes
    granted = set(await store.claim(str(keep), [str(v) for v, _ in approved]))
    for victim, removal in approved:
        if str(victim) not in granted:
            skip(str(victim), removal.distance, "another decision claimed this file or its kept twin")
            continue
        try:
            target, how = await asyncio.to_thread(_act, action, victim, keep, settings, journal, removal.distance)
        except OSError as exc:
            skip(str(victim), removal.distance, f"{action} failed: {exc.strerror or exc}", "error")
            continue
        await store.delete(str(victim))
        outcomes.append(
            ActionOutcome(str(victim), str(keep), action, "done", removal.distance, how, target, removal.size)
        )
        await publish(FileRemoved(path=str(victim), keep=str(keep), action=action, target=target))
    return outcomes
