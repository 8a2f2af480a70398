"""The review: what decisions make of a report (services/review/state.py), and the server's
security rules and file serving (services/review/server.py) through aiohttp's test client over
a real report, store and thumbnail pool."""

from __future__ import annotations

import copy
import io
import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer
from PIL import Image

from services.apply import apply_report
from services.review.server import cookie_name, make_app
from services.review.source import report_from_store, reviewed_path
from services.review.state import REVIEWER_RULE, Filters, Review, ReviewError
from services.review.thumbs import Thumbnailer
from shared.config import load_settings
from shared.store.open import open_stores
from shared.store.sqlite import SQLiteStore

from .conftest import FIXTURE_MAX_DIST, make_photo, save_photo

TOKEN = "test-token-0123456789"
COOKIE = cookie_name(TOKEN)


def _group(keep: str, remove: list[str], *, stage: str = "goldberg", score: float | None = None,
           dist: float = 0.05, size: int = 1000) -> dict:
    files = [keep, *remove]
    return {
        "keep": keep, "remove": remove, "rule": "more_pixels",
        "distances": {r: dist for r in remove},
        "evidence": {r: {"same": True, "stage": stage, "distance": dist, "orientation": 0, "similarity": None,
                         "score": score, "reason": ""} for r in remove},
        "files": {p: {"size": size, "mtime_ns": 1, "width": 10, "height": 10, "format": "JPEG", "frames": 1}
                  for p in files},
        "outcomes": {r: {"status": "dry_run", "reason": "dry run"} for r in remove},
    }


REPORT = {
    "version": 2, "roots": ["/p"],
    "groups": [
        _group("/p/2020/a.jpg", ["/p/2020/a small.jpg", "/p/phone/a-1.jpg"], score=0.99, dist=0.02, size=1000),
        _group("/p/pets/cat.jpg", ["/p/pets/cat copy.jpg"], stage="exact", dist=0.0, size=500),
        _group("/p/burst/1.jpg", ["/p/burst/2.jpg"], stage="embedding", score=0.6, dist=0.09, size=300),
    ],
    "problems": [{"path": "/p/bad.jpg", "reason": "truncated"}],
}


# -- state ------------------------------------------------------------------------------------


def test_only_decided_groups_reach_the_reviewed_report():
    review = Review(copy.deepcopy(REPORT))
    assert review.reviewed_report()["groups"] == [], "nothing decided: nothing to apply"
    review.decide(1, "accept")
    out = review.reviewed_report()
    [group] = out["groups"]
    assert {k: v for k, v in group.items() if k != "outcomes"} == {
        k: v for k, v in REPORT["groups"][1].items() if k != "outcomes"}
    assert group["outcomes"] == {}, "the old run's outcomes are not the new one's"
    assert out["version"] == 2 and out["roots"] == ["/p"] and out["problems"] == REPORT["problems"]
    assert out["reviewed"]["pending"] == 2 and out["reviewed"]["groups"] == 3


def test_picking_another_copy_makes_it_the_kept_one_with_distances_to_it():
    review = Review(copy.deepcopy(REPORT))
    g = review.decide(0, "keep", 2, distances={"/p/2020/a small.jpg": 0.07})
    assert g.status == "accepted"
    [group] = review.reviewed_report()["groups"]
    assert group["keep"] == "/p/phone/a-1.jpg"
    assert group["remove"] == ["/p/2020/a.jpg", "/p/2020/a small.jpg"]
    assert group["rule"] == REVIEWER_RULE
    # the old kept copy's distance to the new one is the pair's; the other comes from the server
    assert group["distances"] == {"/p/2020/a.jpg": 0.02, "/p/2020/a small.jpg": 0.07}
    assert group["evidence"] == {}, "the verdict's evidence was about the old kept copy"
    assert set(group["files"]) == set(REPORT["groups"][0]["files"])
    review.decide(0, "keep", 0)
    assert review.reviewed_report()["groups"][0]["keep"] == "/p/2020/a.jpg"


def test_not_duplicates_drops_the_group_and_lists_its_pairs():
    review = Review(copy.deepcopy(REPORT))
    review.decide(0, "distinct")
    review.decide(2, "accept")
    out = review.reviewed_report()
    assert [g["keep"] for g in out["groups"]] == ["/p/burst/1.jpg"]
    assert out["reviewed"]["distinct"] == [
        ["/p/2020/a.jpg", "/p/2020/a small.jpg"], ["/p/2020/a.jpg", "/p/phone/a-1.jpg"]], "kept with each removal"
    review.decide(0, "reset")
    assert review.reviewed_report()["reviewed"]["distinct"] == []


def test_totals_count_the_files_and_bytes_of_accepted_groups_only():
    review = Review(copy.deepcopy(REPORT))
    assert review.totals() == {"groups": 3, "pending": 3, "accepted": 0, "distinct": 0, "applied": 0, "files": 0,
                               "bytes": 0}
    review.decide(0, "accept")
    review.decide(1, "distinct")
    review.decide(2, "keep", 1)
    assert review.totals() == {"groups": 3, "pending": 0, "accepted": 2, "distinct": 1, "applied": 0, "files": 3,
                               "bytes": 2300}


def test_filters_by_folder_stage_distance_score_and_status():
    review = Review(copy.deepcopy(REPORT))

    def shown(**kw) -> list[int]:
        return [g["index"] for g in review.page(0, 50, Filters(**kw))["groups"]]

    assert shown() == [0, 1, 2]
    assert shown(folder="PHONE") == [0], "any file's folder, case-insensitive"
    assert shown(folder="cat") == [], "the folder, not the file name"
    assert shown(stage="exact") == [1]
    assert shown(min_distance=0.05) == [2], "the least sure groups"
    assert shown(max_distance=0.02) == [0, 1]
    assert shown(min_score=0.9) == [0], "a group without a score does not pass a score filter"
    review.decide(1, "accept")
    assert shown(status="pending") == [0, 2]


def test_a_page_shows_folders_below_their_root_and_each_files_facts():
    review = Review(copy.deepcopy(REPORT))
    [first, *_] = review.page(0, 1, Filters())["groups"]
    assert [(f["id"], f["name"], f["folder"]) for f in first["files"]] == [
        (0, "a.jpg", "p/2020"), (1, "a small.jpg", "p/2020"), (2, "a-1.jpg", "p/phone")]
    assert first["files"][0]["distance"] is None and first["files"][2]["distance"] == 0.02
    assert first["files"][2]["evidence"]["score"] == 0.99 and first["rule"] == "more_pixels"


def test_pages_are_bounded_and_a_page_past_the_end_shows_the_last_one():
    report = copy.deepcopy(REPORT)
    report["groups"] = [_group(f"/p/{i}.jpg", [f"/p/{i} copy.jpg"]) for i in range(450)]
    review = Review(report)
    page = review.page(10, 1000, Filters())
    assert page["total"] == 450 and page["offset"] == 10 and len(page["groups"]) == 200
    last = review.page(900, 100, Filters())
    assert last["offset"] == 400 and [g["index"] for g in last["groups"]] == list(range(400, 450))


def test_bad_reports_and_requests_are_refused():
    with pytest.raises(ReviewError):
        Review({"groups": []})  # no version
    twice = copy.deepcopy(REPORT)
    twice["groups"][0]["remove"].append("/p/2020/a.jpg")
    review = Review(twice)
    assert [g.files[0] for g in review.groups] == ["/p/pets/cat.jpg", "/p/burst/1.jpg"], "the bad group is left out"
    assert review.problems == ["group 1 of the report left out: lists a file twice"]
    review = Review(copy.deepcopy(REPORT))
    with pytest.raises(ReviewError):
        review.decide(0, "delete-everything")
    with pytest.raises(ReviewError):
        review.decide(1, "keep", 5)
    with pytest.raises(KeyError):
        review.file(3, 0)
    with pytest.raises(KeyError):
        review.file(1, 2)


def test_the_reviewed_report_goes_next_to_its_report():
    assert reviewed_path(Path("/x/run.json"), Path("/d/store.sqlite")) == Path("/x/run.reviewed.json")
    assert reviewed_path(None, Path("/d/store.sqlite")) == Path("/d/store.reviewed.json")


# -- server -----------------------------------------------------------------------------------


@pytest.fixture
def reported(run_cli, tmp_path):
    """A library with two groups, its report written by the real command, and a file outside."""
    lib = tmp_path / "lib"
    save_photo(lib / "a/beach.jpg", 31, (640, 480))
    save_photo(lib / "b/beach small.jpg", 31, (320, 240))
    save_photo(lib / "c/cat.jpg", 32, quality=95)
    save_photo(lib / "c/cat copy.jpg", 32, quality=70)
    save_photo(tmp_path / "outside.jpg", 33)
    result = run_cli("deduplicate", lib)
    assert result.code == 0 and len(result.report["groups"]) == 2, result.err
    return lib, result.report


@pytest.fixture
async def client(reported, tmp_path):
    lib, report = reported
    settings = load_settings(None, source_directories=[lib], store_path=tmp_path / "store.sqlite", threads=1)
    store, ledger = await open_stores(settings)
    thumbs = Thumbnailer(tmp_path / "thumbs", 1)
    app = make_app(Review(report), token=TOKEN, settings=settings, store=store, ledger=ledger, thumbs=thumbs,
                   out=tmp_path / "report.reviewed.json", apply_report=apply_report, apply_settings=settings,
                   source="report.json")
    async with TestClient(TestServer(app)) as c:
        yield c
    thumbs.close()
    await store.close()
    await ledger.close()


def _index(report: dict, name: str) -> tuple[int, int]:
    for gi, g in enumerate(report["groups"]):
        for fi, p in enumerate([g["keep"], *g["remove"]]):
            if os.path.basename(p) == name:
                return gi, fi
    raise AssertionError(name)


async def test_every_request_needs_the_token(client):
    for url in ("/", "/api/groups", "/api/info", "/api/thumb/0/0", "/api/full/0/0", "/static/app.js"):
        assert (await client.get(url)).status == 403, url
        assert (await client.get(url, params={"token": "wrong"})).status == 403, url
        assert (await client.get(url, cookies={COOKIE: TOKEN[:-1] + "x"})).status == 403, url
    assert (await client.post("/api/decide", json={"group": 0, "action": "accept"})).status == 403


async def test_the_token_in_the_url_sets_a_cookie_that_then_suffices_for_reading(client):
    r = await client.get("/", params={"token": TOKEN}, allow_redirects=False)
    assert r.status == 303 and r.headers["Location"] == "/", "the token leaves the address bar"
    assert r.cookies[COOKIE].value == TOKEN and r.cookies[COOKIE]["httponly"]
    r = await client.get("/")
    assert r.status == 200
    assert f'content="{TOKEN}"' in await r.text(), "the page gets the token for its POST header"
    assert (await client.get("/static/app.js")).status == 200, "the cookie from the first visit"
    page = await (await client.get("/api/groups")).json()
    assert page["total"] == 2
    facts = {f["name"]: f for g in page["groups"] for f in g["files"]}
    assert (facts["beach.jpg"]["width"], facts["beach small.jpg"]["width"]) == (640, 320)
    assert facts["cat.jpg"]["format"] == "JPEG" and facts["cat copy.jpg"]["distance"] > 0


async def test_changes_are_posts_with_the_token_in_a_header(client, tmp_path):
    await client.get("/", params={"token": TOKEN})  # the cookie alone must not do for a POST
    out = tmp_path / "report.reviewed.json"
    assert (await client.get("/api/decide")).status == 405
    assert (await client.get("/api/apply")).status == 405
    assert (await client.post("/api/decide", json={"group": 0, "action": "accept"})).status == 403
    assert not out.exists()
    r = await client.post("/api/decide", json={"group": 0, "action": "accept"}, headers={"X-Token": TOKEN})
    assert r.status == 200
    assert (await r.json())["totals"]["accepted"] == 1
    assert len(json.loads(out.read_text())["groups"]) == 1, "every decision is written at once"
    bad = await client.post("/api/decide", json={"group": 7, "action": "accept"}, headers={"X-Token": TOKEN})
    assert bad.status == 400


async def test_picking_another_copy_records_its_real_distances(client, reported, tmp_path):
    lib, report = reported
    gi, fi = _index(report, "beach small.jpg")
    r = await client.post("/api/decide", json={"group": gi, "action": "keep", "keep": fi}, headers={"X-Token": TOKEN})
    assert r.status == 200
    [group] = json.loads((tmp_path / "report.reviewed.json").read_text())["groups"]
    assert group["keep"] == str(lib / "b/beach small.jpg") and group["remove"] == [str(lib / "a/beach.jpg")]
    assert group["distances"] == {str(lib / "a/beach.jpg"): report["groups"][gi]["distances"][group["keep"]]}


async def test_thumbnails_are_small_jpegs_with_exif_orientation_honoured(client, reported, tmp_path):
    lib, report = reported
    # turn the kept beach photo by EXIF only (orientation 6: show it 90 degrees clockwise)
    exif = Image.Exif()
    exif[0x0112] = 6
    make_photo(31).resize((640, 480)).save(lib / "a/beach.jpg", "JPEG", quality=92, exif=exif.tobytes())
    gi, fi = _index(report, "beach.jpg")
    r = await client.get(f"/api/thumb/{gi}/{fi}", params={"token": TOKEN})
    assert r.status == 200 and r.content_type == "image/jpeg"
    with Image.open(io.BytesIO(await r.read())) as img:
        assert img.format == "JPEG" and img.size == (192, 256), "portrait, at most 256 px"
    assert len(list((tmp_path / "thumbs").glob("*-256.jpg"))) == 1, "cached"
    again = await client.get(f"/api/thumb/{gi}/{fi}", params={"token": TOKEN})
    assert again.status == 200
    assert len(list((tmp_path / "thumbs").glob("*.jpg"))) == 1, "made once"


async def test_full_size_is_the_file_itself(client, reported):
    lib, report = reported
    gi, fi = _index(report, "cat copy.jpg")
    r = await client.get(f"/api/full/{gi}/{fi}", params={"token": TOKEN})
    assert r.status == 200 and await r.read() == (lib / "c/cat copy.jpg").read_bytes()


async def test_ids_not_in_the_report_are_404(client):
    for url in ("/api/thumb/0/9", "/api/thumb/9/0", "/api/full/-1/0", "/api/full/x/0", "/api/thumb/0/..%2F..%2Fetc"):
        assert (await client.get(url, params={"token": TOKEN})).status == 404, url
    assert (await client.get("/static/../server.py", params={"token": TOKEN})).status in (403, 404)


async def test_a_file_outside_the_roots_is_never_served(reported, tmp_path):
    """Even when a (doctored) report lists it, and even through a symlink below a root."""
    lib, report = reported
    os.symlink(tmp_path / "outside.jpg", lib / "c/link.jpg")
    report = copy.deepcopy(report)
    group = report["groups"][0]
    for bad in (str(tmp_path / "outside.jpg"), str(lib / "c/link.jpg"), str(lib / "../outside.jpg")):
        group["remove"].append(bad)
        group["files"][bad] = {"size": 1, "mtime_ns": 1, "width": 1, "height": 1, "format": "JPEG", "frames": 1}
    settings = load_settings(None, source_directories=[lib], store_path=tmp_path / "store.sqlite", threads=1)
    store, ledger = await open_stores(settings)
    thumbs = Thumbnailer(tmp_path / "thumbs", 1)
    app = make_app(Review(report), token=TOKEN, settings=settings, store=store, ledger=ledger, thumbs=thumbs,
                   out=tmp_path / "out.json", apply_report=apply_report, apply_settings=settings, source="x")
    try:
        async with TestClient(TestServer(app)) as c:
            n = len(group["remove"])
            for fid in (n - 2, n - 1, n):
                for kind in ("thumb", "full"):
                    r = await c.get(f"/api/{kind}/0/{fid}", params={"token": TOKEN})
                    assert r.status == 404, (kind, fid)
                    assert b"\xff\xd8" not in await r.read()
            assert (await c.get("/api/full/0/0", params={"token": TOKEN})).status == 200
    finally:
        thumbs.close()
        await store.close()
        await ledger.close()
    assert not list((tmp_path / "thumbs").glob("*")), "nothing was even decoded"


async def test_without_a_report_the_store_is_planned_like_deduplicate_does(reported, tmp_path):
    lib, report = reported
    settings = load_settings(None, source_directories=[lib], store_path=tmp_path / "store.sqlite",
                             max_dist=FIXTURE_MAX_DIST)
    store = SQLiteStore(settings.store_path)
    try:
        planned = await report_from_store(store, settings)
    finally:
        await store.close()
    strip = lambda r: sorted((g["keep"], g["remove"], g["distances"], g["files"]) for g in r["groups"])  # noqa: E731
    assert strip(planned) == strip(report)
    assert planned["version"] == 2 and planned["roots"] == [str(lib)]


async def test_not_duplicates_is_remembered_in_the_ledger_by_the_stores_digests(client, reported, tmp_path):
    lib, report = reported
    gi, _ = _index(report, "cat copy.jpg")
    r = await client.post("/api/decide", json={"group": gi, "action": "distinct"}, headers={"X-Token": TOKEN})
    assert r.status == 200 and (await r.json())["remembered"] == 1
    store, ledger = await open_stores(load_settings(None, store_path=tmp_path / "store.sqlite"))
    try:
        paths = [str(lib / "c/cat.jpg"), str(lib / "c/cat copy.jpg"), str(lib / "a/beach.jpg")]
        records = await store.get_many(paths)
        da, db, beach = (records[p].digest for p in paths)
        assert len({da, db, beach}) == 3
        assert await ledger.marked_distinct() == [tuple(sorted((da, db)))], "only the pair marked"
    finally:
        await store.close()
        await ledger.close()


def test_review_takes_config_after_the_command_and_applies_with_trash(reported, tmp_path, isolated_env):
    """As the user runs it, without a report: the store and max_dist come only from the config
    given after ``review``, and Apply trashes the accepted removal into the desktop trash."""
    lib, report = reported
    config = tmp_path / "config.yaml"
    config.write_text(f"store_path: {tmp_path / 'store.sqlite'}\nmax_dist: {FIXTURE_MAX_DIST}\n", encoding="utf-8")
    proc = subprocess.Popen([sys.executable, "-m", "services.cli", "review", "--config", str(config), "--action", "trash",
                             "--no-dry-run", "--threads", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = [proc.stdout.readline(), proc.stdout.readline()]
        assert lines[0].startswith("2 groups from "), (lines, proc.stderr.read() if proc.poll() is not None else "")
        url = lines[1].split()[1]
        base, token = url.split("/?token=")

        def call(path: str, body: dict | None = None) -> dict:
            req = urllib.request.Request(f"{base}{path}?token={token}", headers={"X-Token": token},
                                         data=None if body is None else json.dumps(body).encode())
            with urllib.request.urlopen(req, timeout=60) as r:
                return json.loads(r.read())

        assert call("/api/info")["action"] == "trash"
        [cats] = [g for g in call("/api/groups")["groups"] if any(f["name"] == "cat copy.jpg" for f in g["files"])]
        call("/api/decide", {"group": cats["index"], "action": "accept"})
        outcomes = call("/api/apply", {})["outcomes"]
    finally:
        proc.terminate()
        assert proc.wait(timeout=30) == 0
    [cat] = [g for g in report["groups"] if g["keep"].startswith(str(lib / "c"))]
    [removed] = cat["remove"]
    assert [(o["path"], o["action"], o["status"]) for o in outcomes] == [(removed, "trash", "done")]
    assert not os.path.exists(removed) and os.path.exists(cat["keep"])
    trashed = isolated_env / "data" / "Trash" / "files" / os.path.basename(removed)
    assert trashed.is_file(), "in the desktop trash, not deleted"
    assert {p.name for p in lib.rglob("*.jpg")} == {"beach.jpg", "beach small.jpg", os.path.basename(cat["keep"])}
