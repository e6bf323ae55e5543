"""`churnguard import`: argparse wiring only (openpyxl and kafka wait until it runs)."""

from __future__ import annotations

import argparse


def add_import_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    imports = commands.add_parser("import", help="events from an .xlsx or .csv file")
    imports.add_argument("--broker", help="bootstrap URL (default: CHURNGUARD_BROKER)")


def run_import_command(args: argparse.Namespace) -> int:
    raise NotImplementedError
