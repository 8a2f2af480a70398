"""The embedded store: one SQLite file (WAL), safe to share between processes on one host.

Candidates come through a word index like image-match's Elasticsearch one: each signature
contributes 63 words (position, value); images sharing words with the query are counted in SQL
and only the best-sharing ones have their full signatures compared.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, TypeVar

import numpy as np

from ..image import signature as sig
from . import Candidate, ImageRecord

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS images (
    id INTEGER PRIMARY KEY,
    path TEXT NOT NULL UNIQUE,
    root TEXT NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    format TEXT NOT NULL DEFAULT '',
    width INTEGER NOT NULL DEFAULT 0,
    height INTEGER NOT NULL DEFAULT 0,
    exif_tags INTEGER NOT NULL DEFAULT 0,
    exif_date TEXT,
    signature BLOB,
    error TEXT
);
CREATE TABLE IF NOT EXISTS words (
    pos INTEGER NOT NULL,
    word INTEGER NOT NULL,
    image_id INTEGER NOT NULL REFERENCES images(id) ON DELETE CASCADE
);
CREATE INDEX IF NOT EXISTS words_lookup ON words (pos, word, image_id);
CREATE INDEX IF NOT EXISTS words_image ON words (image_id);
CREATE TABLE IF NOT EXISTS word_counts (
    pos INTEGER NOT NULL,
    word INTEGER NOT NULL,
    n INTEGER NOT NULL,
    PRIMARY KEY (pos, word)
) WITHOUT ROWID;
CREATE TRIGGER IF NOT EXISTS words_counted AFTER INSERT ON words BEGIN
    INSERT INTO word_counts (pos, word, n) VALUES (new.pos, new.word, 1)
    ON CONFLICT (pos, word) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER IF NOT EXISTS words_uncounted AFTER DELETE ON words BEGIN
    UPDATE word_counts SET n = n - 1 WHERE pos = old.pos AND word = old.word;
END;
CREATE TABLE IF NOT EXISTS claims (
    path TEXT PRIMARY KEY,
    role TEXT NOT NULL CHECK (role IN ('keep', 'remove')),
    keep TEXT NOT NULL
);
"""

# Only the rarest words of a query are looked up. A word shared by a large part of the library
# (a flat patch of sky, the grid's edges) is little evidence of a match, and its posting list
# is what made a query cost grow with the library. A near-duplicate within max_dist shares a
# good part of all 63 words (each is 16 values, coarsened to -1/0/1), so it shares some of the
# rarest ones that anybody else has too; the full signatures then decide.
QUERY_WORDS = 24

_COLUMNS = "path, root, size, mtime_ns, format, width, height, exif_tags, exif_date, signature, error"


def _to_db(path: str) -> str | bytes:
    """SQLite keeps text as UTF-8; a file name that is not valid UTF-8 (held as surrogate
    escapes) is kept as its raw bytes instead, a BLOB, which never equals any text."""
    try:
        path.encode("utf-8")
        return path
    except UnicodeEncodeError:
        return path.encode("utf-8", "surrogateescape")


def _from_db(value: str | bytes) -> str:
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else value


def _row_to_record(row: tuple) -> ImageRecord:
    blob = row[9]
    signature = None if blob is None else np.frombuffer(blob, dtype=np.int8)
    return ImageRecord(
        path=_from_db(row[0]), root=_from_db(row[1]), size=row[2], mtime_ns=row[3], format=row[4], width=row[5], height=row[6],
        exif_tags=row[7], exif_date=row[8], signature=signature, error=row[10],
    )


class SQLiteStore:
    """All SQLite calls run on one private thread, off the event loop."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")
        self._local = threading.local()
        self._run_sync(self._connect)

    def _connect(self) -> None:
        db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA foreign_keys=ON")
        db.executescript(SCHEMA)
        if db.execute("SELECT NOT EXISTS (SELECT 1 FROM word_counts) AND EXISTS (SELECT 1 FROM words)").fetchone()[0]:
            db.execute("INSERT INTO word_counts SELECT pos, word, COUNT(*) FROM words GROUP BY pos, word")
        self._db = db

    def _run_sync(self, fn: Callable[..., T], *args: Any) -> T:
        return self._executor.submit(fn, *args).result()

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    # -- writes ---------------------------------------------------------------------------
    def _upsert(self, r: ImageRecord) -> None:
        db = self._db
        blob = None if r.signature is None else np.ascontiguousarray(r.signature, dtype=np.int8).tobytes()
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute("DELETE FROM images WHERE path = ?", (_to_db(r.path),))
            cur = db.execute(
                f"INSERT INTO images ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (_to_db(r.path), _to_db(r.root), r.size, r.mtime_ns, r.format, r.width, r.height, r.exif_tags, r.exif_date, blob, r.error),
            )
            if r.signature is not None:
                words = r.words or sig.words(r.signature)
                db.executemany(
                    "INSERT INTO words (pos, word, image_id) VALUES (?,?,?)",
                    [(pos, word, cur.lastrowid) for pos, word in enumerate(words)],
                )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    async def upsert(self, record: ImageRecord) -> None:
        await self._run(self._upsert, record)

    def _delete(self, path: str) -> None:
        path = _to_db(path)  # type: ignore[assignment]
        self._db.execute("DELETE FROM images WHERE path = ?", (path,))
        self._db.execute("DELETE FROM claims WHERE path = ?", (path,))

    async def delete(self, path: str) -> None:
        await self._run(self._delete, path)

    # -- reads ----------------------------------------------------------------------------
    def _get_many(self, paths: Sequence[str]) -> dict[str, ImageRecord]:
        out: dict[str, ImageRecord] = {}
        for start in range(0, len(paths), 500):
            chunk = [_to_db(p) for p in paths[start : start + 500]]
            marks = ",".join("?" * len(chunk))
            for row in self._db.execute(f"SELECT {_COLUMNS} FROM images WHERE path IN ({marks})", chunk):
                record = _row_to_record(row)
                out[record.path] = record
        return out

    async def get_many(self, paths: Sequence[str]) -> dict[str, ImageRecord]:
        return await self._run(self._get_many, paths)

    async def get(self, path: str) -> ImageRecord | None:
        return (await self.get_many([path])).get(path)

    def _candidates(self, record: ImageRecord, max_dist: float, limit: int) -> list[Candidate]:
        if record.signature is None:
            return []
        words = list(enumerate(record.words or sig.words(record.signature)))
        values = ",".join("(?,?)" for _ in words)
        counts = dict(((pos, word), n) for pos, word, n in self._db.execute(
            f"""WITH q(pos, word) AS (VALUES {values})
                SELECT c.pos, c.word, c.n FROM q JOIN word_counts c ON c.pos = q.pos AND c.word = q.word""",
            [x for pair in words for x in pair],
        ))
        # a word that only the stored record under the query's own path has cannot find anything
        # (the query may be a turned version of that record, so compare the words themselves)
        own = set(self._db.execute(
            "SELECT w.pos, w.word FROM words w JOIN images i ON i.id = w.image_id WHERE i.path = ?",
            (_to_db(record.path),)
        ))
        shared = [pw for pw in words if counts.get(pw, 0) > (pw in own)]
        query = sorted(shared, key=lambda pw: (counts[pw], pw))[:QUERY_WORDS]
        if not query:
            return []
        values = ",".join("(?,?)" for _ in query)
        rows = self._db.execute(
            f"""WITH q(pos, word) AS (VALUES {values})
                SELECT i.path, i.root, i.size, i.mtime_ns, i.format, i.width, i.height, i.exif_tags,
                       i.exif_date, i.signature, i.error
                FROM (SELECT w.image_id, COUNT(*) AS shared FROM q JOIN words w
                      ON w.pos = q.pos AND w.word = q.word GROUP BY w.image_id
                      ORDER BY shared DESC LIMIT ?) AS best
                JOIN images i ON i.id = best.image_id
                WHERE i.path != ?""",
            [x for pair in query for x in pair] + [limit + 1, _to_db(record.path)],
        ).fetchall()
        if not rows:
            return []
        found = [_row_to_record(row) for row in rows]
        dists = sig.distances(record.signature, np.stack([r.signature for r in found]))
        hits = [Candidate(r, float(d)) for r, d in zip(found, dists) if d <= max_dist]
        hits.sort(key=lambda c: (c.distance, c.record.path))
        return hits[:limit]

    async def candidates(self, record: ImageRecord, max_dist: float, limit: int = 100) -> list[Candidate]:
        return await self._run(self._candidates, record, max_dist, limit)

    async def iter_paths(self) -> AsyncIterator[str]:
        last: str | bytes = ""  # as stored: BLOB names sort after all text ones
        while True:
            rows = await self._run(
                lambda after: self._db.execute(
                    "SELECT path FROM images WHERE path > ? ORDER BY path LIMIT 1000", (after,)
                ).fetchall(),
                last,
            )
            if not rows:
                return
            for (path,) in rows:
                yield _from_db(path)
            last = rows[-1][0]

    # -- claims ---------------------------------------------------------------------------
    def _claim(self, keep: str, remove: Sequence[str]) -> list[str]:
        names = {_to_db(p): p for p in (keep, *remove)}
        keep, remove = _to_db(keep), [_to_db(p) for p in remove]  # type: ignore[assignment]
        db = self._db
        db.execute("BEGIN IMMEDIATE")  # one writer at a time across processes
        try:
            existing = dict(
                ((p, (role, k)) for p, role, k in db.execute(
                    f"SELECT path, role, keep FROM claims WHERE path IN ({','.join('?' * (len(remove) + 1))})",
                    [keep, *remove],
                ))
            )
            if existing.get(keep, ("keep",))[0] == "remove":
                db.execute("COMMIT")
                return []
            db.execute("INSERT OR IGNORE INTO claims (path, role, keep) VALUES (?, 'keep', ?)", (keep, keep))
            granted = []
            for path in remove:
                role_keep = existing.get(path)
                if role_keep is None:
                    db.execute("INSERT INTO claims (path, role, keep) VALUES (?, 'remove', ?)", (path, keep))
                    granted.append(path)
                elif role_keep == ("remove", keep):
                    granted.append(path)  # the same decision delivered again
            db.execute("COMMIT")
            return [names[p] for p in granted]
        except BaseException:
            db.execute("ROLLBACK")
            raise

    async def claim(self, keep: str, remove: Sequence[str]) -> list[str]:
        return await self._run(self._claim, keep, remove)

    async def release_claims(self) -> None:
        """Forget all claims: a local run plans the whole library afresh."""
        await self._run(self._db.execute, "DELETE FROM claims")

    async def close(self) -> None:
        await self._run(self._db.close)
        self._executor.shutdown(wait=True)
