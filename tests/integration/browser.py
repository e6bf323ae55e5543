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


def sign_in(page: Any, token: str, *, prompt: str = "needs an access token",
            accepted: bool = True) -> None:
    """Wait for a page's sign-in form (shown on its first 401) saying `prompt`, and sign in
    with `token` through it (streams/page_login.py); `accepted`: until the form is gone
    (a refused token brings it back at once)."""
    page.wait_for_selector("#login:not([hidden])", timeout=15_000)
    page.wait_for_function("t => document.getElementById('login-message').textContent"
                           ".includes(t)", arg=prompt, timeout=15_000)
    page.fill("#login-token", token)
    page.click("#login button[type=submit]")
    if accepted:
        page.wait_for_selector("#login", state="hidden", timeout=5_000)
