"""The ``image-dedup`` command."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from importlib import metadata
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from shared.actions import JournalError, journal_files, undo
from shared.config import ConfigError, Settings, load_settings, reference_yaml
from shared.store import StoreUnavailable
from services import dead_letters
from services.apply import ReportError, apply_report
from services.hasher.handler import WorkersUnavailable
from services.local import Summary, deduplicate, write_report
from services.review import command as review_command
from services.runner import SERVICE_COMMANDS, add_service_commands, run_command


def _parser() -> argparse.ArgumentParser:
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
    dedup.add_argument("directories", nargs="*", type=Path, help="roots to scan (default: source_directories)")
    dedup.add_argument("--threads", type=int, help="parallel decoders (default: cores)")
    dedup.add_argument("--max-dist", type=float, help="largest signature distance of a duplicate")
    dedup.add_argument("--exclude", action="append", dest="exclusions", metavar="REGEX",
                       help="ignore paths matching REGEX (repeatable; replaces the configured exclusions)")
    dedup.add_argument("--recursive", action=argparse.BooleanOptionalAction, default=None,
                       help="also scan sub-folders (default: yes)")
    dedup.add_argument("--across-dirs", action=argparse.BooleanOptionalAction, default=None,
                       help="may duplicates lie in different roots")
    dedup.add_argument("--report", type=Path, help="write the groups found as JSON to this file (for review and apply)")
    _action_flags(dedup)
    dedup.add_argument("--reference", action="append", type=Path, dest="reference_directories", metavar="DIR",
                       help="a reference folder: scanned and matched, never removed from (repeatable)")

    apply = sub.add_parser("apply", parents=[common], help="carry out a (reviewed, edited) report, checking every file again")
    apply.add_argument("report_file", type=Path, metavar="REPORT", help="a report written by deduplicate --report")
    apply.add_argument("directories", nargs="*", type=Path,
                       help="roots the report may touch (default: source_directories); the report's roots must be among them")
    _action_flags(apply)
    apply.add_argument("--reference", action="append", type=Path, dest="reference_directories", metavar="DIR",
                       help="a reference folder: nothing in it is removed (repeatable)")

    config = sub.add_parser("config", parents=[common], help="configuration helpers")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    config_sub.add_parser("reference", help="print a commented reference YAML of every option")
    config_sub.add_parser("show", parents=[common], help="print the effective configuration")

    undo_parser = sub.add_parser("undo", parents=[common], help="restore what runs (their journals) moved or trashed")
    undo_parser.add_argument("journal", type=Path, nargs="+",
                             help="journal files or folders of them (every actuator writes its own)")
    review_command.add_parser(sub, [common])
    add_service_commands(sub, [common])
    dead_letters.add_parser(sub, [common])
    return parser


def _action_flags(parser: argparse.ArgumentParser) -> None:
    """What to do, and where: the same for deduplicate and apply."""
    parser.add_argument("--dry-run", action=argparse.BooleanOptionalAction, default=None,
                        help="only report (the default unless dry_run: false is configured)")
    parser.add_argument("--target", type=Path, dest="duplicates_target_directory", help="move duplicates here")
    parser.add_argument("--action", choices=["move", "trash", "delete", "hardlink"],
                        help="what to do with a duplicate (default: move with --target, else trash)")
    parser.add_argument("--remove-empty-folders", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--store", type=Path, dest="store_path", help="SQLite store file")
    parser.add_argument("--quiet", action="store_true", help="no progress bars, only the summary")


def _settings(args: argparse.Namespace) -> Settings:
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


def _check_roots(settings: Settings) -> None:
    if not settings.source_directories:
        raise ConfigError("invalid config: source_directories: no folder given (pass one or configure it)")
    for root in settings.source_directories:
        if not root.is_dir():
            raise ConfigError(f"invalid config: source_directories: {shown(str(root))} is not a folder")


def _check_outputs(settings: Settings, report: Path | None) -> None:
    """Every path a run writes is checked before anything is analysed or acted on: a report
    or journal that cannot be written must not be found out after the files were moved."""
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
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"invalid config: {key}: {shown_as}: {existing} is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"invalid config: {key}: {shown_as}: {existing} cannot be written")


def _print_summary(console: Console, summary: Summary, settings: Settings, scanned: bool = True) -> None:
    assert isinstance(summary, Summary)
    verb = "would be" if settings.dry_run else "were"
    table = Table(title="image-dedup summary" + (" (dry run: nothing was changed)" if settings.dry_run else ""))
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
    for o in summary.outcomes:
        if o.status in ("skipped", "error"):
            console.print(f"[yellow]{o.status}[/]: {escape(shown(o.path))}: {escape(shown(o.reason))}",
                          highlight=False, soft_wrap=True)
    for path, reason in summary.problems:
        console.print(f"[red]problem[/]: {escape(shown(path))}: {escape(shown(reason))}", highlight=False, soft_wrap=True)
    if summary.journal:
        journal = shown(str(summary.journal))
        console.print(f"journal: {journal} (undo with: image-dedup undo {journal})",
                      highlight=False, markup=False, soft_wrap=True)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    console = Console()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "config":
            if args.config_command == "reference":
                print(reference_yaml())
            else:
                print(_settings(args).model_dump_json(indent=2))
            return 0
        if args.command == "undo":
            for line in undo(*journal_files(args.journal)):
                console.print(shown(line), highlight=False, markup=False, soft_wrap=True)
            return 0
        if args.command == "review":
            return review_command.run(args)
        settings = _settings(args)
        if args.command in SERVICE_COMMANDS:
            return run_command(args, settings)
        if args.command == "dead-letters":
            return dead_letters.run(args, settings)
        if args.command == "deduplicate":
            _check_roots(settings)
            _check_outputs(settings, args.report)
            summary = asyncio.run(deduplicate(settings, Console(stderr=True), quiet=args.quiet))
            if args.report:
                write_report(summary, settings, args.report)
            _print_summary(console, summary, settings)
            return 0
        if args.command == "apply":
            try:
                report = json.loads(args.report_file.read_bytes())
            except OSError as exc:
                raise ReportError(f"cannot read {args.report_file}: {exc.strerror}") from None
            except ValueError:
                raise ReportError(f"{args.report_file} is not JSON") from None
            _check_roots(settings)
            _check_outputs(settings, None)
            summary = asyncio.run(apply_report(report, settings, Console(stderr=True), quiet=args.quiet))
            _print_summary(console, summary, settings, scanned=False)
            return 0
    except (ConfigError, ReportError, StoreUnavailable, WorkersUnavailable) as exc:
        print(f"image-dedup: {shown(str(exc))}", file=sys.stderr)
        return 2
    except JournalError as exc:
        print(f"image-dedup: {shown(str(exc))}", file=sys.stderr)
        return 1
    return 1


if __name__ == "__main__":
    sys.exit(main())
