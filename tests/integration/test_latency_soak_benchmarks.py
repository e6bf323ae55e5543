"""The latency and soak benchmarks at a tiny size (benchmarks/latency.py, benchmarks/soak.py):
a few seconds of a small rate into one real worker each; the reports carry matched
latencies, timer fire delays, RSS samples and the state's sizes (~50 s both)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.latency import LatencyConfig, parse_config, run_latency, write_json
from benchmarks.soak import SoakConfig, run_soak
from benchmarks.soak import parse_config as parse_soak_config
from connectors.embedded_broker import EmbeddedBroker

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_the_rate_is_given_or_a_load_of_the_capacity() -> None:
    assert parse_config(["--rate", "1000"])[0].rate == 1000
    config, out = parse_config(["--load", "0.3", "--capacity", "2000", "--json", "x.json"])
    assert (config.rate, config.load, config.capacity, out) == (600, 0.3, 2000, Path("x.json"))
    assert parse_config([])[0].rate == 5000  # load 0.5 of 10,000/s
    soak, _ = parse_soak_config(["--minutes", "0.5"])
    assert (soak.customers, soak.rate, soak.minutes) == (1_000_000, 2000, 0.5)


@pytest.mark.timeout(90)
def test_latency_matches_actions_to_their_events_and_times_the_timers(
    shared_broker: EmbeddedBroker, tmp_path: Path
) -> None:
    config = LatencyConfig(rate=150, seconds=4, customers=150, partitions=2, timers=4)
    report = run_latency(config, broker=shared_broker, tmp=tmp_path, say=print)
    summary = "\n".join(report.lines())
    print(summary)
    assert report.ok, summary
    assert report.produced == 600
    assert report.input_records == 600 + 4  # the workload and the timer seeds
    assert report.unmatched == 0
    assert report.latency_ms.count > 20, summary  # acks, surveys, win-backs ...
    assert report.matched_events <= report.latency_ms.count
    assert report.latency_ms.p50 is not None
    assert 0 <= report.latency_ms.p50 < 5_000
    assert report.seed_actions >= 4  # each seeded ticket's acknowledgement, left out
    # Every seeded SLA fell due during the run and fired within a few ticks of its moment.
    assert report.timers_by_rule.get("ticket_sla_breach") is not None, summary
    assert report.timer_delay_ms.count == 4, summary
    assert report.timer_delay_ms.max is not None
    assert report.timer_delay_ms.max < 5_000
    assert report.drain_s is not None
    assert report.committed_final == report.input_records
    document = report.to_json(["--rate", "150"])
    write_json(tmp_path / "latency.json", document)
    back = json.loads((tmp_path / "latency.json").read_text())
    assert back["command"] == "python -m benchmarks.latency --rate 150"
    assert back["date"]
    assert "git_commit" in back
    assert back["matched_action_records"] == report.latency_ms.count


@pytest.mark.timeout(90)
def test_soak_samples_the_workers_memory_and_sizes_its_state(
    shared_broker: EmbeddedBroker, tmp_path: Path
) -> None:
    # 6 s at 200/s with a sample a second: the 1,200 events and the samples of 12 s at
    # 100/s with one every 2 s, in half the time.
    config = SoakConfig(customers=500, minutes=0.1, rate=200, partitions=2,
                        sample_every_s=1.0, distribution="zipf")
    report = run_soak(config, broker=shared_broker, tmp=tmp_path, say=print)
    summary = "\n".join(report.lines())
    print(summary)
    assert report.ok, summary
    assert report.produced == 1_200
    assert len(report.samples) >= 6, summary  # t = 0, every 1 s of 6, and the last
    assert all(s.rss_mb > 20 for s in report.samples), summary
    assert report.slope is not None
    assert report.worker_exit == 0, summary
    store = report.store
    assert store.partitions == 2
    # Every customer touched has exactly one state; index and census keys are not counted.
    assert store.customers == report.customers_touched > 50, summary
    assert store.value_bytes.p50 is not None
    assert 100 < store.value_bytes.p50 < 10_000
    assert store.value_bytes.p99 is not None
    assert store.value_bytes.p99 >= store.value_bytes.p50
    assert "due" in store.other_keys
    assert store.dir_bytes > 0
    document = report.to_json(["--minutes", "0.1"])
    assert document["store"]["customers"] == store.customers
    assert len(document["samples"]) == len(report.samples)
