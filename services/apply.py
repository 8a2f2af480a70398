"""``image-dedup apply REPORT``: carry out a report as a person left it after reviewing it (a
kept copy changed, groups or removals dropped), never planning anew. Used by the command and
by the review page.

A report is untrusted input: its paths are confined to the configured roots by the actuator,
which also checks again, at the moment of acting, that each file is unchanged since the report
was made (its ``files`` facts), that the kept one is readable and that both still match by the
store's records; every action is journaled.
"""

from __future__ import annotations

import asyncio
import math
import os
from pathlib import Path

from pydantic import ValidationError
from rich.console import Console

from services.actuator.handler import ActionOutcome
from services.local import REPORT_VERSION, Phases, Summary, act
from shared.bus import InProcessBus
from shared.config import Settings
from shared.core.safety import Unsafe, below_root, root_of
from shared.image.signature import distance
from shared.messages import Decision, FileRef, Removal
from shared.store.open import open_stores


class ReportError(Exception):
    """A report that cannot be applied as a whole; ``str(exc)`` says why in one line."""


def check_roots(report: dict, roots: list[Path]) -> None:
    """Refuse a report whose roots are not among ``roots`` (the configured ones or those given
    on the command line): a report alone never widens where files may be touched."""
    if not isinstance(report, dict) or report.get("version") != REPORT_VERSION or not isinstance(report.get("groups"), list):
        raise ReportError(f"not an image-dedup report of version {REPORT_VERSION} (no 'version' and 'groups')")
    reported = report.get("roots")
    if not isinstance(reported, list) or not reported:
        raise ReportError("the report names no roots (a list of folders)")
    if not all(isinstance(r, str) and os.path.isabs(r) for r in reported):
        raise ReportError("the report's roots must be absolute folder names")
    for root in reported:
        if root_of(root, roots) is None:
            raise ReportError(f"the report's root {root} is not a configured root; give it on the command line to allow it")


def read_groups(
    report: dict, roots: list[Path]
) -> tuple[list[tuple[FileRef, list[Removal], str]], list[tuple[str, str, str]]]:
    """Each group as (kept file, removals, rule) exactly as listed, with the facts the report
    holds for each file; what cannot be acted on (outside the roots, no facts, listed twice)
    comes back as (path, kept path, reason), each file on its own."""
    groups, refused = [], []
    seen: set[str] = set()
    for number, group in enumerate(report["groups"], 1):
        if not (isinstance(group, dict) and isinstance(group.get("keep"), str) and isinstance(group.get("remove"), list)
                and all(isinstance(p, str) for p in group["remove"]) and isinstance(group.get("files", {}), dict)):
            refused.append((f"group {number}", "", "not a group of 'keep' and 'remove' paths"))
            continue
        keep_path, files = group["keep"], group.get("files", {})
        distances = group.get("distances") if isinstance(group.get("distances"), dict) else {}
        try:
            below_root(keep_path, roots)
            keep = FileRef(path=keep_path, **_facts(files.get(keep_path)))
        except Unsafe as exc:
            refused += [(p, keep_path, f"kept file refused: {exc}") for p in group["remove"]]
            continue
        except (TypeError, ValidationError):
            refused += [(p, keep_path, "the report holds no size and mtime of the kept file") for p in group["remove"]]
            continue
        removals = []
        for path in dict.fromkeys(group["remove"]):
            reported = distances.get(path)
            try:
                if path == keep_path:
                    raise ValueError("listed as kept and as removed")
                if path in seen:
                    raise ValueError("listed for removal in another group too")
                below_root(path, roots)
                removals.append(Removal(
                    path=path, **_facts(files.get(path)),
                    distance=reported if isinstance(reported, (int, float)) else math.nan,
                ))
                seen.add(path)
            except Unsafe as exc:
                refused.append((path, keep_path, str(exc)))
            except ValueError as exc:  # pydantic's ValidationError is one
                reason = str(exc) if not isinstance(exc, ValidationError) else "bad file facts in the report"
                refused.append((path, keep_path, reason))
            except TypeError:
                refused.append((path, keep_path, "the report holds no size and mtime of this file"))
        if removals:
            groups.append((keep, removals, group.get("rule") if isinstance(group.get("rule"), str) else ""))
    return groups, refused


def _facts(entry: object) -> dict:
    if not isinstance(entry, dict) or "size" not in entry or "mtime_ns" not in entry:
        raise TypeError("no facts")
    return {k: v for k, v in entry.items() if k in FileRef.model_fields and k != "path"}


async def apply_report(
    report: dict, settings: Settings, console: Console | None = None, quiet: bool = True,
    stop: asyncio.Event | None = None, summary: Summary | None = None,
) -> Summary:
    """Carry out ``report`` with ``settings`` (dry run, action, target, roots, store): phases 5
    and 6 of a run over exactly the report's groups. Raises ReportError for a report that
    cannot be applied at all; a file that cannot be acted on is a skipped outcome with its
    reason. ``stop`` and ``summary`` as for ``services.local.deduplicate``."""
    check_roots(report, settings.source_directories)
    groups, refused = read_groups(report, settings.source_directories)
    summary = summary if summary is not None else Summary()
    store, ledger = await open_stores(settings)
    bus = InProcessBus()
    phases = Phases(console or Console(stderr=True), quiet)
    try:
        with phases.progress:
            records = await store.get_many([p for keep, removals, _ in groups for p in (keep.path, *(r.path for r in removals))])
            for keep, removals, rule in groups:
                summary.decisions.append(Decision(
                    keep=keep, rule=rule,
                    remove=[_with_distance(r, records.get(keep.path), records.get(r.path)) for r in removals],
                ))
            await act(summary, settings, store, ledger, bus, phases, stop)
            summary.interrupted = stop is not None and stop.is_set()
    finally:
        await bus.close()
        await store.close()
        await ledger.close()
    summary.outcomes += [
        ActionOutcome(path, keep, settings.effective_action, "skipped", 0.0, reason) for path, keep, reason in refused
    ]
    return summary


def _with_distance(removal: Removal, keep_record, victim_record) -> Removal:
    """A removal whose kept copy the reviewer changed has no reported distance to it: take it
    from the store (for the report; the actuator checks the match itself), 1.0 when unknown."""
    if not math.isnan(removal.distance):
        return removal
    if keep_record is None or victim_record is None or keep_record.signature is None or victim_record.signature is None:
        return removal.model_copy(update={"distance": 1.0})
    return removal.model_copy(update={"distance": round(distance(keep_record.signature, victim_record.signature), 6)})
