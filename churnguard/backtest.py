"""What a rule pack does — or would have done — over a history of events, in figures a
retention lead can read: per rule the actions sent (by type), what the guards suppressed (by
reason) and the firings held out; the customers' segments and score bands at the end; and,
against another pack, the difference per rule and the customers whose actions differ.

`churnguard replay EVENTS.jsonl --report` runs it over a file; `churnguard backtest` over the
input topics' retained history on the broker (read-only: no consumer group, no commits,
nothing produced). Everything but `read_history` is pure and deterministic."""

from __future__ import annotations

import re
import textwrap
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from churnguard.core.clock import DAY, HOUR, parse_rfc3339, rfc3339
from churnguard.core.guards import Suppressed
from churnguard.core.pack import RulePack
from churnguard.core.processor import Engine
from churnguard.core.rfm import PROSPECT, rfm_scores, segment_of
from churnguard.core.scoring import AVERAGE_AT_LEAST, BANDS, GOOD_AT_LEAST, band_of, health
from churnguard.core.state import CustomerState
from churnguard.core.validation import Rejected, parse_event
from churnguard.errors import UserError
from churnguard.replay import replay
from churnguard.topic_snapshot import read_snapshot
from schemas.events import Event
from streams.settings import Settings

# Score bands of the health score at the end of the history (churnguard.core.scoring).
BAND_LABELS = {
    "good": f"good (≥ {GOOD_AT_LEAST:g})",
    "average": f"average ({AVERAGE_AT_LEAST:g}–{GOOD_AT_LEAST:g})",
    "poor": f"poor (< {AVERAGE_AT_LEAST:g})",
    "unscored": "unscored",
}
# Suppressed reasons that mean "held out on purpose" (to measure uplift), not "guarded".
HELD_OUT_REASONS = frozenset({"holdout", "global_control"})
# How many of the customers whose actions differ a comparison lists.
DIFFERING_SHOWN = 20

# What identifies an action for a comparison: (rule_id, type, action_id).
Signature = tuple[str, str, str]


@dataclass
class RuleReport:
    rule_id: str
    # Actions sent (quiet-hours deferrals count once released, within the history).
    fired: int = 0
    by_type: dict[str, int] = field(default_factory=dict)
    # Suppressed records (one per action a guard stopped or deferred), by reason.
    suppressed: dict[str, int] = field(default_factory=dict)
    # Firings withheld by the rule's holdout or the global control group (one per firing,
    # however many actions it has).
    held_out: int = 0
    # Distinct customers who were sent an action of this rule.
    customers: int = 0
    enabled: bool = True


@dataclass
class Report:
    events: int  # events applied (up to `until`), duplicates included
    customers: int  # customers with at least one event
    actions: int  # actions sent, all rules
    rules: dict[str, RuleReport]  # pack order (disabled rules included), then any other
    segments: dict[str, int]  # customers per RFM segment at `at`
    bands: dict[str, int]  # customers per score band at `at` (BANDS order)
    bad_lines: int = 0  # lines or records that are not valid events (not applied)
    customers_with_actions: int = 0
    suppressed: int = 0  # suppressed records, all rules and reasons
    first_event: str | None = None  # occurred_at of the first and last event applied
    last_event: str | None = None
    # The moment segments and bands are taken at: `until`, else the last event.
    at: str | None = None


@dataclass
class Comparison:
    base: Report
    other: Report
    # rule id -> (base fired, other fired, other - base); base pack order, then the other's.
    per_rule: dict[str, tuple[int, int, int]]
    differing_customers: list[str]  # the first DIFFERING_SHOWN, sorted
    differing_count: int


# -- computing ---------------------------------------------------------------------------------


def report(
    events: Iterable[Event],
    engine: Engine,
    *,
    until: float | None,
    bad_lines: int = 0,
) -> tuple[Report, dict[str, list[Signature]]]:
    """Replay `events` (event-time order, as `churnguard.replay.replay`) and count. The
    second value maps each customer who was sent an action to the sorted (rule_id, type,
    action_id) of those actions, for `compare`."""
    pack = engine.pack
    states: dict[str, CustomerState] = {}
    suppressed: list[Suppressed] = []
    applied = 0
    first: float | None = None
    last: float | None = None

    def counted() -> Iterator[Event]:
        nonlocal applied, first, last
        for event in events:
            occurred = event.at
            if until is not None and occurred > until:
                return  # replay stops here too
            applied += 1
            first = occurred if first is None else first
            last = occurred
            yield event

    rules = {spec.id: RuleReport(spec.id, enabled=spec.enabled) for spec in pack.spec.rules}
    reached: dict[str, set[str]] = {}
    signatures: dict[str, set[Signature]] = {}
    total = 0
    for action in replay(counted(), engine, until=until, states=states, suppressed=suppressed):
        total += 1
        tally = rules.setdefault(action.rule_id, RuleReport(action.rule_id))
        tally.fired += 1
        tally.by_type[action.type] = tally.by_type.get(action.type, 0) + 1
        reached.setdefault(action.rule_id, set()).add(action.customer_id)
        signatures.setdefault(action.customer_id, set()).add(
            (action.rule_id, action.type, action.action_id))

    firings: dict[str, set[tuple[str, str]]] = {}
    for record in suppressed:
        tally = rules.setdefault(record.rule_id, RuleReport(record.rule_id))
        tally.suppressed[record.reason] = tally.suppressed.get(record.reason, 0) + 1
        if record.reason in HELD_OUT_REASONS:
            # The actions of one firing share customer, rule and moment.
            firings.setdefault(record.rule_id, set()).add((record.customer_id, record.created_at))
    for rule_id, tally in rules.items():
        tally.customers = len(reached.get(rule_id, ()))
        tally.held_out = len(firings.get(rule_id, ()))
        tally.by_type = dict(sorted(tally.by_type.items()))
        tally.suppressed = dict(sorted(tally.suppressed.items()))

    at = until if until is not None else last
    segments, bands = _standing(pack, states.values(), at)
    return Report(
        events=applied,
        customers=len(states),
        actions=total,
        rules=rules,
        segments=segments,
        bands=bands,
        bad_lines=bad_lines,
        customers_with_actions=len(signatures),
        suppressed=len(suppressed),
        first_event=None if first is None else rfc3339(first),
        last_event=None if last is None else rfc3339(last),
        at=None if at is None else rfc3339(at),
    ), {customer: sorted(found) for customer, found in sorted(signatures.items())}


def _standing(
    pack: RulePack, states: Iterable[CustomerState], at: float | None
) -> tuple[dict[str, int], dict[str, int]]:
    """Segments and score bands of every customer at `at`: recomputed there (a score decays
    and a segment ages with time alone, while a state only holds its last computation)."""
    segments = dict.fromkeys(_segment_order(pack), 0)
    bands = dict.fromkeys(BANDS, 0)
    for state in states:
        if state.score is None or at is None:
            segment, score = state.segment, state.score
        else:
            moment = max(at, state.clock)
            segment = segment_of(rfm_scores(state, moment, pack.rfm), pack.rfm)
            score = health(state, moment, pack.scoring).score
        name = segment or "unscored"
        segments[name] = segments.get(name, 0) + 1
        bands[band_of(score)] += 1
    return segments, bands


def _segment_order(pack: RulePack) -> list[str]:
    """The pack's segments in the order its RFM table names them."""
    names = [rule.segment for rule in pack.spec.rfm.segments]
    return list(dict.fromkeys([*names, pack.spec.rfm.fallback_segment, PROSPECT]))


def compare(
    events: Sequence[Event],
    base_engine: Engine,
    other_engine: Engine,
    *,
    until: float | None,
    bad_lines: int = 0,
) -> Comparison:
    """Both packs over the same events. A customer's actions differ when the sets of
    (rule_id, type, action_id) differ: another rule, another action type, or another trigger
    (action ids hash customer, rule, trigger and position)."""
    base, base_actions = report(events, base_engine, until=until, bad_lines=bad_lines)
    other, other_actions = report(events, other_engine, until=until, bad_lines=bad_lines)
    per_rule = {}
    for rule_id in dict.fromkeys([*base.rules, *other.rules]):
        before = base.rules[rule_id].fired if rule_id in base.rules else 0
        after = other.rules[rule_id].fired if rule_id in other.rules else 0
        per_rule[rule_id] = (before, after, after - before)
    differing = sorted(
        customer for customer in set(base_actions) | set(other_actions)
        if base_actions.get(customer, []) != other_actions.get(customer, [])
    )
    return Comparison(base, other, per_rule, differing[:DIFFERING_SHOWN], len(differing))


# -- JSON ------------------------------------------------------------------------------------


def to_json(result: Report | Comparison) -> dict[str, Any]:
    """The same figures as the text, as plain JSON data."""
    if isinstance(result, Comparison):
        return {
            "base": to_json(result.base),
            "other": to_json(result.other),
            "per_rule": {rule_id: {"base": before, "other": after, "delta": delta}
                         for rule_id, (before, after, delta) in result.per_rule.items()},
            "differing_customers": list(result.differing_customers),
            "differing_count": result.differing_count,
        }
    return {
        "events": result.events,
        "first_event": result.first_event,
        "last_event": result.last_event,
        "customers": result.customers,
        "customers_with_actions": result.customers_with_actions,
        "actions": result.actions,
        "suppressed": result.suppressed,
        "bad_lines": result.bad_lines,
        "rules": {
            rule_id: {
                "fired": tally.fired,
                "by_type": dict(tally.by_type),
                "suppressed": dict(tally.suppressed),
                "held_out": tally.held_out,
                "customers": tally.customers,
                "enabled": tally.enabled,
            }
            for rule_id, tally in result.rules.items()
        },
        "at": result.at,
        "segments": dict(result.segments),
        "bands": dict(result.bands),
    }


def dumps(result: Report | Comparison) -> bytes:
    """`to_json` as indented JSON bytes, newline-terminated (the `--json` output)."""
    return orjson.dumps(to_json(result), option=orjson.OPT_INDENT_2) + b"\n"


def render(
    result: Report | Comparison, *, as_json: bool = False, base_label: str = "base",
    other_label: str = "other",
) -> str:
    """What the CLI prints: the text report or comparison, or with `as_json` its JSON."""
    if as_json:
        return dumps(result).decode()
    if isinstance(result, Comparison):
        return render_comparison(result, base_label=base_label, other_label=other_label)
    return render_report(result)


# -- text --------------------------------------------------------------------------------------


def render_report(result: Report, *, title: str = "churnguard report") -> str:
    lines = [
        f"{title}: {_n(result.events)} events{_period(result)}",
        f"{_n(result.customers)} customers, {_n(result.actions)} actions sent, "
        f"{_n(result.suppressed)} suppressed, {_bad(result)}",
        "",
    ]
    rows = []
    for rule_id, tally in result.rules.items():
        rows.append([
            rule_id if tally.enabled else f"{rule_id} (disabled)",
            _n(tally.fired),
            _n(tally.customers),
            _n(tally.held_out),
            _counts(tally.by_type),
            _counts(tally.suppressed),
        ])
    rows.append([
        "all rules",
        _n(result.actions),
        _n(result.customers_with_actions),
        _n(sum(t.held_out for t in result.rules.values())),
        _counts(_sum(t.by_type for t in result.rules.values())),
        _counts(_sum(t.suppressed for t in result.rules.values())),
    ])
    lines += _table(["rule", "fired", "customers", "held out", "by type", "suppressed"],
                    rows, right=(False, True, True, True, False, False), total=True)
    lines += [
        "",
        "fired: actions sent · customers: customers sent at least one · held out: firings",
        "withheld by the rule's holdout or the global control group · suppressed: actions a",
        "guard stopped, by reason (quiet_hours_deferred ones are sent, and counted in fired,",
        "when the quiet hours end)",
        "",
    ]
    at = f" at {result.at}" if result.at else ""
    lines += _distribution(f"segment{at}", result.segments, result.customers)
    lines.append("")
    lines += _distribution(f"score band{at}",
                           {BAND_LABELS[b]: n for b, n in result.bands.items()},
                           result.customers)
    return "\n".join(lines) + "\n"


def render_comparison(
    comparison: Comparison, *, base_label: str = "base", other_label: str = "other"
) -> str:
    base, other = comparison.base, comparison.other
    lines = [
        f"churnguard comparison: {base_label} → {other_label}",
        f"over the same {_n(base.events)} events{_period(base)}",
        f"{_n(base.customers)} customers, {_bad(base)}",
        "",
    ]
    rows = [[rule_id, _n(before), _n(after), _delta(delta)]
            for rule_id, (before, after, delta) in comparison.per_rule.items()]
    rows.append(["all rules", _n(base.actions), _n(other.actions),
                 _delta(other.actions - base.actions)])
    rows.append(["held out (firings)", *_triple(sum(t.held_out for t in base.rules.values()),
                                      sum(t.held_out for t in other.rules.values()))])
    rows.append(["suppressed (actions)", *_triple(base.suppressed, other.suppressed)])
    lines.append("actions sent per rule")
    lines += _table(["rule", base_label, other_label, "change"], rows,
                    right=(False, True, True, True), total=True, total_rows=3)
    lines.append("")
    at = f" at {base.at}" if base.at else ""
    for what, left, right, labels in (
        (f"segment{at}", base.segments, other.segments, None),
        (f"score band{at}", base.bands, other.bands, BAND_LABELS),
    ):
        names = list(dict.fromkeys([*left, *right]))
        rows = [[(labels or {}).get(name, name), *_triple(left.get(name, 0),
                                                          right.get(name, 0))]
                for name in names]
        lines += _table([what, base_label, other_label, "change"], rows,
                        right=(False, True, True, True))
        lines.append("")
    count = comparison.differing_count
    if count == 0:
        lines.append("customers whose actions differ: none")
    else:
        shown = comparison.differing_customers
        more = f" (the first {len(shown)} of {_n(count)})" if count > len(shown) else ""
        lines.append(f"customers whose actions differ: {_n(count)}{more}")
        lines += textwrap.wrap(", ".join(shown), width=100, initial_indent="  ",
                               subsequent_indent="  ", break_on_hyphens=False)
    return "\n".join(lines) + "\n"


def _table(
    header: Sequence[str], rows: Sequence[Sequence[str]], *, right: Sequence[bool],
    total: bool = False, total_rows: int = 1,
) -> list[str]:
    """Aligned columns, a rule under the header (and above the total rows)."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(cell.rjust(w) if r else cell.ljust(w)
                         for cell, w, r in zip(cells, widths, right, strict=True)).rstrip()

    rule = "  ".join("-" * w for w in widths)
    body = [line(row) for row in rows]
    if total:
        body.insert(len(body) - total_rows, rule)
    return [line(header), rule, *body]


def _distribution(what: str, counts: dict[str, int], total: int) -> list[str]:
    rows = [[name, _n(n), _share(n, total)] for name, n in counts.items()]
    rows.append(["all customers", _n(sum(counts.values())), _share(sum(counts.values()), total)])
    return _table([what, "customers", "share"], rows, right=(False, True, True), total=True)


def _period(result: Report) -> str:
    if result.first_event is None:
        return ""
    return f" from {result.first_event} to {result.last_event}"


def _bad(result: Report) -> str:
    return f"{_n(result.bad_lines)} bad {'line' if result.bad_lines == 1 else 'lines'} skipped"


def _n(value: int) -> str:
    return f"{value:,}"


def _delta(value: int) -> str:
    return f"{value:+,}" if value else "0"


def _triple(before: int, after: int) -> list[str]:
    return [_n(before), _n(after), _delta(after - before)]


def _share(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f} %" if whole else "-"


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{name} {n:,}" for name, n in counts.items() if n) or "-"


def _sum(counts: Iterable[dict[str, int]]) -> dict[str, int]:
    total: Counter[str] = Counter()
    for one in counts:
        total.update(one)
    return dict(sorted(total.items()))


# -- --since ---------------------------------------------------------------------------------

_DURATION = re.compile(r"(\d{1,7})([dhm])")
_UNIT = {"d": DAY, "h": HOUR, "m": 60.0}


def parse_since(text: str, now: float) -> float:
    """`30d`, `12h`, `90m` before `now`, or an RFC 3339 timestamp (with its UTC offset), as
    epoch seconds; raises UserError (one line) otherwise."""
    value = text.strip()
    example = "use e.g. 30d, 12h, 90m or an RFC 3339 timestamp such as 2026-01-31T00:00:00Z"
    matched = _DURATION.fullmatch(value)
    if matched is not None:
        amount = int(matched.group(1))
        if amount == 0:
            raise UserError(f"backtest: --since {text!r} is an empty period; {example}")
        return max(0.0, now - amount * _UNIT[matched.group(2)])
    try:
        moment = parse_rfc3339(value)
    except ValueError:
        raise UserError(f"backtest: --since {text!r} is neither a duration nor a timestamp; "
                        f"{example}") from None
    if moment > now:
        raise UserError(f"backtest: --since {text!r} is in the future; {example}")
    return max(0.0, moment)


# -- the broker's history --------------------------------------------------------------------


def read_history(
    settings: Settings,
    since: float,
    *,
    now: float | None = None,
    timeout_s: float = 600.0,
    idle_s: float = 5.0,
) -> tuple[list[Event], int]:
    """Every record of the input topics (settings.topics.inputs(): per-type and combined)
    whose record timestamp is at or after `since`, parsed as the worker parses them (keyed
    by customer id, per-type topics give their type), up to the end each partition had when
    it was first fetched. Returns the events in event-time order (then topic, partition,
    offset) and the number of records that are not valid events.

    Read-only: an assigned consumer without a group (no join, no commits), no producer.
    Where it starts and ends: churnguard/topic_snapshot.py."""
    from kafka import KafkaConsumer
    from kafka.errors import KafkaError

    where = f"the broker at {settings.bootstrap}"
    try:
        consumer = KafkaConsumer(
            **settings.link.client_options(), group_id=None, enable_auto_commit=False,
            client_id="churnguard-backtest", auto_offset_reset="earliest",
            fetch_max_bytes=64 * 1024 * 1024, max_partition_fetch_bytes=16 * 1024 * 1024,
        )
    except KafkaError as exc:
        raise UserError(f"backtest: cannot reach {where}: {exc}; "
                        f"{settings.link.unreachable_hint()}") from None
    reader = _HistoryReader(settings, now=time.time() if now is None else now)
    try:
        read_snapshot(consumer, list(reader.inputs), since=since, take=reader.take,
                      timeout_s=timeout_s, idle_s=idle_s, command="backtest", where=where,
                      missing_hint="check CHURNGUARD_TOPICS__* (or create them with "
                      "`churnguard topics`)")
    except KafkaError as exc:
        raise UserError(f"backtest: reading the input topics on {where} failed: {exc}; "
                        "check the broker (--broker / CHURNGUARD_BROKER)") from None
    finally:
        consumer.close()
    reader.found.sort(key=lambda item: item[:4])
    return [event for *_, event in reader.found], reader.bad


class _HistoryReader:
    """read_history's parsing of each record read."""

    def __init__(self, settings: Settings, *, now: float) -> None:
        self.settings = settings
        self.now = now
        self.inputs = settings.topics.inputs()
        self.found: list[tuple[float, str, int, int, Event]] = []
        self.bad = 0

    def take(self, record: Any) -> None:
        parsed = parse_event(
            record.value, self.inputs[record.topic], now=self.now,
            max_future_hours=self.settings.max_future_skew_hours, key=record.key,
            require_key=True,
        )
        if isinstance(parsed, Rejected):
            self.bad += 1
        else:
            self.found.append((parsed.at, record.topic, record.partition, record.offset,
                               parsed))
