"""What the review page must never expose, and what it must show: only configured roots, only
files that decode as images and with their real type, a Host that names this machine, the
security headers, a cookie per server, Apply a dry run unless turned off, malformed reports in
one line, files with odd names or 16-bit pixels, and what Apply did."""

from __future__ import annotations

import asyncio
import copy
import io
import json
import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer
from PIL import Image

from services.apply import apply_report
from services.review.server import SECURITY_HEADERS, cookie_name, host_allowed, make_app
from services.review.state import Review
from services.review.thumbs import Thumbnailer
from shared.config import load_settings
from shared.store.open import open_stores

from .conftest import save_photo

pytestmark = pytest.mark.usefixtures("isolated_env")
ROOT = Path(__file__).resolve().parents[1]
TOKEN = "exposure-token-0123456789"


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGE_DEDUP_")}
    env.update(HOME=str(tmp_path), XDG_CONFIG_HOME=str(tmp_path / "config"), XDG_DATA_HOME=str(tmp_path / "data"))
    return env


def _review(tmp_path: Path, *args: str | Path) -> subprocess.CompletedProcess:
    """``image-dedup review ARGS`` that must refuse to start: its exit status and one line."""
    return subprocess.run([sys.executable, "-m", "services.cli", "review", *map(str, args), "--store",
                           str(tmp_path / "s.sqlite"), "--threads", "1"], cwd=ROOT, env=_env(tmp_path),
                          capture_output=True, text=True, timeout=120)


def _facts(path: Path, fmt: str = "JPEG") -> dict:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "width": 10, "height": 10, "format": fmt, "frames": 1}


def _report(roots: object, groups: list) -> dict:
    return {"version": 2, "roots": roots, "groups": groups, "problems": []}


def _group(keep: Path, *remove: Path, fmt: str = "JPEG") -> dict:
    return {"keep": str(keep), "remove": [str(p) for p in remove], "rule": "more_pixels",
            "distances": {str(p): 0.1 for p in remove}, "evidence": {},
            "files": {str(p): _facts(p, fmt) for p in (keep, *remove)}}


# -- the report's roots and its shape -----------------------------------------------------------


@pytest.mark.parametrize("roots, message", [
    (["/"], "the report's root / is not a configured root"),
    ("/photos", "the report names no roots (a list of folders)"),
    ([1], "the report's roots must be absolute folder names"),
    ([], "the report names no roots (a list of folders)"),
])
def test_review_refuses_a_report_whose_roots_are_not_configured(tmp_path, roots, message):
    """A report naming ``/`` as its root and listing /etc/passwd as a photo: refused before any
    page is served, as ``apply`` refuses it."""
    lib = tmp_path / "lib"
    save_photo(lib / "a.jpg", 300)
    passwd = Path("/etc/passwd")
    report = _report(roots, [_group(lib / "a.jpg", passwd)])
    (tmp_path / "evil.json").write_text(json.dumps(report))
    done = _review(tmp_path, tmp_path / "evil.json", lib)
    assert done.returncode == 2 and done.stderr.startswith(f"image-dedup: {message}"), done.stderr
    assert done.stderr.count("\n") == 1 and done.stdout == ""
    assert done.stdout == ""


@pytest.mark.parametrize("content, message", [
    ("[1, 2]", "not an image-dedup report of version 2"),
    ('{"version": 2, "roots": "/x", "groups": []}', "the report names no roots"),
    ("{not json", "cannot read the report"),
])
def test_review_of_a_malformed_report_is_one_line(tmp_path, content, message):
    (tmp_path / "lib").mkdir()
    (tmp_path / "bad.json").write_text(content)
    done = _review(tmp_path, tmp_path / "bad.json", tmp_path / "lib")
    assert done.returncode == 2 and "Traceback" not in done.stderr and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith(f"image-dedup: {message}"), done.stderr


def test_a_malformed_group_is_left_out_with_one_line_and_the_rest_is_served(tmp_path):
    lib = tmp_path / "lib"
    a, b = save_photo(lib / "a.jpg", 301), save_photo(lib / "b.jpg", 301, quality=70)
    report = _report([str(lib)], [{"remove": [str(b)]}, _group(a, b), {"keep": str(a), "remove": "b.jpg"}])
    (tmp_path / "r.json").write_text(json.dumps(report))
    proc = subprocess.Popen([sys.executable, "-m", "services.cli", "review", str(tmp_path / "r.json"), str(lib),
                             "--store", str(tmp_path / "s.sqlite"), "--threads", "1"], cwd=ROOT, env=_env(tmp_path),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = proc.stdout.readline()
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=60)
    assert first.startswith("1 groups from "), (first, err)
    assert err.splitlines() == ["image-dedup: group 1 of the report left out: not a group of 'keep' and 'remove' paths",
                                "image-dedup: group 3 of the report left out: not a group of 'keep' and 'remove' paths"]


# -- a page over a real store --------------------------------------------------------------------


async def _client(tmp_path: Path, report: dict, roots: list[Path], token: str = TOKEN, **settings):
    cfg = load_settings(None, source_directories=roots, store_path=tmp_path / "store.sqlite", threads=1, **settings)
    store, ledger = await open_stores(cfg)
    thumbs = Thumbnailer(tmp_path / "data" / "thumbs", 1)
    app = make_app(Review(report), token=token, settings=cfg, store=store, ledger=ledger, thumbs=thumbs,
                   out=tmp_path / "reviewed.json", apply_report=apply_report, apply_settings=cfg, source="r.json")
    client = TestClient(TestServer(app))
    await client.start_server()

    async def close() -> None:
        await client.close()
        thumbs.close()
        await store.close()
        await ledger.close()

    return client, close


async def test_only_files_that_decode_as_images_are_served_with_their_real_type(tmp_path):
    lib = tmp_path / "lib"
    photo = save_photo(lib / "a.jpg", 302)
    text = lib / "notes.jpg"
    text.write_text("root:x:0:0:root:/root:/bin/bash\n")  # text, listed as a JPEG
    webp = save_photo(lib / "a.webp", 302)
    png16 = lib / "deep.png"
    Image.fromarray((__import__("numpy").arange(64 * 48, dtype="uint16").reshape(48, 64) * 20)).save(png16)
    assert Image.open(png16).mode.startswith("I;16")
    odd = Path(os.fsdecode(os.path.join(os.fsencode(lib), b"caf\xe9.jpg")))
    os.rename(save_photo(lib / "x.jpg", 302, quality=60), odd)
    report = _report([str(lib)], [_group(photo, text, webp, png16, odd)])
    client, close = await _client(tmp_path, report, [lib])
    try:
        files = {name: i for i, name in enumerate(["a.jpg", "notes.jpg", "a.webp", "deep.png", "odd"])}
        r = await client.get(f"/api/full/0/{files['notes.jpg']}", params={"token": TOKEN})
        assert r.status == 415 and b"root:" not in await r.read()
        r = await client.get(f"/api/thumb/0/{files['notes.jpg']}", params={"token": TOKEN})
        assert r.status == 415 and b"root:" not in await r.read()
        r = await client.get(f"/api/full/0/{files['a.webp']}", params={"token": TOKEN})
        assert r.status == 200 and r.content_type == "image/webp" and await r.read() == webp.read_bytes()
        r = await client.get(f"/api/full/0/{files['a.jpg']}", params={"token": TOKEN})
        assert r.status == 200 and r.content_type == "image/jpeg"
        for kind in ("thumb", "full"):  # 16-bit grey levels; a name that is not UTF-8
            for name in ("deep.png", "odd"):
                r = await client.get(f"/api/{kind}/0/{files[name]}", params={"token": TOKEN})
                assert r.status == 200, (kind, name, await r.text())
                with Image.open(io.BytesIO(await r.read())) as img:
                    img.load()
        with Image.open(io.BytesIO(await (await client.get(f"/api/thumb/0/{files['deep.png']}", params={"token": TOKEN})).read())) as img:
            assert img.convert("L").getextrema()[1] > 100, "the 16-bit range is kept, not clipped to black"
    finally:
        await close()
    thumbs = tmp_path / "data" / "thumbs"
    assert stat.S_IMODE(thumbs.stat().st_mode) == 0o700, "private photos' thumbnails are this user's only"


async def test_the_host_must_name_this_machine(tmp_path):
    lib = tmp_path / "lib"
    a = save_photo(lib / "a.jpg", 303)
    client, close = await _client(tmp_path, _report([str(lib)], [_group(a, save_photo(lib / "b.jpg", 303, quality=70))]), [lib])
    port = client.port
    try:
        for host, status in ((f"evil.example:{port}", 403), (f"127.0.0.1.nip.io:{port}", 403), (f"localhost:{port}", 200),
                             (f"127.0.0.1:{port}", 200), (f"[::1]:{port}", 200), ("127.0.0.1:1", 403), ("127.0.0.1", 403)):
            r = await client.get("/api/info", params={"token": TOKEN}, headers={"Host": host})
            assert r.status == status, host
    finally:
        await close()
    assert host_allowed("nas.local", 80, "nas.local", 80) and not host_allowed("nas.local", 80, "127.0.0.1", 80)
    assert host_allowed(socket.gethostname(), 8, "0.0.0.0", 8), "on all addresses, this machine's own name"


async def test_every_response_carries_the_security_headers_and_a_cookie_of_its_own(tmp_path):
    lib = tmp_path / "lib"
    a = save_photo(lib / "a.jpg", 304)
    report = _report([str(lib)], [_group(a, save_photo(lib / "b.jpg", 304, quality=70))])
    one, close_one = await _client(tmp_path / "one", report, [lib])
    two, close_two = await _client(tmp_path / "two", report, [lib], token="another-token-9876543210")
    try:
        for url, token in (("/", TOKEN), ("/static/app.js", TOKEN), ("/api/groups", TOKEN), ("/api/full/0/0", TOKEN),
                           ("/api/info", "wrong"), ("/nowhere", TOKEN)):
            r = await one.get(url, params={"token": token}, allow_redirects=False)
            for name, value in SECURITY_HEADERS.items():
                assert r.headers.get(name) == value, (url, name)
        assert "frame-ancestors 'none'" in SECURITY_HEADERS["Content-Security-Policy"]
        assert cookie_name(TOKEN) != cookie_name("another-token-9876543210"), "two reviews in one browser"
        r = await two.get("/api/info", cookies={cookie_name(TOKEN): TOKEN})
        assert r.status == 403, "one server's cookie opens no other"
        # a token header that is not ASCII is refused, not an error of the server
        reader, writer = await asyncio.open_connection("127.0.0.1", one.port)
        writer.write(b"POST /api/decide HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nX-Token: \xc3\xa9\xff\xfe\r\n"
                     b"Content-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}" % one.port)
        await writer.drain()
        answer = await reader.read()
        writer.close()
        assert answer.startswith(b"HTTP/1.1 403"), answer[:200]
    finally:
        await close_one()
        await close_two()


async def test_apply_is_a_dry_run_by_default_and_the_page_sees_what_apply_did(tmp_path):
    lib = tmp_path / "lib"
    a, b = save_photo(lib / "a.jpg", 305, (640, 480)), save_photo(lib / "b.jpg", 305, (320, 240))
    c, d = save_photo(lib / "c.jpg", 306, (640, 480)), save_photo(lib / "d.jpg", 306, (320, 240))
    from services.local import deduplicate

    report = (await deduplicate(load_settings(None, source_directories=[lib], store_path=tmp_path / "store.sqlite",
                                              threads=1, max_dist=0.25))).report(load_settings(source_directories=[lib]))
    assert len(report["groups"]) == 2
    headers = {"X-Token": TOKEN}
    client, close = await _client(tmp_path, copy.deepcopy(report), [lib], max_dist=0.25)
    try:
        info = await (await client.get("/api/info", params={"token": TOKEN})).json()
        assert info["dry_run"] is True and info["action"] == "trash", "as configured: a dry run"
        await client.post("/api/decide", json={"group": 0, "action": "accept"}, headers=headers)
        checked = await (await client.post("/api/apply", json={}, headers=headers)).json()
        assert [o["status"] for o in checked["outcomes"]] == ["dry_run"] and b.exists() and d.exists()
        page = await (await client.get("/api/groups", params={"token": TOKEN})).json()
        assert page["groups"][0]["status"] == "accepted", "a dry run applied nothing"
    finally:
        await close()
    client, close = await _client(tmp_path, copy.deepcopy(report), [lib], max_dist=0.25, dry_run=False,
                                  action="delete")
    try:
        await client.post("/api/decide", json={"group": 0, "action": "accept"}, headers=headers)
        done = await (await client.post("/api/apply", json={}, headers=headers)).json()
        assert [o["status"] for o in done["outcomes"]] == ["done"]
        assert done["totals"]["accepted"] == 0 and done["totals"]["applied"] == 1
        page = await (await client.get("/api/groups", params={"token": TOKEN})).json()
        applied = page["groups"][0]
        assert applied["status"] == "applied"
        assert [f["outcome"] for f in applied["files"]] == [None, {"status": "done", "reason": ""}]
        again = await client.post("/api/decide", json={"group": 0, "action": "reset"}, headers=headers)
        assert again.status == 400, "an applied group is done with"
        assert json.loads((tmp_path / "reviewed.json").read_text())["groups"] == [], "nothing is applied twice"
    finally:
        await close()
    removed = {str(b), str(d)} - {str(p) for p in lib.iterdir()}
    assert len(removed) == 1 and a.exists() and c.exists()


def test_review_says_apply_is_a_dry_run_and_warns_when_served_to_the_network(tmp_path):
    lib = tmp_path / "lib"
    a = save_photo(lib / "a.jpg", 307)
    (tmp_path / "r.json").write_text(json.dumps(_report([str(lib)], [_group(a, save_photo(lib / "b.jpg", 307, quality=70))])))
    for host, warned in (("127.0.0.1", False), ("0.0.0.0", True)):
        proc = subprocess.Popen([sys.executable, "-m", "services.cli", "review", str(tmp_path / "r.json"), str(lib),
                                 "--host", host, "--store", str(tmp_path / "s.sqlite"), "--threads", "1"],
                                cwd=ROOT, env=_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            first = proc.stdout.readline()
        finally:
            proc.terminate()
            _, err = proc.communicate(timeout=60)
        assert first.rstrip().endswith("; Apply only checks (dry run)"), first
        assert ("plain HTTP" in err) == warned, err
