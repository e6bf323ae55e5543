"""`churnguard demo`, the README's first command, end to end: its own embedded broker, a
worker child process and the scenario; the worker's actions must be exactly those a replay
of the scenario gives (an event applied before its moment, at the worker's earlier clock,
once lost a ticket's SLA breach due in between)."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.mark.timeout(150)
def test_the_demo_receives_exactly_the_actions_a_replay_expects() -> None:
    done = subprocess.run([sys.executable, "-m", "churnguard", "demo"], capture_output=True,
                          text=True, timeout=140, check=False)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-4000:]
    [summary] = [line for line in done.stdout.splitlines() if "expected by replay" in line]
    received, expected = summary.split()[0], summary.split()[3]
    assert received == expected, summary
    assert "missing 0, unexpected 0" in summary
    assert "OK: demo finished" in done.stdout
