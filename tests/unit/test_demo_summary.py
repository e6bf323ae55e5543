"""The demo's summary names the actions it missed or did not expect (so a miss can be
traced to its rule, customer and time), not only how many."""

from __future__ import annotations

import pytest

from churnguard import demo
from churnguard.core.rules import Action


def _action(action_id: str, customer: str) -> Action:
    return Action(action_id, "notification", customer, "ticket_opened_ack", 1,
                  "2026-01-01T10:00:00Z", (), 50.0, "new",
                  {"channel": "push", "template": "ack", "variables": {}})


def test_the_summary_lists_missing_and_unexpected_actions(
    capsys: pytest.CaptureFixture[str],
) -> None:
    expected = {"a1": _action("a1", "c1"), "a2": _action("a2", "c2")}
    received = {"a2": expected["a2"].to_record(), "zz": _action("zz", "c9").to_record()}
    demo._summary(received, [], expected)
    out = capsys.readouterr().out
    assert "missing 1, unexpected 1" in out
    assert "missing a1: 2026-01-01 10:00  c1" in out
    assert "unexpected zz: 2026-01-01 10:00  c9" in out
    assert "missing a2" not in out
