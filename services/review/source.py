"""Where a review's report comes from: a report file, or a fresh plan over the store."""

from __future__ import annotations

from pathlib import Path

from services.local import Summary
from services.matcher.handler import plan, to_decision
from shared.config import Settings
from shared.store import Store


async def report_from_store(store: Store, settings: Settings) -> dict:
    """The report ``deduplicate --report`` would write for the files in the store, planned the
    way its matching phase plans them (nothing is analysed or acted on)."""
    paths = [p async for p in store.iter_paths()]
    groups = await plan(paths, store=store, settings=settings)
    return Summary(decisions=[to_decision(g) for g in groups]).report(settings)


async def store_roots(store: Store) -> list[Path]:
    """The roots the store's records were analysed under, for a review without a report."""
    paths = [p async for p in store.iter_paths()]
    records = await store.get_many(paths)
    return sorted({Path(r.root) for r in records.values()})


def reviewed_path(source: Path | None, store_path: Path) -> Path:
    """``REPORT.reviewed.json`` next to the report, else next to the store."""
    if source is None:
        return store_path.parent / "store.reviewed.json"
    return source.with_name(source.name.removesuffix(".json") + ".reviewed.json")
