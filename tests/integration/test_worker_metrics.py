"""The worker's /metrics, /health and /ready against a real worker on the embedded broker:
the series exist and move with the events, and lag is exact per partition (high-water marks
from fetch responses: the embedded broker's ListOffsets answer is wrong for multi-record
batches)."""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from churnguard.core.clock import rfc3339
from tests.integration.pipeline_support import http_get, wait_for

pytestmark = pytest.mark.integration


def _port(pipeline: Any) -> int:
    return int(pipeline.http_port())


_get = http_get


def _samples(port: int) -> dict[str, list[tuple[dict[str, str], float]]]:
    status, body = _get(port, "/metrics")
    assert status == 200
    found: dict[str, list[tuple[dict[str, str], float]]] = defaultdict(list)
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            found[sample.name].append((sample.labels, sample.value))
    return found


def test_metrics_health_and_ready_of_a_running_worker(pipeline_factory: Any) -> None:
    now = time.time()
    pipeline = pipeline_factory(now)
    pipeline.start()
    port = _port(pipeline)
    assert _get(port, "/health")[0] == 200
    wait_for("ready", lambda: _get(port, "/ready")[0] == 200)
    ready = orjson.loads(_get(port, "/ready")[1])
    assert ready == {"ready": True, "partitions": 4 * 6, "recovering": False,
                     "consuming": True, "broker_reachable": True}

    # Records in multi-record batches (linger): where ListOffsets would be wrong.
    events = pipeline.topics.events
    ends: dict[int, int] = {}
    futures = []
    for n in range(200):
        value = {"type": "ticket", "event_id": f"t{n}", "customer_id": f"c{n % 13}",
                 "occurred_at": rfc3339(now + n), "ticket_id": f"T{n}", "status": "opened"}
        futures.append(pipeline.producer.send(events, key=value["customer_id"].encode(),
                                              value=orjson.dumps(value)))
    pipeline.flush()
    for future in futures:
        meta = future.get(timeout=10)
        ends[meta.partition] = max(ends.get(meta.partition, 0), meta.offset + 1)

    def lag_of(name: str) -> dict[int, float]:
        return {int(labels["partition"]): value for labels, value in _samples(port)[name]
                if labels["topic"] == events}

    wait_for("every record committed", lambda: lag_of("churnguard_consumer_committed_offset")
             == {p: float(e) for p, e in ends.items()} | {
                 p: 0.0 for p in range(4) if p not in ends})
    assert lag_of("churnguard_partition_high_watermark") == {
        p: float(ends.get(p, 0)) for p in range(4)}
    assert set(lag_of("churnguard_consumer_lag_records").values()) == {0.0}
    assert set(lag_of("churnguard_consumer_lag_seconds").values()) == {0.0}

    status, body = _get(port, "/status")
    report = orjson.loads(body)
    assert status == 200
    assert report["status"] == "OK"
    assert len(report["partitions"]) == 24  # six input topics of 4 partitions
    assert {(r["status"], r["lag"]) for r in report["partitions"]} == {("OK", 0)}

    samples = _samples(port)
    # Every one of the 13 customers has open tickets: one pending timer (the SLA) each.
    assert sum(value for _, value in samples["churnguard_timers_pending"]) == 13.0
    assert sum(value for _, value in samples["churnguard_state_store_bytes"]) > 0
    assert sum(value for _, value in samples["churnguard_customers"]) == 13.0
    assert samples["churnguard_ready"] == [({}, 1.0)]
    current = {(labels["topic"], labels["partition"]) for labels, value
               in samples["churnguard_partition_status"] if labels["status"] == "OK" and value}
    assert len(current) == 24
    consumed = {labels["event_type"]: value for labels, value
                in samples["churnguard_events_consumed_total"] if labels["topic"] == events}
    assert consumed == {"ticket": 200.0}
    acks = {labels["rule_id"]: value for labels, value
            in samples["churnguard_actions_emitted_total"]}
    assert acks["ticket_opened_ack"] == 200.0
    [(_, count)] = [(labels, value) for labels, value
                    in samples["churnguard_event_to_action_latency_seconds_count"]
                    if labels["rule_id"] == "ticket_opened_ack"]
    assert count == 200.0
    [(_, batches)] = samples["churnguard_batch_size_count"]
    assert batches >= 1
    assert samples["churnguard_rebalances_total"][0][1] >= 1
    [(build, _)] = samples["churnguard_build_info"]
    assert build["contract_version"] == "1"
    assert samples["churnguard_ruleset_info"][0][0] == {"version": "0"}
    # No customer id anywhere in the labels.
    assert not any("c1" in value for series in samples.values()
                   for labels, _ in series for value in labels.values())


def test_lag_rises_while_the_worker_is_paused_and_returns_to_zero(pipeline_factory: Any) -> None:
    """SIGSTOP the worker while events keep coming: the broker's side (`churnguard lag`)
    sees exactly the records produced meanwhile; after SIGCONT the worker's own /metrics
    and /status see the lag drain back to 0 and OK."""
    import os
    import signal

    from connectors.lag import UnknownGroupError, read_lag

    now = time.time()
    pipeline = pipeline_factory(now)
    pipeline.start()
    port = _port(pipeline)
    wait_for("ready", lambda: _get(port, "/ready")[0] == 200)
    events = pipeline.topics.events
    group = pipeline.settings.app_id
    inputs = list(pipeline.topics.inputs())

    def send(first: int, count: int) -> None:
        for n in range(first, first + count):
            pipeline.send(events, {"type": "login", "event_id": f"l{n}",
                                   "customer_id": f"c{n % 11}", "occurred_at": rfc3339(now)})
        pipeline.flush()

    def broker_lag() -> int:
        try:
            snapshot = read_lag(pipeline.settings.bootstrap, groups=[group],
                                topics_of_group=lambda _: inputs)
        except UnknownGroupError:
            return -1  # the embedded broker lists a group only after its first commit
        return sum(row.lag for row in snapshot.rows(group, events))

    send(0, 50)
    wait_for("caught up (broker side)", lambda: broker_lag() == 0)
    assert pipeline.worker is not None
    os.killpg(pipeline.worker.pid, signal.SIGSTOP)
    try:
        send(50, 70)
        wait_for("the paused worker's lag", lambda: broker_lag() == 70, timeout=30)
    finally:
        os.killpg(pipeline.worker.pid, signal.SIGCONT)

    def worker_lag() -> float:
        return sum(value for labels, value in _samples(port)["churnguard_consumer_lag_records"]
                   if labels["topic"] == events)

    wait_for("lag back to 0 on /metrics", lambda: worker_lag() == 0.0)
    wait_for("/status OK", lambda: orjson.loads(_get(port, "/status")[1])["status"] == "OK")
    # The broker's answer follows within about a commit interval.
    wait_for("lag back to 0 on the broker", lambda: broker_lag() == 0)


def test_customers_by_band_is_the_states_count_through_ticks_and_a_restore(
        pipeline_factory: Any) -> None:
    """churnguard_customers_by_band against the stored scores (each customer's last record
    on the scores topic): after events, after the scores decay by timer ticks alone, and
    after a restart on an empty store (restored from the changelog, census included: no
    scan)."""
    import shutil
    from collections import Counter

    from churnguard.core.clock import DAY
    from churnguard.core.scoring import band_of

    now = time.time()
    pipeline = pipeline_factory(now)
    pipeline.start()
    port = _port(pipeline)
    wait_for("ready", lambda: _get(port, "/ready")[0] == 200)
    events = pipeline.topics.events
    at = rfc3339(now)
    kinds = {"g": 7, "a": 0, "p": None}  # logins after a purchase (None: one login only)
    for kind, logins in kinds.items():
        for n in range(4):
            customer = f"{kind}{n}"
            if logins is None:
                pipeline.send(events, {"type": "login", "event_id": f"{customer}-l",
                                       "customer_id": customer, "occurred_at": at})
                continue
            pipeline.send(events, {"type": "purchase", "event_id": f"{customer}-p",
                                   "customer_id": customer, "occurred_at": at,
                                   "order_id": f"o-{customer}", "amount": "50",
                                   "currency": "EUR"})
            for m in range(logins):
                pipeline.send(events, {"type": "login", "event_id": f"{customer}-l{m}",
                                       "customer_id": customer, "occurred_at": at})
    pipeline.flush()

    def by_band() -> dict[str, float]:
        return {labels["band"]: value
                for labels, value in _samples(port).get("churnguard_customers_by_band", [])}

    def stored() -> dict[str, float]:
        last = {r["customer_id"]: r["score"] for r in pipeline.of(pipeline.topics.scores)}
        found = Counter(band_of(score) for score in last.values())
        return {band: float(found[band]) for band in ("good", "average", "poor")} if len(
            last) == 12 else {}

    wait_for("the bands of the 12 states", lambda: by_band() == stored() != {})
    assert by_band() == {"good": 4.0, "average": 4.0, "poor": 4.0}

    # Time alone: the average ones' scores fall below 60 (timers due at the crossing).
    pipeline.set_clock(now + 22 * DAY)
    wait_for("the decayed bands", lambda: by_band() == stored() != {}
             and by_band()["average"] == 0.0)
    decayed = by_band()
    assert decayed["poor"] >= 8.0
    assert sum(decayed.values()) == 12.0

    # A restart on an empty store: the census comes back with the changelog, exact.
    pipeline.stop()
    shutil.rmtree(pipeline.settings.store_dir)
    before = len(pipeline.log())
    pipeline.start()
    port = _port_after(pipeline, before)
    wait_for("the restored bands", lambda: by_band() == decayed)
    assert '"census_counted"' not in pipeline.log()[before:]  # read, not scanned
    samples = _samples(port)
    assert samples["churnguard_census_partitions_pending"] == [({}, 0.0)]
    assert sum(value for _, value in samples["churnguard_customers"]) == 12.0
    # The KPI aggregates are read back from the restored store too.
    wait_for("the KPI aggregates read", lambda: _samples(port)[
        "churnguard_insights_partitions_pending"] == [({}, 0.0)])


def _port_after(pipeline: Any, offset: int) -> int:
    """The port the worker started after byte `offset` of its log listens on."""
    for line in pipeline.log()[offset:].splitlines():
        if '"http_listening"' in line:
            return int(orjson.loads(line)["port"])
    raise AssertionError("the restarted worker logged no http_listening")
