"""The worker's `/dashboard`: live charts of the last minutes for whoever is looking at one
worker — consumer lag per partition, events/s, event→action latency p50/p99, actions/s per
rule, dead letters/s, timers pending.

`Dashboard.sample()` is called once a second by the worker's sampling timer: it reads the
plain counters of `churnguard.metrics.Metrics` and the `WorkerView` (nothing is added to
the hot path), keeps what changed since the previous sample in a ring bounded by time and
by count, and `series()` derives the rates and percentiles when the page asks
(`/dashboard/data`, every `REFRESH_S`). Labels are rule ids, dead-letter kinds and
topic/partition only — never a customer id.

The page is self-contained (inline CSS and JS, SVG charts drawn by its own ~100 lines of
JS): it loads nothing but `/dashboard/data`, and its Content-Security-Policy says so."""

from __future__ import annotations

import math
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import structlog
from aiohttp import web

from churnguard.metrics import LATENCY_BUCKETS, Metrics
from streams.metrics_export import WorkerView
from streams.page_login import LOGIN_HTML, LOGIN_SCRIPT, LOGIN_STYLE, LOGOUT_BUTTON
from streams.page_policy import content_security_policy

log = structlog.get_logger(__name__)

WINDOW_S = 600.0  # what the charts show: the last 10 minutes
INTERVAL_S = 1.0  # how often sample() is called
RATE_SPAN_S = 5.0  # a rate point: what happened over the 5 s up to it
LATENCY_SPAN_S = 30.0  # a percentile point: the latencies observed over the 30 s up to it
TOP_LINES = 6  # rules, kinds and partitions drawn one by one; the rest are summed
REFRESH_S = 2.0  # the page asks for new data this often

_Key = tuple[str, int]


@dataclass(frozen=True, slots=True)
class _Sample:
    """What one sample saw: the counters' increments over `dt` seconds ending at `t`
    (sparse: only rules and kinds that moved), and the gauges at `t`."""

    t: float
    dt: float
    read: int
    applied: int
    actions: Mapping[str, int]  # by rule
    dead_letters: Mapping[str, int]  # by kind
    latency: tuple[int, ...] | None  # new observations per latency bucket, all rules
    lag: Mapping[_Key, int]  # (topic, partition) -> records, partitions that lag only
    partitions: int
    timers_pending: int


@dataclass(frozen=True, slots=True)
class _Totals:
    read: int
    applied: int
    actions: Mapping[str, int]
    dead_letters: Mapping[str, int]
    latency: tuple[int, ...]


class Dashboard:
    def __init__(self, metrics: Metrics, view: Callable[[], WorkerView], *,
                 window_s: float = WINDOW_S, interval_s: float = INTERVAL_S) -> None:
        self.metrics = metrics
        self.view = view
        self.window_s = window_s
        self.interval_s = interval_s
        # Bounded by count as well as by time: a loop that samples too often cannot grow it.
        self._ring: deque[_Sample] = deque(maxlen=math.ceil(window_s / interval_s) + 1)
        self._last: tuple[float, _Totals] | None = None
        self._view_failed = False
        self._answer: tuple[float | None, bytes] | None = None

    # -- sampling (the worker's 1 s timer) ---------------------------------------------

    def sample(self, now: float | None = None) -> None:
        now = time.time() if now is None else now
        totals = self._totals()
        lag, partitions, timers = self._gauges()
        last, self._last = self._last, (now, totals)
        if last is None or now <= last[0]:
            return  # the first sample (or a clock step back) is a baseline only
        before_t, before = last
        latency = tuple(max(0, a - b) for a, b in zip(totals.latency, before.latency,
                                                      strict=True))
        self._ring.append(_Sample(
            t=now, dt=now - before_t,
            read=max(0, totals.read - before.read),
            applied=max(0, totals.applied - before.applied),
            actions=_increments(totals.actions, before.actions),
            dead_letters=_increments(totals.dead_letters, before.dead_letters),
            latency=latency if any(latency) else None,
            lag=lag, partitions=partitions, timers_pending=timers))
        while self._ring and self._ring[0].t <= now - self.window_s:
            self._ring.popleft()

    def _totals(self) -> _Totals:
        m = self.metrics
        actions: Counter[str] = Counter()
        for (rule_id, _), n in m.actions.items():
            actions[rule_id] += n
        latency = [0] * (len(LATENCY_BUCKETS) + 1)
        for histogram in m.latency.values():
            if len(histogram.counts) == len(latency):
                for index, n in enumerate(histogram.counts):
                    latency[index] += n
        return _Totals(read=sum(m.events_in.values()), applied=sum(m.events_applied.values()),
                       actions=actions, dead_letters=dict(m.dead_letters),
                       latency=tuple(latency))

    def _gauges(self) -> tuple[dict[_Key, int], int, int]:
        try:
            view = self.view()
        except Exception:
            # The charts of counters go on; the gauges are missing from this sample.
            if not self._view_failed:
                log.warning("dashboard_view_failed", exc_info=True)
            self._view_failed = True
            return {}, 0, 0
        self._view_failed = False
        lag: dict[_Key, int] = {}
        for o in view.offsets:
            behind = 0 if o.highwater is None else max(0, o.highwater - (o.committed or 0))
            if behind:
                lag[(o.topic, o.partition)] = behind
        return lag, len(view.offsets), sum(view.timers_pending.values())

    # -- what the page draws ----------------------------------------------------------

    def series(self) -> dict[str, Any]:
        samples = list(self._ring)
        now = samples[-1].t if samples else time.time()
        return {
            "now": now,
            "window_s": self.window_s,
            "refresh_s": REFRESH_S,
            "partitions": samples[-1].partitions if samples else 0,
            # Seconds before the newest sample: the x of every point.
            "t": [round(s.t - now, 1) for s in samples],
            "charts": [
                _lag_chart(samples),
                _chart("events", "Events", "events/s",
                       f"records read and applied, over {RATE_SPAN_S:g} s", [
                           ("read", _rates(samples, lambda s: s.read)),
                           ("applied", _rates(samples, lambda s: s.applied))]),
                _latency_chart(samples),
                _keyed_chart("actions", "Actions", "actions/s",
                             f"actions produced, all rules and by rule, over {RATE_SPAN_S:g} s",
                             samples, lambda s: s.actions, "all rules", "other rules"),
                _keyed_chart("dead-letters", "Dead letters", "records/s",
                             f"records dead-lettered, by kind, over {RATE_SPAN_S:g} s",
                             samples, lambda s: s.dead_letters, "all kinds", "other kinds"),
                _chart("timers", "Timers pending", "customers",
                       "customers with a pending timer (owned partitions)",
                       [("pending", [float(s.timers_pending) for s in samples])],
                       whole=True),
            ],
        }

    # -- aiohttp handlers -----------------------------------------------------------------

    async def page(self, request: web.Request) -> web.Response:
        return web.Response(text=PAGE, content_type="text/html", charset="utf-8",
                            headers={"Content-Security-Policy": CSP,
                                     "Cache-Control": "no-store"})

    async def data(self, request: web.Request) -> web.Response:
        # Derived once per sample, however many pages ask.
        newest = self._ring[-1].t if self._ring else None
        if self._answer is None or self._answer[0] != newest:
            self._answer = (newest, orjson.dumps(self.series()))
        return web.Response(body=self._answer[1], content_type="application/json",
                            headers={"Cache-Control": "no-store"})


def _increments(now: Mapping[str, int], before: Mapping[str, int]) -> dict[str, int]:
    return {key: n - before.get(key, 0) for key, n in now.items() if n > before.get(key, 0)}


def _windows(samples: Sequence[_Sample], span: float) -> Iterable[tuple[int, int]]:
    """(first, last + 1) of the samples within `span` seconds up to each sample."""
    first = 0
    for last, sample in enumerate(samples):
        while samples[first].t <= sample.t - span:
            first += 1
        yield first, last + 1


def _rates(samples: Sequence[_Sample], count: Callable[[_Sample], int]) -> list[float | None]:
    """Per second over RATE_SPAN_S up to each sample (a running sum: O(samples))."""
    rates: list[float | None] = []
    events = seconds = 0.0
    gone = 0
    for first, end in _windows(samples, RATE_SPAN_S):
        sample = samples[end - 1]
        events += count(sample)
        seconds += sample.dt
        while gone < first:
            events -= count(samples[gone])
            seconds -= samples[gone].dt
            gone += 1
        rates.append(_round(events / seconds) if seconds > 0 else None)
    return rates


def _keyed_rates(samples: Sequence[_Sample], counts: Callable[[_Sample], Mapping[str, int]],
                 keys: Sequence[str]) -> tuple[list[float | None], dict[str, list[float | None]],
                                               list[float | None]]:
    """Rates of all keys, of each of `keys`, and of the others (running sums: O(samples ×
    keys drawn))."""
    every: list[float | None] = []
    each: dict[str, list[float | None]] = {key: [] for key in keys}
    others: list[float | None] = []
    inside = dict.fromkeys(keys, 0)
    total = 0
    seconds = 0.0
    gone = 0

    def add(sample: _Sample, sign: int) -> None:
        nonlocal total
        for key, n in counts(sample).items():
            total += sign * n
            if key in inside:
                inside[key] += sign * n

    for first, end in _windows(samples, RATE_SPAN_S):
        sample = samples[end - 1]
        add(sample, 1)
        seconds += sample.dt
        while gone < first:
            add(samples[gone], -1)
            seconds -= samples[gone].dt
            gone += 1
        if seconds <= 0:
            for series in (every, others, *each.values()):
                series.append(None)
            continue
        every.append(_round(total / seconds))
        for key in keys:
            each[key].append(_round(inside[key] / seconds))
        others.append(_round((total - sum(inside.values())) / seconds))
    return every, each, others


def _keyed_chart(chart_id: str, title: str, unit: str, note: str, samples: Sequence[_Sample],
                 counts: Callable[[_Sample], Mapping[str, int]], all_label: str,
                 other_label: str) -> dict[str, Any]:
    window: Counter[str] = Counter()
    for sample in samples:
        window.update(counts(sample))
    ranked = [key for key, _ in sorted(window.items(), key=lambda kv: (-kv[1], kv[0]))]
    keys, rest = ranked[:TOP_LINES], ranked[TOP_LINES:]
    every, each, others = _keyed_rates(samples, counts, keys)
    lines: list[tuple[str, list[float | None]]] = [(all_label, every)]
    lines += [(key, each[key]) for key in keys]
    if rest:
        lines.append((f"{other_label} ({len(rest)})", others))
    return _chart(chart_id, title, unit, note, lines)


def _lag_chart(samples: Sequence[_Sample]) -> dict[str, Any]:
    worst: dict[_Key, int] = {}
    for sample in samples:
        for key, n in sample.lag.items():
            if n > worst.get(key, 0):
                worst[key] = n
    ranked = sorted(worst, key=lambda k: (-worst[k], k))[:TOP_LINES]
    lines: list[tuple[str, list[float | None]]] = [
        ("all partitions", [float(sum(s.lag.values())) for s in samples])]
    lines += [(f"{topic}/{partition}", [float(s.lag.get((topic, partition), 0))
                                        for s in samples]) for topic, partition in ranked]
    partitions = samples[-1].partitions if samples else 0
    note = (f"high-water mark − committed offset, {partitions} owned input partitions; "
            f"the {len(ranked)} that lagged most drawn apart" if ranked else
            f"high-water mark − committed offset, {partitions} owned input partitions, "
            "none lagged in the window")
    return _chart("lag", "Consumer lag", "records", note, lines, whole=True)


def _latency_chart(samples: Sequence[_Sample]) -> dict[str, Any]:
    p50: list[float | None] = []
    p99: list[float | None] = []
    size = len(LATENCY_BUCKETS) + 1
    inside = [0] * size
    gone = 0
    for first, end in _windows(samples, LATENCY_SPAN_S):
        added = samples[end - 1].latency
        if added is not None:
            inside = [a + b for a, b in zip(inside, added, strict=True)]
        while gone < first:
            removed = samples[gone].latency
            if removed is not None:
                inside = [a - b for a, b in zip(inside, removed, strict=True)]
            gone += 1
        p50.append(_round(bucket_quantile(LATENCY_BUCKETS, inside, 0.5)))
        p99.append(_round(bucket_quantile(LATENCY_BUCKETS, inside, 0.99)))
    return _chart("latency", "Event → action latency", "s",
                  f"record time (timers: due time) to action produced, all rules, over "
                  f"{LATENCY_SPAN_S:g} s; estimated from histogram buckets (linear within "
                  "a bucket, as Prometheus' histogram_quantile)",
                  [("p99", p99), ("p50", p50)], big=("p50", "p99"))


def bucket_quantile(bounds: Sequence[float], counts: Sequence[int], q: float) -> float | None:
    """The q-quantile of observations counted per bucket (bucket i holds values in
    (bounds[i-1], bounds[i]], the last one beyond the last bound), interpolated linearly
    within its bucket; the last bound when it falls beyond; None without observations."""
    total = sum(counts)
    if total <= 0:
        return None
    rank = q * total
    running, lower = 0, 0.0
    for index, n in enumerate(counts):
        if index >= len(bounds):
            return lower  # beyond the last bound: at least that
        upper = bounds[index]
        if n > 0 and running + n >= rank:
            return lower + (upper - lower) * max(0.0, rank - running) / n
        running += n
        lower = upper
    return lower


def _round(value: float | None) -> float | None:
    if value is None or value == 0:
        return value
    return float(f"{value:.4g}")


def _chart(chart_id: str, title: str, unit: str, note: str,
           lines: Sequence[tuple[str, list[float | None]]], *,
           big: Sequence[str] = (), whole: bool = False) -> dict[str, Any]:
    """The first line is the headline: its last value is the chart's `data-last` and, unless
    `big` names the lines to show so, its big number. `whole`: counts (whole axis ticks)."""
    return {"id": chart_id, "title": title, "unit": unit, "note": note,
            "big": list(big) or [lines[0][0]], "whole": whole,
            "lines": [{"label": label, "values": values} for label, values in lines]}


STYLE = LOGIN_STYLE + """
:root { color-scheme: light dark; --bg: #f6f7f9; --card: #fff; --fg: #1c2024; --muted: #68717d;
  --grid: #e3e6ea; --bad: #c0392b; }
@media (prefers-color-scheme: dark) { :root { --bg: #15181c; --card: #1e2227; --fg: #e8eaed;
  --muted: #9aa3ad; --grid: #2e343b; --bad: #ff6b5b; } }
* { box-sizing: border-box; }
body { margin: 0; padding: 16px 20px; background: var(--bg); color: var(--fg);
  font: 14px/1.35 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; }
header { display: flex; align-items: baseline; gap: 16px; flex-wrap: wrap; margin-bottom: 12px; }
h1 { font-size: 18px; margin: 0; font-weight: 600; }
#status { color: var(--muted); }
#status.stale { color: var(--bad); font-weight: 600; }
main { display: grid; grid-template-columns: repeat(auto-fill, minmax(440px, 1fr)); gap: 14px; }
section { background: var(--card); border-radius: 8px; padding: 12px 14px 8px;
  box-shadow: 0 1px 2px rgba(0, 0, 0, .12); }
h2 { font-size: 13px; margin: 0; font-weight: 600; color: var(--muted); text-transform: uppercase;
  letter-spacing: .04em; }
.big { font-size: 32px; font-weight: 650; font-variant-numeric: tabular-nums; margin: 2px 0; }
.big small { font-size: 14px; font-weight: 500; color: var(--muted); }
.big .unit { margin-left: 6px; }
.big .label { margin-right: 5px; }
.big .label ~ .label { margin-left: 18px; }
.note { font-size: 12px; color: var(--muted); min-height: 2.7em; }
svg { width: 100%; height: auto; display: block; margin-top: 4px; }
svg text { fill: var(--muted); font-size: 11px; font-variant-numeric: tabular-nums; }
svg .grid { stroke: var(--grid); stroke-width: 1; }
svg .line { fill: none; stroke-width: 1.6; stroke-linejoin: round; }
svg .line.head { stroke-width: 2.6; }
ul { list-style: none; margin: 4px 0 0; padding: 0; display: flex; flex-wrap: wrap;
  gap: 2px 14px; font-size: 12px; }
li b { font-variant-numeric: tabular-nums; }
.swatch { display: inline-block; width: 10px; height: 3px; margin-right: 5px;
  vertical-align: middle; }
"""

SCRIPT = LOGIN_SCRIPT + r"""
"use strict";
const NS = "http://www.w3.org/2000/svg", W = 600, H = 190, L = 56, R = 10, T = 8, B = 22;
const COLORS = ["#0072b2", "#e69f00", "#009e73", "#cc79a7", "#d55e00", "#56b4e9", "#8c6d31",
  "#999999"];
let lastOk = 0;
function el(tag, attrs, parent, ns) {
  const node = ns ? document.createElementNS(NS, tag) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
  if (parent) parent.appendChild(node);
  return node;
}
function fmt(v, unit) {
  if (v === null || v === undefined) return "–";
  if (unit === "s") {
    if (v === 0) return "0";
    return v < 1 ? trim(v * 1000, v < 0.01 ? 2 : 3) + " ms" : trim(v, 3) + " s";
  }
  const a = Math.abs(v);
  if (a >= 1e6) return trim(v / 1e6, 3) + "M";
  if (a >= 1e4) return trim(v / 1e3, 3) + "k";
  return String(Number(v.toFixed(a >= 100 ? 0 : a >= 10 ? 1 : 2)));
}
function trim(v, digits) { return String(Number(v.toPrecision(digits))); }
function niceMax(v, whole) {
  let top = 1;
  if (v > 0) {
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    top = [1, 1.2, 1.6, 2, 2.4, 3, 4, 5, 6, 8, 10].find(m => m * p >= v) * p;
  }
  return whole ? Math.max(4, 4 * Math.ceil(top / 4)) : top;  // whole ticks for counts
}
function ago(s) {
  if (s === 0) return "now";
  return s % 60 === 0 ? "−" + s / 60 + " min" : "−" + s + " s";
}
function lastOf(values) {
  for (let i = values.length - 1; i >= 0; i--) if (values[i] !== null) return values[i];
  return null;
}
function card(chart) {
  let sec = document.getElementById("card-" + chart.id);
  if (!sec) {
    sec = el("section", {id: "card-" + chart.id}, document.getElementById("charts"));
    el("h2", {}, sec).textContent = chart.title;
    el("div", {class: "big"}, sec);
    el("div", {class: "note"}, sec);
    el("svg", {id: "chart-" + chart.id, viewBox: `0 0 ${W} ${H}`, role: "img",
      "aria-label": chart.title}, sec, true);
    el("ul", {}, sec);
  }
  return sec;
}
function draw(chart, t) {
  const sec = card(chart), svg = sec.querySelector("svg"), head = chart.lines[0].values;
  const last = lastOf(head), big = sec.querySelector(".big");
  while (big.firstChild) big.removeChild(big.firstChild);
  for (const line of chart.big.map(label => chart.lines.find(l => l.label === label))) {
    if (chart.big.length > 1) el("small", {class: "label"}, big).textContent = line.label;
    big.appendChild(document.createTextNode(fmt(lastOf(line.values), chart.unit)));
  }
  if (chart.unit !== "s") el("small", {class: "unit"}, big).textContent = chart.unit;
  sec.querySelector(".note").textContent = chart.note;
  while (svg.firstChild) svg.removeChild(svg.firstChild);
  const shown = Math.max(60, t.length ? -t[0] : 0);  // at least a minute, up to the window
  const step = [10, 15, 30, 60, 120, 300].find(s => shown / s <= 6) || 600;
  const span = Math.ceil(shown / step) * step;
  const top = niceMax(Math.max(0, ...chart.lines.flatMap(l => l.values.filter(v => v !== null))),
    chart.whole);
  const x = s => L + (W - L - R) * (1 + s / span), y = v => T + (H - T - B) * (1 - v / top);
  for (let i = 0; i <= 4; i++) {
    const v = top * i / 4;
    el("line", {class: "grid", x1: L, x2: W - R, y1: y(v), y2: y(v)}, svg, true);
    el("text", {x: L - 6, y: y(v) + 4, "text-anchor": "end"}, svg, true).textContent =
      fmt(v, chart.unit);
  }
  for (let s = 0; s <= span; s += step) {
    el("text", {x: x(-s), y: H - 6, "text-anchor": s === 0 ? "end" : "middle"}, svg, true)
      .textContent = ago(s);
  }
  const legend = sec.querySelector("ul");
  while (legend.firstChild) legend.removeChild(legend.firstChild);
  chart.lines.forEach((line, i) => {
    const color = COLORS[i % COLORS.length];
    let d = "", pen = "M";
    line.values.forEach((v, j) => {
      if (v === null) { pen = "M"; return; }
      d += `${pen}${x(t[j]).toFixed(1)},${y(v).toFixed(1)} `;
      pen = "L";
    });
    if (d) el("path", {class: i ? "line" : "line head", d: d, stroke: color}, svg, true);
    const item = el("li", {}, legend);
    el("span", {class: "swatch"}, item).style.background = color;
    item.appendChild(document.createTextNode(line.label + " "));
    el("b", {}, item).textContent = fmt(lastOf(line.values), chart.unit);
  });
  svg.setAttribute("data-points", head.filter(v => v !== null).length);
  svg.setAttribute("data-last", last === null ? "" : last);
}
function status(text, stale) {
  const node = document.getElementById("status");
  node.textContent = text;
  node.className = stale ? "stale" : "";
}
async function refresh() {
  let wait = 2000;
  try {
    const answer = await authFetch("/dashboard/data", {cache: "no-store"}, 5000);
    if (!answer.ok) throw new Error("HTTP " + answer.status);
    const data = await answer.json();
    wait = data.refresh_s * 1000;
    for (const chart of data.charts) draw(chart, data.t);
    lastOk = Date.now();
    status(`${data.partitions} input partitions · updated ` +
      new Date(data.now * 1000).toLocaleTimeString() + ` · every ${data.refresh_s} s`, false);
  } catch (error) {
    const since = lastOk ? Math.round((Date.now() - lastOk) / 1000) + " s ago" : "never";
    status(`no data (${error.message}) · last update ${since}`, true);
  }
  setTimeout(refresh, wait);
}
refresh();
"""


PAGE = f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>churnguard worker</title>
<link rel="icon" href="data:,">
<style>{STYLE}</style>
</head>
<body>
<header><h1>churnguard worker</h1><span id="status">loading…</span>{LOGOUT_BUTTON}</header>
{LOGIN_HTML}
<main id="charts"></main>
<script>{SCRIPT}</script>
</body>
</html>
"""

# Nothing but this page's own script and style, and its data from the same origin.
CSP = content_security_policy(SCRIPT, STYLE)
