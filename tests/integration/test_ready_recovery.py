"""/ready while a worker restores its state table from the changelog: a worker whose local
RocksDB store is lost (a new volume, a wiped disk) rebuilds it from the table's changelog
before it consumes, and says so — 503 with `"recovering": true` while the records are read,
`churnguard_table_recovery_remaining_records` counting down — then 200, with every customer
back in the store."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from churnguard.core.clock import rfc3339
from churnguard.processes import start_worker
from tests.integration.pipeline_support import DEADLINE_S, Pipeline, http_get, wait_for

pytestmark = pytest.mark.integration

# ~2 changelog records each (the state and its due-index entry): ~20,000 records, which
# faust restores in ~2 s on 2 cores — many /ready answers at one every ~25 ms.
CUSTOMERS = 10_000
POLL_S = 0.02  # between two probes of the restarting worker: it has no event to await
# On the embedded broker the restarted worker's join waits for the stopped one's session to
# expire (~12 s to its assignment with the pipelines' 6 s, ~4 s with 3 s).
SESSION_TIMEOUT_S = 3.0


def _samples(port: int, name: str) -> list[tuple[dict[str, str], float]]:
    status, body = http_get(port, "/metrics")
    assert status == 200, (status, body[:200])
    return [(sample.labels, sample.value)
            for family in text_string_to_metric_families(body.decode())
            for sample in family.samples if sample.name == name]


def _customers(port: int) -> float:
    """Customers in the worker's store, counted from RocksDB when it takes a partition."""
    return sum(value for _, value in _samples(port, "churnguard_customers"))


def _remaining(port: int) -> float:
    return sum(value for _, value in
               _samples(port, "churnguard_table_recovery_remaining_records"))


def _port_logged(log_path: Path, worker: subprocess.Popen[bytes]) -> int:
    """The port a worker logged as `http_listening` in its own log (it takes a free one)."""
    found: list[int] = []

    def logged() -> bool:
        assert worker.poll() is None, f"the worker exited ({worker.returncode}); {log_path}"
        text = log_path.read_text(errors="replace") if log_path.exists() else ""
        found.extend(int(orjson.loads(line)["port"]) for line in text.splitlines()
                     if '"http_listening"' in line)
        return bool(found)

    wait_for(f"the restarted worker's http_listening in {log_path}", logged, timeout=30)
    return found[0]


def test_ready_is_503_while_the_table_is_restored_then_200(pipeline_factory: Any) -> None:
    now = time.time()
    pipeline: Pipeline = pipeline_factory(now)
    pipeline.settings = pipeline.settings.model_copy(update={
        "session_timeout_s": SESSION_TIMEOUT_S, "rebalance_timeout_s": SESSION_TIMEOUT_S})
    settings = pipeline.settings

    # A worker builds the table: one login for each of CUSTOMERS customers.
    pipeline.start()
    port = pipeline.http_port()
    for n in range(CUSTOMERS):
        pipeline.send(pipeline.topics.events, {
            "type": "login", "event_id": f"l{n}", "customer_id": f"c{n}",
            "occurred_at": rfc3339(now), "channel": "web"})
    pipeline.flush()
    # Counted once a batch's states are written, changelog first: all in the changelog then.
    wait_for(f"{CUSTOMERS} customers in the first worker's table",
             lambda: _customers(port) == CUSTOMERS)

    # Its store is lost: the next start has only the changelog to restore the table from.
    pipeline.stop()
    shutil.rmtree(settings.store_dir)
    log_path = pipeline.tmp / "restarted.log"
    pipeline.worker = worker = start_worker(settings, log_path)  # pipeline.close() stops it
    port = _port_logged(log_path, worker)

    # Every answer of /ready (and the records left to restore) until it says ready.
    answers: list[tuple[int, dict[str, Any], float]] = []
    deadline = time.monotonic() + DEADLINE_S
    while not answers or answers[-1][0] != 200:
        assert worker.poll() is None, f"the restarted worker exited; its log: {log_path}"
        assert time.monotonic() < deadline, (
            f"/ready not 200 within {DEADLINE_S}s of the restart; last answer "
            f"{answers[-1][:2] if answers else None}; its log: {log_path}")
        status, body = http_get(port, "/ready")
        time.sleep(POLL_S)
        assert status in (200, 503), (status, body[:300], str(log_path))
        answers.append((status, orjson.loads(body), _remaining(port)))

    restoring = [(body, left) for status, body, left in answers
                 if status == 503 and body["recovering"] and body["partitions"] > 0]
    assert restoring, (
        f"no 503 'recovering' answer while partitions were assigned among {len(answers)} "
        f"answers: {sorted({orjson.dumps(b).decode() for _, b, _ in answers})}")
    assert all(not body["ready"] for body, _ in restoring)
    assert max(left for _, left in restoring) > 0, "recovery_remaining_records never showed"
    # Not ready before the last answer; ready with nothing left to restore.
    assert [status for status, _, _ in answers[:-1]] == [503] * (len(answers) - 1)
    status, body, left = answers[-1]
    assert (status, left) == (200, 0)
    assert body == {"ready": True, "partitions": 4 * len(pipeline.topics.inputs()),
                    "recovering": False, "consuming": True, "broker_reachable": True}
    # The table is back from the changelog: every customer, counted in the new store.
    wait_for(f"{CUSTOMERS} customers restored", lambda: _customers(port) == CUSTOMERS)
