"""The chaos harness at a small size: workers SIGKILLed (once with a store wipe) while they
consume a workload on the combined and the per-type topics; afterwards every action and each
customer's last score equal the reference (benchmarks/chaos.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.chaos import ChaosConfig, run_chaos
from connectors.embedded_broker import EmbeddedBroker

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _run(broker: EmbeddedBroker, tmp: Path, workers: int) -> None:
    # kill_every 0.3 s: the first kill comes 0.2-0.4 s after the workers are ready, while
    # the 20,000 records are being consumed (at 3 s the kills came once they were all
    # committed, at 1 s often too), the next once the group has committed more. A 3 s
    # session (5 heartbeats) instead of the benchmark's 6 s: each restarted worker's join
    # waits for the killed one's session to expire on the embedded broker.
    config = ChaosConfig(events=20_000, partitions=4, workers=workers, kill_every=0.3,
                         kills=2, wipe_every=2, seed=7, timeout_s=120.0, session_timeout_s=3.0)
    report = run_chaos(config, broker=broker, tmp=tmp, say=print)
    summary = "\n".join(report.lines())
    print(summary)  # where the kills landed (records committed at each), also when it passes
    assert report.ok, summary
    # Kills go on while there is input left: at least two, every second one with a wipe.
    assert len(report.kills) >= 2, summary
    assert [k.wiped for k in report.kills][:2] == [False, True], summary
    assert {p.name for p in report.paths} == {"combined", "per-type"}, summary
    assert all(p.actions.expected > 0 and p.scores.customers > 0 for p in report.paths), summary


@pytest.mark.timeout(170)
def test_one_worker_killed_twice_once_with_its_store_wiped(
    shared_broker: EmbeddedBroker, tmp_path: Path
) -> None:
    _run(shared_broker, tmp_path, workers=1)


@pytest.mark.timeout(170)
def test_two_workers_killed_in_turn_once_with_a_store_wiped(
    shared_broker: EmbeddedBroker, tmp_path: Path
) -> None:
    _run(shared_broker, tmp_path, workers=2)
