"""`churnguard demo`: the embedded broker, a worker child process, the built-in scenario
published with kafka-python, and every action printed as it arrives. The expected actions
come from replaying the same scenario in-process, so the demo also checks worker == replay."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from collections import Counter, deque
from pathlib import Path
from typing import Any

import orjson
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError

from churnguard.clocks import FileClock
from churnguard.core.clock import DAY, parse_rfc3339, rfc3339
from churnguard.engine import build_engine
from churnguard.logging import configure_logging
from churnguard.processes import exit_on_sigterm, running_worker, wait_ready
from churnguard.replay import read_events, replay
from churnguard.scenario import DEMO_SPAN_S, bad_records, demo_events
from connectors.embedded_broker import embedded_broker
from streams.settings import Settings
from streams.topology import ensure_all_topics

PARTITIONS = 4
# Simulated seconds per real second: the 60 days pass in 15 s, plus the moments the clock
# waits for the worker to apply an event (~0.1 s each).
SPEED = 4 * DAY
STEP_S = 0.05
# How long the clock waits for the worker to apply one event before the demo gives up.
APPLY_TIMEOUT_S = 30.0


def run_demo(*, timeout_s: float) -> int:
    configure_logging("warning")
    exit_on_sigterm()
    started = time.monotonic()
    # The scenario ends just before now; the worker's clock is driven through a file.
    start = (time.time() - DEMO_SPAN_S) // DAY * DAY
    end = start + DEMO_SPAN_S
    events = demo_events(start)
    lines = [orjson.dumps(e) for e in events]

    with tempfile.TemporaryDirectory(prefix="churnguard-demo-") as tmp, embedded_broker() as broker:
        clock_file = Path(tmp) / "clock"
        FileClock.set(clock_file, start)
        settings = Settings(
            broker=broker.url, partitions=PARTITIONS, app_id="churnguard-demo",
            embedded_broker=True, store_dir=Path(tmp) / "store", clock_file=clock_file,
            tick_interval_s=0.1, session_timeout_s=6.0, rebalance_timeout_s=6.0,
            commit_interval_s=0.02,  # the clock waits for each event's commit (_run_clock)
            log_level="info", web_port=0,  # the worker's endpoints on a free port
        )
        parsed, _ = read_events(lines, now=end, max_future_hours=24)
        expected = {a.action_id: a for a in replay(parsed, build_engine(settings), until=end)}
        ensure_all_topics(settings)

        print(f"churnguard demo: broker {broker.bootstrap}; {len(events)} events for "
              f"{len({e['customer_id'] for e in events})} customers over 60 simulated days "
              f"(~{DEMO_SPAN_S / SPEED:.0f} s), {len(bad_records())} bad records; "
              f"expecting {len(expected)} actions\n")
        log_path = Path(tmp) / "worker.log"
        with running_worker(settings, log_path) as worker:
            wait_ready(log_path, worker, timeout_s=timeout_s)
            follower = _Follower(broker.bootstrap, settings)
            try:
                _run_clock(broker.bootstrap, settings, events, follower, start, end, worker)
                follower.until(expected, worker, deadline=started + timeout_s)
            except (DemoError, KafkaError) as exc:
                # One line; the summary says what is missing.
                print(f"\ndemo: {exc}", file=sys.stderr)
            finally:
                follower.close()
        received = {k: v for k, v in follower.received.items() if v["created_at"] <= rfc3339(end)}
        ok = set(received) == set(expected) and len(follower.dead) == len(bad_records())
        _summary(received, follower.dead, expected)
        if not ok:
            tail = log_path.read_bytes()[-3000:].decode(errors="replace")
            print(f"\nworker log (tail):\n{tail}", file=sys.stderr)
    print(f"\n{'OK' if ok else 'FAILED'}: demo finished in {time.monotonic() - started:.1f}s")
    return 0 if ok else 1


class DemoError(RuntimeError):
    """The worker stopped keeping up with the demo's clock (said in one line)."""


def _run_clock(
    bootstrap: str,
    settings: Settings,
    events: list[dict[str, Any]],
    follower: _Follower,
    start: float,
    end: float,
    worker: subprocess.Popen[bytes],
) -> None:
    """Advance the worker's clock from `start` to `end` at SPEED. Each event is published
    once the clock has reached its moment, and the clock goes on only when the worker has
    applied it (its offset committed): so every event is applied at its own moment, after
    the timers due by then and before the later ones, in a replay's order. (Published
    ahead of its moment, an event is applied at the worker's earlier clock, and a timer due
    in between — a ticket's SLA ending as it closes — would never fire.)"""
    assert settings.clock_file is not None
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=0)
    applied = _Commits(bootstrap, settings.app_id, worker)
    pending = deque(events)
    now = start
    try:
        for key, value in bad_records():
            producer.send(settings.topics.events, key=key, value=value)
        while True:
            step = min(end, now + SPEED * STEP_S)
            while pending and parse_rfc3339(pending[0]["occurred_at"]) <= step:
                event = pending.popleft()
                now = max(now, parse_rfc3339(event["occurred_at"]))
                FileClock.set(settings.clock_file, now)
                sent = producer.send(settings.topics.events, key=event["customer_id"].encode(),
                                     value=orjson.dumps(event))
                producer.flush(timeout=10)
                applied.wait(sent.get(timeout=10))
                follower.poll()
            now = step
            FileClock.set(settings.clock_file, now)
            follower.poll()
            if now >= end and not pending:
                return
            time.sleep(STEP_S)  # the pace of simulated time itself, not a synchronisation
    finally:
        producer.close(timeout=5)
        applied.close()


class _Commits:
    """The worker's committed offsets: an input record is applied once its offset is."""

    def __init__(self, bootstrap: str, group: str, worker: subprocess.Popen[bytes]) -> None:
        self.admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="churnguard-demo")
        self.group = group
        self.worker = worker

    def wait(self, sent: Any) -> None:
        """Until the record `sent` (its RecordMetadata) is committed by the worker."""
        where = TopicPartition(sent.topic, sent.partition)
        deadline = time.monotonic() + APPLY_TIMEOUT_S
        while time.monotonic() < deadline:
            code = self.worker.poll()
            if code is not None:
                raise DemoError(f"the worker exited with code {code} before applying "
                                f"{sent.topic}/{sent.partition}@{sent.offset}; see its log")
            try:
                found = self.admin.list_group_offsets({self.group: None}).get(
                    self.group, {}).get(where)
            except KafkaError:  # the group's coordinator not answering yet: ask again
                found = None
            if found is not None and found.offset > sent.offset:
                return
            time.sleep(0.005)  # polling the broker for the commit: there is no push
        raise DemoError(f"the worker did not apply {sent.topic}/{sent.partition}@{sent.offset} "
                        f"within {APPLY_TIMEOUT_S:.0f} s; see the worker log")

    def close(self) -> None:
        self.admin.close()


class _Follower:
    """Reads the action topics and the DLQ, printing each new action once."""

    def __init__(self, bootstrap: str, settings: Settings) -> None:
        topics = settings.topics
        self.dlq = topics.dlq
        self.consumer = KafkaConsumer(
            topics.notifications, topics.tasks, topics.coupons, topics.profile_updates,
            topics.dlq, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
            enable_auto_commit=False, group_id=None,
        )
        self.received: dict[str, dict[str, Any]] = {}
        self.dead: list[dict[str, Any]] = []

    def poll(self, timeout_ms: int = 0) -> None:
        for messages in self.consumer.poll(timeout_ms=timeout_ms).values():
            for message in messages:
                record = orjson.loads(message.value)
                if message.topic == self.dlq:
                    self.dead.append(record)
                    print(f"{'dead letter':>16}  {record['source']['topic']}@"
                          f"{record['source']['offset']}: {record['reason']}")
                elif record["action_id"] not in self.received:  # at-least-once: de-duplicate
                    self.received[record["action_id"]] = record
                    print(describe(record))

    def until(
        self, expected: dict[str, Any], worker: subprocess.Popen[bytes], *, deadline: float
    ) -> None:
        while time.monotonic() < deadline and worker.poll() is None:
            if set(self.received) >= set(expected) and len(self.dead) >= len(bad_records()):
                return
            self.poll(timeout_ms=200)

    def close(self) -> None:
        self.consumer.close()


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
            f"{action['rule_id']:<26} score {action['health_score']:>5}  {what}")


def _summary(
    received: dict[str, dict[str, Any]], dead: list[dict[str, Any]], expected: dict[str, Any]
) -> None:
    by_rule = Counter((a["rule_id"], a["type"]) for a in received.values())
    print(f"\n  {'rule':<26} {'action':<15} count")
    for (rule, kind), count in sorted(by_rule.items()):
        print(f"  {rule:<26} {kind:<15} {count:>5}")
    print(f"  {'dead letters':<42} {len(dead):>5}")
    missing = set(expected) - set(received)
    extra = set(received) - set(expected)
    print(f"\n  {len(received)} actions received, {len(expected)} expected by replay; "
          f"missing {len(missing)}, unexpected {len(extra)}")
    # Which ones, so that a miss can be traced (its id, rule, customer and time).
    for action_id in sorted(missing)[:10]:
        print(f"  missing {action_id}: {describe(expected[action_id].to_record())}")
    for action_id in sorted(extra)[:10]:
        print(f"  unexpected {action_id}: {describe(received[action_id])}")
