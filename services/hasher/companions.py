"""A sidecar or a Live Photo video that arrives, changes or goes on its own (services mode:
the watcher sees a unit's files in any order). Its unit is decided whole again: the images of
its stem are matched anew, or, when they were removed already, it follows them."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable

from shared.config import Settings
from shared.core import bundles
from shared.messages import Decision, FileEvent, FileRef, ImageSigned, Message, Removal
from shared.store import Ledger, Store


async def gone_unit(ledger: Ledger, path: str) -> tuple[str, dict] | None:
    """(stem, what the actuator recorded) of the removed unit that the companion ``path``
    belongs to, if its unit was removed (``bundles.gone_key``)."""
    folder, name = os.path.split(path)
    stems = bundles.stems_of(name)
    known = await ledger.recall([bundles.gone_key(folder, s) for s in stems])
    for stem in stems:
        if bundles.gone_key(folder, stem) in known:
            return stem, known[bundles.gone_key(folder, stem)]
    return None


async def on_companion(
    event: FileEvent, *, store: Store, ledger: Ledger | None, settings: Settings, publish: Callable[[Message], Awaitable[None]]
) -> int:
    """Re-match the stored images the companion belongs to (the matcher then plans their unit
    with it: a video can make its still the one kept); with none left in the folder, ask the
    actuator to let it follow its removed unit. Returns how many messages were published."""
    folder, name = os.path.split(event.path)
    try:
        names = [e.name for e in os.scandir(folder) if e.is_file(follow_symlinks=False)]
    except OSError:
        names = []
    listing = bundles.Listing(names, bundles.unit_extensions(settings.file_extensions))
    images = [os.path.join(folder, n) for s in bundles.stems_of(name) for n in listing.by_stem.get(s.casefold(), ())]
    if images:
        known = await store.get_many(images)
        signed = [r for r in known.values() if r.signature is not None]
        await store.mark_planned(signed, None)  # to be planned again, with the companion, even if planned before
        for record in signed:
            await publish(ImageSigned(path=record.path))
        return len(signed)
    if ledger is None or not os.path.isfile(event.path):
        return 0
    found = await gone_unit(ledger, event.path)
    if found is None:
        return 0
    stem, gone = found
    st, kept = os.stat(event.path), gone["keep"]
    try:
        kst = os.stat(kept)
        size, mtime = kst.st_size, kst.st_mtime_ns
    except OSError:
        size = mtime = 0  # the actuator refuses: the kept file is gone
    await publish(Decision(
        keep=FileRef(path=kept, size=size, mtime_ns=mtime), rule="follows",
        why=f"its image {stem} was removed in favour of this file",
        remove=[Removal(path=event.path, size=st.st_size, mtime_ns=st.st_mtime_ns, distance=0.0)],
    ))
    return 1
