"""`churnguard import`: argparse wiring only (openpyxl and kafka wait until it runs)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_import_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    imports = commands.add_parser(
        "import", help="events from an .xlsx or .csv file (history from sheets and CRM exports)")
    imports.add_argument("file", type=Path, metavar="FILE", help="an .xlsx or .csv file")
    imports.add_argument("--kind", required=True, choices=["profiles", "purchases", "tickets"],
                         help="what each row is")
    imports.add_argument("--mapping", type=Path, metavar="MAP.yaml",
                         help="which column is which field, date formats, defaults "
                         "(default: common header names are recognised; docs/import.md)")
    imports.add_argument("--dry-run", action="store_true",
                         help="validate every row and report; produce nothing, write no file")
    imports.add_argument("--broker", help="bootstrap URL (default: CHURNGUARD_BROKER)")


def run_import_command(args: argparse.Namespace) -> int:
    from churnguard.logging import configure_logging
    from connectors.spreadsheet.run import run_import
    from streams.settings import command_settings

    settings = command_settings(args.broker)
    configure_logging(settings.log_level)
    return run_import(args.file, args.kind, args.mapping, dry_run=args.dry_run,
                      settings=settings, out=sys.stdout, err=sys.stderr)
