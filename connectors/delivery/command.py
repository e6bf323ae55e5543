"""`churnguard deliver`: argparse wiring only (aiohttp and aiokafka wait until it runs)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_deliver_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    deliver = commands.add_parser(
        "deliver", help="POST every action to webhook endpoints (signed, retried, at-least-once)")
    where = deliver.add_mutually_exclusive_group(required=True)
    where.add_argument("--url", help="one endpoint for every action")
    where.add_argument("--routes", type=Path, metavar="ROUTES.yaml",
                       help="endpoints per action type, template or rule (docs/deliver.md)")
    deliver.add_argument("--broker", help="bootstrap URL (default: CHURNGUARD_BROKER)")


def run_deliver_command(args: argparse.Namespace) -> int:
    from churnguard.logging import configure_logging
    from connectors.delivery.routes import Router, load_routes
    from connectors.delivery.run import run_deliver
    from streams.settings import command_settings

    settings = command_settings(args.broker)
    configure_logging(settings.log_level)
    router = Router.to_url(args.url) if args.url else load_routes(args.routes)
    return run_deliver(settings, router)
