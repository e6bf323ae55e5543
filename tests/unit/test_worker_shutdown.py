"""The worker's bounded shutdown and broker health, without a broker (issue 16): the
watchdog, the consumer stop that aiokafka's fetcher close breaks, the shutdown commits, the
health probe and its transitions. The real thing, timed: tests/integration/
test_worker_lifecycle.py."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import structlog

from streams.consumer_stop import ShutdownCommits, stop_aiokafka_consumer
from streams.health import BrokerHealth, probe_broker
from streams.shutdown import WATCHDOG_EXIT_CODE, ShutdownWatchdog

# -- the watchdog ----------------------------------------------------------------------------


def test_the_watchdog_exits_with_its_code_and_every_stack_once_the_deadline_passes() -> None:
    exited = threading.Event()
    codes: list[int] = []

    def exit_process(code: int) -> None:
        codes.append(code)
        exited.set()

    watchdog = ShutdownWatchdog(0.05, exit_process=exit_process)
    with structlog.testing.capture_logs() as logs:
        watchdog.arm("SIGTERM")
        watchdog.arm("worker_stopping")  # the first reason and deadline count
        assert exited.wait(10)
    assert codes == [WATCHDOG_EXIT_CODE]
    assert [entry["event"] for entry in logs] == ["shutdown_started", "shutdown_deadline_exceeded"]
    started, expired = logs
    assert started["reason"] == "SIGTERM"
    assert expired["reason"] == "SIGTERM"
    assert expired["log_level"] == "error"
    assert expired["exit_code"] == WATCHDOG_EXIT_CODE
    # Where the shutdown was stuck: every other thread's stack (this one waits in wait()).
    main = next(stack for name, stack in expired["stacks"].items() if name.startswith("MainThread"))
    assert "exited.wait(10)" in main


STUCK_SHUTDOWN = """
import time
from churnguard.logging import configure_logging
from streams.shutdown import ShutdownWatchdog

configure_logging("info", json=True)
ShutdownWatchdog(0.5).arm("SIGTERM")
time.sleep(60)  # a graceful stop that never finishes (e.g. waiting for a dead broker)
"""


def test_a_stuck_shutdown_ends_the_real_process_at_the_deadline(tmp_path: Path) -> None:
    script = tmp_path / "stuck.py"
    script.write_text(STUCK_SHUTDOWN)
    started = time.monotonic()
    done = subprocess.run([sys.executable, str(script)], capture_output=True,
                          timeout=30, check=False)
    elapsed = time.monotonic() - started
    assert done.returncode == WATCHDOG_EXIT_CODE
    assert elapsed < 20  # not the 60 s of the sleep
    lines = [json.loads(line) for line in done.stderr.decode().splitlines()]
    assert [line["event"] for line in lines] == ["shutdown_started", "shutdown_deadline_exceeded"]
    assert "time.sleep(60)" in next(iter(lines[1]["stacks"].values()))


# -- aiokafka's consumer stop ----------------------------------------------------------------


class FakeClient:
    def __init__(self) -> None:
        self.closed = False

    async def close(self) -> None:
        self.closed = True


class FakeConsumer:
    """Stands for AIOKafkaConsumer: `stop` as given, and its client."""

    def __init__(self, stop: Any) -> None:
        self._stop = stop
        self._client = FakeClient()

    async def stop(self) -> None:
        await self._stop()


async def _fetcher_close_with_the_broker_gone() -> None:
    """What aiokafka 0.14's Fetcher.close() does then: it cancels a fetch task sleeping
    in the retry backoff of its `except KafkaError` handler and awaits it unguarded."""

    async def fetch() -> None:
        try:
            raise ConnectionError("NodeNotReadyError")
        except ConnectionError:
            await asyncio.sleep(0.1)  # the retry backoff, outside `except CancelledError`

    task = asyncio.ensure_future(fetch())
    await asyncio.sleep(0)
    task.cancel()
    await task  # CancelledError escapes close(), and so AIOKafkaConsumer.stop()


async def test_the_fetcher_close_cancelled_error_does_not_escape_and_the_client_closes() -> None:
    consumer = FakeConsumer(_fetcher_close_with_the_broker_gone)
    with pytest.raises(asyncio.CancelledError):
        await consumer.stop()  # the defect, as aiokafka has it
    with structlog.testing.capture_logs() as logs:
        await stop_aiokafka_consumer(consumer, 1.0)
    assert [entry["event"] for entry in logs] == ["consumer_stop_interrupted"]
    assert consumer._client.closed


async def test_a_consumer_stop_that_hangs_is_bounded() -> None:
    async def hang() -> None:
        await asyncio.Event().wait()

    consumer = FakeConsumer(hang)
    started = time.monotonic()
    with structlog.testing.capture_logs() as logs:
        await stop_aiokafka_consumer(consumer, 0.1)
    assert time.monotonic() - started < 5
    assert [entry["event"] for entry in logs] == ["consumer_stop_timeout"]
    assert consumer._client.closed


async def test_a_clean_stop_logs_nothing_and_leaves_the_client_to_aiokafka() -> None:
    async def clean() -> None:
        pass

    consumer = FakeConsumer(clean)
    with structlog.testing.capture_logs() as logs:
        await stop_aiokafka_consumer(consumer, 1.0)
    assert logs == []
    assert not consumer._client.closed  # stop() closed it itself


async def test_cancelling_the_stopping_task_still_cancels_it() -> None:
    entered = asyncio.Event()

    async def hang() -> None:
        entered.set()
        await asyncio.Event().wait()

    task = asyncio.ensure_future(stop_aiokafka_consumer(FakeConsumer(hang), 30.0))
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


# -- shutdown commits ------------------------------------------------------------------------


class CommittingConsumer:
    def __init__(self, *, hang: bool) -> None:
        self.hang = hang
        self.calls = 0

    async def commit(self, *args: Any, **kwargs: Any) -> bool:
        self.calls += 1
        if self.hang:  # aiokafka looking for a group coordinator that is gone
            await asyncio.Event().wait()
        return True


async def test_shutdown_commits_share_a_budget_and_are_given_up_after_it() -> None:
    consumer, commits = CommittingConsumer(hang=True), ShutdownCommits(0.2)
    started = time.monotonic()
    with structlog.testing.capture_logs() as logs:
        assert await commits.run(consumer.commit) is False
        assert await commits.run(consumer.commit) is False
    assert time.monotonic() - started < 5
    assert consumer.calls == 1  # the second found the budget spent
    assert [entry["event"] for entry in logs] == ["shutdown_commit_skipped"] * 2


class SwallowingConsumer:
    """faust's Consumer.commit while another commit is under way: its
    `maybe_wait_for_commit_to_finish` swallows the CancelledError of its own task and
    starts a new commit, stuck the same way."""

    def __init__(self) -> None:
        self.cancels_swallowed = 0

    async def commit(self, *args: Any, **kwargs: Any) -> bool:
        try:
            await asyncio.Event().wait()  # the other commit's future
        except asyncio.CancelledError:
            self.cancels_swallowed += 1
        await asyncio.Event().wait()  # a new commit, never answered
        return True


async def test_a_commit_that_swallows_its_cancellation_does_not_hold_the_shutdown() -> None:
    consumer, commits = SwallowingConsumer(), ShutdownCommits(0.1)
    with structlog.testing.capture_logs() as logs:
        assert await asyncio.wait_for(commits.run(consumer.commit), 10) is False
    assert [entry["event"] for entry in logs] == ["shutdown_commit_skipped"]


async def test_quick_shutdown_commits_go_through() -> None:
    consumer, commits = CommittingConsumer(hang=False), ShutdownCommits(0.2)
    with structlog.testing.capture_logs() as logs:
        assert await commits.run(consumer.commit) is True
        assert await commits.run(consumer.commit) is True
    assert logs == []
    assert consumer.calls == 2


# -- broker health ---------------------------------------------------------------------------


class ProbedClient:
    def __init__(self, answer: bool | None) -> None:
        self.answer = answer  # None: never answers

    def force_metadata_update(self) -> asyncio.Future[bool]:
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        if self.answer is not None:
            future.set_result(self.answer)
        return future


class ProbedApp:
    def __init__(self, client: ProbedClient | None) -> None:
        producer = None if client is None else type("AIOKafkaProducer", (), {"client": client})
        self.producer = type("Producer", (), {"_producer": producer})


async def test_the_probe_reports_each_transition_once() -> None:
    health = BrokerHealth()
    client = ProbedClient(True)
    app = ProbedApp(client)
    with structlog.testing.capture_logs() as logs:
        await probe_broker(app, health)  # type: ignore[arg-type]
        assert health.reachable is True
        client.answer = False
        for _ in range(3):
            await probe_broker(app, health)  # type: ignore[arg-type]
        assert health.reachable is False
        assert health.reason == "metadata request failed on every known broker"
        client.answer = None
        await probe_broker(app, health, timeout_s=0.05)  # type: ignore[arg-type]
        assert health.reason == "no metadata answer within 0.05s"
        client.answer = True
        await probe_broker(app, health)  # type: ignore[arg-type]
        await probe_broker(app, health)  # type: ignore[arg-type]
    assert [(e["event"], e.get("reason")) for e in logs] == [
        ("broker_unreachable", "metadata request failed on every known broker"),
        ("broker_reachable", None),
    ]
    assert health.reachable is True
    assert health.reason is None
    assert health.transitions == 2


async def test_no_probe_before_the_producer_started() -> None:
    health = BrokerHealth()
    await probe_broker(ProbedApp(None), health)  # type: ignore[arg-type]
    assert health.reachable is None


def test_an_unreachable_broker_at_start_is_a_transition() -> None:
    moments = iter([100.0, 105.0, 112.5])
    health = BrokerHealth(clock=lambda: next(moments))
    with structlog.testing.capture_logs() as logs:
        assert health.report(False, reason="refused") is True
        assert health.report(False, reason="refused again") is False
        assert health.report(True) is True
    assert [(e["event"], e.get("reason"), e.get("unreachable_for_s")) for e in logs] == [
        ("broker_unreachable", "refused", None),
        ("broker_reachable", None, 7.5),
    ]
    assert health.since == 112.5


async def test_only_time_spent_committing_uses_the_shutdown_budget() -> None:
    """A commit timer's quick commit early in a long shutdown leaves the final commit its
    whole budget: the seconds between commits do not count."""
    clock = [100.0]
    consumer = CommittingConsumer(hang=False)
    commits = ShutdownCommits(0.2, clock=lambda: clock[0])
    assert await commits.run(consumer.commit) is True
    clock[0] += 60.0  # waiting for a batch in flight, then the final commit
    with structlog.testing.capture_logs() as logs:
        assert await commits.run(consumer.commit) is True
    assert logs == []
    assert consumer.calls == 2
