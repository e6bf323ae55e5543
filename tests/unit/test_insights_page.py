"""/insights without a worker: the page is self-contained (no URL of another origin, its CSP
names its own inline script and style by hash and same-origin requests only), puts data in
as text only, asks relative URLs of the insights endpoints, and every element its script
looks up by id is in the page. Rendering itself is checked in a real browser by
tests/integration/test_insights_browser.py."""

from __future__ import annotations

import base64
import hashlib
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from streams import insights_page
from streams.insights_page import CSP, PAGE, SCRIPT, STYLE


def _inline(tag: str) -> str:
    [inline] = re.findall(rf"<{tag}>(.*?)</{tag}>", PAGE, flags=re.DOTALL)
    return str(inline)


def _sha256(text: str) -> str:
    return base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()


def test_the_csp_allows_exactly_the_inline_script_and_style() -> None:
    assert _inline("script") == SCRIPT
    assert _inline("style") == STYLE
    for tag in ("script", "style"):
        assert f"{tag}-src 'sha256-{_sha256(_inline(tag))}';" in CSP
    directives = dict(d.strip().split(" ", 1) for d in CSP.split(";"))
    assert directives["default-src"] == "'none'"
    assert directives["connect-src"] == "'self'"
    assert directives["img-src"] == "data:"
    assert directives["frame-ancestors"] == "'none'"
    assert "'unsafe-inline'" not in CSP
    assert "'unsafe-eval'" not in CSP


def test_nothing_is_loaded_from_elsewhere() -> None:
    # The only absolute URL is the SVG namespace (a name, never fetched).
    assert re.findall(r"https?://[^\s\"'`]+", PAGE) == ["http://www.w3.org/2000/svg"]
    assert re.findall(r"//[\w.-]+\.[a-z]{2,}/", PAGE.replace("http://www.w3.org/", "")) == []
    for tag in ("<img", "<iframe", "<link rel=\"stylesheet\"", "@import", "url(", "@font-face"):
        assert tag not in PAGE, tag
    assert '<link rel="icon" href="data:,">' in PAGE  # no /favicon.ico request either
    # Inline event handlers and style attributes would be refused by the CSP.
    assert not re.search(r"<[^>]+\son\w+=", PAGE)
    assert not re.search(r"<[^>]+\sstyle=", PAGE)


def test_data_goes_into_the_page_as_text_only() -> None:
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(",
                 "new Function", "setAttribute(\"on", "srcdoc"):
        assert sink not in SCRIPT, sink
    assert "textContent" in SCRIPT


def test_it_asks_the_insights_endpoints_by_relative_urls() -> None:
    for url in ('"/kpis?"', '"/segments"', '"/feedback?"', '"/customers/"'):
        assert url in SCRIPT, url
    assert "encodeURIComponent(id)" in SCRIPT  # a customer id cannot change the path
    dimensions = re.findall(r'<option value="(\w+)">', PAGE)
    assert dimensions == ["rule", "tier", "segment", "account_manager", "region", "assignee",
                          "month"]


def test_every_element_the_script_looks_up_is_in_the_page() -> None:
    ids = set(re.findall(r'\sid="([\w-]+)"', PAGE))
    looked_up = set(re.findall(r'\$\("([\w-]+)"\)', SCRIPT))
    assert looked_up, "the script looks elements up with $(id)"
    assert looked_up <= ids, looked_up - ids
    for panel in re.findall(r'panel\("([\w-]+)"', SCRIPT):
        assert f"{panel}-error" in ids, panel
    for kpi in ("win_back_rate", "time_to_recovery_hours.median", "recovered_revenue", "roi",
                "repeat_purchase_rate", "coupon_redemption_rate", "follow_up_completion_rate",
                "notification_open_rate", "uplift.difference"):
        assert f'["{kpi}", ' in SCRIPT, kpi


def test_the_page_stays_small() -> None:
    # (650 lines before the sign-in and the CSV fetched with the token.)
    assert PAGE.count("\n") < 750
    assert len(PAGE.encode()) < 64_000


def test_the_script_parses(tmp_path: Path) -> None:
    node = shutil.which("node")
    if node is None:
        pytest.skip("no node: the browser test runs the script anyway")
    path = tmp_path / "insights.js"
    path.write_text(SCRIPT)
    result = subprocess.run([node, "--check", str(path)], capture_output=True, text=True,
                            check=False, timeout=30)
    assert result.returncode == 0, result.stderr


async def test_the_handler_serves_the_page_with_its_policy() -> None:
    app = web.Application()
    app.router.add_get("/insights", insights_page.page)
    async with TestClient(TestServer(app)) as client:
        answer = await client.get("/insights")
        assert answer.status == 200
        assert answer.content_type == "text/html"
        assert answer.charset == "utf-8"
        assert answer.headers["Content-Security-Policy"] == CSP
        assert answer.headers["Cache-Control"] == "no-store"
        assert await answer.text() == PAGE
