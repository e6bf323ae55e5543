"""Retention KPIs from outcome records (core/outcomes.py): `KpiAggregates.fold` adds one
record to per-day cells (cohort day × rule × dimension value), `report` sums the cells a
question needs and computes the figures. Nothing here scans customers or topics: the worker
keeps the cells in a table, replay in memory, and both fold the same records. Money and
durations are summed as integers (ten-thousandths, milliseconds), so the figures are the
same whatever order the records were folded in. Definitions: docs/kpis.md."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from churnguard.core.clock import DAY, day_number, parse_rfc3339, rfc3339
from churnguard.core.outcomes import OutcomeRecord
from churnguard.core.specs import KpiSettings
from churnguard.core.state import SPEND_SCALE

# The customer's dimensions every record carries (at its cohort moment); a task's assignee
# is a dimension of task figures only.
DIMENSIONS = ("tier", "segment", "account_manager", "region")
GroupBy = Literal["rule", "tier", "segment", "account_manager", "region", "assignee", "day",
                  "week", "month"]
GROUP_BY: tuple[GroupBy, ...] = ("rule", "tier", "segment", "account_manager", "region",
                                 "assignee", "day", "week", "month")
# A report of one dimension's value (one account manager's customers): what it can group by.
Slice = tuple[str, str]
SLICE_GROUPS: tuple[GroupBy, ...] = ("rule", "day", "week", "month")
NONE = "(none)"  # a dimension without a value (no account manager): still a row of its own
# Uplift is "not enough data" below this many decided episodes in either arm.
MIN_DECIDED_PER_ARM = 30
Z_95 = 1.959964

# (cohort day, rule id, dimension or "" for the total, value or "").
Cell = tuple[int, str, str, str]
TOTAL = ("", "")


# (rule id, dimension value) -> counts, within one dimension and one day or month.
_Period = dict[tuple[str, str], Counter[Any]]


@dataclass
class KpiAggregates:
    cells: dict[Cell, Counter[str]] = field(default_factory=dict)
    # Minutes to recovery of treated episodes (count per whole minute), per cell: medians.
    recovery_minutes: dict[Cell, Counter[int]] = field(default_factory=dict)
    as_of: float = 0.0  # the latest outcome folded (event time)
    # The same cells by dimension and day (the very counters of `cells`), and summed by
    # dimension and calendar month: a report reads the dimension it groups by only, and a
    # whole month in one step, so it costs months + edge days, not days x dimension values.
    _days: dict[str, dict[int, _Period]] = field(default_factory=dict, compare=False,
                                                 repr=False)
    _day_minutes: dict[str, dict[int, _Period]] = field(default_factory=dict, compare=False,
                                                        repr=False)
    _months: dict[str, dict[int, _Period]] = field(default_factory=dict, compare=False,
                                                   repr=False)
    _month_minutes: dict[str, dict[int, _Period]] = field(default_factory=dict,
                                                          compare=False, repr=False)

    def add(self, cell: Cell, counts: Mapping[str, int],
            minutes: Mapping[int, int] | None = None) -> None:
        """Add counts (and recovery minutes) to one cell; the only way cells grow."""
        day, rule, dimension, value = cell
        place = (rule, value)
        month = _month_of(day)
        counter = self.cells.get(cell)
        if counter is None:
            counter = self.cells[cell] = Counter()
            self._days.setdefault(dimension, {}).setdefault(day, {})[place] = counter
        add_counts(counter, counts)
        add_counts(_period(self._months, dimension, month, place), counts)
        if minutes:
            histogram = self.recovery_minutes.get(cell)
            if histogram is None:
                histogram = self.recovery_minutes[cell] = Counter()
                self._day_minutes.setdefault(dimension, {}).setdefault(day, {})[place] = (
                    histogram)
            add_counts(histogram, minutes)
            add_counts(_period(self._month_minutes, dimension, month, place), minutes)

    def fold(self, record: OutcomeRecord) -> None:
        found = contribution(record)
        if found is None:
            return
        self.as_of = max(self.as_of, found.at)
        day, rule, counts, histogram = found.day, found.rule, found.counts, found.minutes
        for dimension, value in found.places:
            self.add((day, rule, dimension, value), counts, histogram)

    def fold_all(self, records: Iterable[OutcomeRecord]) -> None:
        for record in records:
            self.fold(record)

    def merge(self, other: KpiAggregates) -> None:
        """Add another worker's (another partition's) aggregates."""
        for cell, counter in other.cells.items():
            self.add(cell, counter, other.recovery_minutes.get(cell))
        self.as_of = max(self.as_of, other.as_of)


@dataclass(frozen=True, slots=True)
class Contribution:
    """What one outcome record adds: `counts` (and recovery `minutes`) to the cell of its
    cohort day and rule in every (dimension, value) of `places`."""

    at: float
    day: int
    rule: str
    places: list[tuple[str, str]]
    counts: dict[str, int]
    minutes: dict[int, int] | None


def contribution(record: OutcomeRecord) -> Contribution | None:
    counts = _counts(record)
    if not counts:
        return None
    places = [TOTAL, *((name, record[name] or NONE) for name in DIMENSIONS)]
    if record.get("action_type") == "task":
        places.append(("assignee", record["target"] or NONE))
    minutes = _recovery_minutes(record)
    return Contribution(parse_rfc3339(record["at"]), day_number(parse_rfc3339(record["cohort_at"])),
                        record["rule_id"], places, counts,
                        None if minutes is None else {minutes: 1})


def add_counts(counter: dict[Any, int], counts: Mapping[Any, int]) -> None:
    """Counter.update for a mapping, without its per-call isinstance(Mapping) check: the
    aggregation's innermost step (several per outcome record, on the hot path)."""
    get = counter.get
    for key, n in counts.items():
        counter[key] = get(key, 0) + n


def _period(index: dict[str, dict[int, _Period]], dimension: str, period: int,
            place: tuple[str, str]) -> Counter[Any]:
    cells = index.setdefault(dimension, {}).setdefault(period, {})
    counter = cells.get(place)
    if counter is None:
        counter = cells[place] = Counter()
    return counter


_MONTHS: dict[int, int] = {}


def _month_of(day: int) -> int:
    """Months since 1970-01 (UTC) of a day number."""
    month = _MONTHS.get(day)
    if month is None:
        moment = datetime.fromtimestamp(day * DAY, UTC)
        month = _MONTHS[day] = (moment.year - 1970) * 12 + moment.month - 1
    return month


def _days_of_month(month: int) -> tuple[int, int]:
    """The first and last day numbers of a month (months since 1970-01)."""
    year, index = divmod(month, 12)
    start = datetime(1970 + year, index + 1, 1, tzinfo=UTC)
    following = datetime(1970 + year + (index == 11), (index + 1) % 12 + 1, 1, tzinfo=UTC)
    return int(start.timestamp() // DAY), int(following.timestamp() // DAY) - 1


def _counts(record: OutcomeRecord) -> dict[str, int]:
    kind = record["kind"]
    arm = record.get("arm", "")
    match kind:
        case "episode_started":
            return {f"{arm}.started": 1}
        case "episode_recovered":
            counts = {f"{arm}.recovered": 1}
            if arm == "treated":
                counts["treated.recovery_ms"] = round(record["seconds_to_recovery"] * 1000)
            return counts
        case "episode_expired":
            return {f"{arm}.expired": 1}
        case "episode_revenue":
            counts = {f"{arm}.revenue_e4": record["amount_e4"]}
            if record["first"]:
                counts[f"{arm}.purchased"] = 1
            return counts
        case "action_issued":
            return {f"issued.{record['action_type']}": 1, "cost_e4": record["cost_e4"]}
        case "coupon_redeemed":
            return {"coupons.redeemed": 1, "cost_e4": record["cost_e4"]}
        case "action_feedback":
            return {f"feedback.{record['action_type']}.{record['status']}": 1}
        case "first_purchase":
            return {"first_purchases": 1}
        case "repeat_purchase":
            return {"repeat_purchases": 1}
    return {}  # a kind from a newer version: not counted here


def _recovery_minutes(record: OutcomeRecord) -> int | None:
    if record["kind"] != "episode_recovered" or record.get("arm") != "treated":
        return None
    return int(record["seconds_to_recovery"] // 60)


def period_of(day: int, group_by: str) -> str:
    moment = datetime.fromtimestamp(day * DAY, UTC).date()
    if group_by == "week":
        year, week, _ = moment.isocalendar()
        return f"{year}-W{week:02d}"
    if group_by == "month":
        return f"{moment.year}-{moment.month:02d}"
    return moment.isoformat()


@dataclass
class KpiSums:
    """The counts a report's figures are computed from: the total and each group's, summed
    over the cells a question selects. Sums of several workers add up (`merge`), so each
    worker sums its own partitions and one computes the figures."""

    total: Counter[str] = field(default_factory=Counter)
    total_minutes: Counter[int] = field(default_factory=Counter)
    groups: dict[str, tuple[Counter[str], Counter[int]]] = field(default_factory=dict)

    def merge(self, other: KpiSums) -> None:
        self.total.update(other.total)
        self.total_minutes.update(other.total_minutes)
        for key, (counts, minutes) in other.groups.items():
            group, group_minutes = self.groups.setdefault(key, (Counter(), Counter()))
            group.update(counts)
            group_minutes.update(minutes)

    def to_json(self) -> dict[str, Any]:
        return {"total": self.total, "total_minutes": _keyed(self.total_minutes),
                "groups": {key: [counts, _keyed(minutes)]
                           for key, (counts, minutes) in self.groups.items()}}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> KpiSums:
        return cls(Counter(data["total"]), _unkeyed(data["total_minutes"]),
                   {key: (Counter(counts), _unkeyed(minutes))
                    for key, (counts, minutes) in data["groups"].items()})


def _keyed(minutes: Mapping[int, int]) -> dict[str, int]:
    return {str(m): n for m, n in minutes.items()}


def _unkeyed(minutes: Mapping[str, int]) -> Counter[int]:
    return Counter({int(m): n for m, n in minutes.items()})


def report(
    aggregates: KpiAggregates | Sequence[KpiAggregates],
    settings: KpiSettings,
    *,
    since: float | None = None,
    until: float | None = None,
    group_by: GroupBy | None = None,
    rule: str | None = None,
    as_of: float | None = None,
    within: Slice | None = None,
) -> dict[str, Any]:
    """The KPIs of the cohorts that started in [since, until) (by day), in total and per
    value of `group_by`, optionally of one rule only (`(none)`: what no rule caused, such
    as purchases); of several aggregates (the worker's partitions) as of their sum.
    `as_of`: the moment the figures are of (the worker's clock; default the latest outcome
    folded), which decides whose repeat-purchase window has elapsed. `within`: one
    dimension's value only (one account manager's customers), see `sums`."""
    parts = [aggregates] if isinstance(aggregates, KpiAggregates) else aggregates
    if as_of is None:
        as_of = max((part.as_of for part in parts), default=0.0)
    summed = sums(parts, settings, since=since, until=until, group_by=group_by, rule=rule,
                  as_of=as_of, within=within)
    return report_of(summed, settings, since=since, until=until, group_by=group_by,
                     rule=rule, as_of=as_of, within=within)


def sums(
    parts: Sequence[KpiAggregates],
    settings: KpiSettings,
    *,
    since: float | None,
    until: float | None,
    group_by: GroupBy | None,
    rule: str | None,
    as_of: float,
    within: Slice | None = None,
) -> KpiSums:
    """`within` (dimension, value): the total is that value's cells, not every customer's,
    and the groups split those cells only, so the groups a slice offers are `SLICE_GROUPS`
    (the cells are per dimension, never per pair of dimensions)."""
    first = None if since is None else day_number(since)
    last = None if until is None else day_number(until - 0.001)
    # A first purchase counts for the repeat rate once its whole window has elapsed.
    repeat_days = math.ceil(settings.repeat_purchase_days)
    eligible_until = day_number(as_of) - repeat_days - 1
    if within is not None:
        if within[0] not in DIMENSIONS:
            raise ValueError(f"not a dimension of the KPI cells: {within[0]!r}")
        if group_by is not None and group_by not in (*SLICE_GROUPS, within[0]):
            raise ValueError(f"a slice is grouped by {', '.join(SLICE_GROUPS)} only")
        total_dimension, value = within
        dimension = total_dimension
    else:
        total_dimension, value = "", None
        dimension = group_by if group_by in (*DIMENSIONS, "assignee") else ""
    wanted_rule = None if rule is None else ("" if rule == NONE else rule)
    summed = KpiSums()
    for part in parts:
        for cell_dimension in dict.fromkeys((total_dimension, dimension)):
            # Day and week groups need each day's cells; every other question takes a
            # month whole where it lies within the period and on one side of the
            # repeat-purchase cut-off.
            by_day = cell_dimension == total_dimension and group_by in ("day", "week")
            for period, cells, minutes, eligible in _periods(
                    part, cell_dimension, first, last, eligible_until, by_day=by_day):
                _sum_period(summed, period, cells, minutes, eligible,
                            total=cell_dimension == total_dimension,
                            group_by=group_by if cell_dimension == dimension else None,
                            rule=wanted_rule, value=value)
    return summed


def _periods(part: KpiAggregates, dimension: str, first: int | None, last: int | None,
             eligible_until: int, *, by_day: bool
             ) -> Iterator[tuple[tuple[str, int], _Period, _Period, bool]]:
    """(("day" or "month", number), cells, minutes, eligible) covering [first, last]."""
    days = part._days.get(dimension, {})
    day_minutes = part._day_minutes.get(dimension, {})
    empty: _Period = {}

    def each_day(lower: int | None, upper: int | None) -> Iterator[
            tuple[tuple[str, int], _Period, _Period, bool]]:
        if lower is not None and upper is not None and upper - lower < len(days):
            wanted: Iterable[int] = (d for d in range(lower, upper + 1) if d in days)
        else:
            wanted = (d for d in days if (lower is None or d >= lower)
                      and (upper is None or d <= upper))
        for day in wanted:
            yield ("day", day), days[day], day_minutes.get(day, empty), day <= eligible_until

    if by_day:
        yield from each_day(first, last)
        return
    month_minutes = part._month_minutes.get(dimension, {})
    for month, cells in part._months.get(dimension, {}).items():
        start, end = _days_of_month(month)
        if (last is not None and start > last) or (first is not None and end < first):
            continue
        inside = (first is None or start >= first) and (last is None or end <= last)
        one_side = end <= eligible_until or start > eligible_until
        if inside and one_side:
            yield ("month", month), cells, month_minutes.get(month, empty), (
                end <= eligible_until)
        else:
            lower = start if first is None else max(start, first)
            upper = end if last is None else min(end, last)
            yield from each_day(lower, upper)


def _sum_period(summed: KpiSums, period: tuple[str, int], cells: _Period, minutes: _Period,
                eligible: bool, *, total: bool, group_by: GroupBy | None,
                rule: str | None, value: str | None) -> None:
    kind, number = period
    groups = summed.groups
    key = ""
    if group_by in ("day", "week", "month"):
        day = number if kind == "day" else _days_of_month(number)[0]
        key = period_of(day, group_by)
    for place, counter in cells.items():
        cell_rule, cell_value = place
        if (rule is not None and cell_rule != rule) or (value is not None
                                                          and cell_value != value):
            continue
        counts = _with_eligibility(counter, eligible)
        histogram = minutes.get(place)
        if total:
            summed.total.update(counts)
            if histogram:
                summed.total_minutes.update(histogram)
        if group_by is None:
            continue
        if group_by == "rule":
            key = cell_rule or NONE
        elif group_by not in ("day", "week", "month"):
            key = cell_value
        group, group_minutes = groups.setdefault(key, (Counter(), Counter()))
        group.update(counts)
        if histogram:
            group_minutes.update(histogram)


def report_of(summed: KpiSums, settings: KpiSettings, *, since: float | None,
              until: float | None, group_by: GroupBy | None, rule: str | None,
              as_of: float, within: Slice | None = None) -> dict[str, Any]:
    return {
        "as_of": rfc3339(as_of) if as_of else None,
        "since": None if since is None else rfc3339(since),
        "until": None if until is None else rfc3339(until),
        "rule": rule,
        "group_by": group_by,
        "within": None if within is None else {within[0]: within[1]},
        "total": figures(summed.total, summed.total_minutes, settings),
        "groups": [{"group": key, **figures(counts, minutes, settings)}
                   for key, (counts, minutes) in sorted(summed.groups.items())],
    }


def _with_eligibility(counter: Counter[str], eligible: bool) -> Counter[str]:
    if not eligible or not (counter["first_purchases"] or counter["repeat_purchases"]):
        return counter
    counts = Counter(counter)
    counts["eligible.first_purchases"] = counter["first_purchases"]
    counts["eligible.repeat_purchases"] = counter["repeat_purchases"]
    return counts


def figures(counts: Mapping[str, int], recovery_minutes: Mapping[int, int],
            settings: KpiSettings) -> dict[str, Any]:
    """Every KPI of one group of cells (docs/kpis.md says how each is defined)."""
    arms = {arm: _arm(counts, arm) for arm in ("treated", "held_out")}
    treated = arms["treated"]
    decided = treated["recovered"] + treated["expired"]
    revenue = counts.get("treated.revenue_e4", 0) / SPEND_SCALE
    cost = counts.get("cost_e4", 0) / SPEND_SCALE
    mean_ms = (counts.get("treated.recovery_ms", 0) / treated["recovered"]
               if treated["recovered"] else None)
    median = _median(recovery_minutes)
    return {
        "episodes": arms,
        "win_back_rate": _rate(treated["recovered"], decided),
        "time_to_recovery_hours": {
            "mean": None if mean_ms is None else round(mean_ms / 3_600_000, 3),
            "median": None if median is None else round(median / 60, 3),
        },
        "win_back_purchase_rate": _rate(counts.get("treated.purchased", 0), decided),
        **_share(counts, "repeat_purchase_rate", "repeat_purchases",
                 ("first_purchases", "eligible.first_purchases"),
                 ("repeated", "eligible.repeat_purchases")),
        **_share(counts, "coupon_redemption_rate", "coupons", ("issued", "issued.coupon"),
                 ("redeemed", "coupons.redeemed")),
        **_share(counts, "follow_up_completion_rate", "tasks", ("issued", "issued.task"),
                 ("completed", "feedback.task.completed")),
        **_share(counts, "notification_open_rate", "notifications",
                 ("issued", "issued.notification"), ("opened", "feedback.notification.opened")),
        "recovered_revenue": round(revenue, 4),
        "cost": round(cost, 4),
        "roi": (round((revenue * settings.gross_margin - cost) / cost, 4) if cost else None),
        "uplift": uplift(arms),
    }


def _share(counts: Mapping[str, int], rate: str, name: str, of: tuple[str, str],
           part: tuple[str, str]) -> dict[str, Any]:
    """A rate (part / of) and its two counts, each (name shown, counter)."""
    whole, share = counts.get(of[1], 0), counts.get(part[1], 0)
    return {rate: _rate(share, whole), name: {of[0]: whole, part[0]: share}}


def _arm(counts: Mapping[str, int], arm: str) -> dict[str, int]:
    started = counts.get(f"{arm}.started", 0)
    recovered = counts.get(f"{arm}.recovered", 0)
    expired = counts.get(f"{arm}.expired", 0)
    return {"started": started, "recovered": recovered, "expired": expired,
            "open": started - recovered - expired}


def uplift(arms: Mapping[str, Mapping[str, int]]) -> dict[str, Any]:
    """Win-back rate treated − held out, with a 95 % confidence interval (normal
    approximation of the difference of two proportions)."""
    decided = {arm: arms[arm]["recovered"] + arms[arm]["expired"] for arm in arms}
    counts = {"treated_decided": decided["treated"], "held_out_decided": decided["held_out"]}
    if min(decided.values()) < MIN_DECIDED_PER_ARM:
        return {"status": "not enough data", **counts}
    p1 = arms["treated"]["recovered"] / decided["treated"]
    p0 = arms["held_out"]["recovered"] / decided["held_out"]
    error = math.sqrt(p1 * (1 - p1) / decided["treated"] + p0 * (1 - p0) / decided["held_out"])
    difference = p1 - p0
    return {"status": "ok", **counts, "treated_rate": round(p1, 4),
            "held_out_rate": round(p0, 4), "difference": round(difference, 4),
            "ci95": [round(difference - Z_95 * error, 4), round(difference + Z_95 * error, 4)]}


def _rate(numerator: int, denominator: int) -> float | None:
    return round(numerator / denominator, 4) if denominator else None


def _median(histogram: Mapping[int, int]) -> float | None:
    """The median of values given as value -> count (the middle two averaged)."""
    n = sum(histogram.values())
    if not n:
        return None
    low_rank, high_rank = (n - 1) // 2, n // 2
    low = high = None
    seen = 0
    for value in sorted(histogram):
        seen += histogram[value]
        if low is None and seen > low_rank:
            low = value
        if seen > high_rank:
            high = value
            break
    assert low is not None
    assert high is not None
    return (low + high) / 2
