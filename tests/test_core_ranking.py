"""shared/core/ranking.py: which copy is kept, and which files each keeper may remove (pure)."""

from __future__ import annotations

import asyncio

import random

import pytest

from shared.config import DEFAULT_RULES
from shared.core.bundles import Unit
from shared.core.provenance import Lineage
from shared.core.ranking import pair_allowed, rank_key
from shared.core.ranking import plan_groups as _plan_groups


def plan_groups(records, edges, rules):
    """The planner over edges already judged the same photo."""
    return asyncio.run(_plan_groups(records, edges, rules))
from shared.store import ImageRecord

# For each rule: (attributes of the better file, attributes of the worse file). rank_key also
# takes the mean distance and the score, passed as "distance" / "score" here.
GOOD_BAD = {
    "original": ({"made": False}, {"made": True}),
    "with_raw": ({"raw": True}, {"raw": False}),
    "with_video": ({"video": True}, {"video": False}),
    "with_sidecar": ({"sidecar": True}, {"sidecar": False}),
    "more_pixels": ({"width": 400}, {"width": 300}),
    "more_exif_data": ({"exif_tags": 9}, {"exif_tags": 2}),
    "bigger_file": ({"size": 5000}, {"size": 4000}),
    "newer_mtime": ({"mtime_ns": 2_000_000_000}, {"mtime_ns": 1_000_000_000}),
    "smaller_distance": ({"distance": 0.05}, {"distance": 0.2}),
    "name_without_copy": ({"copy": False}, {"copy": True}),
    "longer_file_name": ({"name_len": 12}, {"name_len": 8}),
    "shorter_folder_path": ({"folder_len": 2}, {"folder_len": 6}),
    "higher_score": ({"score": 3}, {"score": 1}),
}
NEUTRAL = {"width": 350, "exif_tags": 5, "size": 4500, "mtime_ns": 1_500_000_000, "distance": 0.1,
           "copy": False, "name_len": 10, "folder_len": 4, "score": 2, "raw": False, "video": False, "sidecar": False,
           "made": False}


def _record(attrs: dict) -> tuple[ImageRecord, float, int, Unit, Lineage | None]:
    folder = "/r/" + "f" * attrs["folder_len"]
    stem = ("copy_" if attrs["copy"] else "") + "p" * attrs["name_len"]
    stem = stem[: max(attrs["name_len"], 4)]
    path = f"{folder}/{stem}.jpg"
    rec = ImageRecord(path=path, root="/r", size=attrs["size"], mtime_ns=attrs["mtime_ns"],
                      width=attrs["width"], height=100, exif_tags=attrs["exif_tags"])
    # the files that go with it: its RAW, its Live Photo video, its sidecar
    unit = Unit((f"{stem}.jpg", *([f"{stem}.NEF"] if attrs["raw"] else [])),
                tuple([f"{stem}.MOV"] * attrs["video"] + [f"{stem}.xmp"] * attrs["sidecar"]))
    # how it was made from another file of its component, when it was
    made = Lineage(path, "/r/source.jpg", "upscaled 1.6x") if attrs["made"] else None
    return rec, attrs["distance"], attrs["score"], unit, made


def _pair_for(rule: str, order: list[str]) -> tuple[dict, dict]:
    """Two attribute sets that tie on every rule before ``rule``, differ on ``rule`` in
    favour of the first, and favour the *second* on every later rule."""
    better, worse = dict(NEUTRAL), dict(NEUTRAL)
    i = order.index(rule)
    better.update(GOOD_BAD[rule][0])
    worse.update(GOOD_BAD[rule][1])
    for later in order[i + 1:]:
        better.update(GOOD_BAD[later][1])
        worse.update(GOOD_BAD[later][0])
    return better, worse


def _best(records, rules, use_exif=True):
    keyed = sorted(records, key=lambda t: rank_key(t[0], rules, t[1], t[2], use_exif, *t[3:]))
    return keyed[0][0]


def test_default_rules_are_the_thirteen_in_documented_order():
    assert DEFAULT_RULES == list(GOOD_BAD)


@pytest.mark.parametrize("rule", list(GOOD_BAD))
def test_each_rule_decides_on_its_own_when_earlier_rules_tie(rule):
    better_attrs, worse_attrs = _pair_for(rule, DEFAULT_RULES)
    better, worse = _record(better_attrs), _record(worse_attrs)
    assert _best([worse, better], DEFAULT_RULES) is better[0]
    assert _best([better, worse], DEFAULT_RULES) is better[0]
    # and the rule really is what decides: without it (the rest in order) the other file wins
    # (the path tie-break aside, every later rule favours the other file)
    without = [r for r in DEFAULT_RULES if r != rule]
    if rule != DEFAULT_RULES[-1]:
        assert _best([better, worse], without) is worse[0]


@pytest.mark.parametrize("name, is_copy", [
    ("IMG_0001", False), ("IMG_0001 copy", True), ("IMG_0001 - Copy", True), ("Kopie von IMG", True),
    ("IMG_0001 (1)", True), ("IMG_0001(12)", True), ("holiday", False), ("IMG (1) beach", False),
    ("copyright notice", False), ("IMG_0001_copy2", True), ("Scan - Kopie", True),
])
def test_name_without_copy_keeps_the_file_without_a_copy_marker(name, is_copy):
    plain = ImageRecord(path="/r/a/IMG_0001.jpg", root="/r", size=1, mtime_ns=1)
    other = ImageRecord(path=f"/r/a/{name}.jpg", root="/r", size=1, mtime_ns=1)
    rules = ["name_without_copy"]
    if is_copy:
        assert rank_key(other, rules, 0, 0)[0] == 1
        assert _best([(other, 0, 0), (plain, 0, 0)], rules) is plain
    else:
        assert rank_key(other, rules, 0, 0)[0] == 0


def test_exif_rule_ignored_when_exif_use_is_off():
    a = ImageRecord(path="/r/b.jpg", root="/r", size=100, mtime_ns=1, exif_tags=10)
    b = ImageRecord(path="/r/a.jpg", root="/r", size=200, mtime_ns=1, exif_tags=0)
    rules = ["more_exif_data", "bigger_file"]
    assert _best([(a, 0, 0), (b, 0, 0)], rules, use_exif=True) is a
    assert _best([(a, 0, 0), (b, 0, 0)], rules, use_exif=False) is b


def test_path_breaks_the_last_tie_so_the_order_is_total_and_deterministic():
    records = [ImageRecord(path=f"/r/{c}.jpg", root="/r", size=10, mtime_ns=5, width=10, height=10)
               for c in "qwertyuiop"]
    orders = set()
    for seed in range(20):
        shuffled = records[:]
        random.Random(seed).shuffle(shuffled)
        orders.add(tuple(r.path for r in sorted(shuffled, key=lambda r: rank_key(r, DEFAULT_RULES, 0.1, 1))))
    assert len(orders) == 1
    assert list(next(iter(orders))) == sorted(r.path for r in records)


def test_custom_rule_order_is_honoured():
    big_file = ImageRecord(path="/r/a.jpg", root="/r", size=9000, mtime_ns=1, width=100, height=100)
    more_pixels = ImageRecord(path="/r/b.jpg", root="/r", size=1000, mtime_ns=1, width=200, height=100)
    pair = [(big_file, 0.1, 1), (more_pixels, 0.1, 1)]
    assert _best(pair, DEFAULT_RULES) is more_pixels
    assert _best(pair, ["bigger_file", "more_pixels"]) is big_file
    assert _best(pair, ["bigger_file"]) is big_file
    # with no rules only the path decides
    assert _best(pair, []) is big_file


# --------------------------------------------------------------------------------------------
# plan_groups


def _rec(name: str, **kw) -> ImageRecord:
    base = dict(root="/r", size=1000, mtime_ns=1, width=100, height=100)
    base.update(kw)
    return ImageRecord(path=f"/r/{name}.jpg", **base)


def _as_dict(groups):
    return {g.keep.path: sorted(r.path for r, _ in g.remove) for g in groups}


def test_no_chains_a_file_is_only_removed_for_a_keeper_it_matches_itself():
    # K is best; Y matches K and X; X matches only Y
    recs = {r.path: r for r in (_rec("K", width=300), _rec("Y", width=200), _rec("X", width=100))}
    edges = [("/r/X.jpg", "/r/Y.jpg", 0.1), ("/r/Y.jpg", "/r/K.jpg", 0.1)]
    groups = plan_groups(recs, edges, DEFAULT_RULES)
    assert _as_dict(groups) == {"/r/K.jpg": ["/r/Y.jpg"]}
    removed = {r.path for g in groups for r, _ in g.remove}
    assert "/r/X.jpg" not in removed


def test_plan_smaller_distance_and_higher_score_come_from_the_component():
    # A matches B, C, D (score 3); B, C, D each only match A: A keeps and removes all three
    recs = {r.path: r for r in (_rec("D"), _rec("B"), _rec("C"), _rec("A"))}
    edges = [("/r/A.jpg", "/r/B.jpg", 0.1), ("/r/A.jpg", "/r/C.jpg", 0.1), ("/r/A.jpg", "/r/D.jpg", 0.1)]
    assert _as_dict(plan_groups(recs, edges, ["higher_score"])) == {"/r/A.jpg": ["/r/B.jpg", "/r/C.jpg", "/r/D.jpg"]}
    # smaller mean distance: Z is closer to both others than they are to each other
    recs = {r.path: r for r in (_rec("a"), _rec("b"), _rec("z"))}
    edges = [("/r/z.jpg", "/r/a.jpg", 0.05), ("/r/z.jpg", "/r/b.jpg", 0.05), ("/r/a.jpg", "/r/b.jpg", 0.2)]
    groups = plan_groups(recs, edges, ["smaller_distance"])
    assert _as_dict(groups) == {"/r/z.jpg": ["/r/a.jpg", "/r/b.jpg"]}
    assert dict((r.path, e.distance) for r, e in groups[0].remove) == {"/r/a.jpg": 0.05, "/r/b.jpg": 0.05}


def _random_graph(seed: int):
    rng = random.Random(seed)
    recs = {}
    for i in range(30):
        r = _rec(f"f{i:02d}", width=rng.choice([100, 200, 300]), size=rng.choice([1000, 2000]),
                 exif_tags=rng.choice([0, 3]))
        recs[r.path] = r
    paths = sorted(recs)
    edges = [(a, b, round(rng.uniform(0.01, 0.25), 3)) for a in paths for b in paths if a < b and rng.random() < 0.12]
    return recs, edges


@pytest.mark.parametrize("seed", range(5))
def test_plan_invariants_and_independence_of_input_order(seed):
    recs, edges = _random_graph(seed)
    groups = plan_groups(recs, edges, DEFAULT_RULES)
    adjacency = {(a, b) for a, b, _ in edges} | {(b, a) for a, b, _ in edges}
    keepers = {g.keep.path for g in groups}
    removed = [r.path for g in groups for r, _ in g.remove]
    assert groups, "the random graph should hold some groups"
    assert len(removed) == len(set(removed)), "a file is removed at most once"
    assert not keepers & set(removed), "a keeper is never removed"
    for g in groups:
        for r, _ in g.remove:
            assert (g.keep.path, r.path) in adjacency, "removed only for a keeper it matches directly"
    # shuffle the records, the edges and their direction; add duplicates: the same plan
    rng = random.Random(seed + 100)
    items = list(recs.items())
    rng.shuffle(items)
    shuffled_edges = [(b, a, d) if rng.random() < 0.5 else (a, b, d) for a, b, d in edges]
    shuffled_edges += shuffled_edges[: len(shuffled_edges) // 3]
    rng.shuffle(shuffled_edges)
    again = plan_groups(dict(items), shuffled_edges, DEFAULT_RULES)
    assert [(g.keep.path, [(r.path, d) for r, d in g.remove]) for g in again] == [
        (g.keep.path, [(r.path, d) for r, d in g.remove]) for g in groups
    ]


def test_plan_ignores_self_edges_unknown_paths_and_singletons():
    recs = {r.path: r for r in (_rec("a"), _rec("b"), _rec("lonely"))}
    edges = [("/r/a.jpg", "/r/a.jpg", 0.0), ("/r/a.jpg", "/r/elsewhere.jpg", 0.1), ("/r/a.jpg", "/r/b.jpg", 0.1)]
    assert _as_dict(plan_groups(recs, edges, DEFAULT_RULES)) == {"/r/a.jpg": ["/r/b.jpg"]}
    assert plan_groups(recs, [], DEFAULT_RULES) == []


# --------------------------------------------------------------------------------------------
# pair_allowed


def test_pair_allowed_across_dirs():
    a = ImageRecord(path="/one/a.jpg", root="/one", size=1, mtime_ns=0)
    b = ImageRecord(path="/two/a.jpg", root="/two", size=1, mtime_ns=0)
    c = ImageRecord(path="/one/sub/c.jpg", root="/one", size=1, mtime_ns=0)
    assert not pair_allowed(a, b, across_dirs=False, max_mtime_diff=None)
    assert pair_allowed(a, b, across_dirs=True, max_mtime_diff=None)
    assert pair_allowed(a, c, across_dirs=False, max_mtime_diff=None)  # sub-folders of one root are fine


def test_pair_allowed_max_file_modification_time_diff():
    a = ImageRecord(path="/r/a.jpg", root="/r", size=1, mtime_ns=1_000 * 10**9)
    b = ImageRecord(path="/r/b.jpg", root="/r", size=1, mtime_ns=1_010 * 10**9)
    assert pair_allowed(a, b, across_dirs=False, max_mtime_diff=None)
    assert pair_allowed(a, b, across_dirs=False, max_mtime_diff=10)  # exactly the limit
    assert pair_allowed(b, a, across_dirs=False, max_mtime_diff=60)
    assert not pair_allowed(a, b, across_dirs=False, max_mtime_diff=9.5)
    assert not pair_allowed(b, a, across_dirs=False, max_mtime_diff=0)
