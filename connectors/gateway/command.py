"""`churnguard gateway`: argparse wiring only (aiohttp and aiokafka wait until it runs)."""

from __future__ import annotations

import argparse


def add_gateway_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    gateway = commands.add_parser(
        "gateway", help="HTTP ingest: POST /v1/events -> the input topics (docs/gateway.md)")
    gateway.add_argument("--port", type=int,
                         help="listen on this port (default: CHURNGUARD_GATEWAY__PORT, 8080; "
                         "0 takes a free one)")
    gateway.add_argument("--broker", help="bootstrap URL (default: CHURNGUARD_BROKER)")


def run_gateway_command(args: argparse.Namespace) -> int:
    from churnguard.logging import configure_logging
    from connectors.gateway.server import run_gateway
    from streams.settings import command_settings

    settings = command_settings(args.broker)
    if args.port is not None:
        settings = settings.model_copy(update={
            "gateway": settings.gateway.model_copy(update={"port": args.port})})
    configure_logging(settings.log_level)
    return run_gateway(settings)
