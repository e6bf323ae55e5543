"""`churnguard replay EVENTS --kpis`: the retention KPIs of a history, computed by the same
core as the worker's (outcome records folded into KPI aggregates), as text or JSON."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import orjson

from churnguard.core.feedback import CommentTerms, FeedbackAggregates
from churnguard.core.feedback import report as feedback_report
from churnguard.core.kpis import GroupBy, KpiAggregates, report
from churnguard.core.outcomes import OutcomeRecord
from churnguard.core.processor import Engine
from churnguard.replay import replay
from schemas.events import Event


def replay_outcomes(events: Sequence[Event], engine: Engine, *, until: float | None,
                    comments: list[CommentTerms] | None = None) -> list[OutcomeRecord]:
    outcomes: list[OutcomeRecord] = []
    if comments is not None:
        engine = replace(engine, analyse_comments=True)
    for _ in replay(events, engine, until=until, outcomes=outcomes, comments=comments):
        pass
    return outcomes


def kpis_of(events: Sequence[Event], engine: Engine, *, until: float | None,
            group_by: GroupBy | None = None, rule: str | None = None,
            since: float | None = None) -> dict[str, Any]:
    """The KPIs and, under "feedback", what the tickets and their comments say."""
    comments: list[CommentTerms] = []
    outcomes = replay_outcomes(events, engine, until=until, comments=comments)
    aggregates = KpiAggregates()
    aggregates.fold_all(outcomes)
    if until is not None:
        aggregates.as_of = max(aggregates.as_of, until)  # the history's end, not its last act
    result = report(aggregates, engine.pack.kpis, since=since, group_by=group_by, rule=rule)
    result["pack_version"] = engine.pack.version
    tickets = FeedbackAggregates()
    tickets.fold_all(outcomes, comments)
    result["feedback"] = feedback_report(tickets, since=since)
    return result


def kpis_csv(result: dict[str, Any]) -> str:
    """A KPI report as CSV for spreadsheets: one row for the total, one per group; nested
    figures as dotted columns (episodes.treated.recovered), rates as fractions."""
    rows = [{"group": "(total)", **_flat(result["total"])}]
    rows += [{"group": _cell(row["group"]),
              **_flat({k: v for k, v in row.items() if k != "group"})}
             for row in result["groups"]]
    columns = list(dict.fromkeys(column for row in rows for column in row))
    out = io.StringIO()
    writer = csv.DictWriter(out, columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def _flat(figures: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for name, value in figures.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{name}."))
        elif isinstance(value, list | tuple) and len(value) == 2:  # an interval
            flat[f"{prefix}{name}.low"], flat[f"{prefix}{name}.high"] = value
        else:
            flat[f"{prefix}{name}"] = "" if value is None else _cell(value)
    return flat


def _cell(value: Any) -> Any:
    # A group named by upstream data (a region, an account manager) must not become a
    # spreadsheet formula.
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def render_kpis(result: dict[str, Any], *, as_json: bool) -> str:
    if as_json:
        return orjson.dumps(result, option=orjson.OPT_INDENT_2).decode() + "\n"
    total = result["total"]
    lines = [f"KPIs as of {result['as_of'] or '(no outcomes)'}"
             + (f", rule {result['rule']}" if result["rule"] else "")
             + (f", cohorts from {result['since']}" if result["since"] else "")
             + f" (pack version {result['pack_version']}); definitions: docs/kpis.md", ""]
    lines += _summary(total)
    if result["group_by"]:
        lines += ["", f"by {result['group_by']}:", *_table(result["groups"])]
    if "feedback" in result:
        lines += ["", *_feedback(result["feedback"])]
    return "\n".join(lines) + "\n"


def _feedback(feedback: dict[str, Any]) -> list[str]:
    rows = [("category", "opened", "closed", "mean rating", "rated 1-2", "SLA breached")]
    for c in [*feedback["categories"], {"category": "all", **feedback["total"]}]:
        rows.append((c["category"], str(c["opened"]), str(c["closed"]),
                     "-" if c["mean_satisfaction"] is None else f"{c['mean_satisfaction']:.2f}",
                     _pct(c["share_rated_low"]), _pct(c["sla_breach_rate"])))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["tickets by category:"] + [
        "  " + "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                         for i, (cell, w) in enumerate(zip(row, widths, strict=True)))
        for row in rows]
    terms = feedback["terms"]
    frequent = ", ".join(f"{t['term']} ({t['comments']})" for t in terms["most_frequent"][:10])
    over = ", ".join(f"{t['term']} (×{t['ratio']:g})"
                     for t in terms["over_represented_in_low_rated"][:10])
    lines += [f"comments: {terms['comments']} ({terms['low_rated_comments']} rated 1-2)",
              f"  most frequent terms: {frequent or '-'}",
              f"  over-represented in low-rated: {over or '-'}"]
    return lines


def _summary(f: dict[str, Any]) -> list[str]:
    treated, held = f["episodes"]["treated"], f["episodes"]["held_out"]
    ttr = f["time_to_recovery_hours"]
    uplift = f["uplift"]
    decided = treated["recovered"] + treated["expired"]
    if uplift["status"] == "ok":
        low, high = uplift["ci95"]
        uplift_text = (f"{_pct(uplift['difference'])} (95 % CI {_pct(low)} to {_pct(high)}; "
                       f"treated {_pct(uplift['treated_rate'])} of "
                       f"{uplift['treated_decided']}, held out {_pct(uplift['held_out_rate'])} "
                       f"of {uplift['held_out_decided']})")
    else:
        uplift_text = (f"not enough data ({uplift['treated_decided']} treated and "
                       f"{uplift['held_out_decided']} held-out episodes decided; 30 each needed)")
    rows = [
        ("win-back episodes", f"{treated['started']} started: {treated['recovered']} recovered, "
         f"{treated['expired']} expired, {treated['open']} open; held out {held['started']} "
         f"({held['recovered']} recovered, {held['expired']} expired, {held['open']} open)"),
        ("win-back rate", f"{_pct(f['win_back_rate'])} of {decided} decided"),
        ("time to recovery", f"mean {_hours(ttr['mean'])}, median {_hours(ttr['median'])}"),
        ("win-back purchase rate", _pct(f["win_back_purchase_rate"])),
        ("repeat purchase rate", f"{_pct(f['repeat_purchase_rate'])} of "
         f"{f['repeat_purchases']['first_purchases']} first purchases 90+ days old"),
        ("coupon redemption", f"{_pct(f['coupon_redemption_rate'])} "
         f"({f['coupons']['redeemed']} of {f['coupons']['issued']})"),
        ("follow-up completion", f"{_pct(f['follow_up_completion_rate'])} "
         f"({f['tasks']['completed']} of {f['tasks']['issued']} tasks)"),
        ("notification open rate", f"{_pct(f['notification_open_rate'])} "
         f"({f['notifications']['opened']} of {f['notifications']['issued']})"),
        ("recovered revenue", f"{f['recovered_revenue']:,.2f}; cost {f['cost']:,.2f}; "
         f"ROI {'-' if f['roi'] is None else format(f['roi'], '.2f')}"),
        ("uplift", uplift_text),
    ]
    width = max(len(name) for name, _ in rows)
    return [f"  {name:<{width}}  {text}" for name, text in rows]


_COLUMNS = ("episodes", "win-back", "median h", "purchase", "redeemed", "completed", "opened",
            "revenue", "cost", "ROI")


def _table(groups: list[dict[str, Any]]) -> list[str]:
    rows = [("group", *_COLUMNS)]
    for g in groups:
        rows.append((
            str(g["group"]), str(g["episodes"]["treated"]["started"]),
            _pct(g["win_back_rate"]), _hours(g["time_to_recovery_hours"]["median"], ""),
            _pct(g["win_back_purchase_rate"]), _pct(g["coupon_redemption_rate"]),
            _pct(g["follow_up_completion_rate"]), _pct(g["notification_open_rate"]),
            f"{g['recovered_revenue']:,.2f}", f"{g['cost']:,.2f}",
            "-" if g["roi"] is None else f"{g['roi']:.2f}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  " + "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                             for i, (cell, w) in enumerate(zip(row, widths, strict=True)))
            for row in rows]


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f} %"


def _hours(value: float | None, unit: str = " h") -> str:
    return "-" if value is None else f"{value:g}{unit}"
