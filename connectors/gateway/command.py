"""`churnguard gateway`: argparse wiring only (the server's imports wait until it runs)."""

from __future__ import annotations

import argparse


def add_gateway_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    gateway = commands.add_parser("gateway", help="HTTP ingest: POST events, produced to Kafka")
    gateway.add_argument("--broker", help="bootstrap URL (default: CHURNGUARD_BROKER)")


def run_gateway_command(args: argparse.Namespace) -> int:
    raise NotImplementedError
