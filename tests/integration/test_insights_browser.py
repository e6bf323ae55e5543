"""/insights in a real headless browser (Debian's chromium driven by Playwright) against a
real worker on the embedded broker fed the hand-computed KPI scenario (tests/unit/
test_kpis.py) plus rated, commented tickets: what the page shows — the KPI tiles, the
win-back funnel, the weekly trend, the drill-down by every dimension, the segment and band
charts, the feedback table and term clouds, a customer's 360 — is what the worker's JSON
endpoints say, fetched by this test over HTTP; the period chooser changes the figures; the
page loads nothing but itself and those endpoints, and logs no error. The screenshot is
kept as a test artifact (test-artifacts/insights.png at the repository root)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson
import pytest

from churnguard.core.kpis import GROUP_BY
from churnguard.kpi_report import kpis_of
from churnguard.rules.export import export_pack
from tests.integration.browser import ARTIFACTS, launch, require_browser, sign_in
from tests.integration.pipeline_support import Pipeline, http_get, token, wait_for
from tests.unit.test_kpis import ENGINE, PACK, UNTIL, A, B, C, D, E, F, Story, scenario

pytestmark = pytest.mark.integration

ARTIFACT = ARTIFACTS / "insights.png"
TILES = ("win_back_rate", "time_to_recovery_hours.median", "recovered_revenue", "roi",
         "repeat_purchase_rate", "coupon_redemption_rate", "follow_up_completion_rate",
         "notification_open_rate", "uplift.difference")
DRILL_COLUMNS = ("episodes.treated.started", "episodes.treated.recovered",
                 "episodes.treated.expired", "episodes.treated.open",
                 "episodes.held_out.started", "win_back_rate",
                 "time_to_recovery_hours.median", "recovered_revenue", "cost", "roi",
                 "repeat_purchase_rate", "coupon_redemption_rate", "tasks.issued",
                 "follow_up_completion_rate", "notification_open_rate", "uplift.difference")
DIMENSIONS = ("rule", "tier", "segment", "account_manager", "region", "assignee", "month")
UNKNOWN = "nobody-at-all"
# (customer, day, category, rating, comment): "refund" is in every low-rated comment.
TICKETS = [
    (A, 6, "billing", 1, "Refund delayed again, the invoice is wrong"),
    (B, 7, "billing", 2, "refund never arrived and the invoice is wrong"),
    (C, 8, "billing", 1, "refund delayed, support slow"),
    (D, 9, "delivery", 5, "parcel arrived early, great support"),
    (E, 10, "delivery", 4, "parcel arrived fine"),
    (A, 11, "quality", 2, "broken item, refund please <script>alert(1)</script>"),
    (B, 12, "quality", 5, "great quality and fast delivery"),
]


def _story() -> Story:
    story = scenario()
    for n, (customer, day, category, rating, comment) in enumerate(TICKETS):
        priority = "high" if n % 2 else "normal"
        story.add("ticket", customer, day, ticket_id=f"fb{n}", status="opened",
                  category=category, priority=priority)
        story.add("ticket", customer, day + 0.25, ticket_id=f"fb{n}", status="closed",
                  category=category, priority=priority, satisfaction=rating, comment=comment)
    story.add("ticket", A, 110, ticket_id="still-open", status="opened", category="billing",
              priority="normal")  # an open ticket on A's 360
    return story


def _get(node: Any, path: str) -> Any:
    for part in path.split("."):
        if not isinstance(node, dict):
            return None
        node = node.get(part)
    return node


def _json(port: int, path: str) -> dict[str, Any]:
    status, body = http_get(port, path)
    assert status == 200, (path, status, body[:300])
    answer: dict[str, Any] = orjson.loads(body)
    return answer


def _values(page: Any, selector: str, key: str) -> dict[str, Any]:
    """{element's `key` attribute: its data-value, parsed} of the elements `selector`."""
    found: dict[str, str] = page.eval_on_selector_all(
        selector, f"""nodes => Object.fromEntries(nodes.map(n =>
            [n.getAttribute({orjson.dumps(key).decode()}), n.dataset.value]))""")
    return {name: orjson.loads(value) for name, value in found.items()}


def _rows(page: Any, table: str, key: str) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, str]] = page.eval_on_selector_all(
        f"{table} tr[{key}]", f"""rows => Object.fromEntries(rows.map(r =>
            [r.getAttribute("{key}"), Object.fromEntries([...r.querySelectorAll(
                "td[data-col]")].map(td => [td.dataset.col, td.dataset.value]))]))""")
    return {group: {col: orjson.loads(v) for col, v in cells.items()}
            for group, cells in found.items()}


def _wait_loaded(page: Any, after: int) -> int:
    """Until the page has answered a load newer than `after`; its generation."""
    page.wait_for_function(
        """n => document.documentElement.dataset.state === "ready"
            && Number(document.documentElement.dataset.generation) > n""",
        arg=after, timeout=15_000)
    return int(page.evaluate("Number(document.documentElement.dataset.generation)"))


def _check_kpis(page: Any, kpis: dict[str, Any]) -> None:
    total = kpis["total"]
    tiles = _values(page, "#tiles [data-kpi]", "data-kpi")
    assert set(tiles) == set(TILES)
    for path, value in tiles.items():
        assert value == _get(total, path), path
        text = page.inner_text(f'#tiles [data-kpi="{path}"] .value')
        assert (text == "—") == (value is None), (path, text)
    funnel = _values(page, "#funnel [data-funnel]", "data-funnel")
    assert funnel == {f"{arm}.{key}": total["episodes"][arm][key]
                      for arm in ("treated", "held_out")
                      for key in ("started", "recovered", "expired", "open")}


def _check_drill(page: Any, kpis: dict[str, Any]) -> None:
    rows = _rows(page, "#drill", "data-group")
    assert list(rows) == [str(g["group"]) for g in kpis["groups"]]
    for group in kpis["groups"]:
        assert rows[str(group["group"])] == {col: _get(group, col) for col in DRILL_COLUMNS}
    [total] = _rows(page, "#drill tfoot", "id").values()
    assert total == {col: _get(kpis["total"], col) for col in DRILL_COLUMNS}


def _check_trend(page: Any, port: int) -> None:
    """Every week of /kpis?group_by=week drawn, the weeks between them empty."""
    weeks = {g["group"]: g for g in _json(port, "/kpis?group_by=week")["groups"]}
    drawn: dict[str, dict[str, str]] = page.eval_on_selector_all(
        "#trend [data-week]", "gs => Object.fromEntries(gs.map(g => [g.dataset.week, "
        "{...g.dataset}]))")
    assert weeks
    assert set(weeks) <= set(drawn)
    for week, bar in drawn.items():
        group = weeks.get(week, {})
        assert int(bar["started"]) == (_get(group, "episodes.treated.started") or 0)
        assert int(bar["heldOut"]) == (_get(group, "episodes.held_out.started") or 0)
        assert orjson.loads(bar["rate"]) == _get(group, "win_back_rate")


def _check_segments(page: Any, port: int) -> None:
    segments = _json(port, "/segments")
    assert segments["segments"]
    assert _values(page, "#segments-chart [data-segment]", "data-segment") == \
        segments["segments"]
    assert _values(page, "#bands-chart [data-band]", "data-band") == segments["bands"]


def _check_feedback(page: Any, port: int) -> None:
    """The categories, and the clouds holding /feedback's terms in its order."""
    feedback = _json(port, "/feedback")
    rows = _rows(page, "#feedback-table tbody", "data-category")
    assert list(rows) == [c["category"] for c in feedback["categories"]]
    for category in feedback["categories"]:
        for col in ("opened", "closed", "rated", "mean_satisfaction", "share_rated_low",
                    "sla_breach_rate", "resolution_hours"):
            assert rows[category["category"]][col] == category[col], col
    terms = feedback["terms"]
    assert terms["most_frequent"]
    assert terms["over_represented_in_low_rated"]
    frequent = page.eval_on_selector_all(
        "#terms-frequent [data-term]", "s => s.map(n => [n.textContent, "
        "Number(n.dataset.count), parseFloat(getComputedStyle(n).fontSize)])")
    assert [(t, n) for t, n, _ in frequent] == [
        (t["term"], t["comments"]) for t in terms["most_frequent"]]
    sizes = {n: size for _, n, size in frequent}
    assert sizes[max(sizes)] > sizes[min(sizes)]  # font size by count
    assert page.eval_on_selector_all(
        "#terms-low [data-term]", "s => s.map(n => n.textContent)") == [
        t["term"] for t in terms["over_represented_in_low_rated"]]
    assert "refund" in page.inner_text("#terms-low")
    assert page.locator("#feedback-card script").count() == 0  # text, not markup


def _check_sorting_and_csv(page: Any, port: int) -> None:
    """A heading sorts the rows (highest first, "not enough data" last) without asking
    again; the CSV link is the same question's CSV."""
    page.click('#drill th[data-col="win_back_rate"]')
    page.wait_for_function("document.getElementById('drill').dataset.sort === 'win_back_rate'")
    rates = [row["win_back_rate"] for row in _rows(page, "#drill tbody", "data-group").values()]
    known = [rate for rate in rates if rate is not None]
    assert rates == sorted(known, reverse=True) + [None] * (len(rates) - len(known))
    href = page.get_attribute("#csv", "href") or ""
    assert href.startswith("/kpis?")
    assert "format=csv" in href
    assert "group_by=rule" in href
    status, body = http_get(port, href)
    assert status == 200
    assert body.decode().splitlines()[0].startswith("group,")
    assert "churn_warning_play" in body.decode()
    # The link downloads that CSV with the page's token (a plain link would be 401).
    with page.expect_download(timeout=10_000) as download:
        page.click("#csv")
    saved = download.value
    assert saved.suggested_filename == "kpis.csv"
    assert Path(saved.path()).read_bytes() == body


def _show_customer(page: Any, port: int, customer: str) -> dict[str, Any]:
    """Search `customer`: the page shows its 360 as /customers/{id} has it; that JSON."""
    view = _json(port, f"/customers/{quote(customer)}")
    page.fill("#customer-id", customer)
    page.click("#customer-show")
    page.wait_for_function(
        """id => document.getElementById("customer").dataset.customer === id
            && document.getElementById("customer").dataset.state === "ready" """,
        arg=customer, timeout=10_000)
    assert page.inner_text('#customer [data-field="customer_id"]') == customer
    score = page.get_attribute('#customer [data-field="score.value"]', "data-value")
    assert orjson.loads(score or "null") == view["score"]["value"]
    actions = _rows(page, "#customer-actions", "data-action-id")
    assert list(actions) == [a["action_id"] for a in view["actions"]]
    for action in view["actions"]:
        for key in ("type", "rule_id", "rule_version", "caused_by", "at"):
            assert actions[action["action_id"]][key] == action[key], key
    assert {a["rule_id"] for a in view["actions"]} == {"churn_warning_play"}
    assert len(view["actions"]) == 3  # the play's notification, task and coupon
    assert len(_rows(page, "#customer-tickets", "data-ticket-id")) == len(view["open_tickets"])
    assert len(_rows(page, "#customer-episodes", "data-rule-id")) == len(view["open_episodes"])
    components = _values(page, "#customer-components [data-component]", "data-component")
    assert components == (view["score"]["components"] or {})
    points = page.get_attribute("#customer-trend", "data-points")
    assert int(points or 0) == len(view["score_trend"])
    return view


def test_the_insights_page_shows_what_the_endpoints_say_in_a_headless_browser(
    pipeline_factory: Any, tmp_path: Path
) -> None:
    require_browser()
    from playwright.sync_api import sync_playwright

    story = _story()
    expected = kpis_of(story.parsed(), ENGINE, until=UNTIL, group_by="rule")
    pipeline: Pipeline = pipeline_factory(UNTIL)  # the worker's clock: the scenario's end
    rules = pipeline.tmp / "pack.yaml"
    rules.write_text(export_pack(PACK.spec))
    pipeline.settings = pipeline.settings.model_copy(update={"rules_file": rules})
    pipeline.start()
    port = int(pipeline.http_port())
    if http_get(port, "/insights")[0] == 404:
        pytest.skip("the worker serves no /insights yet (streams/insights.py in WorkerWeb)")
    for event in sorted(story.events, key=lambda e: e["occurred_at"]):
        pipeline.send(pipeline.topics.events, event)
    pipeline.flush()

    # Until every partition is read and every episode, action and ticket is counted.
    want = expected["total"]
    counts = ("episodes", "coupons", "tasks", "notifications")

    def settled() -> bool:
        kpis = _json(port, "/kpis")
        feedback = _json(port, "/feedback")
        segments = _json(port, "/segments")
        return (not kpis["partial"] and not feedback["partial"] and not segments["partial"]
                and all(kpis["total"][name] == want[name] for name in counts)
                and feedback["total"] == expected["feedback"]["total"]
                and feedback["terms"]["comments"] == len(TICKETS))

    wait_for("the scenario's KPIs and feedback on /kpis and /feedback", settled)
    started = time.monotonic()

    console: list[str] = []
    failed: list[str] = []
    requested: list[str] = []
    base = f"http://127.0.0.1:{port}"
    unknown_url = f"{base}/customers/{UNKNOWN}"
    shot = tmp_path / "insights.png"
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
            page.goto(f"{base}/insights", wait_until="load")
            assert page.title() == "churnguard insights"
            sign_in(page, token("agent"))  # the 360 needs an agent's token
            refusals = (list(failed), list(console))
            generation = _wait_loaded(page, 0)
            assert page.evaluate("document.documentElement.dataset.query") == ""  # everything
            assert page.is_hidden("#partial-note")

            # Tiles, funnel and the drill-down by rule: the period's /kpis.
            kpis = _json(port, "/kpis?group_by=rule")
            _check_kpis(page, kpis)
            _check_drill(page, kpis)
            assert page.inner_text('#tiles [data-kpi="win_back_rate"] .value') == "66.7 %"
            assert page.inner_text('#tiles [data-kpi="roi"] .value') == "100.0 %"
            assert "not enough data" in page.inner_text('#tiles [data-kpi="uplift.difference"]')
            _check_trend(page, port)
            _check_segments(page, port)
            _check_feedback(page, port)

            # Every dimension of the drill-down chooser, then sorting and the CSV link.
            for dimension in (*DIMENSIONS, "rule"):
                assert dimension in GROUP_BY
                page.select_option("#dimension", dimension)
                generation = _wait_loaded(page, generation)
                assert page.get_attribute("#drill", "data-dimension") == dimension
                _check_drill(page, _json(port, f"/kpis?group_by={dimension}"))
            _check_sorting_and_csv(page, port)

            # The period chooser: cohorts of January–March 2026 only (F was warned in April).
            page.select_option("#dimension", "tier")
            generation = _wait_loaded(page, generation)
            page.fill("#since", "2026-01-01")
            page.fill("#until", "2026-03-31")
            page.click("#apply")
            generation = _wait_loaded(page, generation)
            query = page.evaluate("document.documentElement.dataset.query")
            assert query == "since=2026-01-01T00%3A00%3A00Z&until=2026-04-01T00%3A00%3A00Z"
            spring = _json(port, f"/kpis?{query}&group_by=tier")
            assert spring["total"]["episodes"]["treated"]["started"] == 3
            _check_kpis(page, spring)
            _check_drill(page, spring)
            assert "2026-01-01" in page.inner_text("#period-label")
            page.click("[data-preset='0']")  # everything again
            generation = _wait_loaded(page, generation)
            assert page.evaluate("document.documentElement.dataset.query") == ""

            # Customer 360: F (an open episode), A (recovered, an open ticket), an unknown id.
            assert _show_customer(page, port, F)["open_episodes"]
            view = _show_customer(page, port, A)
            assert view["open_tickets"]
            assert not view["open_episodes"]
            page.screenshot(path=str(shot), full_page=True)
            page.fill("#customer-id", UNKNOWN)
            page.click("#customer-show")
            page.wait_for_selector("#customer-error", timeout=10_000)
            assert UNKNOWN in page.inner_text("#customer-error")
        finally:
            browser.close()
    browsing_s = time.monotonic() - started

    ARTIFACT.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(shot, ARTIFACT)
    assert shot.stat().st_size > 10_000

    # Before signing in, the first requests' 401s (chromium logs each failed load).
    refused, refused_console = refusals
    assert refused
    assert all(f.endswith(": HTTP 401") for f in refused), refused
    assert all("401" in m for m in refused_console), refused_console
    del failed[:len(refused)], console[:len(refused_console)]
    # The one error expected after: the unknown customer's 404.
    assert failed == [f"{unknown_url}: HTTP 404"]
    assert [m for m in console if "404" not in m] == [], console
    assert len(console) <= 1
    # Nothing but the page and its endpoints: no CDN, no other origin.
    assert {url.split("?")[0] for url in requested} == {
        f"{base}/insights", f"{base}/kpis", f"{base}/segments", f"{base}/feedback",
        f"{base}/customers/{A}", f"{base}/customers/{F}", unknown_url}
    assert browsing_s < 60, browsing_s
