"""`churnguard lag` on the embedded broker: exact lag per partition, in records and in
seconds, with input records in multi-record batches (where the embedded broker's
ListOffsets answer is short of the end), read from the broker while the worker runs, after
it stopped (nothing to ask but the broker) and when it caught up again; --group and an
unknown group (issue: lag exact)."""

from __future__ import annotations

import argparse
import logging
import time
from collections import Counter
from typing import Any

import orjson
import pytest
from kafka import KafkaConsumer, KafkaProducer
from kafka.structs import OffsetAndMetadata, TopicPartition

from churnguard import lag_view
from churnguard.core.clock import rfc3339
from connectors.lag import NO_COMMIT, LagSnapshot, UnknownGroupError, read_lag
from tests.integration.pipeline_support import Pipeline, wait_for

pytestmark = pytest.mark.integration

FIRST, LATER = 240, 90  # records before the worker's first run, and while it is down


def produce(pipeline: Pipeline, count: int, start: int, *, stamp_ms: int | None = None
            ) -> tuple[Counter[TopicPartition], dict[TopicPartition, int]]:
    """`count` login events, alternately on the logins and the combined topic, keyed by 12
    customers (so on every partition), in batches of many records (linger). Returns the
    records per partition and each partition's first record timestamp."""
    topics = pipeline.topics
    producer = KafkaProducer(bootstrap_servers=pipeline.settings.bootstrap, linger_ms=200,
                             batch_size=1024 * 1024)
    futures = []
    try:
        for n in range(start, start + count):
            customer = f"c{n % 12:02d}"
            event: dict[str, Any] = {"event_id": f"e{n}", "customer_id": customer,
                                     "occurred_at": rfc3339(time.time()), "channel": "app"}
            topic = topics.logins if n % 2 else topics.events
            if topic == topics.events:
                event["type"] = "login"
            futures.append(producer.send(topic, key=customer.encode(),
                                         value=orjson.dumps(event), timestamp_ms=stamp_ms))
        producer.flush(timeout=30)
        metas = [future.get(timeout=10) for future in futures]
    finally:
        producer.close(timeout=10)
    counts: Counter[TopicPartition] = Counter()
    first: dict[TopicPartition, int] = {}
    for meta in metas:
        tp = TopicPartition(meta.topic, meta.partition)
        counts[tp] += 1
        first.setdefault(tp, meta.timestamp)
    return counts, first


def by_tp(snapshot: LagSnapshot, group: str) -> dict[TopicPartition, Any]:
    return {TopicPartition(r.topic, r.partition): r for r in snapshot.rows(group)}


def ends_reported(pipeline: Pipeline, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
    """ListOffsets(latest): what a naive lag reader would take as the end."""
    consumer = KafkaConsumer(bootstrap_servers=pipeline.settings.bootstrap, group_id=None)
    try:
        return {tp: int(end) for tp, end in consumer.end_offsets(tps).items()}
    finally:
        consumer.close()


def commit_offset(pipeline: Pipeline, group: str, tp: TopicPartition, offset: int) -> None:
    """Another group with a committed offset on an input topic (as a second deployment)."""
    consumer = KafkaConsumer(bootstrap_servers=pipeline.settings.bootstrap, group_id=group,
                             enable_auto_commit=False)
    try:
        consumer.assign([tp])
        consumer.commit({tp: OffsetAndMetadata(offset, "", -1)})
    finally:
        consumer.close()


@pytest.mark.timeout(120)
def test_lag_is_exact_while_the_worker_runs_is_down_and_catches_up(
    pipeline_factory: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    started = time.monotonic()
    pipeline: Pipeline = pipeline_factory()
    group = pipeline.settings.app_id
    inputs = list(pipeline.topics.inputs())
    bootstrap = pipeline.settings.bootstrap

    def lag(**kwargs: Any) -> LagSnapshot:
        return read_lag(bootstrap, topics_of_group=lambda _group: inputs, **kwargs)

    def caught_up() -> bool:
        try:
            rows = lag(groups=[group]).partitions
        except UnknownGroupError:  # no commit yet
            return False
        return bool(rows) and all(r.lag == 0 and r.exact for r in rows)

    # Before any worker: the group is unknown to the broker.
    first, _ = produce(pipeline, FIRST, 0)
    with pytest.raises(UnknownGroupError, match=f"no consumer group {group} on the broker"):
        lag(groups=[group])

    pipeline.start()
    wait_for("the worker to commit every record", caught_up, timeout=40)
    running = lag(groups=[group])
    assert len(running.partitions) == len(inputs) * pipeline.settings.partitions
    for tp, row in by_tp(running, group).items():
        assert (row.high_water, row.lag, row.lag_seconds) == (first.get(tp, 0), 0, 0.0)
        assert row.committed == first.get(tp)
        assert row.note == ("" if tp in first else NO_COMMIT)  # empty partitions: no commit

    # The worker is down; only the broker answers from now on.
    pipeline.stop()
    stamp_ms = int((time.time() - 30) * 1000)  # the new records look 30 s old
    later, stamps = produce(pipeline, LATER, FIRST, stamp_ms=stamp_ms)
    assert stamps == dict.fromkeys(later, stamp_ms)
    now = time.time()
    down = lag(now=now)
    assert down.groups == (group,)  # by default: every group with commits on the inputs
    rows = by_tp(down, group)
    assert down.lag == LATER
    for tp, row in rows.items():
        assert row.exact
        assert row.lag == later[tp], tp
        assert row.high_water == first[tp] + later[tp]
        if later[tp]:
            assert row.lag_seconds == pytest.approx(now - stamp_ms / 1000, abs=1e-3)
            assert row.lag_seconds > 29
        else:
            assert row.lag_seconds == 0.0
    totals = {t.topic: t for t in down.topic_totals()}
    assert {topic: t.lag for topic, t in totals.items()} == {
        topic: sum(n for tp, n in later.items() if tp.topic == topic) for topic in inputs}
    (total,) = down.group_totals()
    assert (total.lag, total.max_lag_seconds) == (LATER, max(
        r.lag_seconds for r in rows.values()))
    # Exactly where ListOffsets falls short (a batch of several records last).
    reported = ends_reported(pipeline, list(rows))
    assert any(reported[tp] < row.high_water for tp, row in rows.items())
    assert all(reported[tp] <= row.high_water for tp, row in rows.items())
    assert down.read_s < 2.0

    # The command's own path prints the same figures as text to a pipe (the CLI's stdout
    # under pytest is not a terminal).
    for name, topic in pipeline.topics.model_dump().items():
        monkeypatch.setenv(f"CHURNGUARD_TOPICS__{name.upper()}", topic)
    capsys.readouterr()
    kafka_logger = logging.getLogger("kafka")
    level = kafka_logger.level
    try:
        code = lag_view.run_lag_command(argparse.Namespace(
            broker=pipeline.settings.broker, group=[group], watch=None))
    finally:
        kafka_logger.setLevel(level)  # the command quiets kafka-python's connection logs
    out = capsys.readouterr().out
    assert code == 0
    assert f"total lag {LATER}," in out.splitlines()[0]
    assert any(line.split()[:5] == [group, "*", str(len(rows)),
                                    str(sum(1 for n in later.values() if n)), str(LATER)]
               for line in out.splitlines())

    # --group, another deployment's group, an unknown group.
    other = f"{group}-shadow"
    some = next(tp for tp in first if tp.topic == pipeline.topics.events)
    commit_offset(pipeline, other, some, 1)
    both = lag()
    assert both.groups == tuple(sorted([group, other]))
    assert by_tp(both, other)[some].lag == first[some] + later[some] - 1
    assert [r.note for r in both.rows(other)].count(NO_COMMIT) == len(rows) - 1
    assert lag(groups=[group]).groups == (group,)
    only_other = lag(groups=[other])
    assert only_other.groups == (other,)
    assert only_other.lag == sum(r.lag for r in both.rows(other))
    with pytest.raises(UnknownGroupError) as unknown:
        lag(groups=[group, "no-such-group"])
    assert str(unknown.value) == (
        f"no consumer group no-such-group on the broker at {bootstrap} (groups with committed "
        f"offsets on the input topics: {', '.join(sorted([group, other]))}); check --group")

    # The worker comes back and consumes what it missed.
    pipeline.start()
    wait_for("the lag to return to 0", caught_up, timeout=40)
    back = by_tp(lag(groups=[group]), group)
    assert {tp: r.committed for tp, r in back.items() if r.committed is not None} == {
        tp: first[tp] + later[tp] for tp in first}
    assert time.monotonic() - started < 60
