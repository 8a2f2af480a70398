"""``image-dedup review [REPORT.json]``: serve the review page until interrupted."""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import signal
from pathlib import Path

from aiohttp import web

from shared.config import ConfigError, load_settings
from services.apply import apply_report
from shared.store.open import open_stores

from .server import make_app
from .source import report_from_store, reviewed_path, store_roots
from .state import Review, ReviewError
from .thumbs import Thumbnailer


def add_parser(sub: argparse._SubParsersAction, parents: list[argparse.ArgumentParser]) -> None:
    """``parents`` carry the options every command takes (``--config``)."""
    review = sub.add_parser("review", parents=parents, help="review the duplicate groups in the browser, then apply exactly what was reviewed")
    review.add_argument("report", nargs="?", type=Path, help="a report of deduplicate --report (default: plan from the store)")
    review.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    review.add_argument("--port", type=int, default=0, help="port (default: a free one)")
    review.add_argument("--out", type=Path, help="where the reviewed report goes (default: REPORT.reviewed.json)")
    review.add_argument("--store", type=Path, dest="store_path", help="SQLite store file")
    review.add_argument("--target", type=Path, dest="duplicates_target_directory", help="Apply moves duplicates here")
    review.add_argument("--action", choices=["trash", "move", "delete", "hardlink"], help="what Apply does with a duplicate")
    review.add_argument("--max-dist", type=float, help="largest distance Apply still accepts when it checks a pair again")
    review.add_argument("--threads", type=int, help="parallel thumbnail decoders (default: cores)")
    review.add_argument("--dry-run", action="store_true", help="Apply only checks and reports, changes nothing")


def _load_report(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the report {path}: {exc}") from None


def run(args: argparse.Namespace) -> int:
    flags = {k: getattr(args, k) for k in ("store_path", "duplicates_target_directory", "action", "threads", "max_dist")}
    report = _load_report(args.report) if args.report else None
    try:
        return asyncio.run(_serve(args, report, flags))
    except ReviewError as exc:
        raise ConfigError(str(exc)) from None


async def _serve(args: argparse.Namespace, report: dict | None, flags: dict) -> int:
    # the report's own roots: files are served, and Apply acts, only below them
    roots = [Path(r) for r in report.get("roots", [])] if report else None
    settings = load_settings(getattr(args, "config", None), **flags, source_directories=roots or None)
    store, ledger = await open_stores(settings)
    thumbs = None
    runner = None
    try:
        if report is None:
            if not settings.source_directories:
                settings = load_settings(getattr(args, "config", None), **flags, source_directories=await store_roots(store) or None)
            report = await report_from_store(store, settings)
        review = Review(report)
        out = args.out or reviewed_path(args.report, settings.store_path)
        apply_settings = settings.model_copy(update={"dry_run": args.dry_run})
        thumbs = Thumbnailer(settings.store_path.parent / "thumbs", settings.threads)
        token = secrets.token_urlsafe(24)
        app = make_app(review, token=token, settings=settings, store=store, ledger=ledger, thumbs=thumbs, out=out,
                       apply_report=apply_report, apply_settings=apply_settings,
                       source=str(args.report or settings.store_path))
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, args.host, args.port)
        await site.start()
        host, port = site._server.sockets[0].getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        print(f"{len(review.groups)} groups from {args.report or settings.store_path}; decisions go to {out}", flush=True)
        print(f"open http://{shown}:{port}/?token={token}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        return 0
    finally:
        if runner is not None:
            await runner.cleanup()
        if thumbs is not None:
            thumbs.close()
        await store.close()
        await ledger.close()
