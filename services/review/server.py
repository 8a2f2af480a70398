"""The review page's web server (aiohttp): thin, the decisions live in ``state.Review``.

Security: bound to 127.0.0.1 by default and answering only to a Host header that names this
machine by address, as ``localhost`` or as the ``--host`` given (a page of another site whose
name was pointed here, DNS rebinding, gets nothing). Every request must carry the random token
(in the URL once, which then redirects to the bare URL with the token in an HttpOnly cookie
named for this server, so two reviews in one browser keep their own); requests that change
anything are POSTs that must also carry it in the ``X-Token`` header, which another site cannot
make a browser send. Every response forbids framing, sniffing, referrers and any script, style
or image from elsewhere. The browser never sends a path: files are named by (group, file) ids,
served only if ``confine`` accepts them below the configured roots and only if they decode as
an image, with the type their content has.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import hmac
import ipaddress
import json
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web

from services import distinct
from shared.config import Settings
from shared.core.safety import Unsafe, confine
from shared.image import decode
from shared.image.signature import distance
from shared.store import Ledger, Store

from .state import Filters, Review, ReviewError
from .thumbs import BROWSER_TYPES, LARGE_SIZE, THUMB_SIZE, NotAnImage, Thumbnailer, verified_image

STATIC = Path(__file__).parent / "static"

Apply = Callable[[dict, Settings], Awaitable[object]]

REVIEW = web.AppKey("review", Review)
SETTINGS = web.AppKey("settings", Settings)
STORE = web.AppKey("store", Store)
LEDGER = web.AppKey("ledger", Ledger)
THUMBS = web.AppKey("thumbs", Thumbnailer)
OUT = web.AppKey("out", Path)
CONFIG = web.AppKey("config", dict)

SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
                               "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}
WILDCARD = ("0.0.0.0", "::", "")


def cookie_name(token: str) -> str:
    """The token's cookie, named for this server: cookies ignore ports, and two reviews open
    in one browser must not overwrite each other's."""
    return "image_dedup_" + hashlib.blake2b(token.encode(), digest_size=6).hexdigest()


def host_allowed(name: str | None, port: int | None, listening: str, own_port: int) -> bool:
    """Does a request's Host (``name``, ``port``) name this server? An address always does (no
    one's DNS can make a name of it), as does ``localhost``, the address it was started on, and
    on all addresses this machine's own names; any other name may have been pointed here."""
    if not name or port != own_port:
        return False
    name = name.strip("[]").lower()
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        pass
    names = {"localhost", listening.lower()}
    if listening in WILDCARD:
        names |= {socket.gethostname().lower(), socket.getfqdn().lower()}
    return name in names


def printable(text: str) -> str:
    """``text`` as UTF-8 can carry it: a file name that is not valid UTF-8 with its bytes escaped."""
    return os.fsencode(text).decode("utf-8", "backslashreplace")


def write_json(path: Path, data: dict) -> None:
    """Atomically, so the reviewed report on disk is always a whole one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, ensure_ascii=False), encoding="utf-8", errors="backslashreplace")
    os.replace(tmp, path)


def _guard(token: str, listening: str):
    expected = token.encode()
    cookie = cookie_name(token)

    @web.middleware
    async def guard(request: web.Request, handler):
        own_port = (request.transport.get_extra_info("sockname") or ("", 0))[1] if request.transport else 0
        if not host_allowed(request.url.host, request.url.port, listening, own_port):
            raise web.HTTPForbidden(text="this page answers only to this machine's address (wrong Host header)")
        if request.method in ("GET", "HEAD"):
            given = request.query.get("token") or request.cookies.get(cookie, "")
        else:  # against cross-site requests: a cookie alone does not do
            given = request.headers.get("X-Token", "")
        if not hmac.compare_digest(given.encode("utf-8", "surrogateescape"), expected):
            raise web.HTTPForbidden(text="missing or wrong token: open the URL image-dedup review printed")
        if "token" in request.query and request.path == "/":  # out of the address bar and history
            response: web.StreamResponse = web.HTTPSeeOther("/")
        else:
            response = await handler(request)
        if "token" in request.query:
            response.set_cookie(cookie, token, httponly=True, samesite="Strict", path="/")
        if isinstance(response, web.HTTPException):
            raise response
        return response

    return guard


async def _secure(request: web.Request, response: web.StreamResponse) -> None:
    response.headers.update(SECURITY_HEADERS)


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
        raise web.HTTPUnsupportedMediaType(text=printable(f"cannot show {path.name}: {type(exc).__name__}: {exc}")) from None
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
    """The file itself when it decodes as an image a browser shows, with the type of what it
    holds (not of its name); a larger rendition of what a browser cannot show (HEIC, TIFF, RAW)."""
    _, path = _confined(request)
    if decode.is_raw(str(path)):  # a camera RAW: shown as LibRaw develops it, or not at all
        return await _rendition(request, path, LARGE_SIZE)
    try:
        data, fmt = await asyncio.to_thread(verified_image, path)
    except NotAnImage as exc:
        raise web.HTTPUnsupportedMediaType(text=printable(str(exc))) from None
    if fmt in BROWSER_TYPES:
        return web.Response(body=data, content_type=BROWSER_TYPES[fmt], headers={"Cache-Control": "private, max-age=300"})
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
    was = g.status
    try:
        g = review.decide(gid, action, keep, distances)
    except ReviewError as exc:
        raise web.HTTPBadRequest(text=str(exc)) from None
    remembered = forgotten = 0
    if g.status == "distinct" and was != "distinct":
        remembered = await distinct.remember(app[STORE], app[LEDGER], review.distinct_pairs(g))
    elif was == "distinct" and g.status != "distinct":  # taken back: later runs may propose the pairs again
        forgotten = await distinct.forget(app[STORE], app[LEDGER], review.distinct_pairs(g))
    write_json(app[OUT], review.reviewed_report())
    return web.json_response({"group": review.view(g), "totals": review.totals(), "remembered": remembered,
                              "forgotten": forgotten})


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
            raise web.HTTPInternalServerError(text=printable(f"{type(exc).__name__}: {exc}")) from exc
        outcomes = [dataclasses.asdict(o) for o in summary.outcomes]
        app[REVIEW].applied(outcomes)  # the page shows what was done, and nothing is applied twice
        write_json(app[OUT], app[REVIEW].reviewed_report())
    return web.json_response({"outcomes": outcomes, "journal": str(summary.journal) if summary.journal else None,
                              "problems": [{"path": p, "reason": r} for p, r in summary.problems],
                              "totals": app[REVIEW].totals()})


def make_app(
    review: Review, *, token: str, settings: Settings, store: Store, ledger: Ledger, thumbs: Thumbnailer, out: Path,
    apply_report: Apply, apply_settings: Settings, source: str, host: str = "127.0.0.1",
) -> web.Application:
    """``settings`` give the roots files are served from; ``apply_settings`` those the Apply
    button acts with (the action, the target, and dry run or not); ``host`` is the address the
    server listens on."""
    app = web.Application(middlewares=[_guard(token, host)])
    app.on_response_prepare.append(_secure)
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
