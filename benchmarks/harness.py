"""Shared by the chaos and fuzz harnesses (benchmarks/chaos.py, benchmarks/fuzz.py): an
isolated deployment on a broker with a pinned worker clock, producing pre-built records,
watching the group's committed offsets, workers that can be killed and restarted, reading
topics back with fresh consumers, and the reference — the same core run in-process over the
same events — with the comparisons of actions and scores.

The pinned clock: every worker reads "now" from a file that holds one fixed moment after the
workload, so what the time-driven rules fire is deterministic. A live worker passes that
moment as `noticed_at`, so a timer that fell due more than its grace (24 h) before it is
recorded as expired, not fired (a backfill): the reference runs the core exactly that way,
and also runs `churnguard.replay.replay` itself to report how the two differ (only by such
expired time-driven actions).
"""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import orjson
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.structs import TopicPartition

from churnguard.clocks import FileClock
from churnguard.core.clock import parse_rfc3339, rfc3339
from churnguard.core.pack import BACKFILL_HORIZON_MAX_HOURS
from churnguard.core.processor import Engine
from churnguard.core.rules import Action
from churnguard.core.state import CustomerState
from churnguard.processes import READY_MARK, start_worker, stop_process_group, wait_ready
from churnguard.replay import replay
from churnguard.rules.loading import default_pack_text
from connectors.admin import ensure_topics
from connectors.embedded_broker import EmbeddedBroker, embedded_broker
from schemas.events import Event
from streams.codecs import encode_action
from streams.settings import Settings, TopicNames
from streams.topology import changelog_topic, ensure_all_topics

# (topic, partition)
TP = tuple[str, int]


class HarnessError(RuntimeError):
    """The harness itself could not do its job (broker, topics, a worker that never starts)."""


# -- the deployment -----------------------------------------------------------------------


def _longest_horizon(pack_text: str) -> str:
    """The pack's text with `backfill_horizon_hours` at its maximum (ten years)."""
    line = "backfill_horizon_hours: 72\n"
    if line not in pack_text:
        raise HarnessError("the default pack no longer sets backfill_horizon_hours: 72")
    return pack_text.replace(line, f"backfill_horizon_hours: {BACKFILL_HORIZON_MAX_HOURS}\n")


@dataclass
class Deployment:
    """One churnguard deployment (own app id, topic prefix, stores, logs, clock file)."""

    settings: Settings
    tmp: Path
    pinned: float

    @classmethod
    def create(
        cls,
        *,
        broker_url: str,
        tmp: Path,
        name: str,
        partitions: int,
        pinned: float,
        embedded_broker: bool = True,
        tick_interval_s: float = 0.2,
        commit_interval_s: float = 0.5,
        session_timeout_s: float = 6.0,
    ) -> Deployment:
        tmp.mkdir(parents=True, exist_ok=True)
        clock_file = tmp / "clock"
        FileClock.set(clock_file, pinned)
        # The default pack with the longest backfill horizon: the workload's events are weeks
        # older than the pinned clock, and their event-driven rules are what is checked (with
        # the default 72 h they would all expire, in the workers as in the reference).
        rules_file = tmp / "pack.yaml"
        rules_file.write_text(_longest_horizon(default_pack_text()), "utf-8")
        settings = Settings(
            broker=broker_url,
            app_id=name,
            partitions=partitions,
            embedded_broker=embedded_broker,
            store_dir=tmp / "store",
            topics=TopicNames().with_prefix(f"{name}."),
            clock_file=clock_file,
            rules_file=rules_file,
            tick_interval_s=tick_interval_s,
            commit_interval_s=commit_interval_s,
            session_timeout_s=session_timeout_s,
            rebalance_timeout_s=session_timeout_s,
            log_level="info",
            web_port=0,
        )
        # Input records carry their event time as timestamp (weeks old): on Apache Kafka the
        # default 7-day retention would delete them, so the inputs keep everything.
        inputs = list(settings.topics.inputs())
        ensure_topics(settings.bootstrap, inputs, partitions,
                      configs={topic: {"retention.ms": "-1"} for topic in inputs})
        ensure_all_topics(settings)
        return cls(settings, tmp, pinned)

    @property
    def topics(self) -> TopicNames:
        return self.settings.topics

    @property
    def bootstrap(self) -> str:
        return self.settings.bootstrap

    @property
    def changelog(self) -> str:
        return changelog_topic(self.settings)

    def action_topics(self) -> list[str]:
        t = self.topics
        return [t.notifications, t.tasks, t.coupons, t.profile_updates]


# -- producing ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OutRecord:
    topic: str
    key: bytes | None
    value: bytes | None
    timestamp_ms: int


@dataclass
class Produced:
    """Where each produced record landed, and how many records each input partition got
    (counted here: the embedded broker's ListOffsets answers are wrong)."""

    placements: list[tuple[str, int, int]] = field(default_factory=list)  # per record
    counts: dict[TP, int] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def total(self) -> int:
        return len(self.placements)


def produce(bootstrap: str, records: Iterable[OutRecord]) -> Produced:
    """Send every record (keyed, with its timestamp) and wait for all acknowledgements."""
    started = time.perf_counter()
    producer = KafkaProducer(
        bootstrap_servers=bootstrap, linger_ms=20, batch_size=256 * 1024, acks="all",
        max_request_size=8 * 1024 * 1024,
    )
    try:
        futures = [producer.send(r.topic, key=r.key, value=r.value, timestamp_ms=r.timestamp_ms)
                   for r in records]
        producer.flush(timeout=300)
        produced = Produced()
        ends: dict[TP, int] = defaultdict(int)
        for future in futures:
            meta = future.get(timeout=60)
            tp = (meta.topic, meta.partition)
            produced.placements.append((meta.topic, meta.partition, meta.offset))
            produced.counts[tp] = produced.counts.get(tp, 0) + 1
            ends[tp] = max(ends[tp], meta.offset + 1)
    finally:
        producer.close(timeout=10)
    if dict(ends) != produced.counts:
        raise HarnessError(
            "the input topics were not empty before the run (offsets do not start at 0): "
            f"{ {tp: (n, ends[tp]) for tp, n in produced.counts.items() if ends[tp] != n} }")
    produced.seconds = time.perf_counter() - started
    return produced


def timestamp_ms(occurred_at: str) -> int:
    """The record timestamp of an event: its occurred_at, in milliseconds."""
    return round(parse_rfc3339(occurred_at) * 1000)


# -- committed offsets ---------------------------------------------------------------------


class Offsets:
    """The consumer group's committed offsets against the produced counts."""

    def __init__(self, bootstrap: str, group: str, targets: Mapping[TP, int]) -> None:
        self.admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="cg-harness")
        self.group = group
        self.targets = dict(targets)
        self.total = sum(self.targets.values())

    def done(self) -> int:
        """Records covered by the committed offsets (0 while the group is unknown)."""
        try:
            offsets = self.admin.list_group_offsets({self.group: None}).get(self.group, {})
        except Exception:  # coordinator moving, group not created yet: not progress
            return -1
        done = 0
        for (topic, partition), end in self.targets.items():
            meta = offsets.get(TopicPartition(topic, partition))
            if meta is not None and meta.offset > 0:
                done += min(meta.offset, end)
        return done

    def close(self) -> None:
        self.admin.close()


# -- workers ---------------------------------------------------------------------------------


@dataclass
class Kill:
    number: int
    worker: int
    wiped: bool
    at: float  # monotonic
    committed_at_kill: int
    ready_at: float | None = None
    progress_at: float | None = None

    @property
    def ready_s(self) -> float | None:
        return None if self.ready_at is None else self.ready_at - self.at

    @property
    def progress_s(self) -> float | None:
        return None if self.progress_at is None else self.progress_at - self.at


class WorkerSlot:
    """One worker of the deployment: its own store directory and log, restartable."""

    def __init__(self, deployment: Deployment, index: int) -> None:
        self.index = index
        self.store_dir = deployment.tmp / f"store-{index}"
        self.settings = deployment.settings.model_copy(update={"store_dir": self.store_dir})
        self.log_path = deployment.tmp / f"worker-{index}.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.log_offset = 0
        self.starts = 0
        self._ready = False
        self.crashes: list[int] = []  # exit codes of exits nobody asked for

    def start(self) -> None:
        self.log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        self.process = start_worker(self.settings, self.log_path)
        self._ready = False
        self.starts += 1

    def wait_ready(self, timeout_s: float) -> None:
        assert self.process is not None
        wait_ready(self.log_path, self.process, timeout_s=timeout_s, after=self.log_offset)

    def is_ready(self) -> bool:
        """Alive and `worker_ready` logged since the last start."""
        if not self.alive() or not self.log_path.exists():
            return False
        if not self._ready:
            with self.log_path.open("rb") as log:
                log.seek(self.log_offset)
                self._ready = READY_MARK in log.read()
        return self._ready

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def check_crash(self) -> int | None:
        """The exit code if the worker exited by itself since the last check."""
        if self.process is not None and self.process.poll() is not None:
            code = self.process.returncode
            self.crashes.append(code)
            self.process = None
            return code
        return None

    def kill(self, *, wipe: bool) -> None:
        """SIGKILL the worker's process group; with `wipe`, delete its store directory."""
        if self.process is not None:
            stop_process_group(self.process, kill=True)
            self.process = None
        if wipe:
            shutil.rmtree(self.store_dir, ignore_errors=True)

    def stop(self) -> None:
        if self.process is not None:
            stop_process_group(self.process)
            self.process = None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_events(self, name: str) -> list[dict[str, Any]]:
        """The worker's structlog JSON lines with this `event`, oldest first."""
        found: list[dict[str, Any]] = []
        if not self.log_path.exists():
            return found
        needle = f'"{name}"'.encode()
        for line in self.log_path.read_bytes().splitlines():
            if needle in line:
                try:
                    record = orjson.loads(line)
                except orjson.JSONDecodeError:
                    continue
                if isinstance(record, dict) and record.get("event") == name:
                    found.append(record)
        return found


# -- reading topics back ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReadRecord:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


def read_topics(
    bootstrap: str, topics: Sequence[str], *, idle_s: float = 1.5, timeout_s: float = 300.0
) -> dict[str, list[ReadRecord]]:
    """Every record of these topics, read from the beginning by a fresh consumer (a reader
    tailing a partition while two producers write it can miss batches on the embedded
    broker), until nothing more arrives for `idle_s`. In (partition, offset) order."""
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
                raise HarnessError(f"topic {topic} has no partitions")
            tps += [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        found: dict[str, list[ReadRecord]] = {topic: [] for topic in topics}
        last = time.monotonic()
        stop_at = last + timeout_s
        while time.monotonic() - last < idle_s and time.monotonic() < stop_at:
            batch = consumer.poll(timeout_ms=200, max_records=50_000)
            for messages in batch.values():
                for m in messages:
                    found[m.topic].append(
                        ReadRecord(m.topic, m.partition, m.offset, m.key, m.value))
                last = time.monotonic()
        for records in found.values():
            records.sort(key=lambda r: (r.partition, r.offset))
        return found
    finally:
        consumer.close()


def reported_ends(bootstrap: str, topics: Sequence[str]) -> dict[TP, int]:
    """The broker's end offsets. On the embedded broker only good to see growth (it answers
    the last batch's base offset + 1), never as a count."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                             enable_auto_commit=False)
    try:
        tps = []
        for topic in topics:
            tps += [TopicPartition(topic, p) for p in sorted(
                consumer.partitions_for_topic(topic) or ())]
        ends = consumer.end_offsets(tps)
        return {(tp.topic, tp.partition): int(n) for tp, n in ends.items()}
    finally:
        consumer.close()


def wait_quiet(
    bootstrap: str, topics: Sequence[str], *, quiet_s: float, timeout_s: float,
    alive: Callable[[], bool] = lambda: True,
) -> bool:
    """Until these topics have not grown for `quiet_s` (False at the timeout)."""
    deadline = time.monotonic() + timeout_s
    before = reported_ends(bootstrap, topics)
    since = time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.5)  # the worker's outputs have no completion event to await
        now = reported_ends(bootstrap, topics)
        if now != before or not alive():
            before, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return True
    return False


def decode(record: ReadRecord) -> dict[str, Any] | None:
    if record.value is None:
        return None
    try:
        value = orjson.loads(record.value)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


# -- the reference ----------------------------------------------------------------------------


@dataclass
class Expected:
    """What the live worker at the pinned clock must have sent, by the same core."""

    actions: list[Action]
    states: dict[str, CustomerState]
    replay_actions: int  # what churnguard.replay.replay fires over the same events
    # Replay's actions a live worker records as expired (time-driven, due more than the
    # grace before the pinned clock), and any other difference (a harness defect).
    expired_live: int = 0
    model_differences: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def records(self) -> dict[str, dict[str, Any]]:
        return {a.action_id: orjson.loads(encode_action(a)) for a in self.actions}


def live_run(
    events: Iterable[Event], engine: Engine, *, until: float, noticed_at: float | None
) -> tuple[list[Action], dict[str, CustomerState]]:
    """What a live worker receiving these events only at `noticed_at` sends by `until`,
    and the customers' final states (churnguard.replay with the worker's noticed_at)."""
    states: dict[str, CustomerState] = {}
    actions = list(replay(events, engine, until=until, noticed_at=noticed_at, states=states))
    return actions, states


def expect(events: Sequence[Event], engine: Engine, *, pinned: float) -> Expected:
    """The live worker's expected output at the pinned clock, and churnguard.replay's."""
    started = time.perf_counter()
    reference = list(replay(events, engine, until=pinned))
    actions, states = live_run(events, engine, until=pinned, noticed_at=pinned)
    expected = Expected(actions, states, len(reference))
    live = {a.action_id: a for a in actions}
    replayed = {a.action_id: a for a in reference}
    for ident, action in replayed.items():
        if ident not in live:
            if action.caused_by:
                expected.model_differences.append(f"{ident} ({action.rule_id}): event-driven")
            else:
                expected.expired_live += 1
        elif encode_action(live[ident]) != encode_action(action):
            expected.model_differences.append(f"{ident} ({action.rule_id}): content")
    expected.model_differences += [f"{i}: not in replay" for i in live if i not in replayed]
    expected.seconds = time.perf_counter() - started
    return expected


# -- comparisons ------------------------------------------------------------------------------


@dataclass
class ActionCheck:
    expected: int = 0
    records: int = 0
    distinct: int = 0
    lost: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    # The same action_id with different content (a real duplicate, not a redelivery).
    conflicting: list[str] = field(default_factory=list)
    redeliveries: int = 0  # identical copies: at-least-once, expected after a kill
    # Same id as the reference but other content (e.g. another health_score).
    differing: list[str] = field(default_factory=list)
    examples: list[str] = field(default_factory=list)

    def failures(self) -> list[str]:
        found = []
        for name, ids in (("lost", self.lost), ("unexpected", self.unexpected),
                          ("duplicated ids (different content)", self.conflicting),
                          ("content differs from the reference", self.differing)):
            if ids:
                found.append(f"{len(ids)} {name}, e.g. {', '.join(sorted(ids)[:3])}")
        return found

    def summary(self) -> str:
        return (f"actions: expected {self.expected}, received {self.records} records / "
                f"{self.distinct} distinct ids; lost {len(self.lost)}, unexpected "
                f"{len(self.unexpected)}, duplicated ids {len(self.conflicting)}, "
                f"redeliveries {self.redeliveries}, content differs {len(self.differing)}")


def check_actions(
    expected: Mapping[str, dict[str, Any]], received: Iterable[dict[str, Any]]
) -> ActionCheck:
    check = ActionCheck(expected=len(expected))
    seen: dict[str, dict[str, Any]] = {}
    for record in received:
        check.records += 1
        ident = str(record.get("action_id"))
        first = seen.setdefault(ident, record)
        if first is not record:
            if first == record:
                check.redeliveries += 1
            elif ident not in check.conflicting:
                check.conflicting.append(ident)
    check.distinct = len(seen)
    check.lost = [i for i in expected if i not in seen]
    check.unexpected = [i for i in seen if i not in expected]
    check.differing = [i for i, r in seen.items() if i in expected and r != expected[i]]
    for ident in check.differing[:3]:
        check.examples.append(f"{ident}: " + "; ".join(_diff(seen[ident], expected[ident])))
    for ident in check.lost[:2]:
        e = expected[ident]
        check.examples.append(f"lost {ident}: {e.get('rule_id')} for {e.get('customer_id')} "
                              f"at {e.get('created_at')} caused by {e.get('caused_by')}")
    for ident in check.unexpected[:2]:
        r = seen[ident]
        check.examples.append(f"unexpected {ident}: {r.get('rule_id')} for "
                              f"{r.get('customer_id')} at {r.get('created_at')} caused by "
                              f"{r.get('caused_by')}")
    return check


def _diff(got: Any, want: Any, path: str = "") -> list[str]:
    """Where two JSON values differ: `path: got X, expected Y`."""
    if isinstance(got, dict) and isinstance(want, dict):
        found = []
        for key in sorted(set(got) | set(want)):
            found += _diff(got.get(key), want.get(key), f"{path}.{key}" if path else key)
        return found
    return [] if got == want else [f"{path}: got {got!r}, expected {want!r}"]


@dataclass
class ScoreCheck:
    customers: int = 0
    missing: list[str] = field(default_factory=list)
    differing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    examples: list[str] = field(default_factory=list)

    def failures(self) -> list[str]:
        found = []
        for name, ids in (("customers without a score record", self.missing),
                          ("customers whose last score differs", self.differing),
                          ("unexpected customers with scores", self.unexpected)):
            if ids:
                found.append(f"{len(ids)} {name}, e.g. {', '.join(sorted(ids)[:3])}")
        return found

    def summary(self) -> str:
        return (f"last scores: {self.customers} customers; missing {len(self.missing)}, "
                f"differ {len(self.differing)}, unexpected {len(self.unexpected)}")


def check_scores(
    states: Mapping[str, CustomerState], scores: Iterable[dict[str, Any]]
) -> ScoreCheck:
    """The last record per customer on the scores topic against the final state."""
    last: dict[str, dict[str, Any]] = {}
    for record in scores:  # in offset order; a customer lives on one partition
        last[str(record.get("customer_id"))] = record
    check = ScoreCheck()
    for customer, state in states.items():
        if state.score is None:
            continue
        check.customers += 1
        got = last.get(customer)
        if got is None:
            check.missing.append(customer)
        elif (got.get("score"), got.get("segment")) != (state.score, state.segment):
            check.differing.append(customer)
            if len(check.examples) < 3:
                check.examples.append(
                    f"{customer}: got {got.get('score')}/{got.get('segment')} at "
                    f"{got.get('at')}, expected {state.score}/{state.segment} at "
                    f"{rfc3339(state.clock)}")
    check.unexpected = [c for c in last if c not in states]
    return check


# -- personal data ----------------------------------------------------------------------------


class Markers:
    """Recognisable, unique personal values: a name, an email and a phone per serial number
    and placement (`where`: "x" in a name/email/phone field, "u" in an unknown or free-text
    field, "f" in another field of the event), and the pattern that finds any of them."""

    PATTERN = re.compile(rb"Q(\d{7})z([xuf])|555-([123])(\d{7})", re.IGNORECASE)
    _PHONE: ClassVar[dict[str, str]] = {"x": "1", "u": "2", "f": "3"}
    _WHERE: ClassVar[dict[str, str]] = {"1": "x", "2": "u", "3": "f"}

    @staticmethod
    def name(n: int, where: str = "x") -> str:
        return f"Pat Q{n:07d}z{where} Doe"

    @staticmethod
    def email(n: int, where: str = "x") -> str:
        return f"pat.q{n:07d}z{where}@mail.example"

    @classmethod
    def phone(cls, n: int, where: str = "x") -> str:
        return f"+1-555-{cls._PHONE[where]}{n:07d}"

    @classmethod
    def find(cls, data: bytes) -> set[tuple[int, str]]:
        """(serial number, placement) of every marker in `data`."""
        found = set()
        for m in cls.PATTERN.finditer(data):
            if m.group(1):
                found.add((int(m.group(1)), m.group(2).decode().lower()))
            else:
                found.add((int(m.group(4)), cls._WHERE[m.group(3).decode()]))
        return found


def fmt_s(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.1f}s"


@contextlib.contextmanager
def workspace(
    prefix: str, url: str | None, given: EmbeddedBroker | None, tmp: Path | None
) -> Iterator[tuple[str, Path]]:
    """A harness run's broker and directory: `url` (--broker), else the embedded broker it
    was given (the tests' shared one), else one of its own; `tmp`, else a temporary
    directory named `prefix`…, removed afterwards."""
    with contextlib.ExitStack() as stack:
        if tmp is None:
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=prefix)))
        if url is None:
            url = given.url if given is not None else stack.enter_context(embedded_broker()).url
        yield url, tmp
