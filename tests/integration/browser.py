"""Headless Debian chromium driven by Playwright, for the pages' browser tests (its own
browser download does not work here; Debian's binary does)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")  # Debian's `chromium` package
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


def require_browser() -> None:
    """Skip (saying what to install) when Playwright or chromium is missing."""
    if importlib.util.find_spec("playwright") is None:
        pytest.skip("playwright is not installed (pip install playwright: a dev dependency)")
    if not CHROMIUM.exists():
        pytest.skip(f"no {CHROMIUM}: install Debian's chromium package (apt-get install "
                    "chromium)")


def launch(playwright: Any, profile: Path) -> Any:
    """A fresh headless browser context on its own profile directory."""
    return playwright.chromium.launch_persistent_context(
        str(profile), executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS,
        viewport={"width": 1440, "height": 900})
