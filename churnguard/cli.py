"""The `churnguard` command: demo, worker, broker, replay."""

from __future__ import annotations

import argparse
import contextlib
import signal
import subprocess
import sys
from pathlib import Path

from churnguard.logging import configure_logging


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="churnguard", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser(
        "demo", help="run the whole pipeline on the embedded broker with a built-in scenario"
    )
    demo.add_argument("--timeout", type=float, default=50.0,
                      help="seconds to wait for every expected action (default 50)")

    worker = commands.add_parser("worker", help="run the stream worker against a broker")
    worker.add_argument("--broker", help="bootstrap URL, e.g. kafka://host:9092 "
                        "(default: CHURNGUARD_BROKER or kafka://127.0.0.1:9092)")
    worker.add_argument("--embedded", action="store_true",
                        help="the broker is the embedded Tansu (enables its workarounds)")

    topics = commands.add_parser(
        "topics", help="create every topic with the configured partition count and check them"
    )
    topics.add_argument("--broker", help="bootstrap URL (default: CHURNGUARD_BROKER)")

    broker = commands.add_parser("broker", help="run the embedded broker in the foreground")
    broker.add_argument("--port", type=int, default=9092)

    replay = commands.add_parser(
        "replay", help="run the core over a JSON-lines file of combined-topic events"
    )
    replay.add_argument("events", type=Path, help="JSON lines, one event per line ('-': stdin)")
    replay.add_argument("--until", help="RFC 3339 timestamp: ignore events after it")
    replay.add_argument("--out", type=Path, help="write actions here (default: stdout)")

    args = parser.parse_args(argv)
    match args.command:
        case "demo":
            from churnguard.demo import run_demo

            return run_demo(timeout_s=args.timeout)
        case "worker":
            return _worker(args)
        case "broker":
            return _broker(args.port)
        case "topics":
            return _topics(args)
        case "replay":
            return _replay(args)
    return 2


def _worker(args: argparse.Namespace) -> int:
    from streams.settings import Settings
    from streams.worker import run_worker

    overrides: dict[str, object] = {}
    if args.broker:
        overrides["broker"] = args.broker
    if args.embedded:
        overrides["embedded_broker"] = True
    settings = Settings(**overrides)  # type: ignore[arg-type]  # validated by pydantic
    configure_logging(settings.log_level)
    return run_worker(settings)


def _topics(args: argparse.Namespace) -> int:
    from streams.settings import Settings
    from streams.topology import all_topics, ensure_all_topics

    settings = Settings(**({"broker": args.broker} if args.broker else {}))
    configure_logging(settings.log_level)
    ensure_all_topics(settings)
    print(f"{len(all_topics(settings))} topics ready on {settings.bootstrap} "
          f"with {settings.partitions} partitions")
    return 0


def _broker(port: int) -> int:
    from connectors.embedded_broker import start_broker

    configure_logging("info")
    broker = start_broker(port)
    print(f"embedded broker on {broker.bootstrap} — CHURNGUARD_BROKER={broker.url} "
          "(memory only; Ctrl-C stops it)", flush=True)
    stop = False

    def _stop(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        while not stop:
            with contextlib.suppress(subprocess.TimeoutExpired):
                broker.process.wait(timeout=0.5)
                print(f"embedded broker exited with code {broker.process.returncode}",
                      file=sys.stderr)
                return 1
    finally:
        broker.stop()
    return 0


def _replay(args: argparse.Namespace) -> int:
    from churnguard.core.clock import parse_rfc3339
    from churnguard.engine import build_engine
    from churnguard.replay import run_replay
    from streams.settings import Settings

    settings = Settings()
    configure_logging(settings.log_level)
    try:
        until = None if args.until is None else parse_rfc3339(args.until)
    except ValueError as exc:
        print(f"churnguard replay: --until {args.until!r}: {exc}; use e.g. "
              "2026-01-31T00:00:00Z", file=sys.stderr)
        return 2
    source = sys.stdin.buffer if str(args.events) == "-" else args.events.open("rb")
    out = sys.stdout.buffer if args.out is None else args.out.open("wb")
    try:
        written, bad = run_replay(
            source, out, sys.stderr, build_engine(settings),
            until=until, max_future_hours=settings.max_future_skew_hours,
        )
    finally:
        if args.out is not None:
            out.close()
        if source is not sys.stdin.buffer:
            source.close()
    print(f"replay: {written} actions, {bad} bad lines", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
