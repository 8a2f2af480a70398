"""How the matcher scales: synthetic signatures at 10k / 100k / 1M images.

Each (size, index) runs in a fresh subprocess so that its peak memory (ru_maxrss) is its own.

Signatures are synthetic but shaped like real ones: a random smooth 9x9 grid of grey levels
(some images with flat, saturated regions such as sky, which give zeros), turned into the
648 values exactly as the Goldberg signature does (centre-minus-neighbour differences, 2/255
tolerance, split at the median into +-1/+-2). Near-duplicate groups (2-6 members) are planted by
changing a random 2-18% of a base signature's values by one step, which puts the copies at
distance ~0.05-0.20 from the base (the table reports the real spread).

Indexes:

* ``sqlite``: the product. Every signature is upserted into ``shared.store.sqlite.SQLiteStore``
  (its words indexed beside it), then ``services.matcher.handler.plan`` runs over all paths with the
  default settings, exactly as local mode's match phase does.
* ``numpy``: a prototype (bench only, not the product). Per word position, an argsort of the
  63 words gives a CSR-like posting array; runs of equal words yield candidate pairs (skipping
  the flat word and "stop words" with more than ``--stop`` postings); pairs are counted with
  np.unique, exact distances are computed on the pairs that share >= ``--min-shared`` words, and
  components of the pairs within max_dist are planned with the product's ``plan_groups``.
  Signatures are packed two values per byte (324 B/image).

Recall is scored like the benchmark kit: a planted copy counts when it is removed in a group
whose kept file belongs to its own planted group; a removal in favour of an unrelated image is
a wrong removal.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import command_line, machine_line, md_table, peak_rss_mb, percentile  # noqa: E402

SIG_LEN = 648
GRID = 9
_NEIGHBOURS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))


# ---------------------------------------------------------------------------------------------
# synthetic signatures


# Planted copies lie up to 0.20 from their base: max_dist sits above that so that the index, not
# the threshold, is measured; synthetic signatures have no turned copies to find.
BENCH_SETTINGS = {"max_dist": 0.25, "match_orientations": False}

def _base_signatures(rng: np.random.Generator, n: int) -> np.ndarray:
    """n realistic-looking signatures (int8, values -2..2), vectorised."""
    # smooth random field: white noise on 13x13, 5x5 box blur -> 9x9, plus a little fine detail
    noise = rng.standard_normal((n, 13, 13)).astype(np.float32)
    c = np.cumsum(np.cumsum(noise, axis=1), axis=2)
    c = np.pad(c, ((0, 0), (1, 0), (1, 0)))
    k = 5
    smooth = (c[:, k:, k:] - c[:, :-k, k:] - c[:, k:, :-k] + c[:, :-k, :-k]) / (k * k)
    field = smooth + 0.35 * rng.standard_normal((n, GRID, GRID)).astype(np.float32) * rng.uniform(
        0.2, 1.0, (n, 1, 1)
    ).astype(np.float32)
    contrast = rng.uniform(0.05, 0.35, (n, 1, 1)).astype(np.float32)
    avg = 0.5 + contrast * field
    # a third of the images have flat saturated regions (sky, wall, night): they give zeros
    flat = rng.random(n) < 0.33
    lo = rng.uniform(0.0, 0.45, n).astype(np.float32)
    hi = rng.uniform(0.55, 1.0, n).astype(np.float32)
    avg[flat] = np.clip(avg[flat], lo[flat, None, None], hi[flat, None, None])
    avg = np.clip(avg, 0.0, 1.0)
    # centre minus neighbour, 0 off the grid
    padded = np.full((n, GRID + 2, GRID + 2), np.nan, dtype=np.float32)
    padded[:, 1:-1, 1:-1] = avg
    diff = np.empty((n, GRID, GRID, 8), dtype=np.float32)
    for k_, (dr, dc) in enumerate(_NEIGHBOURS):
        diff[..., k_] = avg - padded[:, 1 + dr : 1 + dr + GRID, 1 + dc : 1 + dc + GRID]
    diff = diff.reshape(n, SIG_LEN)
    diff[np.isnan(diff)] = 0.0
    diff[np.abs(diff) < 2 / 255.0] = 0.0
    with np.errstate(all="ignore"), __import__("warnings").catch_warnings():
        __import__("warnings").simplefilter("ignore")
        pmed = np.nanmedian(np.where(diff > 0, diff, np.nan), axis=1)[:, None]
        nmed = np.nanmedian(np.where(diff < 0, diff, np.nan), axis=1)[:, None]
    out = np.zeros((n, SIG_LEN), dtype=np.int8)
    out[(diff > 0) & (diff <= pmed)] = 1
    out[(diff > 0) & (diff > pmed)] = 2
    out[(diff < 0) & (diff >= nmed)] = -1
    out[(diff < 0) & (diff < nmed)] = -2
    return out


def synthesize_chunks(n: int, seed: int = 1, dup_share: float = 0.2, chunk: int = 10_000):
    """Yield (signatures (m, 648) int8, group (m,) int32) chunks adding up to n images.

    About ``dup_share`` of the images belong to planted groups of 2-6 (a base + copies with a
    random 2-18% of values moved one step); group ids are global, -1 marks a lone image. Groups
    never straddle chunks, so the whole set is never needed in memory at once.
    """
    rng = np.random.default_rng(seed)
    made = 0
    next_group = 0
    while made < n:
        m = min(chunk, n - made)
        sigs = _base_signatures(rng, m)
        group = np.full(m, -1, dtype=np.int32)
        budget = int(m * dup_share)
        i = 0
        while budget >= 2:
            size = int(min(budget, rng.integers(2, 7)))
            budget -= size
            base = sigs[i]
            group[i : i + size] = next_group
            next_group += 1
            for j in range(i + 1, i + size):
                mask = rng.random(SIG_LEN) < rng.uniform(0.02, 0.18)
                step = rng.choice(np.array([-1, 1], dtype=np.int8), SIG_LEN)
                copy = base.copy()
                copy[mask] = np.clip(base[mask] + step[mask], -2, 2)
                sigs[j] = copy
            i += size
        yield sigs, group
        made += m


def synthesize(n: int, seed: int = 1, dup_share: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    """All of :func:`synthesize_chunks` as one (n, 648) int8 array and (n,) group ids."""
    sigs = np.empty((n, SIG_LEN), dtype=np.int8)
    group = np.empty(n, dtype=np.int32)
    at = 0
    for s, g in synthesize_chunks(n, seed, dup_share):
        sigs[at : at + len(s)] = s
        group[at : at + len(s)] = g
        at += len(s)
    return sigs, group


def pair_distances(sigs: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Goldberg distance between rows a[k] and b[k] of an int8 signature matrix."""
    x = sigs[a].astype(np.float32)
    y = sigs[b].astype(np.float32)
    den = np.sqrt((x * x).sum(1)) + np.sqrt((y * y).sum(1))
    num = np.sqrt(((x - y) ** 2).sum(1))
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def planted_spread(sigs: np.ndarray, group: np.ndarray) -> tuple[float, float, float]:
    """(min, median, max) distance of planted copies to their base."""
    order = np.argsort(group, kind="stable")
    g = group[order]
    first = np.r_[True, g[1:] != g[:-1]]
    base_of = order[np.maximum.accumulate(np.where(first, np.arange(len(g)), 0))]
    keep = (g >= 0) & ~first
    d = pair_distances(sigs, order[keep], base_of[keep])
    if d.size == 0:
        return (0.0, 0.0, 0.0)
    return float(d.min()), float(np.median(d)), float(d.max())


def score(groups: list[tuple[int, list[int]]], group: np.ndarray) -> dict:
    """Kit-style scoring of (keep id, removed ids) groups against planted group ids."""
    expected = int(sum(np.bincount(group[group >= 0]) - 1)) if (group >= 0).any() else 0
    correct = wrong = 0
    for keep, removed in groups:
        gk = group[keep]
        for r in removed:
            if gk >= 0 and group[r] == gk:
                correct += 1
            else:
                wrong += 1
    return {"expected": expected, "correct": correct, "wrong": wrong,
            "recall": correct / expected if expected else None}


# ---------------------------------------------------------------------------------------------
# one run per subprocess


async def _pixels_agree(a, b, turns):
    """Synthetic signatures have no files behind them: this benchmark measures retrieval and
    planning, so the verdict's pixel comparison is taken as agreeing (bench/accuracy.py
    measures it on real photos)."""
    from shared.image.compare import Agreement

    return Agreement(score=1.0), Agreement(score=1.0)


def _record(i: int, s: np.ndarray):
    from shared.store import ImageRecord

    return ImageRecord(
        path=f"/synthetic/{i:08d}.jpg", root="/synthetic", size=2_000_000 + (i % 997), mtime_ns=1_600_000_000 * 10**9,
        format="JPEG", width=4000, height=3000, exif_tags=20, exif_date="2020:01:01 12:00:00",
        signature=s,
    )


async def _run_sqlite(n: int, seed: int, queries: int, workdir: Path) -> dict:
    from services.matcher.handler import plan
    from shared.config import Settings
    from shared.store.sqlite import SQLiteStore

    t0 = time.perf_counter()
    sigs, group = synthesize(n, seed)
    spread = planted_spread(sigs, group)
    t_gen = time.perf_counter() - t0
    settings = Settings(store_path=workdir / "s.sqlite", journal_directory=workdir / "j", **BENCH_SETTINGS)
    store = SQLiteStore(workdir / "s.sqlite")
    try:
        t0 = time.perf_counter()
        for i in range(n):
            await store.upsert(_record(i, sigs[i]))
        t_insert = time.perf_counter() - t0
        paths = [f"/synthetic/{i:08d}.jpg" for i in range(n)]
        t0 = time.perf_counter()
        groups = await plan(paths, store=store, settings=settings, look=_pixels_agree)
        t_plan = time.perf_counter() - t0
        rng = np.random.default_rng(seed + 7)
        sample = await store.get_many([paths[i] for i in rng.choice(n, min(queries, n), replace=False)])
        lat = []
        for rec in sample.values():
            q0 = time.perf_counter()
            await store.candidates(rec, settings.max_dist, 100)
            lat.append((time.perf_counter() - q0) * 1000)
    finally:
        await store.close()
    ids = [(int(g.keep.path[-12:-4]), [int(r.path[-12:-4]) for r, _ in g.remove]) for g in groups]
    size = sum(p.stat().st_size for p in workdir.glob("s.sqlite*"))
    return {
        "index": "sqlite", "n": n, "gen_s": t_gen, "insert_s": t_insert, "match_s": t_plan,
        "total_s": t_insert + t_plan, "p50_ms": percentile(lat, 50), "p99_ms": percentile(lat, 99),
        "store_bytes_per_image": size / n, "spread": spread, **score(ids, group),
    }


def _run_numpy(n: int, seed: int, queries: int, stop: int, min_shared: int) -> dict:
    from shared.config import Settings
    from shared.core.ranking import plan_groups
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    settings = Settings(**BENCH_SETTINGS)
    max_dist = settings.max_dist
    t0 = time.perf_counter()
    index, group, t_gen = NumpyWordIndex.build_from_chunks(synthesize_chunks(n, seed), n, stop=stop)
    t_index = time.perf_counter() - t0 - t_gen
    first, _ = next(synthesize_chunks(min(n, 10_000), seed))
    spread = planted_spread(first, group[: len(first)])
    rss_gen = 0.0
    t0 = time.perf_counter()
    a, b, shared = index.all_pairs(min_shared=min_shared)
    n_pairs = int(a.size)
    dist = np.empty(a.size, dtype=np.float32)
    for s in range(0, a.size, 16_384):
        dist[s : s + 16_384] = index.distances(a[s : s + 16_384], b[s : s + 16_384])
    near = dist <= max_dist
    a, b, dist = a[near], b[near], dist[near]
    t_pairs = time.perf_counter() - t0
    t0 = time.perf_counter()
    graph = coo_matrix((np.ones(a.size, dtype=np.int8), (a, b)), shape=(n, n)).tocsr()
    _, labels = connected_components(graph, directed=False)
    members = np.unique(np.r_[a, b])
    edges_by_comp: dict[int, list] = {}
    for x, y, d in zip(a.tolist(), b.tolist(), dist.tolist()):
        edges_by_comp.setdefault(int(labels[x]), []).append((f"{x:08d}", f"{y:08d}", d))
    recs = {int(i): _record(int(i), index.signature(int(i))) for i in members.tolist()}
    comp_members: dict[int, dict] = {}
    for i, r in recs.items():
        comp_members.setdefault(int(labels[i]), {})[f"{i:08d}"] = r
    ids = []
    for c, edges in edges_by_comp.items():
        for g in asyncio.run(plan_groups(comp_members[c], edges, settings.prioritization_rules, settings.use_exif_data)):
            ids.append((int(g.keep.path[-12:-4]), [int(r.path[-12:-4]) for r, _ in g.remove]))
    t_plan = time.perf_counter() - t0

    rng = np.random.default_rng(seed + 7)
    lat = []
    for i in rng.choice(n, min(queries, n), replace=False).tolist():
        q0 = time.perf_counter()
        index.query(index.signature(i), max_dist, 100, exclude=i)
        lat.append((time.perf_counter() - q0) * 1000)
    return {
        "index": "numpy", "n": n, "gen_s": t_gen, "insert_s": t_index, "match_s": t_pairs + t_plan,
        "total_s": t_index + t_pairs + t_plan, "p50_ms": percentile(lat, 50), "p99_ms": percentile(lat, 99),
        "pairs_checked": n_pairs, "pair_occurrences": index.pair_occurrences, "rss_after_gen_mb": rss_gen, "passes": index.passes, "index_bytes_per_image": index.nbytes / n, "spread": spread,
        **score(ids, group),
    }


class NumpyWordIndex:
    """Prototype in-memory word index (bench only).

    Per word position p: ``words[p]`` sorted (int32) and ``ids[p]`` the image ids in that order
    (int32) - a CSR posting array whose offsets are found with searchsorted. 8 bytes per word,
    504 B/image, plus the packed signatures (324 B/image).
    """

    FLAT = sum(3**i for i in range(16))

    def __init__(self, packed: np.ndarray, words: list[np.ndarray], ids: list[np.ndarray], stop: int):
        self.packed, self.words, self.ids, self.stop = packed, words, ids, stop

    @staticmethod
    def pack(sigs: np.ndarray) -> np.ndarray:
        v = (sigs + 2).astype(np.uint8)
        return (v[:, 0::2] | (v[:, 1::2] << 4)).astype(np.uint8)

    def unpack(self, rows: np.ndarray) -> np.ndarray:
        p = self.packed[rows]
        out = np.empty((p.shape[0], SIG_LEN), dtype=np.int8)
        out[:, 0::2] = (p & 15).astype(np.int8) - 2
        out[:, 1::2] = (p >> 4).astype(np.int8) - 2
        return out

    def signature(self, i: int) -> np.ndarray:
        return self.unpack(np.array([i]))[0]

    @classmethod
    def build(cls, sigs: np.ndarray, stop: int = 32) -> NumpyWordIndex:
        from shared.image.signature import _WORD_CODING, _WORD_INDEX

        n = sigs.shape[0]
        words, ids = [], []
        coding = _WORD_CODING.astype(np.int64)
        for p in range(_WORD_INDEX.shape[0]):
            cols = _WORD_INDEX[p]
            w = np.zeros(n, dtype=np.int64)
            for k, col in enumerate(cols.tolist()):
                if col < SIG_LEN:
                    w += (np.clip(sigs[:, col], -1, 1).astype(np.int64) + 1) * coding[k]
                else:
                    w += coding[k]  # padding value 0 -> digit 1
            order = np.argsort(w, kind="stable").astype(np.int32)
            words.append(w[order].astype(np.int32))
            ids.append(order)
        return cls(cls.pack(sigs), words, ids, stop)

    @classmethod
    def build_from_chunks(cls, chunks, n: int, stop: int = 32):
        """Build without ever holding the int8 signatures: pack and take words chunk by chunk.
        Returns (index, group ids, seconds spent generating the synthetic chunks)."""
        from shared.image.signature import _WORD_CODING, _WORD_INDEX

        packed = np.empty((n, SIG_LEN // 2), dtype=np.uint8)
        words = np.empty((_WORD_INDEX.shape[0], n), dtype=np.int32)
        group = np.empty(n, dtype=np.int32)
        padded_index = _WORD_INDEX
        coding = _WORD_CODING.astype(np.int64)
        at, t_gen = 0, 0.0
        it = iter(chunks)
        while True:
            g0 = time.perf_counter()
            try:
                sigs, grp = next(it)
            except StopIteration:
                break
            t_gen += time.perf_counter() - g0
            m = len(sigs)
            packed[at : at + m] = cls.pack(sigs)
            group[at : at + m] = grp
            digits = np.concatenate([np.clip(sigs, -1, 1), np.zeros((m, 1), np.int8)], axis=1) + 1
            words[:, at : at + m] = (digits[:, padded_index].astype(np.int64) @ coding).T.astype(np.int32)
            at += m
        ids = []
        for p in range(words.shape[0]):
            order = np.argsort(words[p], kind="stable").astype(np.int32)
            words[p] = words[p][order]  # sorted in place: the index is these rows
            ids.append(order)
        return cls(packed, list(words), ids, stop), group, t_gen

    @property
    def nbytes(self) -> int:
        return self.packed.nbytes + sum(w.nbytes + i.nbytes for w, i in zip(self.words, self.ids))

    def distances(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        x = self.unpack(a).astype(np.float32)
        y = self.unpack(b).astype(np.float32)
        den = np.sqrt((x * x).sum(1)) + np.sqrt((y * y).sum(1))
        num = np.sqrt(((x - y) ** 2).sum(1))
        return np.divide(num, den, out=np.zeros_like(num), where=den > 0)

    def _runs(self, p: int) -> tuple[np.ndarray, np.ndarray]:
        """(starts, lengths) of the runs of equal words at position p worth pairing."""
        w = self.words[p]
        starts = np.flatnonzero(np.r_[True, w[1:] != w[:-1]])
        lengths = np.diff(np.r_[starts, w.size])
        ok = (lengths >= 2) & (lengths <= self.stop) & (w[starts] != self.FLAT)
        return starts[ok], lengths[ok]

    @staticmethod
    def _expand(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """starts[k] + 0..lengths[k]-1 for every k, concatenated."""
        total = int(lengths.sum())
        offs = np.arange(total) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        return np.repeat(starts, lengths) + offs

    def pair_count(self) -> int:
        total = 0
        for p in range(len(self.words)):
            _, lengths = self._runs(p)
            total += int((lengths.astype(np.int64) * (lengths - 1) // 2).sum())
        return total

    def all_pairs(self, max_codes: int = 8_000_000, min_shared: int = 1):
        """Every pair of images sharing >= min_shared (non-flat, non-stop) words, as
        (a, b, shared words) with a < b. Done in passes over ``lo % passes`` so that at most
        about ``max_codes`` pair codes are held at once."""
        n = self.packed.shape[0]
        total = self.pair_count()
        passes = max(1, -(-total // max_codes))
        out_a, out_b, out_c = [], [], []
        for k in range(passes):
            codes = []
            for p in range(len(self.words)):
                starts, lengths = self._runs(p)
                if starts.size == 0:
                    continue
                elem = self._expand(starts, lengths)
                cnt = np.repeat(starts + lengths, lengths) - elem - 1
                first = np.repeat(elem, cnt)
                second = self._expand(elem + 1, cnt)
                ids = self.ids[p]
                x, y = ids[first].astype(np.int64), ids[second].astype(np.int64)
                lo, hi = np.minimum(x, y), np.maximum(x, y)
                if passes > 1:
                    sel = lo % passes == k
                    lo, hi = lo[sel], hi[sel]
                codes.append(lo * n + hi)
            if not codes:
                continue
            uniq, counts = np.unique(np.concatenate(codes), return_counts=True)
            del codes
            keep = counts >= min_shared
            out_a.append(uniq[keep] // n)
            out_b.append(uniq[keep] % n)
            out_c.append(counts[keep])
        self.passes, self.pair_occurrences = passes, total
        if not out_a:
            e = np.zeros(0, dtype=np.int64)
            return e, e, e
        return np.concatenate(out_a), np.concatenate(out_b), np.concatenate(out_c)

    def query(self, signature: np.ndarray, max_dist: float, limit: int = 100, exclude: int = -1):
        """The ``store.candidates`` equivalent: ids sharing most words, then exact distances."""
        from shared.image.signature import words as words_of

        hits = []
        for p, word in enumerate(words_of(signature)):
            if word == self.FLAT:
                continue
            w = self.words[p]
            lo = np.searchsorted(w, word, "left")
            hi = np.searchsorted(w, word, "right")
            if 0 < hi - lo <= self.stop:
                hits.append(self.ids[p][lo:hi])
        if not hits:
            return []
        cand, counts = np.unique(np.concatenate(hits), return_counts=True)
        mine = cand != exclude
        cand, counts = cand[mine], counts[mine]
        if cand.size == 0:
            return []
        top = cand[np.argsort(-counts, kind="stable")[: limit + 1]]
        x = signature.astype(np.float32)
        y = self.unpack(top).astype(np.float32)
        den = math.sqrt(float(x @ x)) + np.sqrt((y * y).sum(1))
        d = np.sqrt(((y - x) ** 2).sum(1)) / np.maximum(den, 1e-9)
        order = np.argsort(d)
        return [(int(top[j]), float(d[j])) for j in order if d[j] <= max_dist][:limit]


def _child(args: argparse.Namespace) -> None:
    if args.index == "sqlite":
        with tempfile.TemporaryDirectory(prefix="matcher-scale-") as tmp:
            out = asyncio.run(_run_sqlite(args.child, args.seed, args.queries, Path(tmp)))
    else:
        out = _run_numpy(args.child, args.seed, args.queries, args.stop, args.min_shared)
    out["peak_rss_mb"] = peak_rss_mb()
    print("RESULT " + json.dumps(out))


def run_one(n: int, index: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--child", str(n), "--index", index, "--seed", str(args.seed),
           "--queries", str(args.queries), "--stop", str(args.stop), "--min-shared", str(args.min_shared)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    wall = time.perf_counter() - t0
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            out = json.loads(line[7:])
            out["wall_s"] = wall
            return out
    raise RuntimeError(f"{index} n={n} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--sizes", default="10000,100000,1000000", help="comma-separated image counts (default: %(default)s)")
    ap.add_argument("--index", default="sqlite,numpy", help="indexes to run: sqlite, numpy or both (default: %(default)s)")
    ap.add_argument("--sqlite-max", type=int, default=100_000,
                    help="largest size run on the SQLite store; bigger sizes are extrapolated (default: %(default)s)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--queries", type=int, default=300, help="store.candidates calls timed per size (default: %(default)s)")
    ap.add_argument("--stop", type=int, default=32, help="numpy index: ignore words with more postings (default: %(default)s)")
    ap.add_argument("--min-shared", type=int, default=2, help="numpy index: shared words needed to compare (default: %(default)s)")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds per run (default: %(default)s)")
    ap.add_argument("--json", type=Path, help="also write the raw results here")
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child is not None:
        _child(args)
        return 0

    sizes = [int(s) for s in args.sizes.split(",") if s]
    indexes = [s.strip() for s in args.index.split(",") if s.strip()]
    results = []
    for index in indexes:
        for n in sizes:
            if index == "sqlite" and n > args.sqlite_max:
                results.append({"index": index, "n": n, "skipped": True})
                continue
            print(f"running {index} n={n} ...", file=sys.stderr, flush=True)
            results.append(run_one(n, index, args))
    # extrapolate SQLite sizes that were skipped from the two largest measured sizes (power law)
    done = sorted((r for r in results if r["index"] == "sqlite" and not r.get("skipped")), key=lambda r: r["n"])
    for r in results:
        if r.get("skipped") and len(done) >= 2:
            a, b = done[-2], done[-1]
            for key in ("total_s", "peak_rss_mb"):
                expo = math.log(b[key] / a[key]) / math.log(b["n"] / a["n"])
                r[key + "_est"] = b[key] * (r["n"] / b["n"]) ** expo
            r["store_mb_est"] = b["store_bytes_per_image"] * r["n"] / 1e6
    print()
    print(machine_line())
    print(f"Command: {command_line()}")
    print()
    rows = []
    for r in results:
        if r.get("skipped"):
            est = r.get("total_s_est")
            rows.append([r["index"], f"{r['n']:,}", f"not run; est. {est / 60:.0f} min" if est else "not run",
                         "-", "-", "-", "-", f"est. {r['peak_rss_mb_est']:.0f}" if est else "-", "-", "-", "-"])
            continue
        mem = r.get("store_bytes_per_image") or r.get("index_bytes_per_image")
        rows.append([
            r["index"], f"{r['n']:,}", f"{r['total_s']:.1f}", f"{r['insert_s']:.1f}", f"{r['match_s']:.1f}",
            f"{r['n'] / r['total_s']:.0f}", f"{r['p50_ms']:.2f} / {r['p99_ms']:.2f}", f"{r['peak_rss_mb']:.0f}",
            f"{mem:.0f}", f"{r['recall']:.4f}" if r["recall"] is not None else "-", r["wrong"],
        ])
    print(md_table(["index", "images", "find all groups (s)", "insert/index (s)", "match+plan (s)", "images/s",
                    "candidates p50 / p99 (ms)", "peak RSS (MB)", "bytes/image (store or index)",
                    "recall (planted)", "wrong removals"], rows))
    sp = next((r["spread"] for r in results if "spread" in r), None)
    if sp:
        print(f"\nPlanted copies' distance to their base: min {sp[0]:.3f}, median {sp[1]:.3f}, max {sp[2]:.3f}; "
              "about 20% of the images are in planted groups of 2-6; max_dist 0.25, no orientations.")
    for r in results:
        if r.get("skipped") and "total_s_est" in r:
            print(f"SQLite at {r['n']:,}: not run; power-law extrapolation from the two largest runs: "
                  f"~{r['total_s_est'] / 60:.0f} min, ~{r['peak_rss_mb_est']:.0f} MB RSS, "
                  f"store ~{r['store_mb_est']:.0f} MB on disk.")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
