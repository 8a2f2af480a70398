"""The store and the ledger in Elasticsearch 8, for services on several hosts.

Index ``<index>`` (default ``images``) holds one document per file, its _id a hash of the path
(an _id is limited to 512 bytes, a path is not): the records every service shares. The
searches for twins are not asked of the server record by record: each process that searches
(a matcher) holds the word and embedding indexes of the whole index in memory (``_Mirror``,
the same ``shared.store.vectors`` indexes local mode keeps beside SQLite, ~1.7 KB a record),
caught up before each search with the documents written since, by their sequence numbers. So
a matcher's plan costs what local mode's does, and the server only stores, lists and reads
documents by id.

Index ``<index>-ledger`` holds the leases (one document per leased file, changed only by
conditional writes: ``op_type=create`` or ``if_seq_no``/``if_primary_term``), the matchers'
claims (the same way), the distinct pairs, and the pixel comparisons remembered (read back by id).

The shape of both is kept by the services, never left to a write (lifecycle, ``_Index``):

* each name is an **alias** of a concrete index ``<name>-v1`` that ``open`` creates with its
  explicit, ``strict`` mapping; every write is sent with ``require_alias``, so a write never
  creates an index, not even on a node that came back empty (no template or cluster setting
  would survive that);
* a request that finds the index gone has it created again (one warning line, by the process
  that created it; the store's owner is told, and the services then rescan) and is sent again.

Writes do not wait for a refresh: the hashers' upserts are coalesced into bulk requests, and a
search sees them once the index was refreshed (a matcher asks for one refresh per batch;
a store object's own searches refresh first after its own writes).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from itertools import chain
from pathlib import Path
from typing import Any

import elasticsearch
import numpy as np
from elasticsearch import AsyncElasticsearch

from ..image import signature as sig
from . import Batched, Candidate, ImageRecord, StoreRefused, StoreUnavailable, ranked
from .vectors import LocalIndex, near_embeddings, near_signatures, rebuild

log = logging.getLogger(__name__)

EMBEDDING_DIMS = 512
PAGE = 5000  # hits per page when listing everything
MIRROR_CHUNK = 20000  # documents a mirror's build hands its indexes at once (as SQLite's rows come)
# Searches per msearch round trip: a few dozen keep the server's threads busy and one round
# trip well inside the client's timeout (256 kNN searches took more than 30 s on a loaded node).
MSEARCH = 32
# The concrete index behind each alias. A later mapping that an index cannot be changed to in
# place gets a new number, and a migration.
LAYOUT = "v1"
# Server answers that mean "not now" (overloaded, starting, a shard not yet allocated): an
# outage, waited out like a server that does not answer.
UNAVAILABLE_STATUS = (429, 502, 503, 504)

_KEYWORD = {"type": "keyword"}
_STORED_ONLY = {"type": "keyword", "index": False, "doc_values": False}
IMAGES_SETTINGS: dict[str, Any] = {
    # one shard holds millions of records (sequence numbers count per shard, and a reader
    # catches up shard by shard); a replica only where a second node can hold it, so a single
    # node is green, never yellow
    "number_of_shards": 1,
    "auto_expand_replicas": "0-1",
    # _source is rebuilt from the fields on reading: the embedding is kept once, as a vector,
    # not a second time as JSON in _source
    "mapping.source.mode": "synthetic",
    # no refresh_interval: the node's default refreshes each second, and not at all while nobody
    # searches (a shard idle for 30 s refreshes when a search comes, and that search waits for
    # it, so it still sees every write). Nothing waits for these refreshes (a matcher refreshes
    # before it plans); the 200 ms set before cost the node a third more CPU while the hashers
    # wrote (docs/benchmarks.md).
}
IMAGES_MAPPING: dict[str, Any] = {
    "dynamic": "strict",
    "properties": {
        "path": _KEYWORD,  # no ignore_above: every path is searchable and sortable
        "root": _KEYWORD,
        "size": {"type": "long"},
        "mtime_ns": {"type": "long"},
        "format": _KEYWORD,
        "width": {"type": "integer"},
        "height": {"type": "integer"},
        "exif_tags": {"type": "integer"},
        "exif_date": _KEYWORD,
        "error": _STORED_ONLY,
        "digest": _KEYWORD,
        "frames": {"type": "integer"},
        "analysis": {"type": "integer"},
        "planned": _KEYWORD,  # the plan mark: found by the reconcile (unplanned)
        "neighbors": _STORED_ONLY,
        "signed": {"type": "boolean"},  # holds a signature: what the reconcile plans
        "signature": {"type": "binary"},
        # Searched by the matchers in their own memory (_Mirror), never by the node: bytes, not a
        # vector with a graph to build on every write (what bulk loads spent their time on) or
        # 512 numbers in JSON to write and parse on every read; and no word fields.
        "embedding": {"type": "binary"},
    },
}
# What tells a document with a signature: ``signed``, or in an index made before it existed,
# the first of the 63 word fields that such an index still holds.
SIGNED = {"bool": {"should": [{"term": {"signed": True}}, {"exists": {"field": "w0"}}], "minimum_should_match": 1}}
LEDGER_MAPPING: dict[str, Any] = {
    "dynamic": "strict",
    "properties": {
        "kind": _KEYWORD,  # "lease", "distinct" or "comparison"
        "path": _STORED_ONLY,
        "role": _KEYWORD,
        "holders": {"type": "object", "enabled": False},  # [{"owner": str, "expires": float}]
        "a": _KEYWORD,
        "b": _KEYWORD,
        "result": {"type": "object", "enabled": False},  # a comparison's outcome, kept as sent
    },
}


def _hash_id(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode("utf-8", "surrogateescape")).hexdigest()


def _b64(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode("ascii")


def _to_doc(r: ImageRecord, vector: bool = False) -> dict[str, Any]:
    """The document of a record; ``vector``: the embedding as a list of numbers, for an index
    made by an earlier version (a ``dense_vector`` field), not as base64 bytes."""
    doc: dict[str, Any] = {
        "path": r.path, "root": r.root, "size": r.size, "mtime_ns": r.mtime_ns, "format": r.format,
        "width": r.width, "height": r.height, "exif_tags": r.exif_tags, "exif_date": r.exif_date,
        "error": r.error, "digest": r.digest, "frames": r.frames, "analysis": r.analysis,
        "planned": r.planned, "neighbors": list(r.neighbors), "signed": r.signature is not None,
    }
    if r.signature is not None:
        doc["signature"] = _b64(np.ascontiguousarray(r.signature, dtype=np.int8).tobytes())
    if r.embedding is not None:
        embedding = np.ascontiguousarray(r.embedding, dtype=np.int8)
        doc["embedding"] = embedding.tolist() if vector else _b64(embedding.tobytes())
    return doc


def _embedding(value: str | list[int]) -> np.ndarray:
    """An embedding as stored: base64 bytes, or a list of numbers (an earlier version's index)."""
    if isinstance(value, str):
        return np.frombuffer(base64.b64decode(value), dtype=np.int8)
    return np.asarray(value, dtype=np.int8)


def _paths(value: str | list[str] | None) -> tuple[str, ...]:
    """A list of paths as stored: a synthetic _source gives one as a string, and in its own order."""
    return (value,) if isinstance(value, str) else tuple(sorted(value or ()))


def _to_record(doc: dict[str, Any]) -> ImageRecord:
    signature = None
    if doc.get("signature") is not None:
        signature = np.frombuffer(base64.b64decode(doc["signature"]), dtype=np.int8)
    embedding = doc.get("embedding")
    return ImageRecord(
        path=doc["path"], root=doc["root"], size=doc["size"], mtime_ns=doc["mtime_ns"], format=doc["format"],
        width=doc["width"], height=doc["height"], exif_tags=doc["exif_tags"], exif_date=doc.get("exif_date"),
        signature=signature, error=doc.get("error"), digest=doc.get("digest"),
        frames=doc.get("frames", 1),
        embedding=None if embedding is None else _embedding(embedding),
        analysis=doc.get("analysis", 1),  # the documents before it were version 1
        planned=doc.get("planned"), neighbors=_paths(doc.get("neighbors")),
    )


def concrete(alias: str) -> str:
    """The name of the index behind ``alias`` (delete that one: an alias cannot be deleted by name)."""
    return f"{alias}-{LAYOUT}"


def _missing(body: Any) -> bool:
    """Does an answer say that the index is gone: the whole request (a 404), or any part of a
    bulk, mget or msearch?"""
    if not isinstance(body, dict):
        return False
    error = body.get("error")
    if isinstance(error, dict) and error.get("type") == "index_not_found_exception":
        return True
    parts = body.get("docs") or body.get("responses") or [
        next(iter(item.values()), None) for item in body.get("items") or ()]
    return any(_missing(part) for part in parts)


SEARCHES = ("/_search", "/_msearch", "/_pit", "/_count")


class _Client(AsyncElasticsearch):
    """The client of one of our indexes. A request that finds the index gone has ``vanished``
    (which creates it again) called and is sent once more. ``unrefreshed`` (set by the store's
    writes) makes the next search refresh the index first, so a store reads its own writes."""

    vanished: Callable[[], Awaitable[None]] | None = None
    unrefreshed = False
    alias = ""  # the index it works on

    async def perform_request(self, method: str, path: str, **kwargs: Any) -> Any:
        if self.unrefreshed and any(part in path for part in SEARCHES):
            self.unrefreshed = False
            try:
                await super().perform_request("POST", f"/{self.alias}/_refresh")
            except elasticsearch.NotFoundError:
                pass  # the index is gone: the search below meets that, and has it made again
        try:
            response = await super().perform_request(method, path, **kwargs)
        except elasticsearch.NotFoundError as exc:
            if self.vanished is None or not _missing(exc.body):
                raise
        else:
            if self.vanished is None or not _missing(response.body):
                return response
        await self.vanished()
        return await super().perform_request(method, path, **kwargs)


def _client(url: str, api_key: str | None, username: str | None, password: str | None,
            ca_certs: Path | None) -> _Client:
    # The client logs each request (INFO) and each failed attempt with its traceback (WARNING):
    # shown only at DEBUG. An outage is told by the services, once when it begins and once
    # when it ends; any other error reaches the caller as an exception.
    logging.getLogger("elastic_transport").setLevel(logging.DEBUG if log.isEnabledFor(logging.DEBUG) else logging.CRITICAL)
    return _Client(
        url, api_key=api_key, basic_auth=(username, password or "") if username else None,
        ca_certs=None if ca_certs is None else str(ca_certs), request_timeout=30,
    )


class _Index:
    """One of our indexes (behind its alias) and its client: created with its mapping when
    missing, at ``open`` and whenever a request finds it gone; turns a server that does not
    answer, or not now, into StoreUnavailable."""

    def __init__(self, url: str, index: str, mapping: dict[str, Any], *, settings: dict[str, Any] | None = None,
                 api_key: str | None = None, username: str | None = None, password: str | None = None,
                 ca_certs: Path | None = None):
        self.url = url
        self.index = index
        self._mapping = mapping
        self._settings = settings or {"auto_expand_replicas": "0-1"}
        self._es = _client(url, api_key, username, password, ca_certs)
        self._es.alias = index
        self._recreating = asyncio.Lock()
        self._legacy = False  # a concrete index of an earlier version under the alias's name
        self._told_extra = False  # that the index holds fields of an earlier version
        self.fields: dict[str, Any] = dict(mapping["properties"])  # the index's own, once opened
        #: called after this process created the index again, when it had vanished
        self.recreated: Callable[[], Awaitable[None]] | None = None

    @contextmanager
    def _reachable(self) -> Iterator[None]:
        try:
            yield
        except (elasticsearch.AuthenticationException, elasticsearch.AuthorizationException) as exc:
            raise StoreRefused(f"Elasticsearch at {self.url} refused us: {exc.message}") from None
        except elasticsearch.ApiError as exc:
            if exc.status_code not in UNAVAILABLE_STATUS:
                raise
            raise StoreUnavailable(f"Elasticsearch at {self.url} is unavailable ({exc.status_code} {exc.message})") from None
        except elasticsearch.TransportError as exc:  # refused, reset, timed out
            raise StoreUnavailable(f"Elasticsearch at {self.url} does not answer ({exc.message})") from None

    async def open(self) -> None:
        """Create the index with its mapping unless it exists (first use); fails early and in
        one line when the server cannot be used."""
        with self._reachable():
            await self._ensure()
        if self._legacy:
            log.warning("Elasticsearch index %s was made by an earlier version (not behind an alias): a write "
                        "could re-create it without its mapping if it vanished; delete it and rescan to renew it",
                        self.index)
        else:
            self._es.vanished = self._vanished

    async def _ensure(self) -> bool:
        """Make sure the alias and its index exist; True if this call created them."""
        es = self._es
        if await es.indices.exists_alias(name=self.index):
            await self._add_fields()
            return False
        if await es.indices.exists(index=self.index):
            # ``exists`` also answers for an alias: one another process made since we looked is ours
            self._legacy = not await es.indices.exists_alias(name=self.index)
            await self._add_fields()
            return False
        try:
            await es.indices.create(index=concrete(self.index), mappings=self._mapping, settings=self._settings,
                                    aliases={self.index: {"is_write_index": True}})
            self.fields = dict(self._mapping["properties"])
            return True
        except elasticsearch.BadRequestError as exc:
            if exc.error != "resource_already_exists_exception":
                raise
        await es.indices.put_alias(index=concrete(self.index), name=self.index)  # if somebody removed just the alias
        await self._add_fields()
        return False

    async def _add_fields(self) -> None:
        """Give the index the fields a later version added (a strict mapping refuses unknown
        ones). A field it holds keeps its form: an index made by an earlier version works as it
        is (say, with the word fields and vector graph searches once needed; nothing reads them
        now, and it says so once)."""
        held = await self._es.indices.get_mapping(index=self.index)
        present = {name: form for index in held.values() for name, form in index["mappings"].get("properties", {}).items()}
        wanted = self._mapping["properties"]
        missing = {name: form for name, form in wanted.items() if name not in present}
        if missing:
            await self._es.indices.put_mapping(index=self.index, properties=missing)
        self.fields = {**present, **missing}
        unread = set(present) - set(wanted)
        if unread and not self._told_extra:
            self._told_extra = True
            log.warning("Elasticsearch index %s was made by an earlier version: it still works, and the node keeps "
                        "fields nothing reads (%d); delete it and rescan to renew it", self.index, len(unread))

    async def _vanished(self) -> None:
        """A request found the index gone (deleted, or the node came back empty): create it
        again, with its mapping. One process does; it says so and tells the store's owner."""
        async with self._recreating:
            self._es.vanished = None  # the requests made here must not come back here
            try:
                created = await self._ensure()
            finally:
                self._es.vanished = self._vanished
        if created:
            log.warning("Elasticsearch index %s had vanished: created it again, empty, with its mapping", self.index)
            if self.recreated is not None:
                await self.recreated()

    @property
    def _write(self) -> dict[str, Any]:
        """Arguments of every write: never to anything but our alias (no auto-created index)."""
        return {} if self._legacy else {"require_alias": True}

    async def _bulk(self, operations: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """One bulk request; each operation's answer (``status``, ``error``) in order. An
        operation the server refused for being overloaded (429) makes the whole call unavailable."""
        if not operations:
            return []
        with self._reachable():
            answer = await self._es.bulk(operations=operations, **self._write)
        items = [next(iter(item.values())) for item in answer["items"]]
        busy = [i for i in items if i.get("status") in UNAVAILABLE_STATUS]
        if busy:
            raise StoreUnavailable(f"Elasticsearch at {self.url} is unavailable ({busy[0]['status']} "
                                   f"{busy[0].get('error', {}).get('type', '')})")
        return items

    async def _pages(self, query: dict[str, Any], sort: list[Any], source: Any) -> AsyncIterator[list[dict]]:
        """All hits of ``query`` in ``sort`` order, page by page, through a point in time."""
        pit = (await self._es.open_point_in_time(index=self.index, keep_alive="2m"))["id"]
        try:
            after = None
            while True:
                page = await self._es.search(
                    pit={"id": pit, "keep_alive": "2m"}, query=query, sort=sort, size=PAGE, source=source,
                    search_after=after, track_total_hits=False,
                )
                pit = page["pit_id"]
                hits = page["hits"]["hits"]
                if not hits:
                    return
                yield hits
                after = hits[-1]["sort"]
        finally:
            await self._es.close_point_in_time(id=pit)

    async def close(self) -> None:
        await self._es.close()


class _Writes:
    """Writes coalesced into bulk requests (group commit): while one request is on its way, the
    writes that arrive wait, and all of them go in the next. A write returns once its request
    answered, and raises its own error (or the request's)."""

    def __init__(self, send: Callable[[list[dict[str, Any]]], Awaitable[list[Exception | None]]]):
        self._send = send
        self._waiting: list[tuple[list[dict[str, Any]], asyncio.Future[None]]] = []
        self._lock = asyncio.Lock()

    async def write(self, operations: list[dict[str, Any]]) -> None:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append((operations, done))
        async with self._lock:
            if not done.done():
                batch, self._waiting = self._waiting, []
                try:
                    errors = await self._send([op for ops, _ in batch for op in ops])
                except asyncio.CancelledError:
                    self._waiting[:0] = [(ops, f) for ops, f in batch if f is not done]  # sent by the next
                    raise
                except Exception as exc:
                    errors = [exc] * len(batch)
                for (_, future), error in zip(batch, errors):
                    if error is None:
                        future.set_result(None)
                    else:
                        future.set_exception(error)
        await done


def _decode(hits: list[dict]) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A page of documents read for the mirror: (keys, signatures, signed, embeddings, embedded),
    a row each (zeros where a document holds none, or one of another length: nothing writes that)."""
    keys = [h["_id"] for h in hits]
    signatures = np.zeros((len(hits), sig.SIGNATURE_LENGTH), np.int8)
    embeddings = np.zeros((len(hits), EMBEDDING_DIMS), np.int8)
    signed, embedded = np.zeros(len(hits), bool), np.zeros(len(hits), bool)
    for k, h in enumerate(hits):
        source = h["_source"]
        if source.get("signature") is not None:
            value = np.frombuffer(base64.b64decode(source["signature"]), np.int8)
            if len(value) == sig.SIGNATURE_LENGTH:
                signatures[k], signed[k] = value, True
        if source.get("embedding") is not None:
            value = _embedding(source["embedding"])
            if len(value) == EMBEDDING_DIMS:
                embeddings[k], embedded[k] = value, True
    return keys, signatures, signed, embeddings, embedded


def _joined(pages: list[tuple]) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The decoded pages of one catch-up as one (``_decode``'s shape)."""
    if not pages:
        return ([], np.zeros((0, sig.SIGNATURE_LENGTH), np.int8), np.zeros(0, bool),
                np.zeros((0, EMBEDDING_DIMS), np.int8), np.zeros(0, bool))
    keys, *arrays = zip(*pages)
    return [k for page in keys for k in page], *(np.concatenate(a) for a in arrays)  # type: ignore[return-value]


class _Mirror:
    """The image index's two search indexes held in this process: the Goldberg words and the
    embeddings (``shared.store.vectors``, what local mode keeps beside SQLite) and every
    signature, by a number given to each document here. Caught up with the index's writes by
    their sequence numbers (``ElasticsearchStore._current``), so a matcher's searches are the
    same vectorised passes as local mode's, never a search on the server per record (a term
    query of 63 words, 163 ms p50 at 100k records; a kNN search, 147 ms). A document removed
    from the index stays here until a search meets it and does not find it on the server.

    Its methods run on the store's one thread for the mirror (the embedding scan also
    off it: ``EmbeddingIndex`` has its own lock)."""

    def __init__(self, uuid: str):
        self.index = LocalIndex.empty(uuid)  # store_id: the concrete index's uuid
        self.index.seq = -1  # every operation up to this sequence number is held
        self.ids: dict[str, int] = {}  # document _id -> number
        self.keys: list[str] = []  # number -> document _id
        self.signatures = np.zeros((0, sig.SIGNATURE_LENGTH), np.int8)  # by number
        self.signed = np.zeros(0, bool)  # by number: holds a signature (a flat picture's is all zeros)

    def numbers(self, keys: Sequence[str]) -> np.ndarray:
        """The number of each document (given now to one not seen before)."""
        for key in keys:
            if key not in self.ids:
                self.ids[key] = len(self.keys)
                self.keys.append(key)
        return np.array([self.ids[k] for k in keys], np.int64)

    def own(self, paths: Sequence[str]) -> np.ndarray:
        """The number of each path's document (-1: none held)."""
        return np.array([self.ids.get(_hash_id(p), -1) for p in paths], np.int64)

    def update(self, keys: list[str], signatures: np.ndarray, signed: np.ndarray, embeddings: np.ndarray,
               embedded: np.ndarray) -> None:
        """Documents read again (``keys``; rows ``signed`` of ``signatures``, ``embedded`` of
        ``embeddings`` hold something): a changed signature or embedding replaces the old one.
        The documents whose descriptors did not change (a plan mark written) are left alone."""
        numbers = self.numbers(keys)
        if len(self.signatures) < len(self.keys):
            room = max(len(self.keys), len(self.signatures) * 3 // 2)
            self.signatures = np.concatenate([self.signatures, np.zeros((room - len(self.signatures), sig.SIGNATURE_LENGTH), np.int8)])
            self.signed = np.concatenate([self.signed, np.zeros(room - len(self.signed), bool)])
        was_signed = self.signed[numbers]
        same = (was_signed == signed) & (~signed | (self.signatures[numbers] == signatures).all(axis=1))
        embeddings_held = self.index.embeddings
        if embeddings_held is None:
            same &= ~embedded
        else:
            held, was_embedded = embeddings_held.get(numbers)
            same &= (was_embedded == embedded) & (~embedded | (held == embeddings).all(axis=1))
        changed = ~same
        self.index.remove(numbers[changed])
        self.signed[numbers[changed]] = signed[changed]
        self.signatures[numbers[changed & signed]] = signatures[changed & signed]
        self.index.add(numbers[changed & signed], signatures[changed & signed], None)
        self.index.add(numbers[changed & embedded], None, embeddings[changed & embedded])

    def forget(self, keys: Sequence[str]) -> None:
        """Documents gone from the index."""
        numbers = np.array([self.ids[k] for k in keys if k in self.ids], np.int64)
        self.index.remove(numbers)
        self.signed[numbers] = False

    @classmethod
    def of(cls, uuid: str, seq: int, keys: list[str], signatures: np.ndarray, signed: np.ndarray,
           embeddings: np.ndarray, embedded: np.ndarray) -> _Mirror:
        """Every document of the index at once: the word index sorted once (``rebuild``)."""
        mirror = cls(uuid)
        numbers = mirror.numbers(keys)
        mirror.signatures, mirror.signed = signatures, signed

        def rows() -> Iterator[tuple[np.ndarray, np.ndarray | None, np.ndarray | None]]:
            # a chunk at a time, as SQLite's rows come: the word index turns each chunk into
            # its (key, id) words (8 bytes each, 63 a record) before it keeps them
            for at in (slice(start, start + MIRROR_CHUNK) for start in range(0, len(keys), MIRROR_CHUNK)):
                yield numbers[at][signed[at]], signatures[at][signed[at]], None
                yield numbers[at][embedded[at]], None, embeddings[at][embedded[at]]

        mirror.index = rebuild(uuid, seq, rows, len(keys))
        return mirror


class ElasticsearchStore(Batched, _Index):
    def __init__(self, url: str, index: str = "images", **auth: Any):
        super().__init__(url, index, IMAGES_MAPPING, settings=IMAGES_SETTINGS, **auth)
        self._writes = _Writes(self._index_records)
        self._marked = False  # plan marks written since the last refresh
        self._mirror: _Mirror | None = None  # built at the first search
        self._catching_up = asyncio.Lock()
        self._mirror_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mirror")

    def _index_op(self, record: ImageRecord) -> list[dict[str, Any]]:
        vector = self.fields.get("embedding", {}).get("type") == "dense_vector"  # an earlier version's index
        return [{"index": {"_index": self.index, "_id": _hash_id(record.path)}}, _to_doc(record, vector)]

    async def _index_records(self, operations: list[dict[str, Any]]) -> list[Exception | None]:
        """Each record's error, or None: a document the mapping refuses fails alone."""
        self._es.unrefreshed = True
        items = await self._bulk(operations)
        return [None if "error" not in item else
                ValueError(f"Elasticsearch refused the record of {doc['path']}: {item['error'].get('reason', item['error'])}")
                for item, doc in zip(items, operations[1::2])]

    async def upsert(self, record: ImageRecord) -> None:
        await self._writes.write(self._index_op(record))

    async def upsert_many(self, records: Sequence[ImageRecord]) -> None:
        for start in range(0, len(records), 1000):
            chunk = records[start : start + 1000]
            errors = await self._index_records([op for r in chunk for op in self._index_op(r)])
            failed = [e for e in errors if e is not None]
            if failed:
                raise failed[0]

    async def refresh(self) -> None:
        self._es.unrefreshed = False
        with self._reachable():
            await self._es.indices.refresh(index=self.index)

    async def get_many(self, paths: Sequence[str]) -> dict[str, ImageRecord]:
        out: dict[str, ImageRecord] = {}
        with self._reachable():
            for start in range(0, len(paths), 1000):
                chunk = [_hash_id(p) for p in paths[start : start + 1000]]
                docs = (await self._es.mget(index=self.index, ids=chunk))["docs"]
                out.update((d["_source"]["path"], _to_record(d["_source"])) for d in docs if d.get("found"))
        return out

    async def get(self, path: str) -> ImageRecord | None:
        return (await self.get_many([path])).get(path)

    async def _msearch(self, searches: list[dict[str, Any]]) -> list[list[dict]]:
        """The hits of each search, in order, ``MSEARCH`` searches per round trip."""
        out: list[list[dict]] = []
        with self._reachable():
            for start in range(0, len(searches), MSEARCH):
                found = await self._es.msearch(
                    index=self.index, searches=list(chain.from_iterable(
                        ({}, {"track_total_hits": False, **search}) for search in searches[start : start + MSEARCH])))
                for answer in found["responses"]:
                    if "error" in answer:
                        raise elasticsearch.ApiError(str(answer["error"]), meta=found.meta, body=answer)
                    out.append(answer["hits"]["hits"])
        return out

    async def _current(self) -> _Mirror:
        """The search indexes held here, caught up with every write acknowledged before this
        call, by any process: the documents whose sequence number is above what the mirror
        holds are read (all of them the first time, or when the index was made again)."""
        async with self._catching_up:
            with self._reachable():
                # the shards' sequence numbers come with any metric: the cheapest one (all of
                # them are ten times the bytes, and the node gathers each, its segments' among them)
                stats = (await self._es.indices.stats(index=self.index, metric="docs", level="shards"))["indices"]
                [(uuid, shards)] = [(i["uuid"], i["shards"]) for i in stats.values()]
                # Every operation up to a shard's global checkpoint is in all its copies, so the
                # refresh after reading it makes them visible to any search; a later one may not
                # be visible yet and is read next time (reading one again changes nothing). Sequence
                # numbers count per shard: the least checkpoint holds for every shard.
                checkpoint = min(copy["seq_no"]["global_checkpoint"] for copies in shards.values() for copy in copies)
                mirror = self._mirror if self._mirror is not None and self._mirror.index.store_id == uuid else None
                since = -1 if mirror is None else mirror.index.seq
                if since >= checkpoint and mirror is not None:
                    return mirror  # nothing to read: no refresh (a round trip, and the node's work)
                await self._es.indices.refresh(index=self.index)
                self._es.unrefreshed = False
                pages = [await self._in_mirror(_decode, hits) async for hits in self._pages(
                    {"range": {"_seq_no": {"gt": since}}}, [{"_shard_doc": "asc"}], ["signature", "embedding"])]
            read = _joined(pages)
            del pages  # a million documents' descriptors are 1.2 GB: not held twice while the indexes are built
            if mirror is None:
                mirror = self._mirror = await self._in_mirror(_Mirror.of, uuid, checkpoint, *read)
            else:
                await self._in_mirror(mirror.update, *read)
                mirror.index.seq = checkpoint
            return mirror

    async def set_aside(self) -> None:
        """The mirror dropped; the next search reads it from the node again."""
        async with self._catching_up:
            self._mirror = None

    async def _in_mirror(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn`` on the mirror's one thread, off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self._mirror_thread, fn, *args)

    async def _whole(self, mirror: _Mirror, near: dict[int, dict[int, float]], asked: list[int], count: int,
                     limit: int) -> list[list[Candidate]]:
        """For each of ``count`` queries, its near hits (of ``near``, by its place in ``asked``:
        number -> distance) read whole (one mget for all), nearest first. A document no longer
        in the index is forgotten by the mirror."""
        keys = {i: mirror.keys[i] for hits in near.values() for i in hits}
        wanted = sorted(set(keys.values()))
        records: dict[str, ImageRecord] = {}
        with self._reachable():
            for start in range(0, len(wanted), 1000):
                docs = (await self._es.mget(index=self.index, ids=wanted[start : start + 1000]))["docs"]
                records.update((d["_id"], _to_record(d["_source"])) for d in docs if d.get("found"))
        gone = [k for k in wanted if k not in records]
        if gone:
            await self._in_mirror(mirror.forget, gone)
        return ranked(near, asked, count, limit, {i: records[k] for i, k in keys.items() if k in records})

    async def candidates_many(self, records: Sequence[ImageRecord], max_dist: float, limit: int = 100,
                              turns: bool = False) -> list[list[Candidate]]:
        """All records' orientations in one query of the word index held here; the signatures
        held here decide, and only the near hits are read from the server."""
        asked = [k for k, r in enumerate(records) if r.signature is not None]
        if not asked:
            return [[] for _ in records]
        mirror = await self._current()
        searches = [np.stack(sig.orientations(records[k].signature) if turns else [records[k].signature]) for k in asked]

        def find() -> dict[int, dict[int, float]]:
            own = mirror.own([records[k].path for k in asked])
            own_signatures = mirror.signatures[np.maximum(own, 0)] if len(mirror.signatures) else \
                np.zeros((len(asked), sig.SIGNATURE_LENGTH), np.int8)
            return near_signatures(mirror.index.words, searches, own, own_signatures, lambda ids: mirror.signatures[ids],
                                   max_dist, limit)

        near = await self._in_mirror(find)
        return await self._whole(mirror, near, asked, len(records), limit)

    async def similar_many(self, records: Sequence[ImageRecord], min_similarity: float,
                           limit: int = 100) -> list[list[Candidate]]:
        """Every embedding held here compared with every query's, exactly (the same scan as local
        mode's); only the near hits are read from the server."""
        asked = [k for k, r in enumerate(records) if r.embedding is not None and np.any(r.embedding)]
        mirror = await self._current() if asked else None
        if mirror is None or mirror.index.embeddings is None:
            return [[] for _ in records]
        queries = np.stack([np.asarray(records[k].embedding, np.int8) for k in asked])
        own = await self._in_mirror(mirror.own, [records[k].path for k in asked])
        near = await asyncio.to_thread(near_embeddings, mirror.index.embeddings, queries, own, min_similarity, limit)
        return await self._whole(mirror, near, asked, len(records), limit)

    async def same_digest_many(self, records: Sequence[ImageRecord]) -> list[list[ImageRecord]]:
        digests = sorted({r.digest for r in records if r.digest})
        by_digest: dict[str, list[ImageRecord]] = {}
        searches = [{"size": 10_000, "query": {"bool": {"filter": [{"terms": {"digest": digests[start : start + 100]}}]}}}
                    for start in range(0, len(digests), 100)]
        for hits in await self._msearch(searches):
            for record in sorted((_to_record(h["_source"]) for h in hits), key=lambda r: r.path):
                by_digest.setdefault(record.digest, []).append(record)  # type: ignore[arg-type]
        return [[o for o in by_digest.get(r.digest, []) if o.path != r.path] if r.digest else [] for r in records]

    async def delete(self, path: str) -> None:
        self._es.unrefreshed = True
        with self._reachable():
            try:
                await self._es.delete(index=self.index, id=_hash_id(path))
            except elasticsearch.NotFoundError:
                pass

    async def close(self) -> None:
        self._mirror_thread.shutdown(wait=True)
        await super().close()

    async def iter_paths(self) -> AsyncIterator[str]:
        with self._reachable():
            async for hits in self._pages({"match_all": {}}, [{"path": "asc"}], False):
                for h in hits:
                    yield h["sort"][0]

    async def mark_planned(self, records: Sequence[ImageRecord], mark: str | None) -> list[str]:
        if not records:
            return []
        wanted = {_hash_id(r.path): r for r in records}
        with self._reachable():
            docs = (await self._es.mget(index=self.index, ids=list(wanted), source=["size", "mtime_ns", "analysis"]))["docs"]
        operations: list[dict[str, Any]] = []
        for d in docs:
            r = wanted[d["_id"]]
            if d.get("found") and (d["_source"]["size"], d["_source"]["mtime_ns"], d["_source"].get("analysis", 1)) == r.revision:
                operations += [{"update": {"_index": self.index, "_id": d["_id"], "if_seq_no": d["_seq_no"],
                                           "if_primary_term": d["_primary_term"]}},
                               {"doc": {"planned": mark, "neighbors": list(r.neighbors)}}]
        items = await self._bulk(operations)  # a record written again meanwhile: a conflict, left unplanned
        self._marked = True  # the twins' searches do not read the marks (no refresh for them); unplanned does
        return [wanted[op["update"]["_id"]].path for op, item in zip(operations[::2], items) if "error" not in item]

    async def unplanned(self, mark: str, after: str = "", limit: int = 1000) -> list[str]:
        if self._marked:
            self._marked = False
            await self.refresh()
        with self._reachable():
            hits = (await self._es.search(
                index=self.index, size=limit, source=False, sort=[{"path": "asc"}], track_total_hits=False,
                search_after=[after] if after else None,
                query={"bool": {"filter": [SIGNED], "must_not": [{"term": {"planned": mark}}]}},
            ))["hits"]["hits"]
        return [h["sort"][0] for h in hits]


Holders = list[dict[str, Any]]
# A change of one lease document: from (role, holders) or None (no lease) to the new
# (role, holders), or None (no lease left); False refuses the change.
Change = Callable[[tuple[str, Holders] | None], tuple[str, Holders] | None | bool]
CONFLICT_RETRIES = 20


class ElasticsearchLedger(_Index):
    """Leases as one document per leased file, changed only by conditional writes, so that the
    checks of ``acquire`` hold for the document they were made on. See the Ledger Protocol."""

    def __init__(self, url: str, index: str = "images", lease_seconds: float = 600.0, **auth: Any):
        super().__init__(url, f"{index}-ledger", LEDGER_MAPPING, **auth)
        self.lease_seconds = lease_seconds

    async def _change(self, path: str, change: Change) -> bool:
        """Apply ``change`` to ``path``'s lease; read again and retry when another writer came
        between (a keep lease is shared, so two keepers may write it at once)."""
        doc_id = "lease-" + _hash_id(path)
        with self._reachable():
            for _ in range(CONFLICT_RETRIES):
                try:
                    got = await self._es.get(index=self.index, id=doc_id)
                    state = (got["_source"]["role"], got["_source"]["holders"])
                    condition = {"if_seq_no": got["_seq_no"], "if_primary_term": got["_primary_term"]}
                except elasticsearch.NotFoundError:
                    state, condition = None, None
                new = change(state)
                if new is False:
                    return False
                try:
                    if new is None:
                        if condition is not None:
                            await self._es.delete(index=self.index, id=doc_id, **condition)
                        return True
                    role, holders = new  # type: ignore[misc]
                    document = {"kind": "lease", "path": path, "role": role, "holders": holders}
                    if condition is None:
                        await self._es.index(index=self.index, id=doc_id, document=document, op_type="create",
                                             **self._write)
                    else:
                        await self._es.index(index=self.index, id=doc_id, document=document, **condition,
                                             **self._write)
                    return True
                except (elasticsearch.ConflictError, elasticsearch.NotFoundError):
                    continue
        return False  # contended throughout: refused, the caller tries again later

    def _others(self, holders: Holders, owner: str, now: float) -> Holders:
        """The unexpired leases of other owners."""
        return [h for h in holders if h["owner"] != owner and h["expires"] > now]

    async def acquire(self, keep: str, remove: str, owner: str) -> bool:
        if keep == remove:
            return False
        now = time.time()
        mine = {"owner": owner, "expires": now + self.lease_seconds}

        def take_remove(state: tuple[str, Holders] | None) -> tuple[str, Holders] | bool:
            if state is not None and self._others(state[1], owner, now):
                return False  # leased by another action, in either role
            return "remove", [mine]

        def take_keep(state: tuple[str, Holders] | None) -> tuple[str, Holders] | bool:
            if state is None:
                return "keep", [mine]
            role, holders = state
            others = self._others(holders, owner, now)
            if role == "remove":
                return False if others else ("keep", [mine])
            return "keep", [*others, mine]

        if not await self._change(remove, take_remove):
            return False
        if await self._change(keep, take_keep):
            return True
        await self._change(remove, self._dropper(owner))
        return False

    def _dropper(self, owner: str) -> Change:
        def drop(state: tuple[str, Holders] | None) -> tuple[str, Holders] | None | bool:
            if state is None:
                return None
            rest = self._others(state[1], owner, time.time())
            return (state[0], rest) if rest else None

        return drop

    async def release(self, keep: str, remove: str, owner: str) -> None:
        await self._change(remove, self._dropper(owner))
        await self._change(keep, self._dropper(owner))

    async def mark_distinct(self, a: str, b: str) -> None:
        if a == b:
            return
        a, b = sorted((a, b))
        with self._reachable():
            await self._es.index(index=self.index, id="distinct-" + _hash_id(a, b),
                                 document={"kind": "distinct", "a": a, "b": b}, refresh="wait_for", **self._write)

    async def unmark_distinct(self, a: str, b: str) -> None:
        a, b = sorted((a, b))
        with self._reachable():
            try:
                await self._es.delete(index=self.index, id="distinct-" + _hash_id(a, b), refresh="wait_for")
            except elasticsearch.NotFoundError:
                pass

    async def marked_distinct(self) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        with self._reachable():
            async for hits in self._pages({"term": {"kind": "distinct"}}, [{"a": "asc"}, {"b": "asc"}], ["a", "b"]):
                out += [(h["_source"]["a"], h["_source"]["b"]) for h in hits]
        return out

    async def remember(self, found: Mapping[str, dict]) -> None:
        items = list(found.items())
        for start in range(0, len(items), 1000):  # read back by id only, which needs no refresh
            await self._bulk([op for k, v in items[start : start + 1000] for op in (
                {"index": {"_index": self.index, "_id": "comparison-" + k}}, {"kind": "comparison", "result": v})])

    async def claim(self, paths: Sequence[str], owner: str, seconds: float) -> set[str]:
        """Created where nobody holds a claim; taken over, by a conditional write, where it is
        this owner's or expired; refused otherwise (or when another writer came between)."""
        now = time.time()
        mine = {"kind": "plan", "path": None, "role": "plan", "holders": [{"owner": owner, "expires": now + seconds}]}
        ids = {"plan-" + _hash_id(p): p for p in dict.fromkeys(paths)}
        created = await self._bulk([op for i, p in ids.items()
                                    for op in ({"create": {"_index": self.index, "_id": i}}, {**mine, "path": p})])
        held = [i for i, item in zip(ids, created) if "error" in item]
        if not held:
            return set()
        with self._reachable():
            docs = (await self._es.mget(index=self.index, ids=held))["docs"]
        takeable = [d for d in docs if d.get("found") and all(
            h["owner"] == owner or h["expires"] <= now for h in d["_source"]["holders"])]
        taken = await self._bulk([op for d in takeable for op in (
            {"index": {"_index": self.index, "_id": d["_id"], "if_seq_no": d["_seq_no"],
                       "if_primary_term": d["_primary_term"]}}, {**mine, "path": ids[d["_id"]]})])
        won = {d["_id"] for d, item in zip(takeable, taken) if "error" not in item}
        return {ids[i] for i in held if i not in won}

    async def unclaim(self, paths: Sequence[str], owner: str) -> None:
        ids = ["plan-" + _hash_id(p) for p in dict.fromkeys(paths)]
        if not ids:
            return
        with self._reachable():
            docs = (await self._es.mget(index=self.index, ids=ids))["docs"]
        await self._bulk([{"delete": {"_index": self.index, "_id": d["_id"], "if_seq_no": d["_seq_no"],
                                      "if_primary_term": d["_primary_term"]}}
                          for d in docs if d.get("found") and any(h["owner"] == owner for h in d["_source"]["holders"])])

    async def recall(self, keys: Sequence[str]) -> dict[str, dict]:
        out: dict[str, dict] = {}
        with self._reachable():
            for start in range(0, len(keys), PAGE):
                ids = ["comparison-" + k for k in keys[start : start + PAGE]]
                found = await self._es.mget(index=self.index, ids=ids)
                out.update((d["_id"].removeprefix("comparison-"), d["_source"]["result"])
                           for d in found["docs"] if d.get("found"))
        return out
