"""`python -m connectors.gateway [--port N] [--broker URL]`: the gateway command on its own
(what `churnguard gateway` runs; benchmarks start it this way)."""

from __future__ import annotations

import argparse
import sys

from churnguard.errors import UserError
from connectors.gateway.command import add_gateway_command, run_gateway_command


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m connectors.gateway")
    add_gateway_command(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["gateway", *(sys.argv[1:] if argv is None else argv)])
    try:
        return run_gateway_command(args)
    except UserError as exc:
        print(f"churnguard: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
