"""The ledger in SQLite: leases, distinct pairs and comparisons in their own tables, in the store's file or
any other. One BEGIN IMMEDIATE transaction per acquire makes it atomic across the processes of
one host."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from .sqlite import SQLiteFile, _to_db

SCHEMA = """
CREATE TABLE IF NOT EXISTS leases (
    path TEXT NOT NULL,
    owner TEXT NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('keep', 'remove')),
    expires REAL NOT NULL,
    PRIMARY KEY (path, owner)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS distinct_pairs (
    a TEXT NOT NULL,
    b TEXT NOT NULL,
    PRIMARY KEY (a, b),
    CHECK (a < b)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS plan_claims (
    path TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    expires REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS comparisons (
    key TEXT PRIMARY KEY,
    result TEXT NOT NULL
) WITHOUT ROWID;
"""


class SQLiteLedger(SQLiteFile):
    """A lease lasts ``lease_seconds`` (wall clock): long enough for any one action, short
    enough that the lease of a crashed actuator does not hold its pair for long."""

    def __init__(self, path: Path | str, lease_seconds: float = 600.0):
        self.lease_seconds = lease_seconds
        super().__init__(path)

    def _connect(self) -> None:
        super()._connect()
        self._db.executescript(SCHEMA)

    def _blocking(self, path: str, owner: str, now: float, roles: tuple[str, ...]) -> bool:
        return self._db.execute(
            f"SELECT EXISTS (SELECT 1 FROM leases WHERE path = ? AND owner != ? AND expires > ? "
            f"AND role IN ({','.join('?' * len(roles))}))",
            (path, owner, now, *roles),
        ).fetchone()[0] == 1

    def _acquire(self, keep: str, remove: str, owner: str) -> bool:
        if keep == remove:
            return False
        now = time.time()
        if self._blocking(remove, owner, now, ("keep", "remove")) or self._blocking(keep, owner, now, ("remove",)):
            return False
        self._db.execute("DELETE FROM leases WHERE path IN (?, ?) AND expires <= ?", (keep, remove, now))
        self._db.executemany(
            "INSERT OR REPLACE INTO leases (path, owner, role, expires) VALUES (?, ?, ?, ?)",
            [(remove, owner, "remove", now + self.lease_seconds), (keep, owner, "keep", now + self.lease_seconds)],
        )
        return True

    async def acquire(self, keep: str, remove: str, owner: str) -> bool:
        return await self._run(self._transaction, self._acquire, _to_db(keep), _to_db(remove), owner)

    async def release(self, keep: str, remove: str, owner: str) -> None:
        await self._run(
            self._db.execute, "DELETE FROM leases WHERE owner = ? AND path IN (?, ?)", (owner, _to_db(keep), _to_db(remove))
        )

    def _claim(self, paths: Sequence[str], owner: str, seconds: float) -> set[str]:
        now = time.time()
        refused = set()
        for path in paths:
            taken = self._db.execute(
                "INSERT INTO plan_claims (path, owner, expires) VALUES (?, ?, ?) ON CONFLICT (path) DO UPDATE "
                "SET owner = excluded.owner, expires = excluded.expires WHERE owner = excluded.owner OR expires <= ?",
                (_to_db(path), owner, now + seconds, now)).rowcount
            if not taken:
                refused.add(path)
        return refused

    async def claim(self, paths: Sequence[str], owner: str, seconds: float) -> set[str]:
        return await self._run(self._transaction, self._claim, paths, owner, seconds)

    async def unclaim(self, paths: Sequence[str], owner: str) -> None:
        await self._run(self._transaction, self._db.executemany, "DELETE FROM plan_claims WHERE path = ? AND owner = ?",
                        [(_to_db(p), owner) for p in paths])

    async def mark_distinct(self, a: str, b: str) -> None:
        if a != b:
            await self._run(self._db.execute, "INSERT OR IGNORE INTO distinct_pairs (a, b) VALUES (?, ?)",
                            tuple(sorted((a, b))))

    async def unmark_distinct(self, a: str, b: str) -> None:
        await self._run(self._db.execute, "DELETE FROM distinct_pairs WHERE a = ? AND b = ?", tuple(sorted((a, b))))

    async def marked_distinct(self) -> list[tuple[str, str]]:
        return await self._run(lambda: [tuple(row) for row in self._db.execute("SELECT a, b FROM distinct_pairs ORDER BY a, b")])

    async def remember(self, found: Mapping[str, dict]) -> None:
        if found:
            rows = [(k, json.dumps(v)) for k, v in found.items()]
            await self._run(self._transaction, self._db.executemany,
                            "INSERT OR REPLACE INTO comparisons (key, result) VALUES (?, ?)", rows)

    def _recall(self, keys: Sequence[str]) -> dict[str, dict]:
        out: dict[str, dict] = {}
        for start in range(0, len(keys), 500):
            chunk = list(keys[start : start + 500])
            rows = self._db.execute(
                f"SELECT key, result FROM comparisons WHERE key IN ({','.join('?' * len(chunk))})", chunk)
            out.update((k, json.loads(v)) for k, v in rows)
        return out

    async def recall(self, keys: Sequence[str]) -> dict[str, dict]:
        return await self._run(self._recall, keys)
