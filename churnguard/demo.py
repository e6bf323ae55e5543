"""`churnguard demo`: the embedded broker, a worker child process, the built-in scenario
published with kafka-python, and every action printed as it arrives. The expected actions
come from replaying the same scenario in-process, so the demo also checks worker == replay."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
from kafka import KafkaConsumer, KafkaProducer

from churnguard.core.clock import DAY
from churnguard.engine import build_engine
from churnguard.logging import configure_logging
from churnguard.replay import read_events, replay
from churnguard.scenario import DEMO_SPAN_S, bad_records, demo_events
from connectors.admin import ensure_topics
from connectors.embedded_broker import embedded_broker
from streams.settings import Settings
from streams.topology import all_topics

PARTITIONS = 4


def run_demo(*, timeout_s: float) -> int:
    configure_logging("warning")
    started = time.monotonic()
    # The scenario ends just before now so every timestamp passes the future-skew check.
    start_day = (time.time() - DEMO_SPAN_S) // DAY * DAY
    events = demo_events(start_day)
    lines = [orjson.dumps(e) for e in events]

    with tempfile.TemporaryDirectory(prefix="churnguard-demo-") as tmp, embedded_broker() as broker:
        env = {
            **os.environ,
            "CHURNGUARD_BROKER": broker.url,
            "CHURNGUARD_EMBEDDED_BROKER": "true",
            "CHURNGUARD_PARTITIONS": str(PARTITIONS),
            "CHURNGUARD_STORE_DIR": str(Path(tmp) / "store"),
            "CHURNGUARD_APP_ID": "churnguard-demo",
            "CHURNGUARD_LOG_LEVEL": "warning",
        }
        settings = Settings(broker=broker.url, partitions=PARTITIONS, app_id="churnguard-demo",
                            embedded_broker=True, store_dir=Path(tmp) / "store")
        engine = build_engine(settings)
        parsed, _ = read_events(lines, now=time.time(), max_future_hours=24)
        expected = {a.action_id: a for a in replay(parsed, engine)}
        ensure_topics(broker.bootstrap, all_topics(settings), PARTITIONS)

        print(f"churnguard demo: broker {broker.bootstrap}, {len(events)} events for "
              f"{len({e['customer_id'] for e in events})} customers over 60 days, "
              f"{len(bad_records())} bad records; expecting {len(expected)} actions\n")
        log_path = Path(tmp) / "worker.log"
        with log_path.open("wb") as log_file, _worker(env, log_file) as worker:
            _publish(broker.bootstrap, settings, lines)
            received, dead = _follow(broker.bootstrap, settings, expected, worker,
                                     deadline=started + timeout_s)
        ok = set(received) == set(expected) and len(dead) == len(bad_records())
        _summary(received, dead, expected)
        if not ok:
            tail = log_path.read_bytes()[-3000:].decode(errors="replace")
            print(f"\nworker log (tail):\n{tail}", file=sys.stderr)
    print(f"\n{'OK' if ok else 'FAILED'}: demo finished in {time.monotonic() - started:.1f}s")
    return 0 if ok else 1


@contextlib.contextmanager
def _worker(env: dict[str, str], log_file: Any) -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen(
        [sys.executable, "-m", "churnguard", "worker", "--embedded"],
        env=env, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        yield process
    finally:
        stop_process_group(process)


def stop_process_group(process: subprocess.Popen[bytes], grace_s: float = 15.0) -> None:
    """SIGTERM the child's process group, SIGKILL it if it does not exit in time."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=5)


def _publish(bootstrap: str, settings: Settings, lines: list[bytes]) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    try:
        for line in lines:
            customer = orjson.loads(line)["customer_id"]
            producer.send(settings.topics.events, key=customer.encode(), value=line)
        for key, value in bad_records():
            producer.send(settings.topics.events, key=key, value=value)
        producer.flush(timeout=10)
    finally:
        producer.close(timeout=5)


def _follow(
    bootstrap: str,
    settings: Settings,
    expected: dict[str, Any],
    worker: subprocess.Popen[bytes],
    *,
    deadline: float,
) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
    topics = settings.topics
    consumer = KafkaConsumer(
        topics.notifications, topics.tasks, topics.coupons, topics.profile_updates, topics.dlq,
        bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False,
        group_id=None, consumer_timeout_ms=500,
    )
    received: dict[str, dict[str, Any]] = {}
    dead: list[dict[str, Any]] = []
    try:
        while time.monotonic() < deadline and worker.poll() is None:
            for message in consumer:
                record = orjson.loads(message.value)
                if message.topic == topics.dlq:
                    dead.append(record)
                    print(f"{'dead letter':>16}  {record['source']['topic']}@"
                          f"{record['source']['offset']}: {record['reason']}")
                elif record["action_id"] not in received:  # at-least-once: de-duplicate
                    received[record["action_id"]] = record
                    print(describe(record))
            if set(received) >= set(expected) and len(dead) >= len(bad_records()):
                break
    finally:
        consumer.close()
    return received, dead


def describe(action: dict[str, Any]) -> str:
    """One readable line: event time, customer, rule, action."""
    p = action["payload"]
    match action["type"]:
        case "notification":
            what = f"notify via {p['channel']}: {p['template']}"
            if "expected_resolution_at" in p["variables"]:
                what += f" (resolve by {p['variables']['expected_resolution_at']})"
        case "task":
            what = f"task for {p['assignee']} [{p['priority']}] due {p['due_at']}: {p['title']}"
        case "coupon":
            what = f"coupon {p['code']} {p['value']:g}{'%' if p['kind'] == 'percent' else ''} " \
                   f"until {p['expires_at'][:10]}"
        case _:
            what = f"profile update {p['set']} +tags {p['add_tags']}"
    return (f"{action['created_at'][:16].replace('T', ' ')}  {action['customer_id']:<4} "
            f"{action['rule_id']:<21} score {action['health_score']:>5}  {what}")


def _summary(
    received: dict[str, dict[str, Any]], dead: list[dict[str, Any]], expected: dict[str, Any]
) -> None:
    by_rule = Counter((a["rule_id"], a["type"]) for a in received.values())
    print("\n  rule                   action          count")
    for (rule, kind), count in sorted(by_rule.items()):
        print(f"  {rule:<22} {kind:<15} {count:>5}")
    print(f"  {'dead letters':<38} {len(dead):>5}")
    missing = set(expected) - set(received)
    extra = set(received) - set(expected)
    print(f"\n  {len(received)} actions received, {len(expected)} expected by replay; "
          f"missing {len(missing)}, unexpected {len(extra)}")
