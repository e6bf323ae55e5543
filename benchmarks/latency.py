"""Event-to-action latency of one live churnguard worker at a fixed input rate, on the
embedded broker.

    python -m benchmarks.latency [--rate 5000 | --load 0.5 --capacity 10000] [--seconds 60]
        [--customers 10000] [--partitions 4] [--timers 200] [--json OUT]

Starts the embedded broker and one worker (`churnguard worker`, a child process); once it is
ready, produces the workload (benchmarks.workload: Zipf-like customers, 55 % logins, 30 %
purchases, 10 % tickets, 5 % profile updates) to the combined topic at a fixed rate for the
duration: one producer (linger 5 ms), paced by a schedule on the monotonic clock (event n is
due at start + n / rate; a sender that fell behind catches up instead of drifting), each
event's `occurred_at` and record timestamp the wall clock when it is sent, so the
event-driven rules fire as they would live. `--load L --capacity C` sets the rate to L x C
(capacity default: 10,000 events/s, the pipeline benchmark's figure on the 2-core machine).

Event-driven latency: every record of the four action topics (read back from the beginning
once the worker has committed everything) is matched to its triggering input record by
`caused_by` (the triggering event's id, docs/contract.md): latency = the action record's
timestamp - the input record's timestamp, both CreateTime in ms. The worker stamps an output
record when it appends it to its produce batch, so the figure ends before that batch's
produce round trip.

Timer fire delay: no time-driven rule of the default pack falls due within seconds of live
events, so `--timers N` extra customers each open an urgent ticket, sent just before the
run but with an `occurred_at` its SLA (4 h) before a moment in the run's middle part (those
moments spread evenly); `ticket_sla_breach` fires for them during the run. A time-driven
action has `caused_by` = [] and `created_at` = the moment it fell due (the contract; a task's
`payload.due_at` is the task's own deadline): delay = its record timestamp - `created_at`.
The worker ticks at the earliest pending due (within the tick interval, `--tick-interval`,
its longest wait between ticks), so the delay is the watermark's lag plus the tick itself.
Those customers' event-driven actions at the seeding are left out of the latency figures.

Keeping up: the group's committed offsets are sampled every 2 s against the acknowledged
produced offsets (counted here: the embedded broker's ListOffsets answers are wrong): the
largest lag during the run, the lag when production ends and how long until every record is
committed (the commit interval is 1 s here, `--commit-interval`; the worker's default 2.8 s).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shlex
import subprocess
import sys
import threading
import time
from array import array
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.structs import TopicPartition

from benchmarks.harness import workspace
from benchmarks.workload import generate
from churnguard.core.clock import parse_rfc3339
from churnguard.processes import exit_on_sigterm, running_worker, wait_ready
from churnguard.rules.loading import default_pack
from connectors.embedded_broker import EmbeddedBroker
from streams.settings import Settings, TopicNames
from streams.topology import ensure_all_topics

REPO = Path(__file__).resolve().parent.parent
# events/s: benchmarks/pipeline_throughput.py, one worker, 4 partitions, 2-core machine.
DEFAULT_CAPACITY = 10_000.0
DEFAULT_LOAD = 0.5
LAG_SAMPLE_S = 2.0
WINDOW_S = 10.0

# (topic, partition)
TP = tuple[str, int]


# -- shared with benchmarks/soak.py ----------------------------------------------------------


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


class Stamps:
    """RFC 3339 UTC text of a millisecond timestamp, exactly (no float rounding), the
    second's part cached."""

    def __init__(self) -> None:
        self._second = -1
        self._prefix = b""

    def text(self, ms: int) -> bytes:
        second, milli = divmod(ms, 1000)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)).encode()
        return self._prefix + b".%03dZ" % milli


class Pacer:
    """A fixed-rate schedule on the monotonic clock: event n is due at start + n / rate. The
    sender sends whatever is due, then sleeps until the next one (at least `quantum_s`, so
    at high rates a wake-up sends a few); one that fell behind catches up, never drifts."""

    def __init__(self, rate: float, total: int, *, quantum_s: float = 0.001) -> None:
        self.rate = rate
        self.total = total
        self.quantum_s = quantum_s
        self.start = time.monotonic()
        self.behind_max_s = 0.0

    def due(self, sent: int) -> int:
        """How many events are due by now (at most the total)."""
        now = time.monotonic()
        behind = now - (self.start + sent / self.rate)
        self.behind_max_s = max(self.behind_max_s, behind)
        return min(self.total, int((now - self.start) * self.rate) + 1)

    def wait(self, sent: int) -> None:
        if sent >= self.total:
            return
        delay = self.start + sent / self.rate - time.monotonic()
        if delay > 0:
            time.sleep(max(delay, self.quantum_s))  # a schedule, not a readiness wait


class Acked:
    """End offset (last acknowledged offset + 1) per topic-partition, from the producer's
    callbacks (its I/O thread); the topics are new, so that is also the record count."""

    def __init__(self) -> None:
        self.ends: dict[TP, int] = {}
        self.failures = 0
        self.first_error: str | None = None

    def ok(self, meta: Any) -> None:
        tp = (str(meta.topic), int(meta.partition))
        end = int(meta.offset) + 1
        if end > self.ends.get(tp, 0):
            self.ends[tp] = end

    def fail(self, exc: BaseException) -> None:
        self.failures += 1
        if self.first_error is None:
            self.first_error = f"{type(exc).__name__}: {exc}"

    def snapshot(self) -> dict[TP, int]:
        return dict(self.ends)

    def total(self) -> int:
        return sum(self.snapshot().values())


def committed_offsets(admin: Any, group: str) -> dict[TP, int] | None:
    """The group's committed offsets (None while the coordinator does not answer)."""
    try:
        offsets = admin.list_group_offsets({group: None}).get(group, {})
    except Exception:  # group not created yet, coordinator moving: no answer, not an error
        return None
    return {(str(tp.topic), int(tp.partition)): int(meta.offset)
            for tp, meta in offsets.items() if meta is not None and meta.offset >= 0}


def covered(ends: Mapping[TP, int], offsets: Mapping[TP, int]) -> int:
    """Records of `ends` the committed offsets cover."""
    return sum(min(offsets.get(tp, 0), end) for tp, end in ends.items())


@dataclass(frozen=True, slots=True)
class LagSample:
    t_s: float  # since production started
    produced: int  # acknowledged
    committed: int

    @property
    def lag(self) -> int:
        return self.produced - self.committed


class LagSampler:
    """Committed offsets against the acknowledged produced ones every `every_s`, in a thread
    of its own (its own admin client), so the sender's schedule is not disturbed."""

    def __init__(self, bootstrap: str, group: str, acked: Acked, *, started: float,
                 every_s: float = LAG_SAMPLE_S) -> None:
        self.bootstrap = bootstrap
        self.group = group
        self.acked = acked
        self.started = started
        self.every_s = every_s
        self.samples: list[LagSample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lag-sampler", daemon=True)

    def start(self) -> LagSampler:
        self._thread.start()
        return self

    def _run(self) -> None:
        admin = KafkaAdminClient(bootstrap_servers=self.bootstrap, client_id="cg-bench-lag")
        try:
            while not self._stop.wait(self.every_s):
                ends = self.acked.snapshot()
                offsets = committed_offsets(admin, self.group)
                if offsets is not None:
                    self.samples.append(LagSample(time.monotonic() - self.started,
                                                  sum(ends.values()), covered(ends, offsets)))
        finally:
            admin.close()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def wait_committed(admin: Any, group: str, ends: Mapping[TP, int], *, timeout_s: float,
                   alive: Callable[[], bool]) -> tuple[int, float | None]:
    """Until the committed offsets cover `ends`: (records covered, seconds it took, None at
    the timeout or when the worker died)."""
    began = time.monotonic()
    total = sum(ends.values())
    done = 0
    while time.monotonic() - began < timeout_s and alive():
        offsets = committed_offsets(admin, group)
        if offsets is not None:
            done = covered(ends, offsets)
            if done >= total:
                return done, time.monotonic() - began
        time.sleep(0.1)  # commits have no completion event to await
    return done, None


@dataclass(frozen=True, slots=True)
class TimedRecord:
    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    timestamp_type: int  # 0 CreateTime, 1 LogAppendTime
    value: bytes | None


def read_timed(bootstrap: str, topics: Sequence[str], *, idle_s: float = 1.5,
               timeout_s: float = 300.0) -> list[TimedRecord]:
    """Every record of these topics with its timestamp, read from the beginning by a fresh
    consumer until nothing more arrives for `idle_s` (harness.read_topics with timestamps)."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
        auto_offset_reset="earliest", fetch_max_bytes=64 * 1024 * 1024,
        max_partition_fetch_bytes=16 * 1024 * 1024, consumer_timeout_ms=1000,
    )
    try:
        tps = []
        deadline = time.monotonic() + 30
        for topic in topics:
            partitions = consumer.partitions_for_topic(topic)
            while not partitions and time.monotonic() < deadline:
                time.sleep(0.2)  # metadata not there yet
                partitions = consumer.partitions_for_topic(topic)
            if not partitions:
                raise RuntimeError(f"topic {topic} has no partitions")
            tps += [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        found: list[TimedRecord] = []
        last = time.monotonic()
        stop_at = last + timeout_s
        while time.monotonic() - last < idle_s and time.monotonic() < stop_at:
            batch = consumer.poll(timeout_ms=200, max_records=50_000)
            for messages in batch.values():
                found += [TimedRecord(m.topic, m.partition, m.offset, int(m.timestamp),
                                      int(m.timestamp_type), m.value) for m in messages]
                last = time.monotonic()
        return found
    finally:
        consumer.close()


@dataclass(frozen=True, slots=True)
class Dist:
    """Nearest-rank percentiles of a sample (ms, or whatever unit it was given in)."""

    count: int
    p50: float | None
    p90: float | None
    p99: float | None
    max: float | None
    mean: float | None

    @classmethod
    def of(cls, values: Sequence[float]) -> Dist:
        if not values:
            return cls(0, None, None, None, None, None)
        ordered = sorted(values)
        return cls(len(ordered), percentile(ordered, 0.5), percentile(ordered, 0.9),
                   percentile(ordered, 0.99), ordered[-1], sum(ordered) / len(ordered))


def percentile(ordered: Sequence[float], q: float) -> float:
    """Nearest rank of an ascending, non-empty sample."""
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def fmt(value: float | None, spec: str = "{:,.0f}") -> str:
    return "-" if value is None else spec.format(value)


def git_commit() -> str | None:
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                              text=True, check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=REPO, capture_output=True, text=True, check=True,
                               timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{head}{'+dirty' if dirty else ''}"


def run_meta(module: str, argv: Sequence[str]) -> dict[str, Any]:
    return {"date": datetime.now(UTC).isoformat(timespec="seconds"),
            "git_commit": git_commit(),
            "command": shlex.join(["python", "-m", module, *argv])}


def run_name(kind: str) -> str:
    """A deployment name no earlier run on the same broker used (app id, topic prefix)."""
    return f"cg-{kind}-{os.getpid()}-{time.time_ns() // 1_000_000 % 10**9}"


def bench_settings(url: str, tmp: Path, name: str, *, partitions: int,
                   commit_interval_s: float, tick_interval_s: float | None = None) -> Settings:
    """One worker's settings on the embedded broker: own app id and topics, store in tmp."""
    extra: dict[str, Any] = {}
    if tick_interval_s is not None:
        extra["tick_interval_s"] = tick_interval_s
    return Settings(broker=url, app_id=name, partitions=partitions, embedded_broker=True,
                    store_dir=tmp / "store", topics=TopicNames().with_prefix(f"{name}."),
                    commit_interval_s=commit_interval_s, log_level="info", web_port=0,
                    **extra)


def action_topics(topics: TopicNames) -> list[str]:
    return [topics.notifications, topics.tasks, topics.coupons, topics.profile_updates]


def producer_for(bootstrap: str, linger_ms: int) -> Any:
    return KafkaProducer(bootstrap_servers=bootstrap, linger_ms=linger_ms,
                         batch_size=256 * 1024, acks="all")


# -- the latency run ---------------------------------------------------------------------------


@dataclass(frozen=True)
class LatencyConfig:
    rate: float = DEFAULT_LOAD * DEFAULT_CAPACITY  # events/s
    seconds: float = 60.0
    customers: int = 10_000
    partitions: int = 4
    timers: int = 200  # seeded urgent tickets whose SLA falls due during the run
    seed: int = 1
    linger_ms: int = 5
    commit_interval_s: float = 1.0
    tick_interval_s: float | None = None  # None: the worker's default (0.25 s)
    ready_timeout_s: float = 120.0
    drain_timeout_s: float = 120.0
    load: float | None = None  # how the rate was chosen, for the report
    capacity: float | None = None

    @property
    def events(self) -> int:
        return max(1, round(self.rate * self.seconds))


@dataclass
class LatencyReport:
    config: LatencyConfig
    tick_interval_s: float
    ready_s: float = 0.0
    produced: int = 0  # paced workload events sent
    produce_failures: int = 0
    produce_error: str | None = None
    send_s: float = 0.0
    behind_max_ms: float = 0.0
    action_records: int = 0
    distinct_actions: int = 0
    redelivered: int = 0
    latency_ms: Dist = field(default_factory=lambda: Dist.of([]))
    matched_events: int = 0  # distinct workload events with an action
    by_rule: dict[str, Dist] = field(default_factory=dict)
    # (window start since production start, count, p50, p99) of events sent in each window
    windows: list[tuple[float, int, float | None, float | None]] = field(default_factory=list)
    seed_actions: int = 0  # event-driven actions of the timer customers' seeding
    unmatched: int = 0  # caused_by naming no event sent here (none expected)
    timers_seeded: int = 0
    timer_delay_ms: Dist = field(default_factory=lambda: Dist.of([]))
    timers_by_rule: dict[str, Dist] = field(default_factory=dict)
    # (due since the first event was sent, s; fire delay, ms) of every time-driven action
    timer_samples: list[tuple[float, float]] = field(default_factory=list)
    timestamp_types: dict[int, int] = field(default_factory=dict)
    lag_samples: list[LagSample] = field(default_factory=list)
    input_records: int = 0  # every input record acknowledged (workload + seeds)
    committed_at_end: int = 0
    committed_final: int = 0
    drain_s: float | None = None
    worker_alive: bool = True

    @property
    def achieved_rate(self) -> float:
        return self.produced / self.send_s if self.send_s > 0 else 0.0

    @property
    def lag_at_end(self) -> int:
        return self.input_records - self.committed_at_end

    @property
    def max_lag(self) -> int:
        return max((s.lag for s in self.lag_samples), default=0)

    @property
    def ok(self) -> bool:
        return (self.worker_alive and self.produce_failures == 0 and self.unmatched == 0
                and self.drain_s is not None and self.latency_ms.count > 0)

    def lines(self) -> list[str]:
        c = self.config
        how = (f" (load {c.load:.2f} x capacity {c.capacity:,.0f}/s)"
               if c.load is not None and c.capacity is not None else "")
        out = [
            f"latency: {c.rate:,.0f} events/s{how} for {c.seconds:g} s, {c.customers:,} "
            f"customers, {c.partitions} partitions, 1 worker; ready after {self.ready_s:.1f} s",
            f"sent {self.produced:,} events in {self.send_s:.1f} s = {self.achieved_rate:,.0f}/s"
            f" (furthest behind schedule {self.behind_max_ms:,.0f} ms); produce failures "
            f"{self.produce_failures}{': ' + self.produce_error if self.produce_error else ''}",
            "",
        ]
        rows = [["what", "count", "p50 ms", "p90 ms", "p99 ms", "max ms"]]

        def row(name: str, d: Dist) -> list[str]:
            return [name, f"{d.count:,}", fmt(d.p50), fmt(d.p90), fmt(d.p99), fmt(d.max)]

        rows.append(row("event -> action (all)", self.latency_ms))
        rows += [row(f"  {rule}", d) for rule, d in sorted(self.by_rule.items())]
        rows.append(row(f"timer fire delay (tick {self.tick_interval_s:g} s)",
                        self.timer_delay_ms))
        rows += [row(f"  {rule}", d) for rule, d in sorted(self.timers_by_rule.items())]
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        for n, r in enumerate(rows):
            out.append("  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                                 for i, (cell, w) in enumerate(zip(r, widths, strict=True))))
            if n == 0:
                out.append("  ".join("-" * w for w in widths))
        out += [
            "",
            f"matched: {self.latency_ms.count:,} action records of {self.matched_events:,} "
            f"events ({self.action_records:,} records on the action topics, "
            f"{self.distinct_actions:,} distinct ids, {self.redelivered} redelivered); "
            f"{self.seed_actions:,} from the timer seeding left out; unmatched "
            f"{self.unmatched}",
            f"timers: {self.timers_seeded} seeded to fall due during the run, "
            f"{self.timer_delay_ms.count} fired in it",
            "p99 per 10 s of sending: " + ", ".join(
                f"{t:g}s {fmt(p99)}" for t, _, _, p99 in self.windows),
            f"keeping up: {self.input_records:,} input records; lag max {self.max_lag:,} "
            f"(sampled every {LAG_SAMPLE_S:g} s), {self.lag_at_end:,} when production ended "
            f"({self.committed_at_end:,} committed); "
            + (f"all committed {self.drain_s:.1f} s later" if self.drain_s is not None
               else f"NOT all committed ({self.committed_final:,})")
            + ("" if self.worker_alive else "; the worker DIED"),
        ]
        return out

    def to_json(self, argv: Sequence[str]) -> dict[str, Any]:
        return {
            **run_meta("benchmarks.latency", argv),
            "config": asdict(self.config),
            "ok": self.ok,
            "tick_interval_s": self.tick_interval_s,
            "ready_s": round(self.ready_s, 2),
            "produced": self.produced,
            "send_s": round(self.send_s, 3),
            "achieved_rate": round(self.achieved_rate, 1),
            "behind_max_ms": round(self.behind_max_ms, 1),
            "produce_failures": self.produce_failures,
            "latency_ms": asdict(self.latency_ms),
            "latency_by_rule_ms": {r: asdict(d) for r, d in sorted(self.by_rule.items())},
            "latency_windows": [{"t_s": t, "count": n, "p50_ms": p50, "p99_ms": p99}
                                for t, n, p50, p99 in self.windows],
            "matched_action_records": self.latency_ms.count,
            "matched_events": self.matched_events,
            "action_records": self.action_records,
            "distinct_actions": self.distinct_actions,
            "redelivered": self.redelivered,
            "seed_actions": self.seed_actions,
            "unmatched": self.unmatched,
            "timers_seeded": self.timers_seeded,
            "timer_delay_ms": asdict(self.timer_delay_ms),
            "timer_delay_by_rule_ms": {r: asdict(d)
                                       for r, d in sorted(self.timers_by_rule.items())},
            "timer_samples": [{"due_s": round(t, 3), "delay_ms": d}
                              for t, d in self.timer_samples],
            "timestamp_types": {str(k): v for k, v in self.timestamp_types.items()},
            "input_records": self.input_records,
            "lag_max": self.max_lag,
            "lag_at_end": self.lag_at_end,
            "committed_at_end": self.committed_at_end,
            "committed_final": self.committed_final,
            "drain_s": None if self.drain_s is None else round(self.drain_s, 2),
            "lag_samples": [{"t_s": round(s.t_s, 2), "produced": s.produced,
                             "committed": s.committed, "lag": s.lag}
                            for s in self.lag_samples],
            "worker_alive": self.worker_alive,
            "definitions": {
                "latency_ms": "action record timestamp - triggering input record timestamp "
                              "(caused_by[0]); both CreateTime; the worker stamps an action "
                              "when appending it to its produce batch",
                "timer_delay_ms": "time-driven action (caused_by = []) record timestamp - "
                                  "its created_at (the moment it fell due)",
                "lag": "acknowledged produced records - records covered by the group's "
                       "committed offsets",
            },
        }


# A workload event split around its occurred_at value: (key, before, after).
Template = tuple[bytes, bytes, bytes]
_OCCURRED = b'"occurred_at":"'


def templates(events: int, customers: int, seed: int) -> list[Template]:
    """The workload's events with the value of `occurred_at` cut out (the sender puts the
    send time there); event n has id ev-{seed}-{n}."""
    out: list[Template] = []
    for key, value in generate(events, customers, days=1, seed=seed):
        start = value.index(_OCCURRED) + len(_OCCURRED)
        end = value.index(b'"', start)
        out.append((key, value[:start], value[end:]))
    return out


def timer_seeds(count: int, first_due: float, last_due: float,
                sla_hours: float) -> list[tuple[bytes, bytes, float]]:
    """(key, value, due) of `count` customers' urgent tickets opened `sla_hours` before a
    due time, the due times spread evenly over [first_due, last_due]."""
    seeds = []
    for k in range(count):
        due = first_due + (last_due - first_due) * (k / max(1, count - 1))
        opened_ms = round((due - sla_hours * 3600) * 1000)
        cid = f"tmr-{k:07d}"
        event = {"type": "ticket", "event_id": f"tmr-ev-{k}", "customer_id": cid,
                 "occurred_at": Stamps().text(opened_ms).decode(),
                 "ticket_id": f"tmr-t-{k}", "status": "opened", "priority": "urgent"}
        seeds.append((cid.encode(), orjson.dumps(event), due))
    return seeds


def run_latency(
    config: LatencyConfig,
    *,
    broker: EmbeddedBroker | None = None,
    tmp: Path | None = None,
    say: Callable[[str], None] = print,
) -> LatencyReport:
    with workspace("cg-latency-", None, broker, tmp) as (url, where):
        name = run_name("lat")
        settings = bench_settings(url, where, name, partitions=config.partitions,
                                  commit_interval_s=config.commit_interval_s,
                                  tick_interval_s=config.tick_interval_s)
        report = LatencyReport(config, settings.tick_interval_s)
        ensure_all_topics(settings)
        say(f"preparing {config.events:,} events for {config.customers:,} customers")
        events = templates(config.events, config.customers, config.seed)
        sent_ms = array("q", bytes(8 * len(events)))
        log_path = where / "worker.log"
        with running_worker(settings, log_path) as worker:
            began = time.monotonic()
            wait_ready(log_path, worker, timeout_s=config.ready_timeout_s)
            report.ready_s = time.monotonic() - began
            say(f"worker ready after {report.ready_s:.1f} s; sending at {config.rate:,.0f}/s "
                f"for {config.seconds:g} s")
            _produce(config, settings, events, sent_ms, report,
                     alive=lambda: worker.poll() is None)
            report.worker_alive = worker.poll() is None
            records = read_timed(settings.bootstrap, action_topics(settings.topics))
            report.worker_alive = worker.poll() is None
        _analyse(report, records, sent_ms, config.seed)
        return report


def _produce(config: LatencyConfig, settings: Settings, events: Sequence[Template],
             sent_ms: array[int], report: LatencyReport, *, alive: Callable[[], bool]) -> None:
    acked = Acked()
    producer = producer_for(settings.bootstrap, config.linger_ms)
    admin = KafkaAdminClient(bootstrap_servers=settings.bootstrap, client_id="cg-bench")
    topic = settings.topics.events
    stamps = Stamps()
    sampler: LagSampler | None = None
    try:
        # The timer customers first: due evenly over the middle of the run.
        lead = min(5.0, 0.2 * config.seconds)
        start_wall = time.time() + 0.5
        seeds = timer_seeds(config.timers, start_wall + lead,
                            start_wall + config.seconds - lead,
                            default_pack().ticket_sla_hours["urgent"])
        for key, value, _ in seeds:
            producer.send(topic, key=key, value=value, timestamp_ms=wall_ms()).add_callback(
                acked.ok).add_errback(acked.fail)
        producer.flush(timeout=60)
        report.timers_seeded = len(seeds)
        time.sleep(max(0.0, start_wall - time.time()))  # the planned start
        pacer = Pacer(config.rate, len(events))
        sampler = LagSampler(settings.bootstrap, settings.app_id, acked,
                             started=pacer.start).start()
        sent = 0
        send = producer.send
        while sent < len(events):
            due = pacer.due(sent)
            while sent < due:
                ms = wall_ms()
                key, before, after = events[sent]
                send(topic, key=key, value=before + stamps.text(ms) + after,
                     timestamp_ms=ms).add_callback(acked.ok).add_errback(acked.fail)
                sent_ms[sent] = ms
                sent += 1
            pacer.wait(sent)
        report.send_s = time.monotonic() - pacer.start
        report.produced = sent
        report.behind_max_ms = pacer.behind_max_s * 1000
        producer.flush(timeout=120)
        ends = acked.snapshot()
        report.input_records = sum(ends.values())
        offsets = committed_offsets(admin, settings.app_id)
        report.committed_at_end = 0 if offsets is None else covered(ends, offsets)
        sampler.stop()
        report.lag_samples = sampler.samples
        report.committed_final, report.drain_s = wait_committed(
            admin, settings.app_id, ends, timeout_s=config.drain_timeout_s, alive=alive)
        # The last timers' actions, and anything still on its way out.
        time.sleep(max(0.0, max((due for _, _, due in seeds), default=0.0) - time.time()))
        time.sleep(2 * report.tick_interval_s + 1.0)
    finally:
        if sampler is not None:
            sampler.stop()
        producer.close(timeout=10)
        admin.close()
        report.produce_failures = acked.failures
        report.produce_error = acked.first_error


def _analyse(report: LatencyReport, records: Sequence[TimedRecord], sent_ms: array[int],
             seed: int) -> None:
    prefix = f"ev-{seed}-"
    first: dict[str, TimedRecord] = {}
    report.action_records = len(records)
    for record in records:
        value = _decode(record.value)
        ident = str(value.get("action_id")) if value is not None else f"?{record.offset}"
        seen = first.get(ident)
        if seen is None or record.timestamp_ms < seen.timestamp_ms:
            first[ident] = record
        report.timestamp_types[record.timestamp_type] = (
            report.timestamp_types.get(record.timestamp_type, 0) + 1)
    report.distinct_actions = len(first)
    report.redelivered = len(records) - len(first)
    latencies: list[float] = []
    by_rule: dict[str, list[float]] = {}
    per_window: dict[int, list[float]] = {}
    events: set[int] = set()
    delays: dict[str, list[float]] = {}
    start_ms = sent_ms[0] if sent_ms else 0
    for record in first.values():
        value = _decode(record.value)
        if value is None:
            report.unmatched += 1
            continue
        rule = str(value.get("rule_id"))
        caused = value.get("caused_by")
        if not caused:  # time-driven: created_at is the moment it fell due
            due_ms = parse_rfc3339(str(value["created_at"])) * 1000
            delays.setdefault(rule, []).append(record.timestamp_ms - due_ms)
            report.timer_samples.append(((due_ms - start_ms) / 1000,
                                         record.timestamp_ms - due_ms))
            continue
        cause = str(caused[0])
        n = _event_number(cause, prefix, len(sent_ms))
        if n is None:
            if cause.startswith("tmr-ev-"):
                report.seed_actions += 1
            else:
                report.unmatched += 1
            continue
        latency = float(record.timestamp_ms - sent_ms[n])
        latencies.append(latency)
        by_rule.setdefault(rule, []).append(latency)
        per_window.setdefault(int((sent_ms[n] - start_ms) / 1000 // WINDOW_S), []).append(
            latency)
        events.add(n)
    report.latency_ms = Dist.of(latencies)
    report.by_rule = {rule: Dist.of(values) for rule, values in by_rule.items()}
    report.matched_events = len(events)
    for w in sorted(per_window):
        d = Dist.of(per_window[w])
        report.windows.append((w * WINDOW_S, d.count, d.p50, d.p99))
    report.timer_samples.sort()
    report.timer_delay_ms = Dist.of([v for values in delays.values() for v in values])
    report.timers_by_rule = {rule: Dist.of(values) for rule, values in delays.items()}


def _event_number(cause: str, prefix: str, sent: int) -> int | None:
    if not cause.startswith(prefix):
        return None
    with contextlib.suppress(ValueError):
        n = int(cause[len(prefix):])
        if 0 <= n < sent:
            return n
    return None


def _decode(value: bytes | None) -> dict[str, Any] | None:
    if value is None:
        return None
    try:
        decoded = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    return decoded if isinstance(decoded, dict) else None


# -- command line -----------------------------------------------------------------------------


def parse_config(argv: Sequence[str]) -> tuple[LatencyConfig, Path | None]:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.latency", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    rate = parser.add_mutually_exclusive_group()
    rate.add_argument("--rate", type=float, help="events/s (default: --load x --capacity)")
    rate.add_argument("--load", type=float, default=None,
                      help=f"fraction of --capacity (default {DEFAULT_LOAD})")
    parser.add_argument("--capacity", type=float, default=DEFAULT_CAPACITY,
                        help="events/s the worker sustains at best (default %(default)s: "
                             "the pipeline benchmark on 2 cores)")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--customers", type=int, default=10_000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--timers", type=int, default=200,
                        help="customers whose ticket SLA falls due during the run (default 200)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--linger-ms", type=int, default=5)
    parser.add_argument("--commit-interval", type=float, default=1.0,
                        help="the worker's commit interval, s (default 1)")
    parser.add_argument("--tick-interval", type=float, default=None,
                        help="the worker's longest wait between timer ticks, s "
                             "(default: the worker's, 0.25)")
    parser.add_argument("--json", type=Path, default=None, help="write the report here")
    args = parser.parse_args(argv)
    if args.rate is not None:
        load, capacity, events_per_s = None, None, float(args.rate)
    else:
        load = DEFAULT_LOAD if args.load is None else float(args.load)
        capacity = float(args.capacity)
        events_per_s = load * capacity
    if events_per_s <= 0 or args.seconds <= 0 or args.customers < 1 or args.partitions < 1:
        parser.error("rate, seconds, customers and partitions must be positive")
    config = LatencyConfig(
        rate=events_per_s, seconds=args.seconds, customers=args.customers,
        partitions=args.partitions, timers=max(0, args.timers), seed=args.seed,
        linger_ms=args.linger_ms, commit_interval_s=args.commit_interval,
        tick_interval_s=args.tick_interval, load=load, capacity=capacity)
    return config, args.json


def write_json(path: Path, document: Mapping[str, Any]) -> None:
    path.write_text(json.dumps(document, indent=2) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    config, json_path = parse_config(argv)
    exit_on_sigterm()
    report = run_latency(config)
    print("\n".join(report.lines()))
    if json_path is not None:
        write_json(json_path, report.to_json(argv))
        print(f"wrote {json_path}")
    return 0 if report.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
