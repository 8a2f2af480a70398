"""The embedded store: one SQLite file (WAL), safe to share between processes on one host.

The records live in the file; the two indexes that find candidates among them (the Goldberg
words and the embeddings, ``shared.store.vectors``) live in memory and in files beside it
(``<store>.index/``). Every write to the records is logged in the file (``changes``), so each
process catches its indexes up with the writes of any process by reading the log since the
change they reflect: never a reload after a write. A missing, damaged or stale index file is
rebuilt from the records, with a one-line notice.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, TypeVar

import numpy as np

from ..actions import private_file, private_folder
from . import Batched, Candidate, ImageRecord, ranked
from ..image.signature import orientations
from .vectors import EmbeddingIndex, LocalIndex, log, near_embeddings, near_signatures, rebuild

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS images (
    id INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused: the indexes know records by id
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
    analysis INTEGER NOT NULL DEFAULT 1,
    planned TEXT,
    neighbors TEXT
);
-- every record written or removed, in order: what the indexes in memory catch up with
CREATE TABLE IF NOT EXISTS changes (seq INTEGER PRIMARY KEY AUTOINCREMENT, image_id INTEGER NOT NULL);
CREATE TRIGGER IF NOT EXISTS images_logged_insert AFTER INSERT ON images BEGIN
    INSERT INTO changes (image_id) VALUES (new.id);
END;
-- (a plan mark changes nothing the indexes hold: only the updates of what they do are logged)
CREATE TRIGGER IF NOT EXISTS images_logged_update AFTER UPDATE OF id, signature, embedding ON images BEGIN
    INSERT INTO changes (image_id) VALUES (new.id);
END;
CREATE TRIGGER IF NOT EXISTS images_logged_delete AFTER DELETE ON images BEGIN
    INSERT INTO changes (image_id) VALUES (old.id);
END;
CREATE TABLE IF NOT EXISTS store_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT OR IGNORE INTO store_meta VALUES ('id', lower(hex(randomblob(16))));
"""
# What earlier versions kept in the file and this one does not: the word rows (now in the
# index beside the file) and the version counter of the embeddings held in memory.
_DROPPED = """
DROP TRIGGER IF EXISTS words_counted;
DROP TRIGGER IF EXISTS words_uncounted;
DROP TRIGGER IF EXISTS images_inserted;
DROP TRIGGER IF EXISTS images_updated;
DROP TRIGGER IF EXISTS images_deleted;
DROP TABLE IF EXISTS words;
DROP TABLE IF EXISTS word_counts;
DROP TABLE IF EXISTS images_version;
DROP TABLE IF EXISTS claims;
"""

_COLUMNS = ("path, root, size, mtime_ns, format, width, height, exif_tags, exif_date, signature, error, "
            "digest, frames, embedding, analysis, planned, neighbors")
# Columns added after the first release: an older file gets them (NULL: the hasher analyses
# those records again) when it is opened.
_ADDED_COLUMNS = {
    "digest": "TEXT",
    "frames": "INTEGER NOT NULL DEFAULT 1",
    "embedding": "BLOB",
    "analysis": "INTEGER NOT NULL DEFAULT 1",  # the records before it were version 1
    "planned": "TEXT",  # the plan mark (ImageRecord.planned): NULL, not planned yet
    "neighbors": "TEXT",  # JSON list of paths
}
CHUNK = 900  # ids or paths per IN (...) list, below SQLite's limit on variables


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
        planned=row[15], neighbors=tuple(json.loads(row[16])) if row[16] else (),
    )


def _paths_json(paths: Sequence[str]) -> str:
    """A list of paths as JSON; a name that is not valid UTF-8 travels as its ``\\udcXX`` escapes."""
    return json.dumps(list(paths))


#: How long a connection waits for another process's lock on the file: longer than any one
#: write transaction of a batch takes.
BUSY_SECONDS = 60.0


def _into_wal(db: sqlite3.Connection) -> None:
    """Switch the file to write-ahead logging (readers never wait for the writer). Several
    processes opening a new file at once (the services starting together) can meet in the
    switch, which SQLite then refuses with "database is locked" at once, without waiting for the
    busy timeout: asked again until the switch is made or that timeout has passed."""
    deadline = time.monotonic() + BUSY_SECONDS
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


class SQLiteFile:
    """One connection to the store file; all its calls run on one private thread, off the
    event loop."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        private_folder(self.path.parent)
        private_file(self.path)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")
        self._run_sync(self._connect)

    def _connect(self) -> None:
        db = sqlite3.connect(self.path, timeout=BUSY_SECONDS, isolation_level=None)
        _into_wal(db)
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


class SQLiteStore(Batched, SQLiteFile):
    def __init__(self, path: Path | str):
        self._index: LocalIndex | None = None
        self._saved_seq = -1  # the change the index files beside the store reflect
        super().__init__(path)

    def _connect(self) -> None:
        super()._connect()
        db = self._db
        present = {row[1] for row in db.execute("PRAGMA table_info(images)")}
        if present:
            db.executescript(_DROPPED)
            for column, decl in _ADDED_COLUMNS.items():
                if column not in present:
                    db.execute(f"ALTER TABLE images ADD COLUMN {column} {decl}")
            sql = db.execute("SELECT sql FROM sqlite_master WHERE name = 'images'").fetchone()[0]
            if "AUTOINCREMENT" not in sql.upper():  # before the indexes knew records by id
                self._transaction(self._renumber)
            logged = db.execute("SELECT sql FROM sqlite_master WHERE name = 'images_logged_update'").fetchone()
            if logged and "UPDATE OF" not in logged[0]:
                db.execute("DROP TRIGGER images_logged_update")  # an earlier one: logged the plan marks too
        db.executescript(SCHEMA)
        db.execute("CREATE INDEX IF NOT EXISTS images_digest ON images (digest)")
        self._store_id = db.execute("SELECT value FROM store_meta WHERE key = 'id'").fetchone()[0]

    def _renumber(self) -> None:
        """An older file's images table, rebuilt with ids that are never reused."""
        db = self._db
        db.execute("ALTER TABLE images RENAME TO images_before")
        db.execute(SCHEMA.split(";", 1)[0])
        db.execute(f"INSERT INTO images (id, {_COLUMNS}) SELECT id, {_COLUMNS} FROM images_before")
        db.execute("DROP TABLE images_before")

    # -- writes ---------------------------------------------------------------------------
    def _insert(self, r: ImageRecord) -> None:
        db = self._db
        db.execute("DELETE FROM images WHERE path = ?", (_to_db(r.path),))
        db.execute(
            f"INSERT INTO images ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (_to_db(r.path), _to_db(r.root), r.size, r.mtime_ns, r.format, r.width, r.height, r.exif_tags, r.exif_date,
             _int8(r.signature), r.error, r.digest, r.frames, _int8(r.embedding), r.analysis, r.planned,
             _paths_json(r.neighbors) if r.neighbors else None),
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

    async def refresh(self) -> None:
        """Nothing to do: a committed write is seen by every connection's next query."""

    def _mark_planned(self, records: Sequence[ImageRecord], mark: str | None) -> list[str]:
        marked = []
        for r in records:
            changed = self._db.execute(
                "UPDATE images SET planned = ?, neighbors = ? WHERE path = ? AND size = ? AND mtime_ns = ? "
                "AND analysis = ?", (mark, _paths_json(r.neighbors), _to_db(r.path), r.size, r.mtime_ns, r.analysis),
            ).rowcount
            if changed:
                marked.append(r.path)
        return marked

    async def mark_planned(self, records: Sequence[ImageRecord], mark: str | None) -> list[str]:
        return await self._run(self._transaction, self._mark_planned, records, mark)

    async def unplanned(self, mark: str, after: str = "", limit: int = 1000) -> list[str]:
        rows = await self._run(lambda: self._db.execute(
            "SELECT path FROM images WHERE path > ? AND signature IS NOT NULL AND planned IS NOT ? "
            "ORDER BY path LIMIT ?", (_to_db(after), mark, limit)).fetchall())
        return [_from_db(path) for (path,) in rows]

    # -- reads ----------------------------------------------------------------------------
    def _get_many(self, paths: Sequence[str]) -> dict[str, ImageRecord]:
        out: dict[str, ImageRecord] = {}
        for start in range(0, len(paths), CHUNK):
            chunk = [_to_db(p) for p in paths[start : start + CHUNK]]
            marks = ",".join("?" * len(chunk))
            for row in self._db.execute(f"SELECT {_COLUMNS} FROM images WHERE path IN ({marks})", chunk):
                record = _row_to_record(row)
                out[record.path] = record
        return out

    async def get_many(self, paths: Sequence[str]) -> dict[str, ImageRecord]:
        return await self._run(self._get_many, paths)

    async def get(self, path: str) -> ImageRecord | None:
        return (await self.get_many([path])).get(path)

    def _by_id(self, columns: str, ids: Sequence[int]) -> Iterator[tuple]:
        for start in range(0, len(ids), CHUNK):
            chunk = list(ids[start : start + CHUNK])
            yield from self._db.execute(f"SELECT id, {columns} FROM images WHERE id IN ({','.join('?' * len(chunk))})",
                                        chunk)

    def _matrix(self, column: str, ids: np.ndarray) -> np.ndarray:
        """The stored int8 vectors (``column``) of ``ids``, one row per id, in their order."""
        unique = np.unique(ids)
        blobs = dict(self._by_id(column, unique.tolist()))
        if not blobs:
            return np.zeros((0, 0), np.int8)
        width = len(next(iter(blobs.values())))
        matrix = np.frombuffer(b"".join(blobs.get(int(i)) or bytes(width) for i in unique), np.int8)
        return matrix.reshape(len(unique), width)[np.searchsorted(unique, ids)]

    def _nearest(self, near: dict[int, dict[int, float]], asked: list[int], count: int, limit: int) -> list[list[Candidate]]:
        """For each of ``count`` queries, its near hits (of ``near``, by its place in ``asked``:
        id -> distance) read whole, nearest first."""
        return ranked(near, asked, count, limit, self._records_by_id(sorted({i for hits in near.values() for i in hits})))

    def _records_by_id(self, ids: Sequence[int]) -> dict[int, ImageRecord]:
        return {row[0]: _row_to_record(row[1:]) for row in self._by_id(_COLUMNS, ids)}

    def _own(self, records: Sequence[ImageRecord], column: str) -> tuple[np.ndarray, list[bytes | None]]:
        """The id each record's path is stored under (-1: none) and that stored ``column``."""
        stored: dict[str, tuple[int, bytes | None]] = {}
        paths = [r.path for r in records]
        for start in range(0, len(paths), CHUNK):
            chunk = [_to_db(p) for p in paths[start : start + CHUNK]]
            for path, row_id, blob in self._db.execute(
                    f"SELECT path, id, {column} FROM images WHERE path IN ({','.join('?' * len(chunk))})", chunk):
                stored[_from_db(path)] = (row_id, blob)
        found = [stored.get(p, (-1, None)) for p in paths]
        return np.array([i for i, _ in found], np.int64), [b for _, b in found]

    # -- the indexes ----------------------------------------------------------------------
    def _current(self) -> LocalIndex:
        """The indexes, caught up with every change logged so far (by any process)."""
        db = self._db
        db.execute("BEGIN")  # one snapshot of the log and the records it names
        try:
            seq = db.execute("SELECT coalesce(max(seq), 0) FROM changes").fetchone()[0]
            if self._index is None:
                loaded = LocalIndex.load(self.path, self._store_id)
                if isinstance(loaded, LocalIndex) and loaded.seq <= seq:
                    self._index, self._saved_seq = loaded, loaded.seq
                else:
                    reason = loaded if isinstance(loaded, str) else "stale (ahead of the store: the store was replaced)"
                    count = db.execute("SELECT count(*) FROM images").fetchone()[0]
                    saved = db.execute("SELECT 1 FROM store_meta WHERE key = 'index saved'").fetchone()
                    if count and (saved or reason != "missing"):  # not the first index of this store
                        log.warning("%s: the index is %s; rebuilding it from the store's %d records",
                                    LocalIndex.folder(self.path), reason, count)
                    self._index = rebuild(self._store_id, seq, self._all_rows, count)
            index = self._index
            if index.seq < seq:
                touched = np.array([i for (i,) in db.execute(
                    "SELECT DISTINCT image_id FROM changes WHERE seq > ?", (index.seq,))], np.int64)
                index.remove(touched)
                for ids, signatures, embeddings in self._rows(touched.tolist()):
                    index.add(ids, signatures, embeddings)
                index.seq = seq
        finally:
            db.execute("COMMIT")
        return index

    def _all_rows(self) -> Iterator[tuple[np.ndarray, np.ndarray | None, np.ndarray | None]]:
        last = 0
        while True:
            rows = self._db.execute("SELECT id, signature, embedding FROM images WHERE id > ? ORDER BY id LIMIT 20000",
                                    (last,)).fetchall()
            if not rows:
                return
            yield from self._chunk(rows)
            last = rows[-1][0]

    def _rows(self, ids: Sequence[int]) -> Iterator[tuple[np.ndarray, np.ndarray | None, np.ndarray | None]]:
        for start in range(0, len(ids), 20000):
            yield from self._chunk(list(self._by_id("signature, embedding", ids[start : start + 20000])))

    @staticmethod
    def _chunk(rows: list[tuple]) -> Iterator[tuple[np.ndarray, np.ndarray | None, np.ndarray | None]]:
        signed = [(i, s) for i, s, _ in rows if s is not None]
        embedded = [(i, e) for i, _, e in rows if e is not None]
        if signed:
            yield (np.array([i for i, _ in signed], np.int64),
                   np.frombuffer(b"".join(s for _, s in signed), np.int8).reshape(len(signed), -1), None)
        if embedded:
            dims = len(embedded[0][1])
            yield (np.array([i for i, _ in embedded], np.int64), None,
                   np.frombuffer(b"".join(e for _, e in embedded), np.int8).reshape(len(embedded), dims))

    def _save_index(self) -> None:
        if self._index is not None and self._index.seq != self._saved_seq:
            try:
                self._index.save(self.path)
                self._saved_seq = self._index.seq
                self._db.execute("INSERT OR REPLACE INTO store_meta VALUES ('index saved', ?)", (str(self._saved_seq),))
            except OSError as exc:  # the records are safe; the next run rebuilds the index
                log.warning("%s: the index could not be saved (%s)", LocalIndex.folder(self.path), exc)

    def _set_aside(self) -> None:
        self._save_index()
        if self._index is not None and self._index.seq == self._saved_seq:  # kept when it could not be saved
            self._index = None

    async def set_aside(self) -> None:
        """Saved beside the store and dropped; the next search loads the files and catches up."""
        await self._run(self._set_aside)

    async def close(self) -> None:
        await self._run(self._save_index)
        await super().close()

    # -- queries --------------------------------------------------------------------------
    def _candidates_many(self, records: Sequence[ImageRecord], max_dist: float, limit: int,
                         turns: bool) -> list[list[Candidate]]:
        """Every record's orientations are looked up in one query of the word index; the full
        signatures of the best-sharing records decide, and only the near ones are read whole."""
        asked = [k for k, r in enumerate(records) if r.signature is not None]
        if not asked:
            return [[] for _ in records]
        index = self._current()
        searches = [np.stack(orientations(records[k].signature) if turns else [records[k].signature]) for k in asked]
        own, blobs = self._own([records[k] for k in asked], "signature")
        own_signatures = np.stack([np.zeros(searches[0].shape[1], np.int8) if b is None else np.frombuffer(b, np.int8)
                                   for b in blobs])
        near = near_signatures(index.words, searches, own, own_signatures, lambda ids: self._matrix("signature", ids),
                               max_dist, limit)
        return self._nearest(near, asked, len(records), limit)

    async def candidates_many(self, records: Sequence[ImageRecord], max_dist: float, limit: int = 100,
                              turns: bool = False) -> list[list[Candidate]]:
        return await self._run(self._candidates_many, records, max_dist, limit, turns)

    def _embeddings(self, records: Sequence[ImageRecord]) -> tuple[EmbeddingIndex | None, np.ndarray]:
        """The embedding index, caught up, and the id each record is stored under (-1: none)."""
        index = self._current()
        return index.embeddings, self._own(records, "NULL")[0]

    async def similar_many(self, records: Sequence[ImageRecord], min_similarity: float,
                           limit: int = 100) -> list[list[Candidate]]:
        """Every stored embedding is compared with every query's, exactly. The scan runs off the
        store's one thread, so the word lookups of the same batch run beside it."""
        asked = [k for k, r in enumerate(records) if r.embedding is not None and np.any(r.embedding)]
        if not asked:
            return [[] for _ in records]
        index, own = await self._run(self._embeddings, [records[k] for k in asked])
        if index is None:
            return [[] for _ in records]
        queries = np.stack([np.asarray(records[k].embedding, np.int8) for k in asked])
        near = await asyncio.to_thread(near_embeddings, index, queries, own, min_similarity, limit)
        return await self._run(self._nearest, near, asked, len(records), limit)

    def _same_digest_many(self, records: Sequence[ImageRecord]) -> list[list[ImageRecord]]:
        digests = sorted({r.digest for r in records if r.digest})
        by_digest: dict[str, list[ImageRecord]] = {}
        for start in range(0, len(digests), CHUNK):
            chunk = digests[start : start + CHUNK]
            for row in self._db.execute(
                    f"SELECT {_COLUMNS} FROM images WHERE digest IN ({','.join('?' * len(chunk))})", chunk):
                record = _row_to_record(row)
                by_digest.setdefault(record.digest, []).append(record)  # type: ignore[arg-type]
        return [sorted((o for o in by_digest.get(r.digest or "", []) if o.path != r.path), key=lambda o: _to_db(o.path))
                if r.digest else [] for r in records]

    async def same_digest_many(self, records: Sequence[ImageRecord]) -> list[list[ImageRecord]]:
        return await self._run(self._same_digest_many, records)

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

