"""Pixel comparisons remembered in the ledger, so an unchanged re-run looks at no pixels.

A comparison (one look, or both ways when the first does not settle the pair) depends only on
the two files and on whether turned and mirrored copies count. It is remembered per pair of file versions (path,
size, mtime), the same test the hasher trusts to skip an unchanged file, so a changed file is
compared again. ``COMPARE_VERSION`` is part of every key: bump it when ``shared.image.compare``
changes what it answers, and nothing old is reused.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterable

from ..core.verdict import Look
from ..image.compare import Agreement, BothWays
from ..image.pixels import FileVersion
from . import Ledger

COMPARE_VERSION = 13


def ledger_key(*parts: object) -> str:
    """A short key for what the ledger remembers: a hash of ``parts`` (file names that are not
    valid UTF-8 included)."""
    return hashlib.blake2b(repr(parts).encode("utf-8", "surrogateescape"), digest_size=20).hexdigest()


def comparison_key(a: FileVersion, b: FileVersion, turns: bool) -> str:
    return ledger_key(COMPARE_VERSION, a, b, turns)


def _stored(both: BothWays) -> dict:
    forth, back = both
    return {"forth": dataclasses.asdict(forth), "back": dataclasses.asdict(back) if back else None}


def _loaded(value: dict) -> BothWays:
    return Agreement(**value["forth"]), (Agreement(**value["back"]) if value["back"] else None)


#: New comparisons written to the ledger at once by ``save_some``: one write per component was a
#: round trip to Elasticsearch for each of a library's groups; a run cut off loses at most
#: this many looks, which the next run makes again.
SAVE_EVERY = 500


class RememberingLook:
    """A ``Look`` that answers from the ledger what was compared before and keeps what it
    compares now: ``recall`` the pairs about to be judged (one query), judge, then ``save``
    (or ``save_some``, which waits until ``SAVE_EVERY`` are new). A pair asked the other way
    round is answered from the same comparison. Without a ledger it only remembers for its own
    lifetime."""

    def __init__(self, look: Look, ledger: Ledger | None):
        self._look = look
        self._ledger = ledger
        self._known: dict[str, BothWays] = {}
        self._asked: set[str] = set()  # keys the ledger was asked about: held or not, not asked again
        self._new: dict[str, dict] = {}

    async def recall(self, pairs: Iterable[tuple[FileVersion, FileVersion]], turns: bool) -> None:
        """Fetch what the ledger holds about ``pairs``, either way round."""
        keys = {comparison_key(x, y, turns) for a, b in pairs for x, y in ((a, b), (b, a))}
        # each key looked up: ``keys - self._known.keys()`` walks every pair known (quadratic
        # over a whole library's plan)
        wanted = sorted(k for k in keys if k not in self._known and k not in self._asked)
        if wanted and self._ledger is not None:
            self._asked.update(wanted)
            self._known.update((k, _loaded(v)) for k, v in (await self._ledger.recall(wanted)).items())

    async def __call__(self, a: FileVersion, b: FileVersion, turns: bool) -> BothWays:
        key = comparison_key(a, b, turns)
        if key in self._known:
            return self._known[key]
        turned = self._known.get(comparison_key(b, a, turns))
        if turned is not None:  # the same looks, seen from the other picture
            forth, back = turned
            return (back, forth) if back is not None else (forth.turned_round(), None)
        self._known[key] = await self._look(a, b, turns)
        self._new[key] = _stored(self._known[key])
        return self._known[key]

    async def save(self) -> None:
        """Write every new comparison to the ledger."""
        new, self._new = self._new, {}
        if self._ledger is not None and new:
            await self._ledger.remember(new)

    async def save_some(self) -> None:
        """``save`` once ``SAVE_EVERY`` comparisons are new."""
        if len(self._new) >= SAVE_EVERY:
            await self.save()

    async def forget(self) -> None:
        """Hold nothing recalled (what is new waits for ``save``): a whole library's plan
        judges one component after another, and no pair is judged in two of them."""
        await self.save_some()
        if self._ledger is not None:  # without a ledger, what it holds is all it remembers
            self._known.clear()
            self._asked.clear()
