"""The matcher's view of units (``shared.core.bundles``): a component of files becomes a
component of units, each stood for by its lead image, before the ranking and the verdict.

A RAW and the camera's JPEG beside it are one unit when the verdict says they show the same
photo: they are never grouped against each other, and they are kept or removed together.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass

from shared.core import bundles
from shared.messages import Evidence, Member
from shared.store import ImageRecord, Store

Verdict = Callable[[ImageRecord, ImageRecord], Awaitable[Evidence]]


class Folders:
    """Folder listings, each read and indexed once (per plan, or per action)."""

    def __init__(self, image_extensions: Iterable[str]) -> None:
        self._extensions = list(image_extensions)
        self._listings: dict[str, bundles.Listing] = {}

    def __call__(self, folder: str) -> bundles.Listing:
        if folder not in self._listings:
            try:
                names = sorted(e.name for e in os.scandir(folder) if e.is_file(follow_symlinks=False))
            except OSError:
                names = []
            self._listings[folder] = bundles.Listing(names, self._extensions)
        return self._listings[folder]


@dataclass(frozen=True, slots=True)
class PlannedUnit:
    """A unit in a plan: its images' records (the lead first) and the unit by name."""

    folder: str
    unit: bundles.Unit
    images: tuple[ImageRecord, ...]
    unjudged: tuple[str, ...] = ()  # RAWs of its stem that could not be compared with it

    @property
    def lead(self) -> ImageRecord:
        return self.images[0]

    def members(self) -> tuple[Member, ...]:
        """The other files of the unit as they are now (companions stat'ed now)."""
        found = [Member(path=r.path, size=r.size, mtime_ns=r.mtime_ns, kind="image", format=r.format)
                 for r in self.images[1:]]
        for name in self.unit.companions:
            path = os.path.join(self.folder, name)
            try:
                st = os.stat(path, follow_symlinks=False)
            except OSError:
                continue
            kind = "video" if os.path.splitext(name)[1].casefold() in bundles.VIDEO_EXTENSIONS else "sidecar"
            found.append(Member(path=path, size=st.st_size, mtime_ns=st.st_mtime_ns, kind=kind))
        return tuple(found)


async def units_of(
    component: Mapping[str, ImageRecord], store: Store, verdict: Verdict, folders: Folders,
) -> dict[str, PlannedUnit]:
    """The unit of every file of ``component`` (keyed by each member's path; the members of
    one unit share one PlannedUnit). Images of the same stem that the component lacks are read
    from the store, and each RAW is paired with its renditions by ``verdict``."""
    by_folder: dict[str, set[str]] = {}
    for path in component:
        by_folder.setdefault(os.path.dirname(path), set()).add(os.path.basename(path))
    wanted: dict[str, list[str]] = {}  # folder -> the images of the stems in play
    for folder, names in by_folder.items():
        listing = folders(folder)
        wanted[folder] = sorted({n for name in names for n in [name, *listing.same_stem_images(name)]})
    missing = [os.path.join(f, n) for f, ns in wanted.items() for n in ns if os.path.join(f, n) not in component]
    records = dict(component)
    records.update(await store.get_many(missing) if missing else {})
    # the verdict on each RAW and each image of its stem, all at once
    pairs: list[tuple[str, str]] = []
    for folder, names in wanted.items():
        for name in names:
            if os.path.splitext(name)[1].casefold() in bundles.RAW_EXTENSIONS:
                pairs += [(os.path.join(folder, name), os.path.join(folder, other))
                          for other in folders(folder).same_stem_images(name)
                          if os.path.splitext(other)[1].casefold() not in bundles.RAW_EXTENSIONS]
    judged = await asyncio.gather(*(_paired(records.get(raw), records.get(other), verdict) for raw, other in pairs))
    paired = {pair for pair, same in zip(pairs, judged) if same}
    unjudged = [pair for pair, same in zip(pairs, judged) if same is None]
    found: dict[str, PlannedUnit] = {}
    for folder, names in wanted.items():
        for unit in folders(folder).units(
                lambda raw, other, f=folder: (os.path.join(f, raw), os.path.join(f, other)) in paired, names):
            images = tuple(records[os.path.join(folder, n)] for n in unit.images if os.path.join(folder, n) in records)
            if not images or images[0].path != os.path.join(folder, unit.lead):
                continue  # its lead is not analysed (yet): its files stand alone
            names_in = {os.path.join(folder, n) for n in unit.images}
            planned = PlannedUnit(folder, unit, images,
                                  tuple(os.path.basename(raw) for raw, other in unjudged if other in names_in))
            for record in images:
                found[record.path] = planned
    return found


async def _paired(raw: ImageRecord | None, other: ImageRecord | None, verdict: Verdict) -> bool | None:
    """The verdict on a RAW and an image of its stem; None when the RAW cannot be judged (not
    analysed: unreadable, not asked for, or not yet signed)."""
    if other is None or other.signature is None:
        return False
    if raw is None or raw.signature is None:
        return None
    return (await verdict(other, raw)).same


def collapse(
    component: Mapping[str, ImageRecord], edges: Iterable[tuple[str, str, float]], units: Mapping[str, PlannedUnit]
) -> tuple[dict[str, ImageRecord], list[tuple[str, str, float]]]:
    """The component's units, by their leads, and the edges between units (never within
    one: a RAW and its JPEG are not duplicates of each other)."""
    def lead(path: str) -> str:
        return units[path].lead.path if path in units else path

    leads = {lead(p): units[p].lead if p in units else component[p] for p in component}
    best: dict[tuple[str, str], float] = {}
    for a, b, d in edges:
        la, lb = lead(a), lead(b)
        if la != lb:
            key = (min(la, lb), max(la, lb))
            best[key] = min(d, best.get(key, d))
    return leads, [(a, b, d) for (a, b), d in best.items()]


async def judge_unit(keeper: ImageRecord, other: PlannedUnit | None, lead: ImageRecord, verdict: Verdict) -> Evidence:
    """The verdict on removing a unit in favour of ``keeper``: its lead, and every other image
    of it, must show the same photo as the kept file (a RAW goes only where its photo stays)."""
    if other is not None and other.unjudged:
        return Evidence(same=False, stage="none", reason=f"{', '.join(other.unjudged)} beside it could not be compared "
                        "with it (unreadable or not analysed): a RAW and its JPEG are never separated")
    found = await verdict(keeper, lead)
    if not found.same or other is None:
        return found
    for image in other.images[1:]:
        also = await verdict(keeper, image)
        if not also.same:
            name = os.path.basename(image.path)
            return Evidence(same=False, stage="none", distance=found.distance, reason=f"{name}, of the same unit, does "
                            f"not show the same photo: {also.reason}")
    return found


def companion_facts(paths: Iterable[str]) -> list[tuple[str, int, int]]:
    """(path, size, mtime_ns) of every file beside ``paths`` that may be a sidecar or a Live
    Photo video: what a plan depends on besides the images."""
    found = []
    for folder in sorted({os.path.dirname(p) for p in paths}):
        try:
            with os.scandir(folder) as entries:
                for entry in entries:
                    if bundles.is_companion_name(entry.name) and entry.is_file(follow_symlinks=False):
                        st = entry.stat(follow_symlinks=False)
                        found.append((entry.path, st.st_size, st.st_mtime_ns))
        except OSError:
            continue
    return sorted(found)
