"""The matcher's ``drop_distinct``: a pair a person marked "not duplicates" (by content digest,
in a real SQLite ledger) loses its match edge, in either direction and for any byte-identical copy; every other edge
stays."""

from __future__ import annotations

from services.matcher.handler import _Components, drop_distinct
from shared.store import ImageRecord
from shared.store.sqlite_ledger import SQLiteLedger


def _record(path: str, digest: str | None) -> ImageRecord:
    return ImageRecord(path, "/r", 1, 1, digest=digest)


async def marked(ledger: SQLiteLedger) -> set[frozenset[str]]:
    return {frozenset(pair) for pair in await ledger.marked_distinct()}


async def test_edges_of_pairs_marked_distinct_are_dropped(tmp_path):
    records = {p: _record(p, d) for p, d in
               [("/r/a.jpg", "aa"), ("/r/a2.jpg", "aa"), ("/r/b.jpg", "bb"), ("/r/c.jpg", "cc"), ("/r/n.jpg", None)]}
    edges = [("/r/a.jpg", "/r/b.jpg", 0.1), ("/r/b.jpg", "/r/a.jpg", 0.1), ("/r/a.jpg", "/r/c.jpg", 0.2),
             ("/r/b.jpg", "/r/c.jpg", 0.3), ("/r/n.jpg", "/r/a.jpg", 0.0), ("/r/b.jpg", "/r/a2.jpg", 0.1)]
    ledger = SQLiteLedger(tmp_path / "store.sqlite")
    try:
        assert drop_distinct(edges, records, await marked(ledger)) == edges, "nothing marked: all kept"
        await ledger.mark_distinct("bb", "aa")
        await ledger.mark_distinct("cc", "zz")  # a file not in this component
        assert drop_distinct(edges, records, await marked(ledger)) == [
            ("/r/a.jpg", "/r/c.jpg", 0.2), ("/r/b.jpg", "/r/c.jpg", 0.3), ("/r/n.jpg", "/r/a.jpg", 0.0)]
    finally:
        await ledger.close()


def test_components_hold_every_joined_path_roots_included():
    """A chain joined so that its root is met last: every member is in its component, and
    listing the components changes nothing under the listing (a bench sweep crashed with
    "dictionary changed size during iteration", and a root nobody had looked up was left out)."""
    found = _Components()
    found.join("/r/b.jpg", "/r/c.jpg")
    found.join("/r/a.jpg", "/r/b.jpg")
    found.join("/r/x.jpg", "/r/y.jpg")
    assert found.groups() == [["/r/a.jpg", "/r/b.jpg", "/r/c.jpg"], ["/r/x.jpg", "/r/y.jpg"]]
    assert found.find("/r/c.jpg") == found.find("/r/a.jpg") == "/r/a.jpg"
