"""The `churnguard` command: demo, worker, broker, topics, replay, rules, lag, import,
deliver, gateway, token, audit, forget."""

from __future__ import annotations

import argparse
import contextlib
import signal
import subprocess
import sys
import typing
from collections.abc import Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING

from pydantic import BaseModel, SecretStr, ValidationError
from pydantic_settings import SettingsError

from churnguard.access_tokens import add_token_command, run_token_command
from churnguard.audit import add_audit_command, run_audit_command
from churnguard.core.kpis import GROUP_BY
from churnguard.errors import UserError
from churnguard.forget import add_forget_command, run_forget_command
from churnguard.logging import configure_logging
from churnguard.rules.loading import PackFileInvalid
from connectors.delivery.command import add_deliver_command, run_deliver_command
from connectors.gateway.command import add_gateway_command, run_gateway_command
from connectors.spreadsheet.command import add_import_command, run_import_command

if TYPE_CHECKING:
    from churnguard.core.processor import Engine
    from schemas.events import Event
    from streams.settings import Settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="churnguard", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser(
        "demo", help="run the whole pipeline on the embedded broker with a built-in scenario"
    )
    demo.add_argument("--timeout", type=float, default=90.0,
                      help="seconds to wait for all expected action (default 90; a run takes 30)")

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
    replay.add_argument("--rules", type=Path, metavar="PACK",
                        help="a rule pack file (default: CHURNGUARD_RULES_FILE or the shipped one)")
    _add_report_commands(commands, replay)

    _add_rules_commands(commands)
    _add_lag_command(commands)
    add_import_command(commands)
    add_deliver_command(commands)
    add_gateway_command(commands)
    add_token_command(commands)
    add_audit_command(commands)
    add_forget_command(commands)

    args = parser.parse_args(argv)
    try:
        return _run(args)
    except ValidationError as exc:
        if exc.title != "Settings":
            raise
        return _fail(_explain_settings(exc))
    except SettingsError as exc:
        return _fail(
            f"{exc}; lists and maps are JSON, e.g. "
            "CHURNGUARD_TOPICS='{\"events\": \"shop.events\"}' — fix the environment variable"
        )
    except PackFileInvalid as exc:  # a UserError too, but every problem on its own line
        for line in exc.lines:
            print(line, file=sys.stderr)
        print(f"churnguard: the rule pack is invalid ({len(exc.lines)} problem"
              f"{'s' if len(exc.lines) > 1 else ''}); fix the file", file=sys.stderr)
        return 1
    except UserError as exc:
        return _fail(str(exc))


def _add_report_options(parser: argparse.ArgumentParser, *, implied: str = "") -> None:
    """--compare and --json (replay and backtest)."""
    parser.add_argument("--compare", type=Path, metavar="OTHER",
                        help="also run this rule pack over the same events: the difference "
                        f"per rule and the customers whose actions differ{implied}")
    parser.add_argument("--json", action="store_true",
                        help=f"the report or comparison as JSON on stdout{implied}")


def _add_report_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    replay: argparse.ArgumentParser,
) -> None:
    """replay's report options and the backtest command (churnguard.backtest)."""
    replay.add_argument("--report", action="store_true",
                        help="print a report instead of the actions: per rule fired, by type, "
                        "suppressed, held out; segments and score bands at the end")
    _add_report_options(replay, implied=" (implies --report)")
    replay.add_argument("--kpis", action="store_true",
                        help="print the retention KPIs and the feedback figures instead of the "
                        "actions (docs/kpis.md); with --json, as JSON")
    replay.add_argument("--group-by", choices=GROUP_BY, metavar="DIMENSION",
                        help="with --kpis: one row per " + ", ".join(GROUP_BY))
    replay.add_argument("--rule-id", metavar="RULE", help="with --kpis: only this rule's KPIs")
    backtest = commands.add_parser(
        "backtest", help="the report of a rule pack over the input topics' retained history "
        "(reads only: no consumer group, no commits, writes nothing)")
    backtest.add_argument("--rules", type=Path, metavar="PACK",
                          help="a rule pack file (default: CHURNGUARD_RULES_FILE or the "
                          "shipped one)")
    backtest.add_argument("--since", default="30d",
                          help="records from then on (by record timestamp): 30d, 12h, 90m or "
                          "an RFC 3339 timestamp (default 30d)")
    backtest.add_argument("--broker", help="bootstrap URL (default: CHURNGUARD_BROKER)")
    _add_report_options(backtest)


def _add_rules_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    rules = commands.add_parser("rules", help="rule packs: export, validate, diff")
    rule_commands = rules.add_subparsers(dest="rules_command", required=True)
    export = rule_commands.add_parser(
        "export", help="print the active rule pack (start a pack from it)")
    export.add_argument("--published", nargs="?", type=int, const=-1, metavar="VERSION",
                        help="the newest published pack (or VERSION; 0 is the shipped "
                        "default), read from the broker")
    export.add_argument("--broker", help="bootstrap URL (default: CHURNGUARD_BROKER)")
    validate = rule_commands.add_parser(
        "validate", help="check a rule pack file; every problem as FILE:LINE:COL, exit 1")
    validate.add_argument("file", type=Path)
    diff = rule_commands.add_parser("diff", help="what changes, rule by rule, from OLD to NEW")
    diff.add_argument("old", type=Path)
    diff.add_argument("new", type=Path)
    publish = rule_commands.add_parser(
        "publish", help="validate a pack and publish it as the next version; workers switch "
        "to it within seconds")
    publish.add_argument("file", type=Path)
    publish.add_argument("--author", required=True, help="who publishes (kept in the history)")
    publish.add_argument("--message", default="", help="why (kept in the history)")
    publish.add_argument("--broker", help="bootstrap URL (default: CHURNGUARD_BROKER)")
    history = rule_commands.add_parser("history", help="every published version")
    history.add_argument("--broker", help="bootstrap URL (default: CHURNGUARD_BROKER)")
    rollback = rule_commands.add_parser(
        "rollback", help="publish an earlier version's pack again, as the next version")
    rollback.add_argument("version", type=int)
    rollback.add_argument("--author", required=True)
    rollback.add_argument("--message", default="")
    rollback.add_argument("--broker", help="bootstrap URL (default: CHURNGUARD_BROKER)")


def _add_lag_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    lag = commands.add_parser(
        "lag", help="consumer lag of every churnguard consumer group per topic-partition, "
        "in records and seconds, read from the broker (works while workers are down)")
    lag.add_argument("--broker", help="bootstrap URL (default: CHURNGUARD_BROKER)")
    lag.add_argument("--group", action="append", metavar="GROUP",
                     help="only this consumer group (repeatable; default: every group with "
                     "committed offsets on the input topics)")
    lag.add_argument("--watch", type=float, metavar="SECONDS",
                     help="refresh in place every SECONDS until Ctrl-C")


def _fail(message: str) -> int:
    """A mistake of the user's: one line on stderr, exit code 2, no traceback."""
    print(f"churnguard: {' '.join(message.split())}", file=sys.stderr)
    return 2


def _explain_settings(exc: ValidationError) -> str:
    """Settings errors named by their environment variables (CHURNGUARD_TOPICS__EVENTS)."""
    from streams.settings import Settings

    parts = []
    for error in exc.errors(include_url=False):
        names = [str(p) for p in error["loc"] if isinstance(p, str)]
        items = [str(p) for p in error["loc"] if isinstance(p, int)]
        variable = "CHURNGUARD_" + "__".join(names).upper()
        field = Settings.model_fields.get(names[0]) if names else None
        annotation = None if field is None else field.annotation
        if len(names) == 1 and isinstance(annotation, type) and issubclass(annotation, BaseModel):
            variable += "__*"  # a check across the group (e.g. weights adding up to 1)
        if items:
            variable += f" (item {', '.join(items)})"
        message = error["msg"].removeprefix("Value error, ")
        value = error.get("input")
        if (isinstance(value, str | int | float) and len(repr(value)) <= 80
                and not _is_secret(Settings, names)):
            message += f", got {value!r}"
        parts.append(f"{variable}: {message}")
    plural = "s" if len(parts) > 1 else ""
    return "; ".join(parts) + f"; fix the environment variable{plural}"


def _is_secret(model: type[BaseModel], names: list[str]) -> bool:
    """Whether the setting at `names` holds a secret (SecretStr): its value is never echoed."""
    for name in names:
        field = model.model_fields.get(name)
        if field is None:
            return False
        annotation = field.annotation
        if annotation is SecretStr or SecretStr in typing.get_args(annotation):
            return True
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return False
        model = annotation
    return False


def _run(args: argparse.Namespace) -> int:
    match args.command:
        case "demo":
            from churnguard.demo import run_demo
            from streams.settings import Settings

            Settings()  # the environment's mistakes are reported before a broker starts
            return run_demo(timeout_s=args.timeout)
        case "worker":
            return _worker(args)
        case "broker":
            return _broker(args.port)
        case "topics":
            return _topics(args)
        case "replay":
            return _replay(args)
        case "backtest":
            return _backtest(args)
        case "rules":
            from churnguard.rules.commands import run_rules_command

            return run_rules_command(args)
        case "lag":
            from churnguard.lag_view import run_lag_command

            return run_lag_command(args)
    run = _COMMANDS.get(args.command)
    return 2 if run is None else run(args)


# The commands that are one function of their arguments.
_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "import": run_import_command, "deliver": run_deliver_command,
    "gateway": run_gateway_command, "token": run_token_command, "audit": run_audit_command,
    "forget": run_forget_command}


def _worker(args: argparse.Namespace) -> int:
    from streams.settings import command_settings

    settings = command_settings(args.broker, embedded_broker=args.embedded)
    configure_logging(settings.log_level)
    from streams.worker import run_worker  # faust: only once the settings are known good

    return run_worker(settings)


def _topics(args: argparse.Namespace) -> int:
    from streams.settings import command_settings
    from streams.topology import all_topics, ensure_all_topics

    settings = command_settings(args.broker)
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
    from churnguard.gc_policy import tune_for_throughput
    from churnguard.replay import run_replay
    from streams.settings import Settings

    settings = Settings()
    configure_logging(settings.log_level)
    try:
        until = None if args.until is None else parse_rfc3339(args.until)
    except ValueError as exc:
        raise UserError(f"replay: --until {args.until!r}: {exc}; use e.g. "
                        "2026-01-31T00:00:00Z") from exc
    from churnguard.rules.loading import load_pack_file

    engine = build_engine(settings, None if args.rules is None else load_pack_file(args.rules))
    tune_for_throughput()
    if args.kpis:
        return _replay_kpis(args, settings, engine, until)
    if args.group_by is not None or args.rule_id is not None:
        raise UserError("replay: --group-by and --rule-id go with --kpis")
    if args.report or args.compare is not None or args.json:
        return _replay_report(args, settings, engine, until)
    with contextlib.ExitStack() as files:
        source = sys.stdin.buffer if str(args.events) == "-" else files.enter_context(
            _open(args.events, "rb", "read EVENTS",
                  "give a JSON-lines file of combined-topic events, or '-' for stdin"))
        out = sys.stdout.buffer if args.out is None else files.enter_context(
            _open(args.out, "wb", "write --out",
                  "give a file path in an existing, writable directory"))
        written, bad = run_replay(
            source, out, sys.stderr, engine,
            until=until, max_future_hours=settings.max_future_skew_hours,
        )
    print(f"replay: {written} actions, {bad} bad lines", file=sys.stderr)
    return 0


def _read_replay_events(args: argparse.Namespace, settings: Settings,
                        until: float | None) -> tuple[list[Event], int]:
    """The EVENTS file in event-time order, and how many bad lines (reported on stderr)."""
    import math

    from churnguard.replay import read_events

    with contextlib.ExitStack() as files:
        source = sys.stdin.buffer if str(args.events) == "-" else files.enter_context(
            _open(args.events, "rb", "read EVENTS",
                  "give a JSON-lines file of combined-topic events, or '-' for stdin"))
        # As run_replay: "too far in the future" is judged against --until, not the clock.
        events, bad = read_events(source, now=math.inf if until is None else until,
                                  max_future_hours=settings.max_future_skew_hours)
    for line in bad:
        print(f"line {line.line_number}: {line.kind}: {line.reason}", file=sys.stderr)
    return events, len(bad)


def _replay_kpis(
    args: argparse.Namespace, settings: Settings, engine: Engine, until: float | None
) -> int:
    """`replay --kpis`: the KPIs the worker computes, from a file (churnguard.kpi_report)."""
    from churnguard.kpi_report import kpis_of, render_kpis

    if args.out is not None or args.report or args.compare is not None:
        raise UserError("replay: --kpis prints the KPIs; --out, --report and --compare are "
                        "other outputs: run replay once for each")
    events, _ = _read_replay_events(args, settings, until)
    result = kpis_of(events, engine, until=until, group_by=args.group_by, rule=args.rule_id)
    sys.stdout.write(render_kpis(result, as_json=args.json))
    return 0


def _replay_report(
    args: argparse.Namespace, settings: Settings, engine: Engine, until: float | None
) -> int:
    """`replay --report/--compare/--json`: churnguard.backtest's figures, not the actions."""
    from churnguard.backtest import compare, render, report
    from churnguard.engine import build_engine
    from churnguard.rules.loading import load_pack_file

    if args.out is not None:
        raise UserError("replay: --out writes the actions and --report/--compare/--json print "
                        "a report instead; run replay once for each")
    other = None if args.compare is None else build_engine(settings,
                                                           load_pack_file(args.compare))
    events, bad = _read_replay_events(args, settings, until)
    result = (report(events, engine, until=until, bad_lines=bad)[0] if other is None
              else compare(events, engine, other, until=until, bad_lines=bad))
    sys.stdout.write(render(result, as_json=args.json,
                            base_label=_pack_label(args.rules, settings),
                            other_label=str(args.compare)))
    return 0


def _backtest(args: argparse.Namespace) -> int:
    import time

    from churnguard.backtest import compare, parse_since, read_history, render, report
    from churnguard.core.clock import rfc3339
    from churnguard.engine import build_engine
    from churnguard.rules.loading import load_pack_file
    from streams.settings import command_settings

    settings = command_settings(args.broker)
    configure_logging(settings.log_level)
    now = time.time()
    since = parse_since(args.since, now)
    # Both packs are checked before the broker is read.
    engine = build_engine(settings, None if args.rules is None else load_pack_file(args.rules))
    other = None if args.compare is None else build_engine(settings,
                                                           load_pack_file(args.compare))
    events, bad = read_history(settings, since, now=now)
    print(f"backtest: {len(events)} events and {bad} bad records on {settings.bootstrap} "
          f"since {rfc3339(since)}; customers start with no state there, so lifetime figures "
          "(spend, orders) count only what came since", file=sys.stderr)
    # Timers fire up to now, as a worker running all along would have fired them.
    result = (report(events, engine, until=now, bad_lines=bad)[0] if other is None
              else compare(events, engine, other, until=now, bad_lines=bad))
    sys.stdout.write(render(result, as_json=args.json,
                            base_label=_pack_label(args.rules, settings),
                            other_label=str(args.compare)))
    return 0


def _pack_label(path: Path | None, settings: Settings) -> str:
    if path is not None:
        return str(path)
    return "default pack" if settings.rules_file is None else str(settings.rules_file)


def _open(path: Path, mode: str, what: str, fix: str) -> IO[bytes]:
    try:
        return path.open(mode)
    except OSError as exc:  # missing, a directory, no permission, …
        raise UserError(f"replay: cannot {what} {str(path)!r}: {exc.strerror}; {fix}") from exc


if __name__ == "__main__":
    sys.exit(main())
