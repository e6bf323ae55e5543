from __future__ import annotations

import os

import pytest


@pytest.fixture(autouse=True)
def _no_churnguard_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings() reads CHURNGUARD_* variables: no test may depend on the caller's."""
    for name in list(os.environ):
        if name.upper().startswith("CHURNGUARD_"):
            monkeypatch.delenv(name)
