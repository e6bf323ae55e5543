"""`churnguard deliver`: argparse wiring only (the consumer's imports wait until it runs)."""

from __future__ import annotations

import argparse


def add_deliver_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    deliver = commands.add_parser("deliver", help="POST every action to webhook endpoints")
    deliver.add_argument("--broker", help="bootstrap URL (default: CHURNGUARD_BROKER)")


def run_deliver_command(args: argparse.Namespace) -> int:
    raise NotImplementedError
