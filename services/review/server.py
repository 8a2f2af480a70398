"""The review page's web server (aiohttp): thin, the decisions live in ``state.Review``.

Security: bound to 127.0.0.1 by default, and every request must carry the random token (in the
URL once, then in an HttpOnly cookie); requests that change anything are POSTs that must also
carry it in the ``X-Token`` header, which another site cannot make a browser send. The browser
never sends a path: files are named by (group, file) ids and served only if ``confine`` accepts
them below the roots.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import json
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web

from shared.config import Settings
from shared.core.safety import Unsafe, confine
from shared.image.signature import distance
from shared.store import Ledger, Store

from .state import Filters, Review, ReviewError
from .thumbs import BROWSER_FORMATS, LARGE_SIZE, THUMB_SIZE, Thumbnailer

STATIC = Path(__file__).parent / "static"
COOKIE = "image_dedup_token"
BROWSER_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp"}

Apply = Callable[[dict, Settings], Awaitable[object]]

REVIEW = web.AppKey("review", Review)
SETTINGS = web.AppKey("settings", Settings)
STORE = web.AppKey("store", Store)
LEDGER = web.AppKey("ledger", Ledger)
THUMBS = web.AppKey("thumbs", Thumbnailer)
OUT = web.AppKey("out", Path)
CONFIG = web.AppKey("config", dict)


def write_json(path: Path, data: dict) -> None:
    """Atomically, so the reviewed report on disk is always a whole one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, path)


async def remember_distinct(store: Store, ledger: Ledger, pairs: list[tuple[str, str]]) -> int:
    """Mark each pair a person said shows different photos as distinct in the ledger, so later
    runs never propose it again; returns how many pairs it marked. The digests come from the
    store's records, not from the page; a file the store has no digest for is not marked."""
    records = await store.get_many(sorted({p for pair in pairs for p in pair}))
    marked = 0
    for a, b in pairs:
        da, db = (records[p].digest if p in records else None for p in (a, b))
        if da and db:
            await ledger.mark_distinct(da, db)
            marked += 1
    return marked


def _token_middleware(token: str):
    expected = token.encode()

    @web.middleware
    async def guard(request: web.Request, handler):
        if request.method in ("GET", "HEAD"):
            given = request.query.get("token") or request.cookies.get(COOKIE, "")
        else:  # against cross-site requests: a cookie alone does not do
            given = request.headers.get("X-Token", "")
        if not hmac.compare_digest(given.encode(), expected):
            raise web.HTTPForbidden(text="missing or wrong token: open the URL image-dedup review printed")
        response = await handler(request)
        if "token" in request.query:
            response.set_cookie(COOKIE, token, httponly=True, samesite="Strict")
        return response

    return guard


def _ids(request: web.Request) -> tuple[int, int, str]:
    review = request.app[REVIEW]
    try:
        gid, fid = int(request.match_info["group"]), int(request.match_info["file"])
        return gid, fid, review.file(gid, fid)
    except (KeyError, ValueError):
        raise web.HTTPNotFound(text="no such file in this review") from None


def _confined(request: web.Request) -> tuple[dict, Path]:
    """The file's facts in the report, and its path if it may be served."""
    gid, _, path = _ids(request)
    facts = request.app[REVIEW].group(gid).group["files"][path]
    try:
        return facts, confine(path, request.app[SETTINGS].source_directories)
    except Unsafe as exc:
        raise web.HTTPNotFound(text=str(exc)) from None


async def _rendition(request: web.Request, path: Path, size: int) -> web.StreamResponse:
    try:
        rendition = await request.app[THUMBS].get(path, size)
    except Exception as exc:  # a file that no longer decodes: say so, the page shows a placeholder
        raise web.HTTPUnsupportedMediaType(text=f"cannot show {path.name}: {type(exc).__name__}: {exc}") from None
    return web.FileResponse(rendition, headers={"Cache-Control": "private, max-age=300"})


async def index(request: web.Request) -> web.Response:
    html = (STATIC / "index.html").read_text(encoding="utf-8").replace("{{token}}", request.app[CONFIG]["token"])
    return web.Response(text=html, content_type="text/html", headers={"Cache-Control": "no-store"})


async def info(request: web.Request) -> web.Response:
    c = request.app[CONFIG]
    return web.json_response({k: c[k] for k in ("source", "out", "action", "target", "dry_run", "roots")})


def _float(value: str | None) -> float | None:
    return float(value) if value not in (None, "") else None


async def groups(request: web.Request) -> web.Response:
    q = request.query
    try:
        filters = Filters(
            folder=q.get("folder", ""), stage=q.get("stage", ""), status=q.get("status", ""),
            min_distance=_float(q.get("min_distance")), max_distance=_float(q.get("max_distance")),
            min_score=_float(q.get("min_score")),
        )
        offset, limit = int(q.get("offset", 0)), int(q.get("limit", 50))
    except ValueError:
        raise web.HTTPBadRequest(text="offset, limit and the filter numbers must be numbers") from None
    return web.json_response(request.app[REVIEW].page(offset, limit, filters))


async def thumb(request: web.Request) -> web.StreamResponse:
    _, path = _confined(request)
    return await _rendition(request, path, THUMB_SIZE)


async def full(request: web.Request) -> web.StreamResponse:
    facts, path = _confined(request)
    fmt = facts.get("format") or ""
    if fmt.upper() in BROWSER_FORMATS or (not fmt and path.suffix.lower() in BROWSER_SUFFIXES):
        return web.FileResponse(path, headers={"Cache-Control": "private, max-age=300"})
    return await _rendition(request, path, LARGE_SIZE)


async def decide(request: web.Request) -> web.Response:
    app, review = request.app, request.app[REVIEW]
    try:
        body = await request.json()
        gid, action = int(body["group"]), str(body["action"])
        keep = None if body.get("keep") is None else int(body["keep"])
        g = review.group(gid)
    except (ValueError, KeyError, TypeError):
        raise web.HTTPBadRequest(text="expected JSON {group, action, keep?} naming a group of this review") from None
    distances = None
    if action == "keep" and keep is not None and 0 <= keep < len(g.files):
        records = await app[STORE].get_many(g.files)
        new = records.get(g.files[keep])
        distances = {
            p: round(distance(new.signature, r.signature), 6)
            for p, r in records.items() if new is not None and new.signature is not None and r.signature is not None
        }
    try:
        g = review.decide(gid, action, keep, distances)
    except ReviewError as exc:
        raise web.HTTPBadRequest(text=str(exc)) from None
    remembered = await remember_distinct(app[STORE], app[LEDGER], review.distinct_pairs(g)) if g.status == "distinct" else 0
    write_json(app[OUT], review.reviewed_report())
    return web.json_response({"group": review.view(g), "totals": review.totals(), "remembered": remembered})


async def apply(request: web.Request) -> web.Response:
    """Carry out exactly the reviewed report that is on disk, which the page's decisions wrote."""
    app = request.app
    lock: asyncio.Lock = app[CONFIG]["lock"]
    if lock.locked():
        raise web.HTTPConflict(text="an apply is already running")
    async with lock:
        report = app[REVIEW].reviewed_report()
        write_json(app[OUT], report)
        try:
            summary = await app[CONFIG]["apply"](report, app[CONFIG]["apply_settings"])
        except Exception as exc:  # e.g. a report apply refuses as a whole: the page shows why
            raise web.HTTPInternalServerError(text=f"{type(exc).__name__}: {exc}") from exc
    return web.json_response({"outcomes": [dataclasses.asdict(o) for o in summary.outcomes], "journal": str(summary.journal) if summary.journal else None,
                              "problems": [{"path": p, "reason": r} for p, r in summary.problems]})


def make_app(
    review: Review, *, token: str, settings: Settings, store: Store, ledger: Ledger, thumbs: Thumbnailer, out: Path,
    apply_report: Apply, apply_settings: Settings, source: str,
) -> web.Application:
    """``settings`` give the roots files are served from; ``apply_settings`` those the Apply
    button acts with (the action, the target, and dry run or not)."""
    app = web.Application(middlewares=[_token_middleware(token)])
    app[REVIEW], app[SETTINGS], app[STORE], app[LEDGER], app[THUMBS], app[OUT] = review, settings, store, ledger, thumbs, out
    app[CONFIG] = {
        "token": token, "apply": apply_report, "apply_settings": apply_settings, "lock": asyncio.Lock(),
        "source": source, "out": str(out), "action": apply_settings.effective_action,
        "target": str(apply_settings.duplicates_target_directory or ""), "dry_run": apply_settings.dry_run,
        "roots": [str(r) for r in settings.source_directories],
    }
    app.router.add_get("/", index)
    app.router.add_get("/api/info", info)
    app.router.add_get("/api/groups", groups)
    app.router.add_get("/api/thumb/{group}/{file}", thumb)
    app.router.add_get("/api/full/{group}/{file}", full)
    app.router.add_post("/api/decide", decide)
    app.router.add_post("/api/apply", apply)
    app.router.add_static("/static", STATIC, follow_symlinks=False)
    return app
