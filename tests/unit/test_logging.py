"""The worker's log lines (issue 16): repeated warnings rate-limited with a count, tracebacks
rendered into one field of one record, uncaught thread exceptions as one record."""

from __future__ import annotations

import io
import json
import logging
import logging.config
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from churnguard.logging import (
    RepeatFilter,
    install_exception_hooks,
    log_loop_exception,
    stdlib_logging_config,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def stdlib_lines(clock: FakeClock) -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """The worker's stdlib logging config (interval 10 s on a fake clock) onto a buffer;
    the root logger is restored afterwards."""
    root = logging.getLogger()
    saved = (root.level, list(root.handlers))
    config = stdlib_logging_config("INFO")
    config["filters"]["repeats"]["clock"] = clock
    logging.config.dictConfig(config)
    buffer = io.StringIO()
    handler = root.handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(buffer)
    try:
        yield logging.getLogger("aiokafka.test"), buffer
    finally:
        root.handlers[:] = saved[1]
        root.setLevel(saved[0])


def records(buffer: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in buffer.getvalue().splitlines()]


def test_a_repeated_connection_error_passes_once_per_interval_with_a_count(
    stdlib_lines: tuple[logging.Logger, io.StringIO], clock: FakeClock
) -> None:
    logger, buffer = stdlib_lines
    template = "Unable connect to node with id %s: %s"
    for _second in range(25):  # 40 a second for 25 s, as aiokafka did with the broker gone
        for _ in range(40):
            logger.error(template, 111, "[Errno 111] Connect call failed")
        clock.now += 1.0

    lines = records(buffer)
    assert [line["event"] for line in lines] == [
        "Unable connect to node with id 111: [Errno 111] Connect call failed"
    ] * 3
    assert "repeats_suppressed" not in lines[0]
    # 10 s later: everything since the line before, counted.
    assert [line.get("repeats_suppressed") for line in lines[1:]] == [399, 399]
    assert all(line.get("repeat_interval_s") == 10.0 for line in lines[1:])
    assert {line["logger"] for line in lines} == {"aiokafka.test"}
    assert {line["level"] for line in lines} == {"error"}


def test_kinds_are_per_logger_and_message_template(
    stdlib_lines: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, buffer = stdlib_lines
    other = logging.getLogger("aiokafka.other")
    for node in (1, 2, 3):
        logger.error("Failed fetch messages from %s: %s", node, "NodeNotReadyError")
        logger.warning("Marking the coordinator dead (node %s)", node)
        other.error("Failed fetch messages from %s: %s", node, "NodeNotReadyError")
    assert [(line["logger"], line["event"]) for line in records(buffer)] == [
        ("aiokafka.test", "Failed fetch messages from 1: NodeNotReadyError"),
        ("aiokafka.test", "Marking the coordinator dead (node 1)"),
        ("aiokafka.other", "Failed fetch messages from 1: NodeNotReadyError"),
    ]


def test_info_lines_are_never_suppressed(
    stdlib_lines: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, buffer = stdlib_lines
    for _ in range(5):
        logger.info("Executing _on_partitions_assigned")
    assert len(records(buffer)) == 5


def test_a_traceback_is_one_field_of_one_record(
    stdlib_lines: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, buffer = stdlib_lines
    try:
        raise TimeoutError("child did not stop")
    except TimeoutError:
        logger.exception("Error while stopping child %r", "<AIOKafkaConsumerThread>")
    [line] = records(buffer)
    assert line["event"] == "Error while stopping child '<AIOKafkaConsumerThread>'"
    assert line["exception"].startswith("Traceback (most recent call last):")
    assert "TimeoutError: child did not stop" in line["exception"]
    assert "exc_info" not in line


def test_the_filter_is_thread_safe_and_counts_every_repeat(clock: FakeClock) -> None:
    repeat = RepeatFilter(10.0, clock=clock)
    record = logging.LogRecord("aiokafka", logging.ERROR, __file__, 1, "boom %s", (1,), None)
    passed: list[bool] = []

    def hammer() -> None:
        for _ in range(1000):
            passed.append(repeat.filter(record))

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert passed.count(True) == 1
    clock.now += 10.0
    assert repeat.filter(record)
    assert record.repeats_suppressed == 3999


@pytest.fixture
def hooks() -> Iterator[None]:
    saved = (threading.excepthook, sys.excepthook, sys.unraisablehook)
    try:
        yield
    finally:
        threading.excepthook, sys.excepthook, sys.unraisablehook = saved
        logging.captureWarnings(False)


@pytest.mark.usefixtures("hooks")
def test_an_uncaught_thread_exception_is_one_structured_record() -> None:
    install_exception_hooks()

    def fail() -> None:
        raise RuntimeError("fetcher close re-raised")

    with structlog.testing.capture_logs() as logs:
        thread = threading.Thread(target=fail, name="consumer-thread")
        thread.start()
        thread.join()
    [entry] = logs
    assert entry["event"] == "thread_exception"
    assert entry["log_level"] == "error"
    assert entry["thread"] == "consumer-thread"
    assert entry["error"] == "RuntimeError: fetcher close re-raised"
    assert entry["exception"].startswith("Traceback (most recent call last):")
    assert 'in fail\n    raise RuntimeError("fetcher close re-raised")' in entry["exception"]


def test_a_loop_exception_is_one_structured_record() -> None:
    try:
        raise ValueError("callback failed")
    except ValueError as exc:
        error = exc
    with structlog.testing.capture_logs() as logs:
        log_loop_exception(
            None,  # type: ignore[arg-type]  # the handler never uses the loop
            {"message": "Task exception was never retrieved", "exception": error,
             "task": "<Task finished name='Task-24'>"},
        )
    [entry] = logs
    assert entry["event"] == "loop_exception"
    assert entry["message"] == "Task exception was never retrieved"
    assert entry["task"] == repr("<Task finished name='Task-24'>")
    assert "ValueError: callback failed" in entry["exception"]


WORKER_SCRIPT = """
import threading
from streams.settings import Settings
from streams.worker import build_worker_app, create_worker
from churnguard.logging import configure_logging, install_exception_hooks

settings = Settings(store="memory", app_id="log-test", partitions=1)
configure_logging("info", json=True)
worker = create_worker(settings, build_worker_app(settings))
worker._setup_logging()  # what faust does first when the worker starts
install_exception_hooks(worker.loop)

def crash():
    raise RuntimeError("consumer thread crashed")

thread = threading.Thread(target=crash, name="Thread-1")
thread.start()
thread.join()
print("a line on stdout", flush=True)
"""


def test_a_worker_thread_traceback_is_one_json_line_not_one_per_character() -> None:
    """faust redirected stdout/stderr to a logger that logged every write: a thread's
    traceback became ~100 lines of one character. The worker as run_worker builds it."""
    done = subprocess.run(
        [sys.executable, "-c", WORKER_SCRIPT], capture_output=True, timeout=60, check=True
    )
    lines = [json.loads(line) for line in done.stderr.decode().splitlines()]
    assert not [line for line in lines if line.get("logger") == "mode.redirect"]
    [crash] = [line for line in lines if line["event"] == "thread_exception"]
    assert crash["thread"] == "Thread-1"
    assert crash["exception"].startswith("Traceback (most recent call last):")
    assert crash["exception"].rstrip().endswith("RuntimeError: consumer thread crashed")
    assert done.stdout == b"a line on stdout\n"
