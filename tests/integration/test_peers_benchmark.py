"""The peers benchmark at a tiny size (benchmarks/peers.py): churnguard's worker, a Quix
Streams app, a bare faust agent and a raw aiokafka consumer each consume every produced
event and commit it, and the JSON report has its fields."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from benchmarks.peers import PEERS, main
from connectors.embedded_broker import EmbeddedBroker

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EVENTS = 2_000
RESULT_FIELDS = {
    "name", "ok", "events", "wall_s", "events_per_s", "cpu_s_per_1m", "peak_rss_mib", "ratio",
    "committed", "committed_s", "cpu_window_s", "cores_used", "cpu_total_s", "loadavg_1m",
    "group", "window_start", "state_topics", "error",
}


@pytest.mark.timeout(110)
def test_every_peer_consumes_and_commits_every_event(
    shared_broker: EmbeddedBroker, tmp_path: Path
) -> None:
    out = tmp_path / "peers.json"
    code = main(["--events", str(EVENTS), "--customers", "200", "--partitions", "2",
                 "--timeout", "60", "--broker", shared_broker.url, "--json", str(out),
                 "--keep", str(tmp_path / "run")])
    report = orjson.loads(out.read_bytes())
    summary = orjson.dumps(report["results"], option=orjson.OPT_INDENT_2).decode()
    assert code == 0, summary
    assert {"date", "git_commit", "command", "config", "cpus", "produced", "topic", "ok",
            "definitions", "settings", "results"} <= report.keys()
    assert report["ok"] is True
    assert report["produced"] == EVENTS
    assert report["config"]["partitions"] == 2
    assert "--events 2000" in report["command"]
    results = {r["name"]: r for r in report["results"]}
    assert list(results) == list(PEERS)
    for name, r in results.items():
        assert set(r) == RESULT_FIELDS, name
        assert r["ok"], summary
        assert r["error"] is None, summary
        assert r["events"] == EVENTS, summary
        assert r["committed"] == EVENTS, summary
        assert r["wall_s"] > 0, summary
        assert r["events_per_s"] > 0, summary
        assert r["cpu_s_per_1m"] is not None, summary
        assert r["peak_rss_mib"] > 0, summary
        assert r["ratio"] > 0, summary
    assert results["churnguard"]["ratio"] == 1.0
    # The stateful peers wrote their changelogs.
    assert any("changelog" in t for t in results["quix"]["state_topics"]), summary
    assert any("changelog" in t for t in results["faust"]["state_topics"]), summary
    assert any("changelog" in t for t in results["churnguard"]["state_topics"]), summary


def test_a_peer_library_imported_in_this_process_counts_as_installed() -> None:
    """faust replaces its module with a lazy one whose __spec__ is None: find_spec then
    raises instead of answering (the suite imports faust before this benchmark runs)."""
    import faust  # noqa: F401

    from benchmarks.peers import _installed

    assert _installed("faust")
    assert not _installed("no_such_peer_library")
