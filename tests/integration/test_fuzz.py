"""The fuzz harness at a small size: 5,000 records, half of them hostile, on every input
topic, into one worker (benchmarks/fuzz.py). One run; each group of checks is a test."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from benchmarks.fuzz import FuzzConfig, FuzzReport, run_fuzz
from connectors.embedded_broker import EmbeddedBroker

pytestmark = pytest.mark.integration

TIMEOUT_S = 170  # the first test also runs the fuzz itself (~40 s)


@pytest.fixture(scope="module")
def report(
    shared_broker: EmbeddedBroker, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FuzzReport]:
    with pytest.MonkeyPatch.context() as env:
        # As tests/conftest.py does per test: no CHURNGUARD_* of the caller's.
        for name in list(os.environ):
            if name.upper().startswith("CHURNGUARD_"):
                env.delenv(name)
        yield run_fuzz(FuzzConfig(records=5_000, seed=3, deadline_s=100.0),
                       broker=shared_broker, tmp=tmp_path_factory.mktemp("fuzz"), say=print)


def _assert_checks(report: FuzzReport, *names: str) -> None:
    checks = {c.name.split(" (")[0]: c for c in report.checks}
    missing = [n for n in names if n not in checks]
    failed = [checks[n] for n in names if n in checks and not checks[n].ok]
    assert not missing, f"checks not run: {missing}\n" + "\n".join(report.lines())
    assert not failed, "\n".join(report.lines())


@pytest.mark.timeout(TIMEOUT_S)
def test_the_worker_survives_without_stalling(report: FuzzReport) -> None:
    _assert_checks(report, "no crash: the worker is alive",
                   "no stall: every input offset committed before the deadline")


@pytest.mark.timeout(TIMEOUT_S)
def test_exactly_the_hostile_records_are_dead_lettered(report: FuzzReport) -> None:
    _assert_checks(
        report,
        "every DLQ record has a reason, a known kind and its source topic/partition/offset",
        "every hostile record is dead-lettered",
        "each dead letter has the kind the contract gives it",
        "no valid record is dead-lettered",
        "DLQ + applied = produced",
    )
    assert report.planned["invalid"] > 2_000


@pytest.mark.timeout(TIMEOUT_S)
def test_no_personal_value_anywhere(report: FuzzReport) -> None:
    _assert_checks(report, "no personal marker in the worker log, outputs, DLQ or changelog")


@pytest.mark.timeout(TIMEOUT_S)
def test_the_valid_records_give_the_reference_actions_and_scores(report: FuzzReport) -> None:
    _assert_checks(report, "the core accepts every valid record",
                   "actions equal the reference's for the valid records",
                   "last scores equal the reference's")
    assert report.actions is not None
    assert report.actions.expected > 0
