"""The pairs a person marked "not duplicates" on the review page: kept in the ledger by the two
files' content digests (so a renamed or moved file stays apart from the other), never proposed
again by a run, and forgotten again by the page's undo or ``image-dedup distinct forget``."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from shared.config import ConfigError, Settings
from shared.store import ImageRecord, Ledger, Store
from shared.store.open import open_stores


async def _digests(store: Store, paths: Iterable[str]) -> dict[str, str]:
    """The content digest the store holds for each of ``paths`` (a file without one is left out)."""
    records = await store.get_many(sorted(set(paths)))
    return {p: r.digest for p, r in records.items() if r.digest}


async def remember(store: Store, ledger: Ledger, pairs: Sequence[tuple[str, str]]) -> int:
    """Mark each pair distinct in the ledger; returns how many it marked. The digests come from
    the store's records, not from the page; a file the store has no digest for is not marked."""
    digest = await _digests(store, (p for pair in pairs for p in pair))
    marked = 0
    for a, b in pairs:
        if a in digest and b in digest:
            await ledger.mark_distinct(digest[a], digest[b])
            marked += 1
    return marked


async def forget(store: Store, ledger: Ledger, pairs: Sequence[tuple[str, str]]) -> int:
    """Undo ``remember`` for these pairs; returns how many were marked."""
    digest = await _digests(store, (p for pair in pairs for p in pair))
    marked = {frozenset(pair) for pair in await ledger.marked_distinct()}
    forgotten = 0
    for a, b in pairs:
        if a in digest and b in digest and frozenset((digest[a], digest[b])) in marked:
            await ledger.unmark_distinct(digest[a], digest[b])
            forgotten += 1
    return forgotten


async def _holders(store: Store, digests: Iterable[str]) -> dict[str, list[str]]:
    """The files of the store that have each digest (byte-identical files share one)."""
    found = {}
    for d in sorted(set(digests)):
        probe = ImageRecord(path="", root="", size=0, mtime_ns=0, digest=d)
        found[d] = sorted(r.path for r in await store.same_digest(probe))
    return found


def _named(digest: str, holders: dict[str, list[str]]) -> str:
    files = holders.get(digest) or []
    if not files:
        return f"(no file in the store has the content {digest[:12]}…)"
    return files[0] + (f" (and {len(files) - 1} identical copies)" if len(files) > 1 else "")


async def listing(settings: Settings) -> list[str]:
    """``image-dedup distinct list``: each pair as two lines, the files that hold it now."""
    store, ledger = await open_stores(settings)
    try:
        pairs = await ledger.marked_distinct()
        holders = await _holders(store, (d for pair in pairs for d in pair))
    finally:
        await store.close()
        await ledger.close()
    if not pairs:
        return ["no pairs are marked 'not duplicates'"]
    lines = []
    for number, (a, b) in enumerate(pairs, 1):
        lines += [f"{number:>3}  {_named(a, holders)}", f"     {_named(b, holders)}"]
    lines.append(f"{len(pairs)} pair{'s' if len(pairs) != 1 else ''} marked 'not duplicates'; "
                 "image-dedup distinct forget FILE FILE lets runs propose a pair again")
    return lines


async def forget_command(settings: Settings, files: Sequence[Path], everything: bool) -> list[str]:
    """``image-dedup distinct forget``: the pair of two files, every pair of one file, or all."""
    if everything == bool(files) or len(files) > 2:
        raise ConfigError("distinct forget takes the two files of a pair, one file (all its pairs), or --all")
    store, ledger = await open_stores(settings)
    try:
        pairs = await ledger.marked_distinct()
        if not everything:
            paths = [os.path.abspath(f) for f in files]
            digest = await _digests(store, paths)
            missing = [p for p in paths if p not in digest]
            if missing:
                raise ConfigError(f"{missing[0]} is not in the store (it was never analysed, or has changed since)")
            wanted = {digest[p] for p in paths}
            pairs = [pair for pair in pairs if wanted <= set(pair)]
        for a, b in pairs:
            await ledger.unmark_distinct(a, b)
    finally:
        await store.close()
        await ledger.close()
    return [f"forgot {len(pairs)} pair{'s' if len(pairs) != 1 else ''}: runs may propose "
            f"{'them' if len(pairs) != 1 else 'it'} again"]
