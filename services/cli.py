"""The ``image-dedup`` command."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from shared.actions import undo
from shared.config import ConfigError, Settings, load_settings, reference_yaml
from services.review import command as review_command
from services.runner import SERVICE_COMMANDS, add_service_commands, run_command


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="image-dedup", description="Find near-duplicate photos and keep the best copy.")
    parser.add_argument("--config", help="YAML config file (default: $IMAGE_DEDUP_CONFIG or ~/.config/image-dedup/config.yaml)")
    sub = parser.add_subparsers(dest="command", required=True)

    dedup = sub.add_parser("deduplicate", help="analyse, match and (unless dry run) move or delete duplicates")
    dedup.add_argument("directories", nargs="*", type=Path, help="roots to scan (default: source_directories)")
    dedup.add_argument("--dry-run", action=argparse.BooleanOptionalAction, default=None,
                       help="only report (the default unless dry_run: false is configured)")
    dedup.add_argument("--threads", type=int, help="parallel decoders (default: cores)")
    dedup.add_argument("--max-dist", type=float, help="largest signature distance of a duplicate")
    dedup.add_argument("--target", type=Path, dest="duplicates_target_directory", help="move duplicates here")
    dedup.add_argument("--action", choices=["move", "delete", "hardlink"], help="what to do with a duplicate")
    dedup.add_argument("--remove-empty-folders", action=argparse.BooleanOptionalAction, default=None)
    dedup.add_argument("--across-dirs", action=argparse.BooleanOptionalAction, default=None,
                       help="may duplicates lie in different roots")
    dedup.add_argument("--store", type=Path, dest="store_path", help="SQLite store file")
    dedup.add_argument("--report", type=Path, help="write the groups found as JSON to this file")
    dedup.add_argument("--quiet", action="store_true", help="no progress bars, only the summary")

    config = sub.add_parser("config", help="configuration helpers")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    config_sub.add_parser("reference", help="print a commented reference YAML of every option")
    config_sub.add_parser("show", help="print the effective configuration")

    undo_parser = sub.add_parser("undo", help="restore what a run's journal moved")
    undo_parser.add_argument("journal", type=Path)
    review_command.add_parser(sub)
    add_service_commands(sub)
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    flags = {k: getattr(args, k, None) for k in (
        "dry_run", "threads", "max_dist", "duplicates_target_directory", "action", "remove_empty_folders",
        "across_dirs", "store_path")}
    if getattr(args, "directories", None):
        flags["source_directories"] = args.directories
    return load_settings(args.config, **flags)


def _print_summary(console: Console, summary, settings: Settings) -> None:
    from services.local import Summary

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
        ("duplicate groups", len(summary.decisions)),
        ("kept", len(summary.decisions)),
        (f"moved ({verb})", sum(o.action == "move" for o in done)),
        (f"deleted ({verb})", sum(o.action == "delete" for o in done)),
        (f"hard-linked ({verb})", sum(o.action == "hardlink" for o in done)),
        (f"bytes freed ({verb})", f"{sum(o.bytes_freed for o in done):,}"),
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
            console.print(f"[yellow]{o.status}[/]: {escape(o.path)}: {escape(o.reason)}", highlight=False, soft_wrap=True)
    for path, reason in summary.problems:
        console.print(f"[red]problem[/]: {escape(path)}: {escape(reason)}", highlight=False, soft_wrap=True)
    if summary.journal:
        console.print(f"journal: {summary.journal} (undo with: image-dedup undo {summary.journal})",
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
            for line in undo(args.journal):
                console.print(line, highlight=False, markup=False, soft_wrap=True)
            return 0
        if args.command == "review":
            return review_command.run(args)
        settings = _settings(args)
        if args.command in SERVICE_COMMANDS:
            return run_command(args, settings)
        if args.command == "deduplicate":
            from services.local import deduplicate, write_report

            if not settings.source_directories:
                raise ConfigError("invalid config: source_directories: no folder given (pass one or configure it)")
            for root in settings.source_directories:
                if not root.is_dir():
                    raise ConfigError(f"invalid config: source_directories: {root} is not a folder")
            summary = asyncio.run(deduplicate(settings, Console(stderr=True), quiet=args.quiet))
            if args.report:
                write_report(summary, settings, args.report)
            _print_summary(console, summary, settings)
            return 0
    except ConfigError as exc:
        print(f"image-dedup: {exc}", file=sys.stderr)
        return 2
    return 1


if __name__ == "__main__":
    sys.exit(main())
