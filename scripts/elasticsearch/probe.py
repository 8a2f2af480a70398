"""Check, with the official async client, the Elasticsearch APIs a store needs, against the node on
127.0.0.1:$ES_PORT (default 9200). Prints one line per API and exits 1 if any failed.

    python probe.py            # needs 'elasticsearch[async]>=8.12,<9'
"""

import asyncio
import os
import random
import sys
import traceback

from elasticsearch import AsyncElasticsearch, ConflictError, NotFoundError

INDEX = "probe-images"
DIMS = 512


def vector(seed: int) -> list[int]:
    rnd = random.Random(seed)
    return [rnd.randint(-128, 127) for _ in range(DIMS)]


async def main() -> int:
    port = os.environ.get("ES_PORT", "9200")
    es = AsyncElasticsearch(f"http://127.0.0.1:{port}", request_timeout=30)
    results: list[tuple[str, bool, str]] = []

    async def check(name, coro_fn):
        try:
            detail = await coro_fn()
            results.append((name, True, str(detail or "")))
        except Exception as e:  # noqa: BLE001 - a probe reports every failure
            results.append((name, False, f"{type(e).__name__}: {e}"))
            traceback.print_exc(file=sys.stderr)

    async def info():
        h = await es.cluster.health(wait_for_status="yellow", timeout="30s")
        return f"status={h['status']} (product check passed)"

    async def create_index():
        await es.options(ignore_status=404).indices.delete(index=INDEX)
        await es.indices.create(
            index=INDEX,
            settings={"number_of_shards": 1, "number_of_replicas": 0},
            mappings={
                "dynamic": "strict",
                "properties": {
                    "path": {"type": "keyword"},
                    "words": {"type": "keyword"},
                    "vec": {
                        "type": "dense_vector",
                        "element_type": "byte",
                        "dims": DIMS,
                        "index": True,
                        "similarity": "cosine",
                    },
                    "thumb": {"type": "binary"},
                    "size": {"type": "long"},
                },
            },
        )
        m = await es.indices.get_mapping(index=INDEX)
        return f"vec={m[INDEX]['mappings']['properties']['vec']}"

    async def bulk():
        ops = []
        for i in range(20):
            ops.append({"index": {"_index": INDEX, "_id": f"doc{i}"}})
            ops.append(
                {
                    "path": f"/img/{i}.jpg" + ("x" * 400 if i == 0 else ""),  # long keyword
                    "words": [f"w{i % 3}", f"w{i % 5 + 10}", "common"],
                    "vec": vector(i),
                    "thumb": "aGVsbG8=",
                    "size": 1000 + i,
                }
            )
        r = await es.bulk(operations=ops, refresh="wait_for")
        if r["errors"]:
            raise RuntimeError(r)
        return f"{len(r['items'])} items"

    async def bool_should():
        r = await es.search(
            index=INDEX,
            query={
                "bool": {
                    "should": [{"term": {"words": "w0"}}, {"term": {"words": "w10"}}],
                    "minimum_should_match": 2,
                }
            },
            size=50,
        )
        ids = sorted(h["_id"] for h in r["hits"]["hits"])
        # docs with i%3==0 and i%5==0: 0, 15
        assert ids == ["doc0", "doc15"], ids
        return ids

    async def knn():
        r = await es.search(
            index=INDEX,
            knn={"field": "vec", "query_vector": vector(7), "k": 3, "num_candidates": 20},
            source=["path"],
        )
        top = r["hits"]["hits"][0]
        assert top["_id"] == "doc7", top
        return f"top={top['_id']} score={top['_score']:.4f}"

    async def knn_filtered():
        r = await es.search(
            index=INDEX,
            knn={
                "field": "vec",
                "query_vector": vector(7),
                "k": 3,
                "num_candidates": 20,
                "filter": {"term": {"words": "w0"}},
            },
        )
        ids = [h["_id"] for h in r["hits"]["hits"]]
        assert "doc7" not in ids and ids, ids
        return ids

    async def pit_search_after():
        pit = await es.open_point_in_time(index=INDEX, keep_alive="1m")
        pit_id = pit["id"]
        seen, after, pages = [], None, 0
        try:
            while True:
                kw = {"search_after": after} if after else {}
                r = await es.search(
                    pit={"id": pit_id, "keep_alive": "1m"},
                    size=7,
                    sort=[{"size": "asc"}, {"_shard_doc": "asc"}],
                    source=False,
                    **kw,
                )
                hits = r["hits"]["hits"]
                if not hits:
                    break
                pages += 1
                pit_id = r.get("pit_id", pit_id)
                seen += [h["_id"] for h in hits]
                after = hits[-1]["sort"]
        finally:
            await es.close_point_in_time(id=pit_id)
        assert len(seen) == 20 and len(set(seen)) == 20, seen
        return f"{len(seen)} docs in {pages} pages"

    async def conditional_index():
        d = await es.get(index=INDEX, id="doc1")
        await es.index(
            index=INDEX,
            id="doc1",
            document={**d["_source"], "size": 5},
            if_seq_no=d["_seq_no"],
            if_primary_term=d["_primary_term"],
        )
        try:
            await es.index(
                index=INDEX,
                id="doc1",
                document={**d["_source"], "size": 6},
                if_seq_no=d["_seq_no"],
                if_primary_term=d["_primary_term"],
            )
        except ConflictError as e:
            return f"stale seq_no -> {e.meta.status}"
        raise AssertionError("stale if_seq_no write was accepted")

    async def create_conflict():
        await es.index(index=INDEX, id="new1", document={"path": "/n", "size": 1}, op_type="create")
        try:
            await es.index(index=INDEX, id="new1", document={"path": "/n", "size": 2}, op_type="create")
        except ConflictError as e:
            return f"second create -> {e.meta.status}"
        raise AssertionError("second create was accepted")

    async def refresh():
        r = await es.indices.refresh(index=INDEX)
        c = await es.count(index=INDEX)
        return f"shards={r['_shards']} count={c['count']}"

    async def delete():
        await es.delete(index=INDEX, id="new1")
        try:
            await es.delete(index=INDEX, id="new1")
        except NotFoundError as e:
            return f"deleted; again -> {e.meta.status}"
        raise AssertionError("second delete found the doc")

    async def mget():
        r = await es.mget(index=INDEX, ids=["doc1", "doc2", "missing"], source=["size", "thumb"])
        found = [(d["_id"], d["found"]) for d in r["docs"]]
        assert found == [("doc1", True), ("doc2", True), ("missing", False)], found
        assert r["docs"][0]["_source"]["size"] == 5
        return found

    async def long_keyword():
        r = await es.search(index=INDEX, query={"term": {"path": "/img/0.jpg" + "x" * 400}})
        assert r["hits"]["total"]["value"] == 1, r["hits"]
        return "410-char keyword found by term"

    async def delete_by_query():
        await es.delete_by_query(index=INDEX, query={"term": {"words": "w1"}}, refresh=True)
        return "available"

    async def root_info():
        r = await es.info()
        return r["version"]["number"]

    try:
        for name, fn in [
            ("health + product check", info),
            ("indices.create (keyword, byte dense_vector 512 cosine, binary, long)", create_index),
            ("bulk", bulk),
            ("bool should + minimum_should_match", bool_should),
            ("knn", knn),
            ("knn with filter", knn_filtered),
            ("point in time + search_after", pit_search_after),
            ("index if_seq_no/if_primary_term (409 on stale)", conditional_index),
            ("index op_type=create (409 on conflict)", create_conflict),
            ("refresh", refresh),
            ("delete", delete),
            ("mget", mget),
            ("keyword without ignore_above, long value", long_keyword),
            ("delete_by_query (expected missing: reindex module)", delete_by_query),
            ("GET / info (expected missing: rest-root module)", root_info),
        ]:
            await check(name, fn)
    finally:
        await es.options(ignore_status=404).indices.delete(index=INDEX)
        await es.close()

    for name, ok, detail in results:
        print(f"{'OK  ' if ok else 'FAIL'} {name}: {detail}")
    required = [r for r in results if "expected missing" not in r[0]]
    return 0 if all(ok for _, ok, _ in required) else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
