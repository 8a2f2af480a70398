"""The ``image-dedup`` command.

Only the standard library is imported before the arguments are parsed; each command imports
what it needs when it runs, so ``--version`` and ``--help`` answer at once and a run says what
it is about to do before the image libraries (OpenCV, ONNX Runtime, SciPy) and the service
clients (aio-pika, Elasticsearch) are loaded.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

from services import ROLES

SERVICE_COMMANDS = ("service", "daemon", "rescan")
SHOWN_GROUPS = 10  # groups a dry run lists in its summary; --report lists them all
INTERRUPTED = 130  # the exit status of a command stopped by Ctrl-C (128 + SIGINT)


def _path(text: str) -> Path:
    """A path argument; an empty one would mean the current folder (a script's unset variable)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty path (an unset variable?); give a folder or file")
    return Path(text)


def _parser() -> argparse.ArgumentParser:
    from importlib import metadata

    from services import dead_letters
    from services.review import command as review_command

    # --config is accepted before and after the subcommand; SUPPRESS keeps a later absence from
    # overwriting an earlier one
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", default=argparse.SUPPRESS,
                        help="YAML config file (default: $IMAGE_DEDUP_CONFIG or ~/.config/image-dedup/config.yaml)")
    parser = argparse.ArgumentParser(prog="image-dedup", description="Find near-duplicate photos and keep the best copy.",
                                     parents=[common])
    parser.add_argument("--version", action="version", version=f"image-dedup {metadata.version('image-dedup')}")
    sub = parser.add_subparsers(dest="command", required=True)

    dedup = sub.add_parser("deduplicate", parents=[common],
                           help="analyse, match and (unless dry run) trash, move, delete or hard-link duplicates")
    dedup.add_argument("directories", nargs="*", type=_path, help="roots to scan (default: source_directories)")
    dedup.add_argument("--threads", type=int, help="parallel decoders (default: cores)")
    dedup.add_argument("--max-dist", type=float, help="largest signature distance of a duplicate")
    dedup.add_argument("--exclude", action="append", dest="exclusions", metavar="REGEX",
                       help="ignore paths matching REGEX (repeatable; replaces the configured exclusions)")
    dedup.add_argument("--recursive", action=argparse.BooleanOptionalAction, default=None,
                       help="also scan sub-folders (default: yes)")
    dedup.add_argument("--across-dirs", action=argparse.BooleanOptionalAction, default=None,
                       help="may duplicates lie in different roots")
    dedup.add_argument("--report", type=_path,
                       help="write the groups found as JSON to this file (for review and apply)")
    _action_flags(dedup)
    dedup.add_argument("--reference", action="append", type=_path, dest="reference_directories", metavar="DIR",
                       help="a reference folder: scanned and matched, never removed from (repeatable)")

    apply = sub.add_parser("apply", parents=[common], help="carry out a (reviewed, edited) report, checking every file again")
    apply.add_argument("report_file", type=_path, metavar="REPORT", help="a report written by deduplicate --report")
    apply.add_argument("directories", nargs="*", type=_path,
                       help="roots the report may touch (default: source_directories); the report's roots must be among them")
    _action_flags(apply)
    apply.add_argument("--reference", action="append", type=_path, dest="reference_directories", metavar="DIR",
                       help="a reference folder: nothing in it is removed (repeatable)")

    config = sub.add_parser("config", parents=[common], help="configuration helpers")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    config_sub.add_parser("reference", help="print a commented reference YAML of every option")
    config_sub.add_parser("show", parents=[common], help="print the effective configuration (secrets masked)")

    undo_parser = sub.add_parser("undo", parents=[common], help="restore what runs (their journals) moved or trashed")
    undo_parser.add_argument("journal", type=_path, nargs="+",
                             help="journal files or folders of them (every actuator writes its own)")

    distinct = sub.add_parser("distinct", parents=[common],
                              help="the pairs marked 'not duplicates' in the review, which runs never propose again")
    distinct_sub = distinct.add_subparsers(dest="distinct_command", required=True)
    listing = distinct_sub.add_parser("list", parents=[common], help="list the pairs, with the files that hold them now")
    forget = distinct_sub.add_parser("forget", parents=[common],
                                     help="forget pairs, so that runs may propose them again")
    forget.add_argument("files", nargs="*", type=_path, metavar="FILE",
                        help="the two files of a pair (as distinct list shows them), or one: every pair it is in")
    forget.add_argument("--all", action="store_true", help="forget every pair")
    for p in (listing, forget):
        p.add_argument("--store", type=_path, dest="store_path", help="SQLite store file")

    review_command.add_parser(sub, [common], _path)

    explain = sub.add_parser("explain", parents=[common],
                             help="show what the verdict sees of two files, and which would be kept and why")
    explain.add_argument("first", type=_path, metavar="A")
    explain.add_argument("second", type=_path, metavar="B")
    explain.add_argument("--json", action="store_true", help="print one JSON object (for scripts)")

    service = sub.add_parser("service", parents=[common], help="run one service of services mode (RabbitMQ)")
    service.add_argument("role", choices=ROLES)
    service.add_argument("--log-level", default="INFO")
    daemon = sub.add_parser("daemon", parents=[common], help="all four services in one long-running process, no broker needed")
    daemon.add_argument("--log-level", default="INFO")
    rescan = sub.add_parser("rescan", parents=[common], help="ask the watcher service to rescan (all roots or PATH)")
    rescan.add_argument("path", nargs="?", type=_path, help="a folder below a root (default: all roots)")
    dead_letters.add_parser(sub, [common])
    return parser


def _action_flags(parser: argparse.ArgumentParser) -> None:
    """What to do, and where: the same for deduplicate and apply."""
    parser.add_argument("--dry-run", action=argparse.BooleanOptionalAction, default=None,
                        help="only report (the default unless dry_run: false is configured)")
    parser.add_argument("--target", type=_path, dest="duplicates_target_directory", help="move duplicates here")
    parser.add_argument("--action", choices=["move", "trash", "delete", "hardlink"],
                        help="what to do with a duplicate (default: move with --target, else trash)")
    parser.add_argument("--remove-empty-folders", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--store", type=_path, dest="store_path", help="SQLite store file")
    parser.add_argument("--quiet", action="store_true", help="no progress bars, only the summary")


def _settings(args: argparse.Namespace):
    from shared.config import load_settings

    flags = {k: getattr(args, k, None) for k in (
        "dry_run", "threads", "max_dist", "duplicates_target_directory", "action", "remove_empty_folders",
        "across_dirs", "store_path", "exclusions", "recursive", "reference_directories")}
    if getattr(args, "directories", None):
        flags["source_directories"] = args.directories
    return load_settings(getattr(args, "config", None), **flags)


def shown(text: str) -> str:
    """``text`` safe to print on one line: undecodable bytes of a file name (surrogate escapes)
    as ``\\xe9``, control characters such as a newline as ``\\n``; everything else as it is."""
    out = []
    for ch in text:
        code = ord(ch)
        if 0xDC80 <= code <= 0xDCFF:
            out.append(f"\\x{code - 0xDC00:02x}")
        elif ch.isprintable():
            out.append(ch)
        else:
            out.append(repr(ch)[1:-1] if code < 0xD800 or code > 0xDFFF else f"\\u{code:04x}")
    return "".join(out)


def _check_roots(settings) -> None:
    from shared.config import ConfigError

    if not settings.source_directories:
        raise ConfigError("invalid config: source_directories: no folder given (pass one or configure it)")
    for root in settings.source_directories:
        if not root.exists():
            raise ConfigError(f"invalid config: source_directories: {shown(str(root))} does not exist")
        if not root.is_dir():
            raise ConfigError(f"invalid config: source_directories: {shown(str(root))} is not a folder")


def _check_outputs(settings, report: Path | None) -> None:
    """Every path a run writes is checked before anything is analysed or acted on: a report
    or journal that cannot be written must not be found out after the files were moved."""
    from shared.config import ConfigError

    store = settings.store_path
    if store.is_dir():
        raise ConfigError(f"invalid config: store_path: {store} is a folder, not an SQLite file")
    if store.is_file() and store.stat().st_size:
        with open(store, "rb") as fh:
            if fh.read(16) != b"SQLite format 3\x00":
                raise ConfigError(f"invalid config: store_path: {store} is not an SQLite database")
    _writable_folder(store.parent, "store_path", store)
    if not settings.dry_run:
        _writable_folder(settings.journal_directory, "journal_directory", settings.journal_directory)
        if settings.effective_action == "move":
            _writable_folder(settings.duplicates_target_directory, "duplicates_target_directory",
                             settings.duplicates_target_directory)
    if report is not None:
        if report.is_dir():
            raise ConfigError(f"--report {report} is a folder")
        if not report.parent.is_dir():
            raise ConfigError(f"--report {report}: the folder {report.parent} does not exist")
        if not os.access(report.parent, os.W_OK) or (report.exists() and not os.access(report, os.W_OK)):
            raise ConfigError(f"--report {report} cannot be written")


def _writable_folder(folder: Path, key: str, shown_as: Path) -> None:
    """``folder`` exists as a writable folder, or can be made in its nearest existing parent."""
    from shared.config import ConfigError

    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"invalid config: {key}: {shown_as}: {existing} is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"invalid config: {key}: {shown_as}: {existing} cannot be written")


def _intent(settings) -> str:
    """What a run is about to do, in one line, printed before anything is loaded or analysed."""
    roots = ", ".join(shown(str(r)) for r in settings.source_directories)
    if settings.dry_run:
        return f"looking for duplicates in {roots} (dry run: nothing will be changed)"
    fate = {"move": f"moved to {shown(str(settings.duplicates_target_directory))}",
            "trash": "moved to the trash", "delete": "deleted for good",
            "hardlink": "replaced by hard links to their kept copies"}[settings.effective_action]
    return f"looking for duplicates in {roots}; they will be {fate}"


def _print_summary(console, summary, settings, scanned: bool = True, report: Path | None = None) -> None:
    from rich.markup import escape
    from rich.table import Table

    verb = "would be" if settings.dry_run else "were"
    table = Table(title="image-dedup summary" + (" (dry run: nothing was changed)" if settings.dry_run else "")
                  + (" (interrupted)" if summary.interrupted else ""))
    table.add_column("what")
    table.add_column("count", justify="right")
    done = [o for o in summary.outcomes if o.status in ("done", "dry_run")]
    rows = [
        ("files found", summary.files),
        ("analysed now", summary.signed),
        ("unchanged since last run", summary.unchanged),
        ("analysed again (older store)", summary.upgraded),
    ] if scanned else []
    rows += [
        ("duplicate groups", len(summary.decisions)),
        ("kept", len(summary.decisions)),
        (f"moved ({verb})", sum(o.action == "move" for o in done)),
        (f"trashed ({verb})", sum(o.action == "trash" for o in done)),
        (f"deleted ({verb})", sum(o.action == "delete" for o in done)),
        (f"hard-linked ({verb})", sum(o.action == "hardlink" for o in done)),
        # only bytes that left the filesystem count as freed: the trash and a move to another
        # folder of the same disk keep them
        (f"bytes freed ({verb})", f"{sum(o.size for o in done if o.freed):,}"),
        (f"bytes moved, not freed ({verb})", f"{sum(o.size for o in done if not o.freed):,}"),
        ("skipped (safety checks)", summary.count("skipped")),
        ("errors", summary.count("error") + len(summary.problems)),
        ("empty folders removed", len(summary.removed_folders)),
    ]
    for name, value in rows:
        table.add_row(name, str(value))
    console.print(table)

    # one line each, never wrapped: paths must survive being piped, grepped and copied
    def line(text: str, markup: str = "") -> None:
        console.print(markup + escape(text), highlight=False, soft_wrap=True)

    if settings.dry_run and summary.decisions:
        _list_groups(line, summary.decisions, report)
    if summary.across_roots_left_out:
        n = summary.across_roots_left_out
        line(f"{n} pair{'s' if n != 1 else ''} of look-alike files in different roots {'were' if n != 1 else 'was'} "
             "not compared (across_dirs is off): --across-dirs compares them")
    for o in summary.outcomes:
        if o.status in ("skipped", "error"):
            line(f": {shown(o.path)}: {shown(o.reason)}", f"[yellow]{o.status}[/]")
    for path, reason in summary.problems:
        line(f": {shown(path)}: {shown(reason)}", "[red]problem[/]")
    if summary.journal:
        journal = shown(str(summary.journal))
        line(f"journal: {journal} (undo with: image-dedup undo {journal})")


def _list_groups(line, decisions, report: Path | None) -> None:
    """The first groups of a dry run, each kept file with its duplicates, one line each."""
    for decision in sorted(decisions, key=lambda d: d.keep.path)[:SHOWN_GROUPS]:
        line(f"keep   {shown(decision.keep.path)}")
        for removal in decision.remove:
            line(f"  dup  {shown(removal.path)}")
    more = len(decisions) - SHOWN_GROUPS
    everything = f"all are in {shown(str(report))}" if report else \
        "--report FILE writes them all (for image-dedup review and apply)"
    if more > 0:
        line(f"and {more} more group{'s' if more != 1 else ''}: {everything}")
    elif report is None:
        line("--report FILE writes them (for image-dedup review and apply)")


def _interruptible(run, summary, then: Callable[[], None]) -> int:
    """Run ``run(stop)`` (a coroutine function filling ``summary``), then ``then()`` (the report
    and the summary). The first Ctrl-C sets ``stop``: the command finishes what is in hand; a
    second one stops it at once; a later one is ignored: what was done is said, and the command
    exits with its own status."""
    import asyncio
    import signal

    async def main():
        stop = asyncio.Event()
        task = asyncio.current_task()

        def interrupted() -> None:
            if stop.is_set():
                task.cancel()
                return
            stop.set()
            print("image-dedup: stopping after the files in hand (Ctrl-C again to stop at once)",
                  file=sys.stderr, flush=True)

        asyncio.get_running_loop().add_signal_handler(signal.SIGINT, interrupted)
        await run(stop)

    try:
        asyncio.run(main())
    except asyncio.CancelledError:
        summary.interrupted = True
    finally:  # for the rest of the command: its last words must not be cut, nor its exit status
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    then()
    if not summary.interrupted:
        return 0
    print("image-dedup: interrupted: the summary above is what was done; run again to go on", file=sys.stderr)
    return INTERRUPTED


def _deduplicate(args, settings, console) -> int:
    _check_roots(settings)
    _check_outputs(settings, args.report)
    if not args.quiet and sys.stderr.isatty():  # with the progress bars, to a person watching
        print(f"image-dedup: {_intent(settings)}", file=sys.stderr, flush=True)
    from rich.console import Console

    from services.local import Summary, deduplicate, write_report

    summary = Summary()

    def then() -> None:
        if args.report:
            write_report(summary, settings, args.report)
        _print_summary(console, summary, settings, report=args.report)

    return _interruptible(lambda stop: deduplicate(settings, Console(stderr=True), args.quiet, stop=stop,
                                                   summary=summary), summary, then)


def _apply(args, settings, console) -> int:
    from rich.console import Console

    from services.apply import ReportError, apply_report
    from services.local import Summary

    try:
        report = json.loads(args.report_file.read_bytes())
    except OSError as exc:
        raise ReportError(f"cannot read {args.report_file}: {exc.strerror}") from None
    except ValueError:
        raise ReportError(f"{args.report_file} is not JSON") from None
    _check_roots(settings)
    _check_outputs(settings, None)
    summary = Summary()
    return _interruptible(lambda stop: apply_report(report, settings, Console(stderr=True), args.quiet, stop, summary),
                          summary, lambda: _print_summary(console, summary, settings, scanned=False))


def _undo(args) -> int:
    from shared.actions import journal_files, undo

    outcomes = undo(*journal_files(args.journal))
    for outcome in outcomes:
        print(shown(outcome.text), flush=True)
    lost = sum(o.not_restored for o in outcomes)
    if lost:
        print(f"image-dedup: {lost} of {len(outcomes)} files were not restored (see above)", file=sys.stderr)
        return 1
    return 0


def _distinct(args, settings) -> int:
    import asyncio

    from services import distinct

    if args.distinct_command == "list":
        lines = asyncio.run(distinct.listing(settings))
    else:
        lines = asyncio.run(distinct.forget_command(settings, args.files, args.all))
    for line in lines:
        print(shown(line))
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except KeyboardInterrupt:  # Ctrl-C before a command could take it over (while it loads)
        print("image-dedup: interrupted", file=sys.stderr)
        return INTERRUPTED


def _main(argv: list[str] | None) -> int:
    args = _parser().parse_args(argv)
    import logging

    from rich.console import Console

    from shared.actions import JournalError
    from shared.config import ConfigError, reference_yaml

    console = Console()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "config":
            if args.config_command == "reference":
                print(reference_yaml())
            else:
                print(_settings(args).shown())
            return 0
        if args.command == "undo":
            return _undo(args)
        if args.command == "review":
            from services.review import command as review_command

            return review_command.run(args)
        settings = _settings(args)
        if args.command in SERVICE_COMMANDS:
            from services.runner import run_command

            return run_command(args, settings)
        if args.command == "distinct":
            return _distinct(args, settings)
        if args.command == "explain":
            from services import explain

            return explain.run(args, settings)
        if args.command == "dead-letters":
            from services import dead_letters

            return dead_letters.run(args, settings)
        if args.command == "deduplicate":
            return _deduplicate(args, settings, console)
        if args.command == "apply":
            return _apply(args, settings, console)
    except (ConfigError, *_refusals()) as exc:
        return _error(exc, 2)
    except JournalError as exc:
        return _error(exc, 1)
    return 1


def _refusals() -> tuple[type[Exception], ...]:
    """The one-line refusals of the modules this command loaded (a module that was not loaded
    raised nothing): a report that cannot be applied, a store or decoders that cannot start."""
    where = {"services.apply": "ReportError", "shared.store": "StoreUnavailable",
             "services.hasher.handler": "WorkersUnavailable", "services.explain": "ExplainError"}
    return tuple(getattr(sys.modules[module], name) for module, name in where.items() if module in sys.modules)


def _error(exc: Exception, status: int) -> int:
    """Each line of the message as ``image-dedup: LINE`` (several config problems: one line each)."""
    for line in str(exc).splitlines() or [type(exc).__name__]:
        print(f"image-dedup: {shown(line)}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
