"""The retention lead's `/insights`: the KPIs of a period (tiles, the win-back funnel, a weekly
trend and a drill-down by rule, tier, segment, account manager, region, assignee or month),
the RFM segments and health bands of today's customers, what the feedback says (per ticket
category, and a cloud of the most frequent terms and of those over-represented in low-rated
tickets), and one customer's 360 view.

The page is one self-contained string (inline CSS and JS, SVG charts drawn by its own JS,
as streams/dashboard.py's): it asks the worker's own endpoints (`/kpis`, `/segments`,
`/feedback`, `/customers/{id}`, same origin, relative URLs, streams/insights.py) and nothing
else, and its Content-Security-Policy says so. Every text that comes from data is put into
the page as text (`textContent`, attribute values), never parsed as markup. Elements the
browser test reads carry stable ids and `data-*` attributes with the raw values (JSON):
`[data-kpi=PATH]` tiles, `[data-funnel=ARM.COUNT]`, `#drill tr[data-group] td[data-col]`,
`#trend [data-week]`, `#segments-chart [data-segment]`, `#bands-chart [data-band]`,
`#feedback-table tr[data-category]`, `#terms-frequent`/`#terms-low` `[data-term]`, and
`#customer` (`[data-field]`, `#customer-actions tr[data-action-id]`); `<html data-state>`
is "ready" once every panel has answered, `data-query` the period it asked for."""

from __future__ import annotations

from aiohttp import web

from streams.page_login import LOGIN_HTML, LOGIN_SCRIPT, LOGIN_STYLE, LOGOUT_BUTTON
from streams.page_policy import content_security_policy

STYLE = LOGIN_STYLE + """
:root { color-scheme: light dark; --bg: #f6f7f9; --card: #fff; --fg: #1c2024; --muted: #68717d;
  --grid: #e3e6ea; --bad: #c0392b; --good: #1e8e3e; --accent: #0072b2; --open: #9aa3ad;
  --warn-bg: #fff4d6; }
@media (prefers-color-scheme: dark) { :root { --bg: #15181c; --card: #1e2227; --fg: #e8eaed;
  --muted: #9aa3ad; --grid: #2e343b; --bad: #ff6b5b; --good: #5fd383; --accent: #56b4e9;
  --open: #68717d; --warn-bg: #3d3420; } }
* { box-sizing: border-box; }
body { margin: 0; padding: 16px 20px; background: var(--bg); color: var(--fg);
  font: 14px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; }
header { display: flex; align-items: center; gap: 10px 18px; flex-wrap: wrap;
  margin-bottom: 12px; }
h1 { font-size: 18px; margin: 0; font-weight: 600; }
h2 { font-size: 13px; margin: 0 0 6px; font-weight: 600; color: var(--muted);
  text-transform: uppercase; letter-spacing: .04em; }
h3 { font-size: 13px; margin: 10px 0 4px; font-weight: 600; }
form { display: flex; gap: 6px; align-items: center; flex-wrap: wrap; margin: 0; }
input, select, button { font: inherit; padding: 3px 6px; }
#status { color: var(--muted); }
#status.bad, .error { color: var(--bad); font-weight: 600; }
.warn { background: var(--warn-bg); padding: 6px 10px; border-radius: 6px; margin: 0 0 12px; }
main { display: grid; grid-template-columns: repeat(auto-fill, minmax(520px, 1fr)); gap: 14px; }
section { background: var(--card); border-radius: 8px; padding: 12px 14px;
  box-shadow: 0 1px 2px rgba(0, 0, 0, .12); min-width: 0; }
section.wide { grid-column: 1 / -1; }
.note { font-size: 12px; color: var(--muted); margin: 2px 0 6px; }
#tiles { display: grid; grid-template-columns: repeat(auto-fill, minmax(170px, 1fr)); gap: 10px; }
.tile { border: 1px solid var(--grid); border-radius: 6px; padding: 8px 10px; }
.tile .label, .tile .sub { font-size: 12px; color: var(--muted); }
.tile .value { font-size: 26px; font-weight: 650; font-variant-numeric: tabular-nums; }
.tile.na .value { color: var(--muted); }
svg { width: 100%; height: auto; display: block; }
svg text { fill: var(--muted); font-size: 11px; font-variant-numeric: tabular-nums; }
svg text.strong { fill: var(--fg); font-weight: 600; }
svg .grid { stroke: var(--grid); stroke-width: 1; }
svg .line { fill: none; stroke: var(--accent); stroke-width: 2; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; width: 100%; font-size: 13px;
  font-variant-numeric: tabular-nums; }
th, td { padding: 3px 7px; border-bottom: 1px solid var(--grid); text-align: right;
  white-space: nowrap; }
th:first-child, td:first-child { text-align: left; }
td.text, th.text { text-align: left; white-space: normal; }
th { color: var(--muted); font-weight: 600; }
#drill th { cursor: pointer; }
tfoot td { font-weight: 650; }
.cloud { line-height: 1.25; min-height: 40px; }
.cloud span { display: inline-block; margin: 0 8px 2px 0; color: var(--accent); }
#terms-low span { color: var(--bad); }
.cols { display: flex; gap: 24px; flex-wrap: wrap; }
.cols > div { flex: 1 1 260px; min-width: 0; }
dl { display: grid; grid-template-columns: max-content 1fr; gap: 1px 12px; margin: 0;
  font-size: 13px; }
dt { color: var(--muted); }
dd { margin: 0; overflow-wrap: anywhere; }
.big { font-size: 30px; font-weight: 650; }
#customer-components, #customer-trend { max-width: 420px; }
"""

SCRIPT = LOGIN_SCRIPT + r"""
"use strict";
const NS = "http://www.w3.org/2000/svg", DAY = 86400000, DASH = "—";
const $ = id => document.getElementById(id);
const TILES = [
  ["win_back_rate", "Win-back rate", "pct",
    t => `${t.episodes.treated.recovered} of ${t.uplift.treated_decided} decided (treated)`],
  ["time_to_recovery_hours.median", "Time to recovery, median", "hours",
    t => "mean " + fmt(t.time_to_recovery_hours.mean, "hours")],
  ["recovered_revenue", "Recovered revenue", "money", t => "cost " + fmt(t.cost, "money")],
  ["roi", "ROI", "pct", () => "(revenue × margin − cost) / cost"],
  ["repeat_purchase_rate", "Repeat purchase rate", "pct", t =>
    `${t.repeat_purchases.repeated} of ${t.repeat_purchases.first_purchases} first purchases`],
  ["coupon_redemption_rate", "Coupon redemption", "pct",
    t => `${t.coupons.redeemed} of ${t.coupons.issued} coupons`],
  ["follow_up_completion_rate", "Follow-up completion", "pct",
    t => `${t.tasks.completed} of ${t.tasks.issued} tasks`],
  ["notification_open_rate", "Notification open rate", "pct",
    t => `${t.notifications.opened} of ${t.notifications.issued} notifications`],
  ["uplift.difference", "Uplift vs held out", "pp", t => t.uplift.status === "ok"
    ? `95 % CI ${fmt(t.uplift.ci95[0], "pp")} … ${fmt(t.uplift.ci95[1], "pp")}`
    : `decided: ${t.uplift.treated_decided} treated, ${t.uplift.held_out_decided} held out`],
];
const COLUMNS = [
  ["episodes.treated.started", "warned", "int"], ["episodes.treated.recovered", "recovered", "int"],
  ["episodes.treated.expired", "expired", "int"], ["episodes.treated.open", "open", "int"],
  ["episodes.held_out.started", "held out", "int"], ["win_back_rate", "win-back", "pct"],
  ["time_to_recovery_hours.median", "median TTR", "hours"],
  ["recovered_revenue", "revenue", "money"], ["cost", "cost", "money"], ["roi", "ROI", "pct"],
  ["repeat_purchase_rate", "repeat", "pct"], ["coupon_redemption_rate", "coupons", "pct"],
  ["tasks.issued", "tasks", "int"], ["follow_up_completion_rate", "follow-ups", "pct"],
  ["notification_open_rate", "opened", "pct"], ["uplift.difference", "uplift", "pp"],
];
const SEGMENTS = ["champion", "loyal", "promising", "new", "needs_reactivation", "at_risk",
  "hibernating", "prospect"];
const BANDS = ["good", "average", "poor", "unscored"];
const BAND_COLORS = {good: "#1e8e3e", average: "#e69f00", poor: "#c0392b", unscored: "#999999"};
const SVG_TAGS = ["svg", "g", "rect", "line", "path", "circle", "text", "title"];
let generation = 0, asOf = null, sortBy = null, refreshTimer = null, lastDrill = null;

function el(tag, attrs, parent, text) {
  const svg = tag === "svg" || (SVG_TAGS.includes(tag) && parent && parent.namespaceURI === NS);
  const node = svg ? document.createElementNS(NS, tag) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v !== undefined) node.setAttribute(k, String(v));
  }
  if (text !== undefined) node.textContent = String(text);
  if (parent) parent.appendChild(node);
  return node;
}
function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); return node; }
function get(obj, path) {
  let node = obj;
  for (const part of path.split(".")) {
    if (node === null || typeof node !== "object") return undefined;
    node = node[part];
  }
  return node;
}
const isNum = v => typeof v === "number" && Number.isFinite(v);
const raw = v => JSON.stringify(v === undefined ? null : v);
const objectOr = v => (v && typeof v === "object" && !Array.isArray(v) ? v : {});
const listOr = v => (Array.isArray(v) ? v : []);
const incomplete = d => d.partial === true || d.complete === false;
function fmt(v, kind) {
  if (!isNum(v)) return DASH;
  switch (kind) {
    case "pct": return (v * 100).toFixed(1) + " %";
    case "pp": return (v < 0 ? "−" : "+") + Math.abs(v * 100).toFixed(1) + " pp";
    case "hours": return (v >= 100 ? v.toFixed(0) : String(Number(v.toFixed(1)))) + " h";
    case "money":
      return v.toLocaleString("en-US", {minimumFractionDigits: 2, maximumFractionDigits: 2});
    default: return v.toLocaleString("en-US", {maximumFractionDigits: 3});
  }
}
function when(v) {
  return typeof v === "string" && /^\d{4}-\d\d-\d\dT/.test(v)
    ? v.replace("T", " ").replace(/(:\d\d)(\.\d+)?(Z|\+00:00)$/, "$1 UTC") : v;
}
function cell(v) {
  if (v === null || v === undefined || v === "") return DASH;
  if (typeof v === "boolean") return v ? "yes" : "no";
  if (Array.isArray(v)) return v.length ? v.map(cell).join(", ") : DASH;
  if (typeof v === "object") {
    return Object.entries(v).map(([k, x]) => `${k.replace(/_/g, " ")} ${cell(x)}`).join(", ");
  }
  return String(when(v));
}
function qs(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v) q.set(k, v);
  return q.toString();
}
async function getJSON(url) {
  const answer = await authFetch(url, {cache: "no-store",
    headers: {Accept: "application/json"}}, 20000);
  let body = null;
  try { body = await answer.json(); } catch (error) { body = null; }
  if (!answer.ok) {
    const said = body && (typeof body.message === "string" ? body.message : body.error);
    throw new Error((typeof said === "string" && said) || `HTTP ${answer.status}`);
  }
  if (body === null || typeof body !== "object") throw new Error("not a JSON object");
  return body;
}
// -- the period --------------------------------------------------------------------------
const dayOf = ms => new Date(ms).toISOString().slice(0, 10);
function period() {
  const since = $("since").value, until = $("until").value;
  return {since: since ? since + "T00:00:00Z" : "",
    until: until ? dayOf(Date.parse(until + "T00:00:00Z") + DAY) + "T00:00:00Z" : "",
    rule: $("rule").value};
}
function preset(days) {  // the last days up to the latest outcome (the worker's "now")
  const end = asOf ? Date.parse(asOf) : Date.now();
  $("since").value = days ? dayOf(end - (days - 1) * DAY) : "";
  $("until").value = days ? dayOf(end) : "";
  load();
}
function saveHash() {
  const h = qs({since: $("since").value, until: $("until").value, rule: $("rule").value,
    by: $("dimension").value, customer: $("customer-id").value.trim()});
  history.replaceState(null, "", h ? "#" + h : location.pathname);
}
function readHash() {
  const h = new URLSearchParams(location.hash.slice(1));
  for (const [key, id] of [["since", "since"], ["until", "until"], ["by", "dimension"],
    ["customer", "customer-id"]]) if (h.get(key)) $(id).value = h.get(key);
  if (h.get("rule")) ruleOptions([], h.get("rule"));
  return h.get("customer");
}
function ruleOptions(rules, chosen) {
  const select = clear($("rule"));
  el("option", {value: ""}, select, "all rules");
  for (const rule of [...new Set([...rules, chosen].filter(Boolean))].sort()) {
    el("option", {value: rule}, select, rule);
  }
  select.value = chosen || "";
}
// -- the panels --------------------------------------------------------------------------
function renderTiles(total) {
  const tiles = clear($("tiles"));
  for (const [path, label, kind, sub] of TILES) {
    const v = get(total, path), known = isNum(v);
    const tile = el("div", {class: known ? "tile" : "tile na", "data-kpi": path,
      "data-value": raw(v)}, tiles);
    el("div", {class: "label"}, tile, label);
    el("div", {class: "value", title: known ? undefined : "not enough data"}, tile, fmt(v, kind));
    let text = "";
    try { text = sub(total); } catch (error) { text = ""; }
    el("div", {class: "sub"}, tile, known ? text : "not enough data" + (text ? " · " + text : ""));
  }
}
function renderFunnel(episodes) {
  const svg = clear($("funnel")), arms = [["treated", "treated"], ["held_out", "held out"]];
  const rows = [["started", "warned", "var(--accent)"], ["recovered", "recovered", "var(--good)"],
    ["expired", "expired", "var(--bad)"], ["open", "still open", "var(--open)"]];
  const most = Math.max(1, ...arms.map(([arm]) => get(episodes, arm + ".started") || 0));
  let y = 14;
  for (const [arm, name] of arms) {
    const started = get(episodes, arm + ".started");
    el("text", {x: 0, y: y, class: "strong"}, svg, name);
    y += 8;
    for (const [key, label, color] of rows) {
      const v = get(episodes, `${arm}.${key}`), n = isNum(v) ? v : 0, width = 400 * n / most;
      el("text", {x: 0, y: y + 11}, svg, label);
      el("rect", {x: 90, y: y, height: 14, width: Math.max(n ? 2 : 0, width), rx: 2, fill: color},
        svg);
      const share = key !== "started" && isNum(started) && started
        ? ` (${fmt(n / started, "pct")})` : "";
      el("text", {x: 96 + width, y: y + 11, class: "strong", "data-funnel": `${arm}.${key}`,
        "data-value": raw(v)}, svg, (isNum(v) ? fmt(v) : DASH) + share);
      y += 18;
    }
    y += 14;
  }
  svg.setAttribute("viewBox", `0 0 600 ${y - 10}`);
}
function weekStart(label) {  // "2026-W02" -> its Monday (UTC ms)
  const m = /^(\d{4})-W(\d\d)$/.exec(label);
  if (!m) return null;
  const jan4 = Date.UTC(Number(m[1]), 0, 4);
  return jan4 - ((new Date(jan4).getUTCDay() + 6) % 7) * DAY + (Number(m[2]) - 1) * 7 * DAY;
}
function weekLabel(monday) {
  const year = new Date(monday + 3 * DAY).getUTCFullYear(), first = weekStart(year + "-W01");
  return year + "-W" + String(1 + Math.round((monday - first) / (7 * DAY))).padStart(2, "0");
}
function renderTrend(groups) {
  const svg = clear($("trend")), W = 600, H = 210, L = 36, R = 44, T = 10, B = 24;
  const byWeek = new Map(groups.map(g => [String(g.group), g]));
  const starts = groups.map(g => weekStart(String(g.group)));
  let weeks = groups.map(g => String(g.group));
  if (groups.length && starts.every(s => s !== null)) {  // weeks without cohorts drawn empty
    weeks = [];
    const last = Math.max(...starts);
    for (let w = Math.min(...starts); w <= last && weeks.length < 600; w += 7 * DAY) {
      weeks.push(weekLabel(w));
    }
  }
  svg.setAttribute("data-weeks", weeks.length);
  if (!weeks.length) {
    el("text", {x: W / 2, y: 60, "text-anchor": "middle"}, svg,
      "not enough data: no cohorts in the period");
    return;
  }
  const started = w => get(byWeek.get(w), "episodes.treated.started") || 0;
  const held = w => get(byWeek.get(w), "episodes.held_out.started") || 0;
  const top = 4 * Math.ceil(Math.max(4, ...weeks.map(w => started(w) + held(w))) / 4);
  const step = (W - L - R) / weeks.length, y = v => T + (H - T - B) * (1 - v / top);
  const yr = v => T + (H - T - B) * (1 - v);
  for (let i = 0; i <= 4; i++) {
    el("line", {class: "grid", x1: L, x2: W - R, y1: yr(i / 4), y2: yr(i / 4)}, svg);
    el("text", {x: L - 5, y: yr(i / 4) + 4, "text-anchor": "end"}, svg, fmt(top * i / 4));
    el("text", {x: W - R + 5, y: yr(i / 4) + 4}, svg, i * 25 + " %");
  }
  const every = Math.ceil(weeks.length / 8), bar = Math.max(2, step * 0.7);
  let d = "", pen = "M";
  weeks.forEach((w, i) => {
    const x = L + step * i, s = started(w), h = held(w), rate = get(byWeek.get(w), "win_back_rate");
    const g = el("g", {"data-week": w, "data-started": s, "data-held-out": h,
      "data-rate": raw(rate)}, svg);
    el("title", {}, g, `${w}: ${s} warned (treated), ${h} held out, win-back ${fmt(rate, "pct")}`);
    const bx = x + (step - bar) / 2;
    el("rect", {x: bx, y: y(s), width: bar, height: y(0) - y(s), fill: "var(--open)"}, g);
    el("rect", {x: bx, y: y(s + h), width: bar, height: y(0) - y(h), fill: "var(--grid)"}, g);
    if (isNum(rate)) {
      d += `${pen}${(x + step / 2).toFixed(1)},${yr(rate).toFixed(1)} `;
      pen = "L";
      el("circle", {cx: x + step / 2, cy: yr(rate), r: 3, fill: "var(--accent)"}, g);
    } else pen = "M";
    if (i % every === 0) {
      const newYear = i === 0 || w.slice(0, 4) !== weeks[i - every].slice(0, 4);
      el("text", {x: x + step / 2, y: H - 7, "text-anchor": "middle"}, svg,
        newYear ? w : w.slice(5));
    }
  });
  if (d) el("path", {class: "line", d: d}, svg);
}
function renderDrill(data, dimension) {
  const table = $("drill"), head = clear(table.tHead), body = clear(table.tBodies[0]);
  const foot = clear(table.tFoot), groups = [...listOr(data.groups)];
  table.setAttribute("data-dimension", dimension);
  table.setAttribute("data-sort", sortBy || "");
  lastDrill = [data, dimension];
  const hr = el("tr", {}, head);
  el("th", {"data-col": "group"}, hr, dimension.replace("_", " "));
  for (const [path, label] of COLUMNS) {
    el("th", {"data-col": path, title: "sort by " + label}, hr, label);
  }
  if (sortBy && sortBy !== "group") {
    const key = g => (isNum(get(g, sortBy)) ? get(g, sortBy) : -Infinity);
    groups.sort((a, b) => key(b) - key(a));
  }
  const row = (g, parent, name, attrs) => {
    const tr = el("tr", attrs, parent);
    el("td", {class: "text"}, tr, name);
    for (const [path, , kind] of COLUMNS) {
      const v = get(g, path);
      el("td", {"data-col": path, "data-value": raw(v),
        title: isNum(v) ? undefined : "not enough data"}, tr, fmt(v, kind));
    }
  };
  for (const g of groups) row(g, body, cell(g.group), {"data-group": String(g.group)});
  if (!groups.length) {
    el("td", {colspan: COLUMNS.length + 1, class: "text"}, el("tr", {}, body),
      "not enough data: no cohorts in the period");
  }
  row(objectOr(data.total), foot, "all", {id: "drill-total"});
}
function bars(svg, entries, attr, colors) {
  clear(svg);
  const total = entries.reduce((sum, [, n]) => sum + (isNum(n) ? n : 0), 0);
  const most = Math.max(1, ...entries.map(([, n]) => (isNum(n) ? n : 0)));
  svg.setAttribute("data-total", total);
  entries.forEach(([name, n], i) => {
    const y = 4 + i * 22, v = isNum(n) ? n : 0, width = 340 * v / most;
    const g = el("g", {[attr]: name, "data-value": raw(n)}, svg);
    el("text", {x: 0, y: y + 12}, g, name.replace(/_/g, " "));
    el("rect", {x: 140, y: y, height: 15, rx: 2, width: Math.max(v ? 2 : 0, width),
      fill: (colors && colors[name]) || "var(--accent)"}, g);
    el("text", {x: 146 + width, y: y + 12, class: "strong"}, g,
      `${fmt(v)}${total ? ` (${fmt(v / total, "pct")})` : ""}`);
  });
  if (!entries.length) el("text", {x: 0, y: 16}, svg, "no customers yet");
  svg.setAttribute("viewBox", `0 0 600 ${Math.max(24, 8 + entries.length * 22)}`);
}
function ordered(counts, order) {
  const rank = k => order.indexOf(k) + 1 || order.length + 1;
  return Object.entries(objectOr(counts))
    .sort((a, b) => rank(a[0]) - rank(b[0]) || a[0].localeCompare(b[0]));
}
function renderSegments(data) {
  bars($("segments-chart"), ordered(data.segments, SEGMENTS), "data-segment");
  bars($("bands-chart"), ordered(data.bands, BANDS), "data-band", BAND_COLORS);
  $("segments-note").textContent = "customers known now, whatever the period" +
    (incomplete(data) ? ` · incomplete: ${data.pending_partitions} partitions pending` : "");
}
function cloud(node, terms, count, title) {
  clear(node);
  const list = listOr(terms), most = Math.max(1, ...list.map(t => Number(t[count]) || 0));
  for (const t of list) {
    const n = Number(t[count]) || 0;
    el("span", {"data-term": String(t.term), "data-count": n, title: title(t)}, node, t.term)
      .style.fontSize = (12 + 20 * n / most).toFixed(1) + "px";
  }
  if (!list.length) el("em", {class: "note"}, node, "not enough data: no terms in the period");
}
function renderFeedback(data) {
  const table = $("feedback-table"), body = clear(table.tBodies[0]), foot = clear(table.tFoot);
  const row = (c, parent, name, attrs) => {
    const tr = el("tr", attrs, parent);
    el("td", {class: "text"}, tr, name);
    for (const [key, kind] of [["opened"], ["closed"], ["rated"], ["mean_satisfaction"],
      ["share_rated_low", "pct"], ["sla_breach_rate", "pct"]]) {
      el("td", {"data-col": key, "data-value": raw(c[key])}, tr, fmt(c[key], kind));
    }
    el("td", {class: "text", "data-col": "resolution_hours", "data-value": raw(c.resolution_hours)},
      tr,
      Object.entries(objectOr(c.resolution_hours)).map(([priority, r]) =>
        `${priority} ${fmt(get(r, "p50"))}/${fmt(get(r, "p90"))} h`).join(" · ") || DASH);
  };
  const categories = listOr(data.categories);
  for (const c of categories) row(c, body, c.category, {"data-category": String(c.category)});
  if (!categories.length) {
    el("td", {colspan: 8, class: "text"}, el("tr", {}, body), "no tickets in the period");
  }
  if (data.total) row(data.total, foot, "all", {id: "feedback-total"});
  const terms = objectOr(data.terms);
  cloud($("terms-frequent"), terms.most_frequent, "comments", t => `in ${t.comments} comments`);
  cloud($("terms-low"), terms.over_represented_in_low_rated, "low_rated_comments", t =>
    `in ${t.low_rated_comments} low-rated, ${t.other_comments} other comments (×${t.ratio})`);
  $("terms-note").textContent = `${fmt(terms.comments)} comments, ` +
    `${fmt(terms.low_rated_comments)} of them rated 1–2; size by comments with the term`;
}
function dl(parent, obj, id) {
  const list = el("dl", {id: id}, parent);
  for (const [k, v] of Object.entries(objectOr(obj))) {
    el("dt", {}, list, k.replace(/_/g, " "));
    el("dd", {"data-field": k, "data-value": raw(v)}, list, cell(v));
  }
}
function table(parent, id, title, rows, first, key) {
  el("h3", {}, parent, title);
  rows = listOr(rows).filter(r => r && typeof r === "object");
  if (!rows.length) return el("p", {class: "note", id: id}, parent, "none");
  const cols = [...new Set([...first.filter(c => rows.some(r => c in r)),
    ...rows.flatMap(Object.keys)])];
  const node = el("table", {id: id}, el("div", {class: "scroll"}, parent));
  const hr = el("tr", {}, el("thead", {}, node)), body = el("tbody", {}, node);
  for (const c of cols) el("th", {class: "text"}, hr, c.replace(/_/g, " "));
  for (const r of rows) {
    const tr = el("tr", {["data-" + key.replace(/_/g, "-")]: cell(r[key])}, body);
    for (const c of cols) {
      el("td", {class: "text", "data-col": c, "data-value": raw(r[c])}, tr, cell(r[c]));
    }
  }
  return node;
}
function sparkline(parent, points) {
  const pts = listOr(points).map(p => [Date.parse(get(p, "at")), get(p, "score")])
    .filter(([t, s]) => Number.isFinite(t) && isNum(s));
  const svg = el("svg", {id: "customer-trend", viewBox: "0 0 300 60", "data-points": pts.length},
    parent);
  if (pts.length < 2) { el("text", {x: 0, y: 30}, svg, "not enough data for a trend"); return; }
  const t0 = pts[0][0], span = Math.max(1, pts[pts.length - 1][0] - t0);
  const xy = ([t, s]) => [4 + 292 * (t - t0) / span,
    56 - 52 * Math.min(100, Math.max(0, s)) / 100];
  el("line", {class: "grid", x1: 0, x2: 300, y1: 30, y2: 30}, svg);
  el("path", {class: "line",
    d: "M" + pts.map(p => xy(p).map(n => n.toFixed(1)).join(",")).join(" L")}, svg);
  const [x, y] = xy(pts[pts.length - 1]);
  el("circle", {cx: x, cy: y, r: 3, fill: "var(--accent)"}, svg);
}
function renderCustomer(c) {
  const box = clear($("customer")), score = objectOr(c.score);
  box.setAttribute("data-customer", String(c.customer_id));
  const top = el("div", {class: "cols"}, box), left = el("div", {}, top);
  const mid = el("div", {}, top), right = el("div", {}, top);
  el("h3", {"data-field": "customer_id"}, left, c.customer_id);
  const big = el("div", {class: "big"}, left);
  el("span", {"data-field": "score.value", "data-value": raw(score.value)}, big, fmt(score.value));
  el("small", {class: "note", "data-field": "score.band"}, big, " " + cell(score.band));
  const rfm = ["r", "f", "m"].map(k => k.toUpperCase() + " " + cell(get(c, "rfm." + k)));
  el("p", {class: "note", "data-field": "segment", "data-value": raw(c.segment)}, left,
    `segment ${cell(c.segment)} · RFM ${rfm.join(" ")} · next due ${cell(c.next_due)}`);
  const comps = el("svg", {id: "customer-components", viewBox: "0 0 300 70"}, left);
  Object.entries(objectOr(score.components)).forEach(([k, v], i) => {
    const n = isNum(v) ? Math.min(100, Math.max(0, v)) : 0;
    const g = el("g", {"data-component": k, "data-value": raw(v)}, comps);
    el("text", {x: 0, y: 12 + i * 20}, g, k);
    el("rect", {x: 80, y: 2 + i * 20, height: 13, width: 1.6 * n, fill: "var(--accent)", rx: 2}, g);
    el("text", {x: 86 + 1.6 * n, y: 12 + i * 20, class: "strong"}, g, fmt(v));
  });
  el("h3", {}, left, "score trend");
  sparkline(left, c.score_trend);
  el("h3", {}, mid, "profile");
  dl(mid, c.profile, "customer-profile");
  el("h3", {}, right, "lifetime");
  dl(right, c.lifetime, "customer-lifetime");
  const known = ["customer_id", "profile", "lifetime", "score", "score_trend", "segment", "rfm",
    "open_tickets", "actions", "open_episodes", "next_due"];
  const other = Object.fromEntries(Object.entries(c).filter(([k]) => !known.includes(k)));
  if (Object.keys(other).length) {
    el("h3", {}, right, "more");
    dl(right, other, "customer-more");
  }
  table(box, "customer-actions", "actions", c.actions,
    ["at", "type", "rule_id", "rule_version", "caused_by", "action_id"], "action_id");
  table(box, "customer-tickets", "open tickets", c.open_tickets, ["ticket_id"], "ticket_id");
  table(box, "customer-episodes", "open episodes", c.open_episodes, ["rule_id"], "rule_id");
}
async function showCustomer(id) {
  const box = $("customer");
  if (!id) return;
  clear(box).setAttribute("data-customer", "");
  box.setAttribute("data-state", "loading");
  el("p", {class: "note"}, box, "loading " + id + "…");
  try {
    renderCustomer(await getJSON("/customers/" + encodeURIComponent(id)));
  } catch (error) {
    el("p", {class: "error", id: "customer-error"}, clear(box), `${id}: ${error.message}`);
  }
  box.setAttribute("data-state", "ready");
}
// -- loading -----------------------------------------------------------------------------
function panel(id, promise, render) {
  const error = id && $(id + "-error");
  return promise.then(render).then(() => { if (error) error.hidden = true; }, problem => {
    if (error) {
      error.hidden = false;
      error.textContent = "could not load: " + problem.message;
    }
    throw problem;
  });
}
function tick() {
  if (document.hidden) refreshTimer = setTimeout(tick, 60000);
  else load();
}
async function load() {
  const gen = ++generation, p = period(), dimension = $("dimension").value;
  if (p.since && p.until && p.since >= p.until) {
    $("status").textContent = "the period ends before it starts";
    $("status").className = "bad";
    return;
  }
  clearTimeout(refreshTimer);
  saveHash();
  document.documentElement.dataset.state = "loading";
  const current = () => gen === generation, partial = {};
  const kpis = extra => getJSON("/kpis?" + qs({...p, ...extra}));
  $("csv").setAttribute("href", "/kpis?" + qs({...p, group_by: dimension, format: "csv"}));
  const drill = kpis({group_by: dimension}), days = [$("since").value, $("until").value];
  const rules = dimension === "rule" && !p.rule ? drill
    : getJSON("/kpis?" + qs({since: p.since, until: p.until, group_by: "rule"}));
  const results = await Promise.allSettled([
    panel("tiles", drill, d => {
      if (!current()) return;
      partial.kpis = d.partial ? d.pending_partitions : null;
      asOf = d.as_of || asOf;
      renderTiles(objectOr(d.total));
      renderFunnel(objectOr(get(d, "total.episodes")));
      renderDrill(d, dimension);
      $("period-label").textContent = (p.since || p.until
        ? `cohorts started from ${days[0] || "the first"} to ${days[1] || "the last"} (UTC days)`
        : "all cohorts") + (p.rule ? ` · rule ${p.rule}` : " · all rules") +
        ` · as of ${cell(d.as_of)}`;
    }),
    panel("trend", kpis({group_by: "week"}), d => current() && renderTrend(listOr(d.groups))),
    panel(null, rules, d => current() &&
      ruleOptions(listOr(d.groups).map(g => String(g.group)), $("rule").value)),
    panel("segments", getJSON("/segments"), d => {
      if (!current()) return;
      partial.segments = incomplete(d) ? d.pending_partitions : null;
      renderSegments(d);
    }),
    panel("feedback", getJSON("/feedback?" + qs({since: p.since, until: p.until})), d => {
      if (!current()) return;
      partial.feedback = d.partial ? d.pending_partitions : null;
      renderFeedback(d);
    }),
  ]);
  if (!current()) return;
  const pending = Object.values(partial).filter(v => v !== null && v !== undefined).map(Number);
  const note = $("partial-note");
  note.hidden = !pending.length;
  note.textContent = pending.length ? "Partial figures: partitions of this worker are still " +
    `recovering (${Math.max(0, ...pending.filter(Number.isFinite))} pending); ` +
    "the numbers will grow." : "";
  const failed = results.filter(r => r.status === "rejected").length;
  $("status").className = failed ? "bad" : "";
  $("status").textContent = (failed ? `${failed} of ${results.length} requests failed · ` : "") +
    "updated " + new Date().toLocaleTimeString();
  document.documentElement.dataset.query = qs(p);
  document.documentElement.dataset.generation = gen;
  document.documentElement.dataset.state = "ready";
  refreshTimer = setTimeout(tick, 60000);
}
$("period").addEventListener("submit", event => { event.preventDefault(); load(); });
$("rule").addEventListener("change", () => load());
$("dimension").addEventListener("change", () => { sortBy = null; load(); });
document.querySelectorAll("[data-preset]").forEach(button =>
  button.addEventListener("click", () => preset(Number(button.dataset.preset))));
$("drill").tHead.addEventListener("click", event => {
  const th = event.target.closest("th");
  if (th && lastDrill) {
    sortBy = th.dataset.col;
    renderDrill(...lastDrill);
  }
});
$("customer-form").addEventListener("submit", event => {
  event.preventDefault();
  saveHash();
  showCustomer($("customer-id").value.trim());
});
// The CSV is fetched with the token (a plain link would not send it) and saved from a blob.
$("csv").addEventListener("click", async event => {
  event.preventDefault();
  const link = $("csv");
  try {
    const answer = await authFetch(link.getAttribute("href"), {cache: "no-store"}, 60000);
    if (!answer.ok) throw new Error(`HTTP ${answer.status}`);
    const saved = document.createElement("a");
    saved.href = URL.createObjectURL(await answer.blob());
    saved.download = "kpis.csv";
    document.body.appendChild(saved);
    saved.click();
    saved.remove();
    setTimeout(() => URL.revokeObjectURL(saved.href), 60000);
  } catch (error) {
    $("status").textContent = `the CSV could not be downloaded (${error.message})`;
    $("status").className = "bad";
  }
});
const initialCustomer = readHash();
load();
if (initialCustomer) showCustomer(initialCustomer);
"""

BODY = f"""
<header>
<h1>Retention insights</h1>
<form id="period">
<label>cohorts from <input type="date" id="since"></label>
<label>to <input type="date" id="until"></label>
<select id="rule" aria-label="rule"><option value="">all rules</option></select>
<button type="submit" id="apply">Apply</button>
<button type="button" data-preset="0">everything</button>
<button type="button" data-preset="90">last 90 days</button>
<button type="button" data-preset="30">last 30 days</button>
</form>
<span id="status" role="status">loading…</span>{LOGOUT_BUTTON}
</header>
{LOGIN_HTML}
<p id="partial-note" class="warn" hidden></p>
<main>
<section id="tiles-card" class="wide"><h2>The period</h2>
<p id="period-label" class="note"></p><p id="tiles-error" class="error" hidden></p>
<div id="tiles"></div></section>
<section id="funnel-card"><h2>Win-back funnel</h2>
<p class="note">warned = episodes started; held out = warned but not treated (the control)</p>
<svg id="funnel" viewBox="0 0 600 200" role="img" aria-label="win-back funnel"></svg></section>
<section id="trend-card"><h2>Per week of warning</h2>
<p class="note">bars: episodes started (dark: treated, light: held out) · line: win-back rate of
the decided ones</p><p id="trend-error" class="error" hidden></p>
<svg id="trend" viewBox="0 0 600 210" role="img" aria-label="weekly trend"></svg></section>
<section id="drill-card" class="wide"><h2>Drill-down</h2>
<form id="drill-form"><label>by <select id="dimension">
<option value="rule">rule</option><option value="tier">tier</option>
<option value="segment">segment</option><option value="account_manager">account manager</option>
<option value="region">region</option><option value="assignee">assignee (tasks)</option>
<option value="month">month</option></select></label>
<a id="csv" href="/kpis?format=csv" download="kpis.csv">download CSV</a></form>
<p class="note">click a heading to sort · a customer's dimensions as they were when the episode
started</p>
<div class="scroll"><table id="drill"><thead></thead><tbody></tbody><tfoot></tfoot></table></div>
</section>
<section id="segments-card"><h2>RFM segments</h2><p id="segments-note" class="note"></p>
<p id="segments-error" class="error" hidden></p>
<svg id="segments-chart" viewBox="0 0 600 24" role="img" aria-label="customers by segment"></svg>
<h2>Health bands</h2>
<svg id="bands-chart" viewBox="0 0 600 24" role="img" aria-label="customers by band"></svg>
</section>
<section id="feedback-card"><h2>Feedback</h2><p id="feedback-error" class="error" hidden></p>
<div class="scroll"><table id="feedback-table"><thead><tr><th>category</th><th>opened</th>
<th>closed</th><th>rated</th><th>satisfaction</th><th>rated 1–2</th><th>past SLA</th>
<th>resolution p50 / p90</th></tr></thead><tbody></tbody><tfoot></tfoot></table></div>
<div class="cols"><div><h3>Most frequent terms</h3><div id="terms-frequent" class="cloud"></div>
</div><div><h3>Over-represented in low-rated tickets</h3><div id="terms-low" class="cloud"></div>
</div></div>
<p id="terms-note" class="note"></p></section>
<section id="customer-card" class="wide"><h2>Customer 360</h2>
<form id="customer-form"><input id="customer-id" placeholder="customer id" aria-label="customer id"
 autocomplete="off"><button type="submit" id="customer-show">Show</button></form>
<div id="customer"></div></section>
</main>
"""


PAGE = f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>churnguard insights</title>
<link rel="icon" href="data:,">
<style>{STYLE}</style>
</head>
<body>{BODY}<script>{SCRIPT}</script>
</body>
</html>
"""

# Nothing but this page's own script and style, and its data from the same origin.
CSP = content_security_policy(SCRIPT, STYLE)


async def page(request: web.Request) -> web.Response:
    """GET /insights: the page, with its Content-Security-Policy."""
    return web.Response(text=PAGE, content_type="text/html", charset="utf-8",
                        headers={"Content-Security-Policy": CSP, "Cache-Control": "no-store"})
