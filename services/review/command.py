"""``image-dedup review [REPORT.json] [ROOT ...]``: serve the review page until interrupted."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

#: Addresses that reach this machine only; any other one serves the page to the network.
LOOPBACK = ("127.0.0.1", "::1", "localhost")


def add_parser(sub: argparse._SubParsersAction, parents: list[argparse.ArgumentParser],
               path: Callable[[str], Path] = Path) -> None:
    """``parents`` carry the options every command takes (``--config``); ``path`` parses a path."""
    review = sub.add_parser("review", parents=parents, help="review the duplicate groups in the browser, then apply exactly what was reviewed")
    review.add_argument("report", nargs="?", type=path, help="a report of deduplicate --report (default: plan from the store)")
    review.add_argument("directories", nargs="*", type=path, metavar="ROOT",
                        help="roots the page may show and Apply may touch (default: source_directories); "
                        "the report's roots must be among them")
    review.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default: 127.0.0.1, this machine only; the page is plain HTTP)")
    review.add_argument("--port", type=int, default=0, help="port (default: a free one)")
    review.add_argument("--out", type=path, help="where the reviewed report goes (default: REPORT.reviewed.json)")
    review.add_argument("--store", type=path, dest="store_path", help="SQLite store file")
    review.add_argument("--target", type=path, dest="duplicates_target_directory", help="Apply moves duplicates here")
    review.add_argument("--action", choices=["trash", "move", "delete", "hardlink"], help="what Apply does with a duplicate")
    review.add_argument("--max-dist", type=float, help="largest distance Apply still accepts when it checks a pair again")
    review.add_argument("--threads", type=int, help="parallel thumbnail decoders (default: cores)")
    review.add_argument("--dry-run", action=argparse.BooleanOptionalAction, default=None,
                        help="Apply only checks and reports, changes nothing (the default unless dry_run: false "
                        "is configured)")


def run(args: argparse.Namespace) -> int:
    import asyncio

    from shared.config import ConfigError

    from .state import ReviewError

    try:
        return asyncio.run(_serve(args))
    except ReviewError as exc:
        raise ConfigError(str(exc)) from None


def _load_report(path: Path) -> dict:
    import json

    from .state import ReviewError

    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ReviewError(f"cannot read the report {path}: {getattr(exc, 'strerror', None) or exc}") from None


async def _serve(args: argparse.Namespace) -> int:
    import asyncio
    import secrets
    import signal

    from aiohttp import web

    from services.apply import ReportError, apply_report, check_roots
    from shared.config import load_settings
    from shared.store.open import open_stores

    from .server import make_app
    from .source import report_from_store, reviewed_path, store_roots
    from .state import Review, ReviewError
    from .thumbs import Thumbnailer

    flags = {k: getattr(args, k) for k in ("store_path", "duplicates_target_directory", "action", "threads", "max_dist",
                                           "dry_run")}
    if args.directories:
        flags["source_directories"] = args.directories
    settings = load_settings(getattr(args, "config", None), **flags)
    report = _load_report(args.report) if args.report else None
    if report is not None:
        # the page shows files, and Apply acts, only below the configured or given roots: a
        # report alone never widens them
        try:
            check_roots(report, settings.source_directories)
        except ReportError as exc:
            raise ReviewError(str(exc)) from None
    stop = asyncio.Event()  # set by Ctrl-C or SIGTERM, before anything is printed that a caller may wait for
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    store, ledger = await open_stores(settings)
    thumbs = None
    runner = None
    try:
        if report is None:
            if not settings.source_directories:
                settings = settings.model_copy(update={"source_directories": await store_roots(store)})
            report = await report_from_store(store, settings)
        review = Review(report)
        for problem in review.problems:
            print(f"image-dedup: {problem}", file=sys.stderr)
        out = args.out or reviewed_path(args.report, settings.store_path)
        thumbs = Thumbnailer(settings.store_path.parent / "thumbs", settings.threads)
        token = secrets.token_urlsafe(24)
        app = make_app(review, token=token, settings=settings, store=store, ledger=ledger, thumbs=thumbs, out=out,
                       apply_report=apply_report, apply_settings=settings,
                       source=str(args.report or settings.store_path), host=args.host)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, args.host, args.port)
        await site.start()
        host, port = site._server.sockets[0].getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        if args.host not in LOOPBACK:
            print(f"image-dedup: warning: the page is served to the network on {args.host} over plain HTTP: anyone "
                  "who sees its address can act on your photos; prefer the default 127.0.0.1 and an SSH tunnel "
                  "(ssh -L PORT:127.0.0.1:PORT)", file=sys.stderr, flush=True)
        print(f"{len(review.groups)} groups from {args.report or settings.store_path}; decisions go to {out}"
              + ("; Apply only checks (dry run)" if settings.dry_run else f"; Apply will {settings.effective_action}"),
              flush=True)
        print(f"open http://{shown}:{port}/?token={token}", flush=True)
        await stop.wait()
        return 0
    finally:
        if runner is not None:
            await runner.cleanup()
        if thumbs is not None:
            thumbs.close()
        await store.close()
        await ledger.close()
