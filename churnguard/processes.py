"""Running a churnguard worker as a child process (the demo, the tests, the benchmark): its
environment from a Settings object, readiness from its log, and a clean stop of its whole
process group."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
from pydantic import SecretStr

from streams.settings import Settings

READY_MARK = b"worker_ready"


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that gives a child worker these settings."""
    env = {
        "CHURNGUARD_BROKER": settings.broker,
        "CHURNGUARD_EMBEDDED_BROKER": str(settings.embedded_broker).lower(),
        "CHURNGUARD_PARTITIONS": str(settings.partitions),
        "CHURNGUARD_STORE_DIR": str(settings.store_dir),
        "CHURNGUARD_APP_ID": settings.app_id,
        "CHURNGUARD_LOG_LEVEL": settings.log_level,
        "CHURNGUARD_TICK_INTERVAL_S": str(settings.tick_interval_s),
        "CHURNGUARD_SESSION_TIMEOUT_S": str(settings.session_timeout_s),
        "CHURNGUARD_REBALANCE_TIMEOUT_S": str(settings.rebalance_timeout_s),
        "CHURNGUARD_TOPICS": settings.topics.model_dump_json(),
        "CHURNGUARD_COMMIT_INTERVAL_S": str(settings.commit_interval_s),
        "CHURNGUARD_WEB_ENABLED": str(settings.web_enabled).lower(),
        "CHURNGUARD_WEB_HOST": settings.web_host,
        "CHURNGUARD_WEB_PORT": str(settings.web_port),
        "CHURNGUARD_WEB_OPEN_PROBES": str(settings.web_open_probes).lower(),
        "CHURNGUARD_WEB_TOKENS": "[" + ",".join(t.line() for t in settings.web_tokens) + "]",
    }
    # The link's security, secrets included (a child's environment, never a log); always,
    # so that a child never takes its parent's instead (start_worker drops those).
    env["CHURNGUARD_KAFKA"] = orjson.dumps({
        name: value.get_secret_value() if isinstance(value, SecretStr)
        else str(value) if isinstance(value, Path) else value
        for name, value in settings.kafka if value is not None}).decode()
    if settings.web_token_file is not None:
        env["CHURNGUARD_WEB_TOKEN_FILE"] = str(settings.web_token_file)
    if settings.clock_file is not None:
        env["CHURNGUARD_CLOCK_FILE"] = str(settings.clock_file)
    if settings.rules_file is not None:
        env["CHURNGUARD_RULES_FILE"] = str(settings.rules_file)
    return env


def start_worker(settings: Settings, log_path: Path) -> subprocess.Popen[bytes]:
    with log_path.open("ab") as log_file:
        return subprocess.Popen(
            [sys.executable, "-m", "churnguard", "worker"],
            env={**{name: value for name, value in os.environ.items()
                    if not name.startswith("CHURNGUARD_KAFKA__")},
                 **settings_env(settings)},
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            # Its own group: stopping it stops everything it started.
            start_new_session=True,
        )


@contextlib.contextmanager
def running_worker(settings: Settings, log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    process = start_worker(settings, log_path)
    try:
        yield process
    finally:
        stop_process_group(process)


def wait_ready(
    log_path: Path, process: subprocess.Popen[bytes], *, timeout_s: float, after: int = 0
) -> None:
    """Until the worker logs `worker_ready` (partitions assigned, tables recovered) past byte
    `after` of its log."""
    wait_logged(log_path, READY_MARK, process, timeout_s=timeout_s, after=after,
                what="worker not ready")


def wait_logged(
    log_path: Path,
    mark: bytes,
    process: subprocess.Popen[bytes] | None,
    *,
    timeout_s: float,
    after: int = 0,
    what: str | None = None,
) -> int:
    """Until `mark` appears in the child's log past byte `after`; return the offset just
    past it. Raises if `process` (when given) exits first, or after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = log_path.read_bytes().find(mark, after) if log_path.exists() else -1
        if found >= 0:
            return found + len(mark)
        if process is not None and process.poll() is not None:
            raise RuntimeError(
                f"worker exited with code {process.returncode} before logging "
                f"{mark.decode(errors='replace')}; its log: {log_path}"
            )
        time.sleep(0.1)  # a child's log file has no readiness event to await
    raise TimeoutError(
        f"{what or 'no ' + mark.decode(errors='replace')} within {timeout_s}s; "
        f"its log: {log_path}"
    )


def stop_process_group(
    process: subprocess.Popen[bytes], *, grace_s: float = 15.0, kill: bool = False
) -> None:
    """SIGTERM the child's process group (SIGKILL at once with `kill`, or after the grace)."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL if kill else signal.SIGTERM)
        try:
            process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=5)


def exit_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit so `with` blocks stop children and brokers on the way
    out (the default action would kill this process and orphan them)."""

    def _exit(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _exit)
