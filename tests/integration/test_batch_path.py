"""The batch path against the embedded broker with real worker processes
(tests/integration/batch_app.py): exact per-key state, at-least-once outputs, kill -9 and
restart with kept and with wiped local state, a failing batch read again, a rebalance
between two workers. Final outcomes are read from the changelog (what the table recovers
from) and the output topic with fresh readers once every input offset is committed."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import orjson
import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from connectors.admin import ensure_topics
from connectors.embedded_broker import EmbeddedBroker, embedded_broker

sys.path.insert(0, str(Path(__file__).parent))
from batch_app import AppConfig

pytestmark = pytest.mark.integration

APP = Path(__file__).with_name("batch_app.py")
PARTITIONS = 4
DEADLINE_S = 60.0


@pytest.fixture(scope="module")
def broker() -> Iterator[EmbeddedBroker]:
    with embedded_broker() as b:
        yield b


def wait_for(what: str, check: Callable[[], bool], timeout: float = DEADLINE_S) -> None:
    """Poll `check` until it holds; the broker and the worker offer nothing to await."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)


class TopicReader:
    """Reads a whole topic from the beginning, incrementally, with kafka-python."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.records: list[Any] = []
        self._consumer = KafkaConsumer(
            bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
        )
        self._tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        self._consumer.assign(self._tps)
        self._consumer.seek_to_beginning(*self._tps)

    def poll(self) -> list[Any]:
        for batch in self._consumer.poll(timeout_ms=100, max_records=50_000).values():
            self.records.extend(batch)
        return self.records

    def read_to_end(self) -> list[Any]:
        """Everything up to the high watermarks of the fetch responses (Tansu's ListOffsets
        end offsets can be wrong, its fetch high watermarks are right)."""
        consumer = self._consumer

        def at_end() -> bool:
            self.poll()
            return all(
                (hw := consumer.highwater(tp)) is not None and consumer.position(tp) >= hw
                for tp in self._tps
            )

        wait_for("reading to the end of the topic", at_end)
        return self.records

    def end_offsets(self) -> dict[int, int]:
        ends = self._consumer.end_offsets(self._tps)
        return {tp.partition: offset for tp, offset in ends.items()}

    def close(self) -> None:
        self._consumer.close()


@dataclass
class Scenario:
    broker: EmbeddedBroker
    cfg: AppConfig
    log_dir: Path
    expected: Counter[bytes] = field(default_factory=Counter)
    ids: set[int] = field(default_factory=set)
    input_ends: dict[tuple[str, int], int] = field(default_factory=dict)
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    readers: dict[str, TopicReader] = field(default_factory=dict)
    _group_client: KafkaConsumer | None = None

    def produce(self, n: int, keys: int) -> None:
        producer = KafkaProducer(bootstrap_servers=self.broker.bootstrap, linger_ms=5)
        try:
            futures = []
            for i in range(n):
                key = b"customer-%d" % (i % keys)
                topic = self.cfg.inputs[i % len(self.cfg.inputs)]
                futures.append(producer.send(topic, key=key, value=orjson.dumps({"id": i})))
                self.expected[key] += 1
                self.ids.add(i)
            producer.flush()
            for future in futures:
                meta = future.get(timeout=10)
                tp = (meta.topic, meta.partition)
                self.input_ends[tp] = max(self.input_ends.get(tp, 0), meta.offset + 1)
        finally:
            producer.close()

    def start_worker(self, **overrides: Any) -> subprocess.Popen[bytes]:
        cfg = replace(self.cfg, **overrides)
        log_path = self.log_dir / f"worker-{len(self.workers)}.log"
        with log_path.open("wb") as log_file:
            proc = subprocess.Popen(
                [sys.executable, str(APP), "worker"],
                env={**os.environ, **cfg.env()},
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.workers.append(proc)
        return proc

    def stop_worker(self, proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)

    def log(self, proc: subprocess.Popen[bytes]) -> str:
        return (self.log_dir / f"worker-{self.workers.index(proc)}.log").read_text(errors="replace")

    def logs(self) -> str:
        return "".join(p.read_text(errors="replace") for p in sorted(self.log_dir.glob("*.log")))

    def reader(self, topic: str) -> TopicReader:
        if topic not in self.readers:
            self.readers[topic] = TopicReader(self.broker.bootstrap, topic)
        return self.readers[topic]

    def counts(self, records: list[Any] | None = None) -> Counter[bytes]:
        """Count per key of the last changelog value: what the table recovers from."""
        if records is None:
            records = self.reader(self.cfg.changelog).poll()
        return Counter({r.key: orjson.loads(r.value)["count"] for r in records})

    def output_ids(self, records: list[Any] | None = None) -> list[int]:
        if records is None:
            records = self.reader(self.cfg.output).poll()
        return [orjson.loads(r.value)["id"] for r in records]

    def read_fresh(self, topic: str) -> list[Any]:
        # Tansu can hide a batch from a reader tailing a partition that two producers write
        # at once (it later appears in the log): the outcome is judged by a new reader of
        # the topic after all writes ended.
        reader = TopicReader(self.broker.bootstrap, topic)
        try:
            return reader.read_to_end()
        finally:
            reader.close()

    def committed(self) -> dict[tuple[str, int], int | None]:
        """The worker group's committed offsets (this client never joins the group)."""
        if self._group_client is None:
            self._group_client = KafkaConsumer(
                bootstrap_servers=self.broker.bootstrap,
                group_id=self.cfg.app_id,
                enable_auto_commit=False,
            )
        client = self._group_client
        return {tp: client.committed(TopicPartition(*tp)) for tp in self.input_ends}

    def wait_done(self) -> list[int]:
        """Wait until every input is committed (and so, before it, in the state and the
        outputs), check the final state and outputs; return the output ids."""
        wait_for(
            "all input offsets committed",
            lambda: all(self.committed().get(tp) == end for tp, end in self.input_ends.items()),
        )
        # The whole changelog: a late replay that counted twice would show up here.
        assert self.counts(self.read_fresh(self.cfg.changelog)) == self.expected
        ids = self.output_ids(self.read_fresh(self.cfg.output))
        assert set(ids) == self.ids, "every input has at least one output"
        return ids

    def close(self) -> None:
        for proc in self.workers:
            self.stop_worker(proc, signal.SIGKILL)
        for reader in self.readers.values():
            reader.close()
        if self._group_client is not None:
            self._group_client.close()


@pytest.fixture
def scenario(
    broker: EmbeddedBroker, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Scenario]:
    prefix = f"bp-{re.sub('[^A-Za-z0-9]+', '-', request.node.name)}-{os.getpid()}-"
    cfg = AppConfig(
        broker=broker.url,
        prefix=prefix,
        partitions=PARTITIONS,
        store_dir=tmp_path / "store",
        log_level="info",  # faust's recovery log is part of the evidence
    )
    # Faust creates no source topics and a first send would auto-create them with the
    # broker's default partition count: create all of them, changelog included, up front.
    ensure_topics(broker.bootstrap, [*cfg.inputs, cfg.output, cfg.changelog], PARTITIONS)
    logs = tmp_path / "logs"
    logs.mkdir()
    s = Scenario(broker=broker, cfg=cfg, log_dir=logs)
    try:
        yield s
    finally:
        s.close()


@pytest.mark.parametrize("store", ["rocksdb://", "memory://"])
def test_exact_state_and_one_output_per_input(scenario: Scenario, store: str) -> None:
    scenario.produce(5_000, keys=1_000)
    worker = scenario.start_worker(store=store)
    ids = scenario.wait_done()
    assert len(ids) == 5_000, "no failure and no restart: exactly one output per input"
    # The Tansu workaround: every changelog partition's last write was a single-record
    # batch, so ListOffsets(latest) reports the true end (faust's recovery highwater).
    changelog = scenario.reader(scenario.cfg.changelog)
    written = Counter(r.partition for r in changelog.read_to_end())
    assert changelog.end_offsets() == {p: written[p] for p in range(PARTITIONS)}
    scenario.stop_worker(worker)
    assert worker.returncode == 0
    assert "batch_handler_failed" not in scenario.logs()


@pytest.mark.parametrize("wipe_store", [False, True], ids=["kept-store", "wiped-store"])
def test_kill9_mid_run_then_restart(scenario: Scenario, wipe_store: bool) -> None:
    scenario.produce(5_000, keys=500)
    # Slow batches so that the kill lands mid-run.
    first = scenario.start_worker(delay_ms=40, max_poll_records=100)
    wait_for("some progress", lambda: len(scenario.output_ids()) >= 1_500)
    scenario.stop_worker(first, signal.SIGKILL)
    assert len(set(scenario.output_ids())) < 5_000, "the kill came too late to matter"
    if wipe_store:
        shutil.rmtree(scenario.cfg.store_dir)
    scenario.start_worker()
    scenario.wait_done()  # exact state: no lost and no double update; every input has output
    logs = scenario.logs()
    assert "ConsistencyError" not in logs
    if wipe_store:
        assert "Restoring state from changelog topics" in logs


def test_failed_batch_is_read_again(scenario: Scenario) -> None:
    scenario.produce(5_000, keys=1_000)
    scenario.start_worker(fail_batch=2, max_poll_records=500)
    ids = scenario.wait_done()
    # The injected failure raised before any write: the retried batch adds no duplicates.
    assert len(ids) == 5_000
    assert scenario.logs().count("batch_handler_failed") == 1


def test_rebalance_between_two_workers(scenario: Scenario) -> None:
    scenario.produce(5_000, keys=500)
    slow = {"delay_ms": 100, "max_poll_records": 100}
    first = scenario.start_worker(**slow)
    wait_for("progress of the first worker", lambda: len(scenario.output_ids()) >= 500)
    second = scenario.start_worker(store_dir=scenario.cfg.store_dir.with_name("b"), **slow)
    wait_for("the second worker in the group", lambda: "Worker ready" in scenario.log(second))
    joined_at = len(set(scenario.output_ids()))
    assert joined_at < 5_000, "the join came too late to matter"
    wait_for("progress of both", lambda: len(scenario.output_ids()) >= joined_at + 500)
    # Graceful stop: the revocation waits for the batch in flight, then commits; the
    # second worker takes every partition over and recovers the first one's state.
    scenario.stop_worker(first)
    assert first.returncode == 0
    scenario.wait_done()
    assert "ConsistencyError" not in scenario.logs()
