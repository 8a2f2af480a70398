"""The embedded store: one SQLite file (WAL), safe to share between processes on one host.

Candidates come through a word index like image-match's Elasticsearch one: each signature
contributes 63 words (position, value); images sharing words with the query are counted in SQL
and only the best-sharing ones have their full signatures compared. Similar embeddings are
found by an exact search over all of them, held in memory and reloaded when the file changed.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Any, Callable, TypeVar

import numpy as np

from ..image import signature as sig
from . import Candidate, ImageRecord, searched

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
    error TEXT,
    digest TEXT,
    frames INTEGER NOT NULL DEFAULT 1,
    embedding BLOB,
    analysis INTEGER NOT NULL DEFAULT 1
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
-- changes with the images only (the ledger shares the file): when the embeddings in memory are stale
CREATE TABLE IF NOT EXISTS images_version (v INTEGER NOT NULL);
INSERT INTO images_version (v) SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM images_version);
CREATE TRIGGER IF NOT EXISTS images_inserted AFTER INSERT ON images BEGIN
    UPDATE images_version SET v = v + 1;
END;
CREATE TRIGGER IF NOT EXISTS images_updated AFTER UPDATE ON images BEGIN
    UPDATE images_version SET v = v + 1;
END;
CREATE TRIGGER IF NOT EXISTS images_deleted AFTER DELETE ON images BEGIN
    UPDATE images_version SET v = v + 1;
END;
"""

# Only the rarest words of a query are looked up. A word shared by a large part of the library
# (a flat patch of sky, the grid's edges) is little evidence of a match, and its posting list
# is what made a query cost grow with the library. A near-duplicate within max_dist shares a
# good part of all 63 words (each is 16 values, coarsened to -1/0/1), so it shares some of the
# rarest ones that anybody else has too; the full signatures then decide.
QUERY_WORDS = 24

_COLUMNS = ("path, root, size, mtime_ns, format, width, height, exif_tags, exif_date, signature, error, "
            "digest, frames, embedding, analysis")
# Columns added after the first release: an older file gets them (NULL: the hasher analyses
# those records again) when it is opened.
_ADDED_COLUMNS = {
    "digest": "TEXT",
    "frames": "INTEGER NOT NULL DEFAULT 1",
    "embedding": "BLOB",
    "analysis": "INTEGER NOT NULL DEFAULT 1",  # the records before it were version 1
}


def _int8(a: np.ndarray | None) -> bytes | None:
    return None if a is None else np.ascontiguousarray(a, dtype=np.int8).tobytes()


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
    return ImageRecord(
        path=_from_db(row[0]), root=_from_db(row[1]), size=row[2], mtime_ns=row[3], format=row[4], width=row[5], height=row[6],
        exif_tags=row[7], exif_date=row[8],
        signature=None if row[9] is None else np.frombuffer(row[9], dtype=np.int8), error=row[10],
        digest=row[11], frames=row[12],
        embedding=None if row[13] is None else np.frombuffer(row[13], dtype=np.int8), analysis=row[14],
    )


class SQLiteFile:
    """One connection to the store file; all its calls run on one private thread, off the
    event loop."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")
        self._run_sync(self._connect)

    def _connect(self) -> None:
        db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA foreign_keys=ON")
        self._db = db

    def _run_sync(self, fn: Callable[..., T], *args: Any) -> T:
        return self._executor.submit(fn, *args).result()

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def _transaction(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn`` inside BEGIN IMMEDIATE: one writer at a time across processes."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            result = fn(*args)
            self._db.execute("COMMIT")
            return result
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    async def close(self) -> None:
        await self._run(self._db.close)
        self._executor.shutdown(wait=True)


@dataclass(frozen=True, slots=True)
class _Embeddings:
    """Every stored embedding as a float32 matrix of the int8 values (their dot products are
    integers below 2**24, so exact), with the norms, as of one version of the images table."""

    version: int
    paths: list[str]
    matrix: np.ndarray  # (n, D) float32
    norms: np.ndarray  # (n,) float64


class SQLiteStore(SQLiteFile):
    def __init__(self, path: Path | str):
        self._embeddings: _Embeddings | None = None
        super().__init__(path)

    def _connect(self) -> None:
        super()._connect()
        db = self._db
        db.executescript(SCHEMA)
        present = {row[1] for row in db.execute("PRAGMA table_info(images)")}
        for column, decl in _ADDED_COLUMNS.items():
            if column not in present:
                db.execute(f"ALTER TABLE images ADD COLUMN {column} {decl}")
        db.execute("CREATE INDEX IF NOT EXISTS images_digest ON images (digest)")
        db.execute("DROP TABLE IF EXISTS claims")  # replaced by the ledger (shared.store.sqlite_ledger)
        if db.execute("SELECT NOT EXISTS (SELECT 1 FROM word_counts) AND EXISTS (SELECT 1 FROM words)").fetchone()[0]:
            db.execute("INSERT INTO word_counts SELECT pos, word, COUNT(*) FROM words GROUP BY pos, word")

    # -- writes ---------------------------------------------------------------------------
    def _insert(self, r: ImageRecord) -> None:
        db = self._db
        db.execute("DELETE FROM images WHERE path = ?", (_to_db(r.path),))
        cur = db.execute(
            f"INSERT INTO images ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (_to_db(r.path), _to_db(r.root), r.size, r.mtime_ns, r.format, r.width, r.height, r.exif_tags, r.exif_date,
             _int8(r.signature), r.error, r.digest, r.frames, _int8(r.embedding), r.analysis),
        )
        if r.signature is not None:
            words = r.words or sig.words(r.signature)
            db.executemany(
                "INSERT INTO words (pos, word, image_id) VALUES (?,?,?)",
                [(pos, word, cur.lastrowid) for pos, word in enumerate(words)],
            )

    def _upsert_many(self, records: Sequence[ImageRecord]) -> None:
        self._transaction(lambda: [self._insert(r) for r in records])

    async def upsert(self, record: ImageRecord) -> None:
        await self._run(self._upsert_many, [record])

    async def upsert_many(self, records: Sequence[ImageRecord]) -> None:
        await self._run(self._upsert_many, records)

    def _delete(self, path: str) -> None:
        path = _to_db(path)  # type: ignore[assignment]
        self._db.execute("DELETE FROM images WHERE path = ?", (path,))

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

    def _candidates(self, record: ImageRecord, max_dist: float, limit: int, turns: bool) -> list[Candidate]:
        """The word counts and the query's own words are read once for all the orientations
        asked, the best-sharing records per orientation, and the near ones whole at once."""
        if record.signature is None:
            return []
        queries, asked = searched(record, turns)
        every = sorted({pw for ws in asked for pw in enumerate(ws)})
        counts = dict(((pos, word), n) for pos, word, n in self._db.execute(
            f"""WITH q(pos, word) AS (VALUES {",".join("(?,?)" for _ in every)})
                SELECT c.pos, c.word, c.n FROM q JOIN word_counts c ON c.pos = q.pos AND c.word = q.word""",
            list(chain.from_iterable(every)),
        ))
        # a word that only the stored record under the query's own path has cannot find anything
        # (the query may be a turned version of that record, so compare the words themselves)
        own = set(self._db.execute(
            "SELECT w.pos, w.word FROM words w JOIN images i ON i.id = w.image_id WHERE i.path = ?",
            (_to_db(record.path),)
        ))
        best: dict[int, bytes] = {}
        for ws in asked:
            shared = [pw for pw in enumerate(ws) if counts.get(pw, 0) > (pw in own)]
            query = sorted(shared, key=lambda pw: (counts[pw], pw))[:QUERY_WORDS]
            if not query:
                continue
            best.update(self._db.execute(
                f"""WITH q(pos, word) AS (VALUES {",".join("(?,?)" for _ in query)})
                    SELECT i.id, i.signature
                    FROM (SELECT w.image_id, COUNT(*) AS shared FROM q JOIN words w
                          ON w.pos = q.pos AND w.word = q.word GROUP BY w.image_id
                          ORDER BY shared DESC, w.image_id LIMIT ?) AS best
                    JOIN images i ON i.id = best.image_id
                    WHERE i.path != ?""",
                [*chain.from_iterable(query), limit + 1, _to_db(record.path)],
            ))
        if not best:
            return []
        # the full signatures decide, the nearest orientation for each; only the records
        # within max_dist are read whole
        found = np.frombuffer(b"".join(best.values()), dtype=np.int8)
        dists = sig.distances(queries, found).min(axis=0)
        near = {row_id: float(d) for row_id, d in zip(best, dists) if d <= max_dist}
        if not near:
            return []
        rows = self._db.execute(
            f"SELECT id, {_COLUMNS} FROM images WHERE id IN ({','.join('?' * len(near))})", list(near)
        ).fetchall()
        hits = [Candidate(_row_to_record(row[1:]), near[row[0]]) for row in rows]
        hits.sort(key=lambda c: (c.distance, c.record.path))
        return hits[:limit]

    async def candidates(
        self, record: ImageRecord, max_dist: float, limit: int = 100, turns: bool = False
    ) -> list[Candidate]:
        return await self._run(self._candidates, record, max_dist, limit, turns)

    def _current_embeddings(self) -> _Embeddings:
        version = self._db.execute("SELECT v FROM images_version").fetchone()[0]
        if self._embeddings is None or self._embeddings.version != version:
            rows = self._db.execute("SELECT path, embedding FROM images WHERE embedding IS NOT NULL").fetchall()
            matrix = (np.stack([np.frombuffer(blob, dtype=np.int8) for _, blob in rows]).astype(np.float32)
                      if rows else np.zeros((0, 0), np.float32))
            norms = np.sqrt(np.einsum("ij,ij->i", matrix, matrix).astype(np.float64))
            self._embeddings = _Embeddings(version, [_from_db(path) for path, _ in rows], matrix, norms)
        return self._embeddings

    def _similar(self, record: ImageRecord, min_similarity: float, limit: int) -> list[Candidate]:
        if record.embedding is None:
            return []
        index = self._current_embeddings()
        if not index.paths:
            return []
        query = np.asarray(record.embedding, dtype=np.float32)
        norm = float(np.sqrt(float(query @ query)))
        if norm == 0.0:
            return []
        with np.errstate(invalid="ignore", divide="ignore"):
            cosines = (index.matrix @ query).astype(np.float64) / (index.norms * norm)
        hits = [(1.0 - float(cosines[i]), index.paths[i]) for i in np.flatnonzero(cosines >= min_similarity)
                if index.paths[i] != record.path]
        hits.sort()
        found = self._get_many([path for _, path in hits[:limit]])
        return [Candidate(found[path], d) for d, path in hits[:limit] if path in found]

    async def similar(self, record: ImageRecord, min_similarity: float, limit: int = 100) -> list[Candidate]:
        return await self._run(self._similar, record, min_similarity, limit)

    def _same_digest(self, record: ImageRecord) -> list[ImageRecord]:
        if record.digest is None:
            return []
        rows = self._db.execute(
            f"SELECT {_COLUMNS} FROM images WHERE digest = ? AND path != ? ORDER BY path", (record.digest, _to_db(record.path))
        )
        return [_row_to_record(row) for row in rows]

    async def same_digest(self, record: ImageRecord) -> list[ImageRecord]:
        return await self._run(self._same_digest, record)

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
