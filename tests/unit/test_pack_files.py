"""Rule-pack files as people write them: a retention lead's broken copy of default.yaml gets
every problem at once, each as `FILE:LINE:COL: path: what is wrong`; a hostile file gets one
clear line, quickly; a valid pack round-trips export -> load with the same spec and the same
behaviour.

Expected positions are computed from the text each test writes (`Text.at`), never typed in.
"""

from __future__ import annotations

import random
import re
import string
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from datetime import time as clock_time
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from churnguard.core.clock import DAY, rfc3339
from churnguard.core.conditions import FIELDS, FieldType
from churnguard.core.pack import PackSpec, RulePack, build_pack, trigger_fields
from churnguard.core.processor import Engine
from churnguard.core.specs import AnniversaryTrigger
from churnguard.errors import UserError
from churnguard.replay import replay
from churnguard.rules.export import export_pack
from churnguard.rules.loading import (
    PackFileInvalid,
    default_pack,
    default_pack_text,
    load_pack,
    load_pack_file,
)
from churnguard.rules.yaml_file import MAX_BYTES, MAX_DEPTH, read_yaml
from schemas.events import MODEL_BY_TYPE, Event
from streams.codecs import encode_action

DEFAULT = default_pack_text()
NAME = "pack.yaml"
# A problem of the pack: FILE:LINE:COL: path: message (the path has no spaces, see format_loc).
PROBLEM = re.compile(r"pack\.yaml:(?P<line>\d+):(?P<col>\d+): (?P<path>\S+): (?P<message>.+)")
# A problem of the file itself (YAML, size, encoding): FILE[:LINE:COL]: message.
FILE_PROBLEM = re.compile(r"pack\.yaml(?::\d+:\d+)?: [^\n]+")

Position = tuple[int, int]


# --- helpers ---------------------------------------------------------------------------------


class NotInPack(LookupError):
    """The text a test edits or looks for is not (or not once) in the pack: the test needs
    updating, not a strict xfail that "fails as expected" (those expect AssertionError)."""


class Text:
    """A pack's text, to compute where things are in it."""

    def __init__(self, text: str) -> None:
        self.text = text

    @property
    def ids(self) -> list[str | None]:
        rules = read_yaml(self.text, NAME).data["rules"]
        return [rule.get("id") if isinstance(rule, dict) else None for rule in rules]

    def at(self, needle: str, *, nth: int | None = None, offset: int = 0) -> Position:
        """(line, column), 1-based, of `needle` (plus `offset` characters): the only
        occurrence, or the nth (0-based)."""
        count = self.text.count(needle)
        if not (count == 1 if nth is None else count > nth):
            raise NotInPack(f"{needle!r} occurs {count} times")
        index = -1
        for _ in range((nth or 0) + 1):
            index = self.text.index(needle, index + 1)
        index += offset
        return self.text.count("\n", 0, index) + 1, index - self.text.rfind("\n", 0, index)

    def rule(self, rule_id: str, *, nth: int = 0) -> str:
        """`rules[i]` of the nth rule with this id."""
        indexes = [i for i, found in enumerate(self.ids) if found == rule_id]
        return f"rules[{indexes[nth]}]"


def edit(text: str, old: str, new: str) -> str:
    if text.count(old) != 1:
        raise NotInPack(f"{old!r} occurs {text.count(old)} times")
    return text.replace(old, new)


@dataclass(frozen=True)
class Found:
    line: int
    col: int
    path: str
    message: str

    @property
    def where(self) -> Position:
        return self.line, self.col


def problems_of(text: str | bytes) -> list[Found]:
    """Load, expect PackFileInvalid, check every line's shape and return them parsed."""
    with pytest.raises(PackFileInvalid) as info:
        load_pack(text, NAME)
    found = []
    for line in info.value.lines:
        assert "\n" not in line, line
        assert "Traceback" not in line, line
        match = PROBLEM.fullmatch(line)
        assert match is not None, f"not FILE:LINE:COL: path: message: {line!r}"
        found.append(Found(int(match["line"]), int(match["col"]), match["path"],
                           match["message"]))
    return found


def refusal(source: str | bytes) -> str:
    """The one line a hostile file gets; it must come quickly."""
    started = time.perf_counter()
    with pytest.raises(PackFileInvalid) as info:
        load_pack(source, NAME)
    elapsed = time.perf_counter() - started
    lines = info.value.lines
    assert len(lines) == 1, lines
    assert FILE_PROBLEM.fullmatch(lines[0]), lines[0]
    assert "Traceback" not in lines[0]
    assert elapsed < 1.0, f"{elapsed:.2f} s for {lines[0]}"
    return lines[0]


# --- mistakes a retention lead makes in a copy of default.yaml ---------------------------------


@dataclass(frozen=True)
class Want:
    """One expected problem line. `also_at` / `also_path`: other positions or paths that are
    right too (a mapping-level problem may point at the mapping or at its offending value)."""

    where: Position
    path: str
    says: tuple[str, ...]
    also_at: tuple[Position, ...] = ()
    also_path: tuple[str, ...] = ()

    def positions(self) -> tuple[Position, ...]:
        return (self.where, *self.also_at)

    def paths(self) -> tuple[str, ...]:
        return (self.path, *self.also_path)


@dataclass(frozen=True)
class Mistake:
    edits: tuple[tuple[str, str], ...] = ()
    # Rules appended at the end of the pack (its `rules:` list is the last key).
    appended: str = ""
    wants: Callable[[Text], list[Want]] = lambda t: []


def broken(*mistakes: Mistake) -> tuple[str, list[Want]]:
    text = DEFAULT
    for mistake in mistakes:
        for old, new in mistake.edits:
            text = edit(text, old, new)
    text += "".join(m.appended for m in mistakes)
    t = Text(text)
    return text, [want for mistake in mistakes for want in mistake.wants(t)]


TYPO_IN_A_FIELD_NAME = Mistake(
    edits=(("    description: Upgrade to VIP", "    descripton: Upgrade to VIP"),),
    wants=lambda t: [Want(t.at("descripton"), f"{t.rule('vip_upgrade')}.descripton",
                          ("unknown field 'descripton'", "did you mean 'description'"),
                          # the misspelt key, or its value on the same line
                          also_at=(t.at("Upgrade to VIP"),))],
)
WRONG_TRIGGER = Mistake(
    edits=(("trigger: {on: ticket_closed}", "trigger: {on: ticket_close}"),),
    wants=lambda t: [Want(t.at("{on: ticket_close}"), f"{t.rule('ticket_closed_survey')}.trigger",
                          ("'ticket_close'", "'ticket_closed'", "login", "threshold"),
                          also_at=(t.at("ticket_close}"),),
                          also_path=(f"{t.rule('ticket_closed_survey')}.trigger.on",))],
)
UNKNOWN_METRIC = Mistake(
    edits=(("metric: lifetime_spend", "metric: lifetime_spent"),),
    wants=lambda t: [Want(t.at("lifetime_spent"), f"{t.rule('vip_upgrade')}.trigger.metric",
                          ("'lifetime_spend'", "'health_score'", "'open_tickets'"))],
)
UNKNOWN_CONDITION_FIELD = Mistake(
    edits=(("conditions: state.tier != vip", "conditions: state.teir != vip"),),
    wants=lambda t: [Want(t.at("state.teir"), f"{t.rule('vip_upgrade')}.conditions",
                          ("unknown field 'state.teir'", "did you mean 'state.tier'?"))],
)
WRONG_VALUE_TYPE = Mistake(
    edits=(("conditions: state.tier != vip", "conditions: state.lifetime_spend >= lots"),),
    wants=lambda t: [Want(t.at("lots"), f"{t.rule('vip_upgrade')}.conditions",
                          ("'>=' needs a number", "got string 'lots'"))],
)
OUTSIDE_THE_VOCABULARY = Mistake(
    edits=(("conditions: state.tier != vip", "conditions: state.tier == gold"),),
    wants=lambda t: [Want(t.at("gold"), f"{t.rule('vip_upgrade')}.conditions",
                          ("state.tier is one of standard, vip", "got 'gold'"))],
)
EVENT_AMOUNT_IN_A_LOGIN_RULE = Mistake(
    appended="""
  - id: login_after_big_order
    description: Thank customers who log in after a big order.
    trigger: {on: login}
    conditions: event.amount >= 500
    actions:
      - type: notification
        template: login_thanks
        variables: {amount: $event.amount}
""",
    wants=lambda t: [
        Want(t.at("event.amount >= 500"), f"{t.rule('login_after_big_order')}.conditions",
             ("a rule on login sees login events", "no 'amount'", "channel")),
        Want(t.at("$event.amount"),
             f"{t.rule('login_after_big_order')}.actions[0].variables.amount",
             ("a rule on login sees login events", "no 'amount'", "channel")),
    ],
)
EVENT_FIELD_IN_A_TIMER_RULE = Mistake(
    edits=(("trigger: {on: inactivity, days: 30}\n",
            "trigger: {on: inactivity, days: 30}\n    conditions: event.channel == web\n"),),
    wants=lambda t: [Want(t.at("event.channel == web"),
                          f"{t.rule('inactive_30d_followup')}.conditions",
                          ("event.channel", "inactivity", "time alone", "no event",
                           "state.* fields"))],
)
MISSING_SLA_PRIORITY = Mistake(
    edits=(("{urgent: 4, high: 24, normal: 72, low: 168}", "{urgent: 4, high: 24, normal: 72}"),),
    wants=lambda t: [Want(t.at("{urgent: 4, high: 24, normal: 72}"), "ticket_sla_hours",
                          ("every priority", "'low'"))],
)
WEIGHTS_NOT_ADDING_UP = Mistake(
    edits=(("recency_weight: 0.4", "recency_weight: 0.5"),),
    wants=lambda t: [Want(t.at("recency_weight: 0.5"), "scoring",
                          ("add up to 1.0", "got 1.1"))],
)
DUPLICATE_RULE_ID = Mistake(
    edits=(("id: signup_anniversary_coupon", "id: birthday_coupon"),),
    wants=lambda t: [Want(t.at("birthday_coupon", nth=1),
                          f"{t.rule('birthday_coupon', nth=1)}.id",
                          ("duplicate rule id 'birthday_coupon'",
                           f"first at {t.rule('birthday_coupon')}"))],
)
UNKNOWN_SEGMENT = Mistake(
    appended="""
  - id: champion_thanks
    description: A thank-you coupon for the best customers.
    trigger: {on: segment_entered, segment: champions}
    actions:
      - {type: coupon, value: 20, kind: percent}
""",
    wants=lambda t: [Want(t.at("champions"), f"{t.rule('champion_thanks')}.trigger.segment",
                          ("unknown segment 'champions'", "champion,", "prospect"))],
)
PERCENT_COUPON_OF_150 = Mistake(
    edits=(("value: 15\n", "value: 150\n"),),
    wants=lambda t: [Want(t.at("type: coupon\n        value: 150"),
                          f"{t.rule('health_winback')}.actions[2]",
                          ("percent", "at most 100"),
                          also_at=(t.at("150"),),
                          also_path=(f"{t.rule('health_winback')}.actions[2].value",))],
)
# A few more a person makes.
UNKNOWN_TIME_ZONE = Mistake(
    edits=(("timezone: UTC", "timezone: Europe/Pariss"),),
    wants=lambda t: [Want(t.at("Europe/Pariss"), "timezone",
                          ("unknown time zone 'Europe/Pariss'", "IANA", "'Europe/Paris'"))],
)
UNKNOWN_VARIABLE_FIELD = Mistake(
    edits=(("{lifetime_spend: $state.lifetime_spend}", "{lifetime_spend: $state.lifetime_spent}"),),
    wants=lambda t: [Want(t.at("state.lifetime_spent"),
                          f"{t.rule('vip_upgrade')}.actions[1].variables.lifetime_spend",
                          ("unknown field 'state.lifetime_spent'",
                           "did you mean 'state.lifetime_spend'?"))],
)
UNKNOWN_TASK_PRIORITY = Mistake(
    edits=(("priority: urgent\n", "priority: critical\n"),),
    wants=lambda t: [Want(t.at("critical"),
                          f"{t.rule('ticket_sla_breach')}.actions[0].priority",
                          ("'low'", "'normal'", "'high'", "'urgent'"))],
)
MISSING_TEMPLATE = Mistake(
    edits=(("        template: satisfaction_survey\n", ""),),
    wants=lambda t: [Want(t.at("type: notification\n        variables: {ticket_id"),
                          f"{t.rule('ticket_closed_survey')}.actions[0].template",
                          ("required",))],
)
BAD_ANNIVERSARY_TIME = Mistake(
    edits=(("{on: anniversary, date: birthday}",
            "{on: anniversary, date: birthday, at: '25:00'}"),),
    wants=lambda t: [Want(t.at("'25:00'"), f"{t.rule('birthday_coupon')}.trigger.at",
                          ("time", "0-23"))],
)
NO_ACTIONS = Mistake(
    edits=(("    actions:\n      - {type: coupon, value: 10, kind: percent, expires_in_days: 30}\n"
            "\n  - id: signup_anniversary_coupon",
            "    actions: []\n\n  - id: signup_anniversary_coupon"),),
    wants=lambda t: [Want(t.at("[]\n\n  - id: signup"), f"{t.rule('birthday_coupon')}.actions",
                          ("at least one action",))],
)
MISSPELT_SLA_PRIORITY = Mistake(
    edits=(("{urgent: 4, high: 24, normal: 72, low: 168}",
            "{urgent: 4, high: 24, normal: 72, lo: 168}"),),
    wants=lambda t: [Want(t.at("lo: 168"), "ticket_sla_hours.lo",
                          ("'urgent'", "'high'", "'normal'", "'low'"),
                          also_at=(t.at("lo: 168", offset=4),))],
)

MISTAKES = {
    "typo-in-a-field-name": TYPO_IN_A_FIELD_NAME,
    "wrong-trigger-on": WRONG_TRIGGER,
    "unknown-metric": UNKNOWN_METRIC,
    "unknown-condition-field": UNKNOWN_CONDITION_FIELD,
    "wrong-value-type": WRONG_VALUE_TYPE,
    "outside-the-vocabulary": OUTSIDE_THE_VOCABULARY,
    "event-amount-in-a-login-rule": EVENT_AMOUNT_IN_A_LOGIN_RULE,
    "event-field-in-a-timer-rule": EVENT_FIELD_IN_A_TIMER_RULE,
    "missing-sla-priority": MISSING_SLA_PRIORITY,
    "weights-not-adding-up": WEIGHTS_NOT_ADDING_UP,
    "duplicate-rule-id": DUPLICATE_RULE_ID,
    "unknown-segment": UNKNOWN_SEGMENT,
    "percent-coupon-of-150": PERCENT_COUPON_OF_150,
    "unknown-time-zone": UNKNOWN_TIME_ZONE,
    "unknown-variable-field": UNKNOWN_VARIABLE_FIELD,
    "unknown-task-priority": UNKNOWN_TASK_PRIORITY,
    "missing-template": MISSING_TEMPLATE,
    "bad-anniversary-time": BAD_ANNIVERSARY_TIME,
    "no-actions": NO_ACTIONS,
    "misspelt-sla-priority": MISSPELT_SLA_PRIORITY,
}
# Several mistakes in different rules and in the settings, all in one file (duplicate ids
# and unknown segments with invalid settings: see the test below).
SEVERAL = (WRONG_TRIGGER, UNKNOWN_CONDITION_FIELD, EVENT_AMOUNT_IN_A_LOGIN_RULE,
           EVENT_FIELD_IN_A_TIMER_RULE, MISSING_SLA_PRIORITY, UNKNOWN_TIME_ZONE,
           UNKNOWN_VARIABLE_FIELD)
SEVERAL_IN_RULES = (WRONG_TRIGGER, UNKNOWN_CONDITION_FIELD, EVENT_AMOUNT_IN_A_LOGIN_RULE,
                    EVENT_FIELD_IN_A_TIMER_RULE, DUPLICATE_RULE_ID, UNKNOWN_SEGMENT,
                    UNKNOWN_VARIABLE_FIELD, UNKNOWN_TASK_PRIORITY)
CASES = {name: broken(mistake) for name, mistake in MISTAKES.items()}
CASES["several-mistakes-at-once"] = broken(*SEVERAL)
CASES["several-mistakes-in-rules"] = broken(*SEVERAL_IN_RULES)


def _match(wants: list[Want], found: list[Found], *, by_path: bool) -> None:
    """Every wanted problem is reported, and nothing else."""
    left = list(found)
    for want in wants:
        hits = [f for f in left if f.where in want.positions()
                and all(part in f.message for part in want.says)
                and (not by_path or f.path in want.paths())]
        assert hits, f"missing {want}\nreported: {found}"
        left.remove(hits[0])
    assert left == [], f"unexpected problems: {left}"


@pytest.mark.parametrize("name", list(CASES))
def test_every_problem_is_reported_at_its_line_and_column(name: str) -> None:
    text, wants = CASES[name]
    _match(wants, problems_of(text), by_path=False)


@pytest.mark.parametrize("name", list(CASES))
def test_every_problem_names_its_path_in_the_file(name: str) -> None:
    text, wants = CASES[name]
    _match(wants, problems_of(text), by_path=True)


def _place(path: str) -> str:
    """rules[3].conditions.and[1] -> rules[3]; scoring -> scoring."""
    return re.match(r"[a-z_]+(\[\d+\])?", path)[0]  # type: ignore[index]


@pytest.mark.parametrize(("name", "count", "places"), [
    ("several-mistakes-at-once", 8, 6),    # two settings and four rules
    ("several-mistakes-in-rules", 9, 7),   # seven rules
])
def test_several_mistakes_are_all_reported_in_one_round(
    name: str, count: int, places: int
) -> None:
    """The retention lead fixes everything after one run: one line per mistake."""
    text, wants = CASES[name]
    found = problems_of(text)
    assert len(found) == len(wants) == count
    assert {_place(f.path) for f in found} == {_place(w.path) for w in wants}
    assert len({_place(f.path) for f in found}) == places


@pytest.mark.parametrize("name", list(CASES))
def test_messages_are_one_short_line_without_internals(name: str) -> None:
    text, _ = CASES[name]
    with pytest.raises(PackFileInvalid) as info:
        load_pack(text, NAME)
    for line in info.value.lines:
        assert "\n" not in line
        assert len(line) < 600, line
        message = PROBLEM.fullmatch(line)["message"]  # type: ignore[index]
        # No Python reprs of the internals: a business user reads these.
        assert "Traceback" not in message
        assert "pydantic" not in message
        assert "errors.pydantic.dev" not in message


def test_the_shipped_pack_and_the_problem_free_copy_load() -> None:
    assert load_pack(DEFAULT, NAME).spec == default_pack().spec
    assert [rule.id for rule in load_pack(DEFAULT, NAME).rules] == Text(DEFAULT).ids


# --- bugs found and fixed ----------------------------------------------------------------------


@pytest.mark.parametrize(("old", "new", "key"), [
    pytest.param("scoring:\n", "scorng:\n", "scorng", id="settings-section"),
    pytest.param("    actions:\n      - type: notification\n        template: satisfaction_survey",
                 "    action:\n      - type: notification\n        template: satisfaction_survey",
                 "action", id="rule-actions"),
])
def test_a_misspelt_key_with_a_block_value_is_reported_on_its_own_line(
    old: str, new: str, key: str
) -> None:
    text = edit(DEFAULT, old, new)
    typos = [f for f in problems_of(text) if "unknown field" in f.message]
    assert [typo.where for typo in typos] == [Text(text).at(f"{key}:")]


def test_an_event_field_deep_in_a_condition_is_reported_at_its_leaf() -> None:
    text = edit(DEFAULT, "trigger: {on: inactivity, days: 30}\n",
                "trigger: {on: inactivity, days: 30}\n"
                "    conditions: {and: [state.tier == vip, event.channel == web]}\n")
    t = Text(text)
    found = problems_of(text)
    assert [(f.path, f.where) for f in found] == [
        (f"{t.rule('inactive_30d_followup')}.conditions.and[1]", t.at("event.channel == web"))]


@pytest.mark.parametrize("written", [
    pytest.param('conditions: "state.lifetime_spend >= lots"', id="double-quoted"),
    pytest.param("conditions: 'state.lifetime_spend >= lots'", id="single-quoted"),
    pytest.param("conditions: >-\n      state.lifetime_spend\n      >= lots", id="folded"),
    pytest.param("conditions: state.lifetime_spend\n      >= lots", id="multi-line-plain"),
])
def test_a_condition_that_is_quoted_or_spans_lines_points_at_the_problem(written: str) -> None:
    text = edit(DEFAULT, "conditions: state.tier != vip", written)
    t = Text(text)
    found = problems_of(text)
    assert len(found) == 1
    line, col = t.at("conditions: ")
    scalar_start = (line, col + len("conditions: "))  # the quote, `>-` or first word
    # The offending word itself, or (at least) where the condition starts.
    assert found[0].where in {t.at("lots"), scalar_start}


@pytest.mark.parametrize(("written", "at_the_word"), [
    pytest.param("conditions: state.lifetime_spend >= lots", True, id="plain"),
    pytest.param('conditions: "state.lifetime_spend >= lots"', True, id="double-quoted"),
    pytest.param("conditions: 'state.lifetime_spend >= lots'", True, id="single-quoted"),
    # An escape, a tag or a line break between the start and the word: the offset in the
    # string is not the offset in the line, so the scalar's start (never a wrong place).
    pytest.param('conditions: "state.lifetime_spend >= \\x6cots"', False, id="escaped"),
    pytest.param("conditions: 'state.lifetime_spend >= ''lots'''", False,
                 id="single-quoted-with-quotes"),
    pytest.param("conditions: !!str state.lifetime_spend >= lots", False, id="tagged"),
    pytest.param('conditions: "state.lifetime_spend\n      >= lots"', False,
                 id="double-quoted-on-two-lines"),
    pytest.param("conditions: >-\n      state.lifetime_spend\n      >= lots", False,
                 id="folded"),
    pytest.param("conditions: |-\n      state.lifetime_spend >= lots", False, id="literal"),
    pytest.param("conditions: state.lifetime_spend\n      >= lots", False,
                 id="multi-line-plain"),
])
def test_a_condition_problem_is_at_its_word_when_that_maps_exactly(
    written: str, at_the_word: bool
) -> None:
    text = edit(DEFAULT, "conditions: state.tier != vip", written)
    t = Text(text)
    [found] = problems_of(text)
    assert "'>=' needs a number" in found.message
    line, col = t.at("conditions: ")
    scalar_start = (line, col + len("conditions: "))  # the quote, tag, `>-`/`|-` or word
    assert found.where == (t.at("lots") if at_the_word else scalar_start)


def test_a_quoted_condition_in_a_flow_list_is_at_its_word() -> None:
    text = edit(DEFAULT, "conditions: state.tier != vip",
                "conditions: {and: [state.tier == vip, 'state.lifetime_spend >= lots']}")
    [found] = problems_of(text)
    assert (found.path, found.where) == (
        f"{Text(text).rule('vip_upgrade')}.conditions.and[1]", Text(text).at("lots"))


def test_a_quoted_variable_is_reported_at_its_field() -> None:
    text = edit(DEFAULT, "{lifetime_spend: $state.lifetime_spend}",
                "{lifetime_spend: '$state.lifetime_spent'}")
    [found] = problems_of(text)
    assert found.where == Text(text).at("state.lifetime_spent")
    assert "unknown field 'state.lifetime_spent'" in found.message


def test_an_event_field_read_at_two_leaves_is_reported_at_both() -> None:
    text = edit(DEFAULT, "trigger: {on: inactivity, days: 30}\n",
                "trigger: {on: inactivity, days: 30}\n"
                "    conditions:\n"
                "      - event.channel == web\n"
                '      - {not: "event.channel == app"}\n')
    t = Text(text)
    rule = t.rule("inactive_30d_followup")
    assert [(f.path, f.where) for f in problems_of(text)] == [
        (f"{rule}.conditions[0]", t.at("event.channel == web")),
        # At offset 0 of a quoted string: the scalar itself, its opening quote.
        (f"{rule}.conditions[1].not", t.at('"event.channel == app"')),
    ]


@pytest.mark.parametrize(("old", "new", "key"), [
    pytest.param("trigger: {on: ticket_closed}", "trigger: {on: ticket_closed, onn: x}", "onn",
                 id="in-a-flow-mapping"),
    pytest.param("  recency_weight: 0.4\n", "  recency_weight: 0.4\n  recency:\n    a: 1\n",
                 "recency", id="a-block-map-in-a-section"),
    pytest.param("{urgent: 4, high: 24, normal: 72, low: 168}",
                 "\n  urgent: 4\n  high: 24\n  normal: 72\n  low: 168\n  lo:\n    168",
                 "lo", id="an-invalid-mapping-key"),
])
def test_a_misspelt_key_is_reported_at_the_key(old: str, new: str, key: str) -> None:
    text = edit(DEFAULT, old, new)
    found = problems_of(text)
    assert [f.where for f in found if f.path.endswith(f".{key}")] == [Text(text).at(f"{key}:")]


def test_the_reader_knows_where_keys_and_values_are() -> None:
    text = "a:\n  b:\n    - 1\n  c: {d: 'e f'}\n"
    doc = read_yaml(text, NAME)
    t = Text(text)
    assert doc.position(("a", "b")) == t.at("- 1")  # a block sequence: its first item
    assert doc.position(("a", "b"), key=True) == t.at("b:")
    assert doc.position(("a", "c", "d"), key=True) == t.at("d:")
    assert doc.position(("a", "c", "d")) == t.at("'e f'")
    assert doc.position(("a", "c", "d"), offset=2) == t.at("f'")
    # Not a key (a list index, a missing key): the deepest node, as without `key`.
    assert doc.position(("a", "b", 0), key=True) == t.at("1")
    assert doc.position(("a", "x"), key=True) == t.at("b:")


def test_a_quoted_condition_in_a_list_is_fine_already() -> None:
    """Control for the bug above: in a flow list the offset lands on the value."""
    text = edit(DEFAULT, "conditions: state.tier != vip",
                "conditions:\n      - state.lifetime_spend >= lots")
    [problem] = problems_of(text)
    assert problem.where == Text(text).at("lots")
    assert problem.path.endswith(".conditions[0]")


def test_duplicate_ids_are_reported_even_when_the_settings_are_invalid() -> None:
    text, wants = broken(WEIGHTS_NOT_ADDING_UP, DUPLICATE_RULE_ID, UNKNOWN_SEGMENT)
    _match(wants, problems_of(text), by_path=True)


def test_two_mistakes_in_one_rule_are_both_reported() -> None:
    text, wants = broken(TYPO_IN_A_FIELD_NAME, UNKNOWN_CONDITION_FIELD)
    _match(wants, problems_of(text), by_path=True)


@pytest.mark.timeout(60)
def test_a_file_of_a_hundred_thousand_empty_rules_is_refused_quickly() -> None:
    text = DEFAULT.split("\nrules:\n")[0] + "\nrules:\n" + "- {}\n" * 100_000
    assert len(text.encode()) < MAX_BYTES
    started = time.perf_counter()
    with pytest.raises(PackFileInvalid) as info:
        load_pack(text, NAME)
    elapsed = time.perf_counter() - started
    assert len(info.value.lines) < 2_000
    assert "at most 500" in info.value.lines[0]
    assert elapsed < 1.5


@pytest.mark.timeout(60)
def test_a_typo_repeated_ten_thousand_times_is_reported_quickly() -> None:
    text = edit(DEFAULT, "conditions: state.tier != vip",
                "conditions: [" + "state.teir == vip, " * 10_000 + "]")
    started = time.perf_counter()
    with pytest.raises(PackFileInvalid):
        load_pack(text, NAME)
    assert time.perf_counter() - started < 1.0


# --- hostile files -----------------------------------------------------------------------------


def _billion_laughs() -> str:
    lines = ['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for prev, name in zip("abcdefgh", "bcdefghi", strict=True):
        lines.append(f"{name}: &{name} [{', '.join(['*' + prev] * 9)}]")
    return "\n".join(lines) + "\n"


def _bigger_than_a_megabyte() -> str:
    text = DEFAULT + "# padding\n" * (MAX_BYTES // 10)
    assert len(text.encode()) > MAX_BYTES
    return text


@pytest.mark.timeout(10)
@pytest.mark.parametrize(("source", "expected"), [
    pytest.param(_bigger_than_a_megabyte(), "larger than the limit of 1,000,000 bytes",
                 id="over-1-MB"),
    pytest.param(_billion_laughs(), "pack.yaml:2:8: aliases (*a) are not allowed",
                 id="billion-laughs"),
    pytest.param(DEFAULT + "extra: " + "[" * 10_000 + "]" * 10_000 + "\n",
                 f"nested deeper than {MAX_DEPTH} levels", id="10k-deep-flow-lists"),
    pytest.param(DEFAULT + "extra: " + "{a: " * 10_000 + "1" + "}" * 10_000 + "\n",
                 f"nested deeper than {MAX_DEPTH} levels", id="10k-deep-flow-maps"),
    pytest.param(DEFAULT + "extra:\n" + "- " * 10_000 + "x\n",
                 f"nested deeper than {MAX_DEPTH} levels", id="10k-deep-block-lists"),
    pytest.param("", "pack.yaml: the file is empty; expected a YAML mapping", id="empty"),
    pytest.param(b"", "pack.yaml: the file is empty; expected a YAML mapping", id="empty-bytes"),
    pytest.param("# a pack\n\n   # nothing yet\n", "the file is empty", id="only-comments"),
    pytest.param("\n\n\n", "the file is empty", id="only-blank-lines"),
    pytest.param("- id: vip_upgrade\n- id: health_winback\n",
                 "pack.yaml:1:1: expected a YAML mapping at the top level, found a list",
                 id="a-list-at-the-top"),
    pytest.param("just some words\n", "expected a YAML mapping at the top level, found a string",
                 id="a-string-at-the-top"),
    pytest.param(random.Random(7).randbytes(4096), "", id="binary-garbage"),
    pytest.param(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "not valid UTF-8", id="a-png"),
    pytest.param(b"\x7fELF\x02\x01\x01\x00" + bytes(64), "U+007F", id="an-executable"),
    pytest.param("timezone: UTC\n" + "\x00" * 10, "U+0000", id="nul-bytes"),
    pytest.param(DEFAULT + "---\ntimezone: UTC\n", "more than one YAML document",
                 id="two-documents"),
    pytest.param("timezone: !!python/object/apply:os.system [ls]\n", "tag",
                 id="python-tag"),
])
def test_a_hostile_file_gets_one_clear_line_quickly(source: str | bytes, expected: str) -> None:
    line = refusal(source)
    assert expected in line


def test_nesting_deeper_than_32_inside_a_condition_is_one_line() -> None:
    text = edit(DEFAULT, "conditions: state.tier != vip",
                "conditions: " + "{not: " * 40 + "state.tier == vip" + "}" * 40)
    line = refusal(text)
    assert line.startswith(f"pack.yaml:{Text(text).at('{not: ', nth=0)[0]}:")
    assert f"nested deeper than {MAX_DEPTH} levels" in line


@pytest.mark.parametrize(("old", "new", "key"), [
    pytest.param("    conditions: state.tier != vip\n",
                 "    conditions: state.tier != vip\n    conditions: logins_30d > 3\n",
                 "conditions", id="pasted-twice-in-a-rule"),
    pytest.param("  engagement_weight: 0.3\n", "  engagement_weight: 0.3\n  recency_weight: 0.3\n",
                 "recency_weight", id="in-the-scoring"),
    pytest.param("timezone: UTC\n", "timezone: UTC\ntimezone: Europe/Paris\n", "timezone",
                 id="at-the-top"),
])
def test_a_duplicate_key_names_both_lines(old: str, new: str, key: str) -> None:
    text = edit(DEFAULT, old, new)
    t = Text(text)
    first, second = t.at(f"{key}:", nth=0), t.at(f"{key}:", nth=1)
    assert refusal(text) == (
        f"pack.yaml:{second[0]}:{second[1]}: duplicate key `{key}` (first at line {first[0]})")


def test_a_file_over_a_megabyte_is_refused_before_it_is_read(tmp_path: Path) -> None:
    path = tmp_path / "pack.yaml"
    path.write_text(_bigger_than_a_megabyte())
    started = time.perf_counter()
    with pytest.raises(PackFileInvalid) as info:
        load_pack_file(path)
    assert time.perf_counter() - started < 1.0
    [line] = info.value.lines
    assert line.startswith(f"{path}: ")
    assert "1,000,000 bytes" in line


@pytest.mark.parametrize("make", [
    pytest.param(lambda p: None, id="missing"),
    pytest.param(lambda p: p.mkdir(), id="a-directory"),
])
def test_a_file_that_cannot_be_read_is_one_line(tmp_path: Path, make: Any) -> None:
    path = tmp_path / "pack.yaml"
    make(path)
    # A plain UserError (one line, exit 2), not an invalid pack's list of problems.
    with pytest.raises(UserError) as info:
        load_pack_file(path)
    assert not isinstance(info.value, PackFileInvalid)
    line = str(info.value)
    assert line.startswith(f"{path}: cannot read the rule pack: ")
    assert "\n" not in line


def test_every_problem_line_of_a_pack_file_names_the_file(tmp_path: Path) -> None:
    text, _ = CASES["several-mistakes-at-once"]
    path = tmp_path / "my pack.yaml"
    path.write_text(text)
    with pytest.raises(PackFileInvalid) as info:
        load_pack_file(path)
    with pytest.raises(PackFileInvalid) as same:
        load_pack(text, NAME)
    assert info.value.lines == [line.replace(NAME, str(path), 1) for line in same.value.lines]


# --- YAML 1.1 traps -----------------------------------------------------------------------------


def test_on_is_the_key_on_not_true() -> None:
    """PyYAML (YAML 1.1) reads `on:` as the boolean True; the pack reader must not."""
    text = edit(DEFAULT, "    trigger: {on: ticket_closed}\n",
                "    trigger:\n      on: ticket_closed\n")
    assert yaml.safe_load(text)["rules"][1]["trigger"] == {True: "ticket_closed"}  # the trap
    assert read_yaml(text, NAME).data["rules"][1]["trigger"] == {"on": "ticket_closed"}
    pack = load_pack(text, NAME)
    assert pack.spec.rules[1].trigger.on == "ticket_closed"
    assert pack.spec == default_pack().spec


@pytest.mark.parametrize(("written", "expected"), [
    ("at: 10:30", clock_time(10, 30)),  # YAML 1.1: the sexagesimal int 630
    ("at: 09:00", clock_time(9, 0)),
    ("at: '07:15'", clock_time(7, 15)),
])
def test_times_stay_times(written: str, expected: clock_time) -> None:
    text = edit(DEFAULT, "{on: anniversary, date: birthday}",
                f"{{on: anniversary, date: birthday, {written}}}")
    pack = load_pack(text, NAME)
    [rule] = [r for r in pack.spec.rules if r.id == "birthday_coupon"]
    assert isinstance(rule.trigger, AnniversaryTrigger)
    assert rule.trigger.at == expected


def test_yes_no_and_norway_are_words() -> None:
    """`NO` (Norway) stays text in a condition value and a variable."""
    text = edit(DEFAULT, "variables: {ticket_id: $event.ticket_id}",
                "variables: {ticket_id: $event.ticket_id, country: NO, answer: yes}")
    [rule] = [r for r in load_pack(text, NAME).spec.rules if r.id == "ticket_closed_survey"]
    assert rule.actions[0].variables == {  # type: ignore[union-attr]
        "ticket_id": "$event.ticket_id", "country": "NO", "answer": "yes"}


# --- export -> load round trip ------------------------------------------------------------------

T0 = datetime(2024, 3, 1, 12, 0, tzinfo=UTC).timestamp()


def _event(type_: str, customer: str, day: float, number: int, **fields: Any) -> Event:
    data = {"type": type_, "event_id": f"{customer}-{number}", "customer_id": customer,
            "occurred_at": rfc3339(T0 + day * DAY), **fields}
    return MODEL_BY_TYPE[type_].model_validate(data)  # type: ignore[return-value]


def _history() -> list[Event]:
    """Three customers over half a year: every default rule has something to fire on."""
    events: list[Event] = []
    for n, customer in enumerate(["c1", "c2", "c3"]):

        def add(type_: str, day: float, **fields: Any) -> None:
            events.append(_event(type_, customer, day, len(events), **fields))  # noqa: B023

        add("profile", 0, birthday="1990-03-20", signup_date="2023-03-10",
            tags=["newsletter"] if n else [], email=f"{customer}@example.com")
        for day in range(0, 60, 3 + n):
            add("login", day + 0.1, channel="web" if day % 2 else "app")
        for day, amount in [(1, "120"), (5, "4000"), (9, "900"), (30, "6000"), (50, "75")]:
            add("purchase", day + n, order_id=f"o{day}", amount=amount, currency="EUR")
        add("ticket", 10, ticket_id=f"{customer}-t1", status="opened", priority="high")
        add("ticket", 12, ticket_id=f"{customer}-t1", status="closed", satisfaction=2 + n)
        add("ticket", 20, ticket_id=f"{customer}-t2", status="opened",
            priority=["urgent", "low", "normal"][n])
        add("profile", 40, tier="vip" if n == 2 else "standard")
    events.sort(key=lambda e: (e.occurred_at, e.event_id))
    return events


HISTORY = _history()
UNTIL = T0 + 420 * DAY


def _behaviour(pack: RulePack) -> list[bytes]:
    return [encode_action(a) for a in replay(HISTORY, Engine(pack=pack), until=UNTIL)]


# Conditions from the catalogue: fields every rule may read, plus its trigger's own.
_GLOBAL = sorted(name for name in FIELDS if not name.startswith("event."))
_TICKET_EVENT = ["event.ticket_id", "event.status", "event.priority", "event.satisfaction",
                 "event.occurred_at", "event.type"]
_WORDS = st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True).filter(
    lambda w: w not in {"true", "false", "null", "in", "not", "and", "or", "contains"})
_NUMBERS = st.integers(-500, 20_000).map(str) | st.tuples(
    st.integers(0, 999), st.integers(0, 99)).map(lambda p: f"{p[0]}.{p[1]}")


def _leaf(name: str, ftype: FieldType) -> st.SearchStrategy[str]:
    options: list[st.SearchStrategy[str]] = []
    if ftype.nullable:
        options.append(st.sampled_from([f"{name} == null", f"{name} != null"]))
    if ftype.kind == "number":
        ops = st.sampled_from(["==", "!=", "<", "<=", ">", ">="])
        options.append(st.tuples(ops, _NUMBERS).map(lambda p: f"{name} {p[0]} {p[1]}"))
        options.append(st.lists(_NUMBERS, min_size=1, max_size=3).map(
            lambda xs: f"{name} in [{', '.join(xs)}]"))
    elif ftype.kind == "string":
        values = (st.sampled_from(sorted(ftype.vocabulary)) if ftype.vocabulary
                  else _WORDS | st.just("'two words'"))
        ops = st.sampled_from(["==", "!="])
        options.append(st.tuples(ops, values).map(lambda p: f"{name} {p[0]} {p[1]}"))
        options.append(st.tuples(st.sampled_from(["in", "not in"]),
                                 st.lists(values, min_size=1, max_size=3)).map(
            lambda p: f"{name} {p[0]} [{', '.join(p[1])}]"))
    elif ftype.kind == "string_list":
        options.append(_WORDS.map(lambda w: f"{name} contains {w}"))
    return st.one_of(options)


def _conditions(fields: dict[str, FieldType]) -> st.SearchStrategy[Any]:
    leaves = st.one_of([_leaf(name, ftype) for name, ftype in sorted(fields.items())])
    return st.recursive(
        leaves,
        lambda inner: (st.lists(inner, max_size=3)
                       | st.lists(inner, min_size=1, max_size=3).map(lambda xs: {"and": xs})
                       | st.lists(inner, min_size=1, max_size=3).map(lambda xs: {"or": xs})
                       | inner.map(lambda c: {"not": c})),
        max_leaves=5,
    )


@cache
def _conditions_of(rule_id: str) -> st.SearchStrategy[Any]:
    """Conditions a rule of the default pack (or the added segment rule) may have."""
    fields = {name: FIELDS[name] for name in _GLOBAL}
    spec = next((r for r in default_pack().spec.rules if r.id == rule_id), None)
    if spec is not None:
        fields.update(trigger_fields(spec.trigger))
        if spec.trigger.on in ("ticket_opened", "ticket_closed"):
            fields.update({name: FIELDS[name] for name in _TICKET_EVENT})
    return _conditions(fields)


# Text a person writes: letters and punctuation, and the YAML 1.1 trap words.
_TEXT = st.text(string.ascii_letters + " .,!?-'", max_size=40) | st.sampled_from(
    ["on", "off", "yes", "No", "null", "~", "true", "09:00", "2026-01-01", "#hash", "a: b"])


@st.composite
def _valid_packs(draw: st.DrawFn) -> dict[str, Any]:
    data: dict[str, Any] = read_yaml(DEFAULT, NAME).data
    data["timezone"] = draw(st.sampled_from(["UTC", "Europe/Paris", "America/New_York",
                                             "Asia/Kolkata"]))
    recency, engagement = draw(st.tuples(st.integers(0, 10), st.integers(0, 10)).filter(
        lambda p: p[0] + p[1] <= 10))
    data["scoring"].update(recency_weight=recency / 10, engagement_weight=engagement / 10,
                           service_weight=(10 - recency - engagement) / 10)
    data["scoring"]["overdue_ticket_penalty"] = draw(st.integers(0, 50))
    data["ticket_sla_hours"] = {p: draw(st.floats(0.5, 400).map(lambda x: round(x, 2)))
                                for p in ("urgent", "high", "normal", "low")}
    data["rfm"]["monetary_spend"] = sorted(draw(st.lists(st.integers(1, 20_000), min_size=4,
                                                         max_size=4)), reverse=True)
    rules = {rule["id"]: rule for rule in data["rules"]}
    rules["vip_upgrade"]["trigger"]["at_least"] = draw(st.integers(100, 20_000))
    rules["vip_upgrade"]["trigger"]["once"] = draw(st.booleans())
    rules["health_winback"]["trigger"]["below"] = draw(st.floats(1, 99).map(lambda x: round(x, 1)))
    rules["health_winback"]["actions"][2]["value"] = draw(st.integers(1, 100))
    rules["inactive_30d_followup"]["trigger"]["days"] = draw(st.integers(1, 120))
    rules["onboarding_tips"]["trigger"]["days"] = draw(st.floats(0.5, 60))
    rules["birthday_coupon"]["trigger"]["at"] = draw(st.builds(
        clock_time, st.integers(0, 23), st.integers(0, 59))).isoformat()
    rules["ticket_sla_breach"]["actions"][0]["title"] = draw(_TEXT.filter(bool))
    rules["onboarding_tips"]["actions"][0]["variables"]["campaign"] = draw(
        st.integers(-(2**53), 2**53) | st.booleans() | st.none() | _TEXT)
    for rule in data["rules"]:
        rule["enabled"] = draw(st.booleans())
        rule["description"] = draw(_TEXT)
        if draw(st.booleans()):
            rule["conditions"] = draw(_conditions_of(rule["id"]))
        action = draw(st.sampled_from(rule["actions"]))
        if draw(st.booleans()):
            action["when"] = draw(_conditions_of(rule["id"]))
    data["rules"].append({
        "id": "at_risk_coupon", "trigger": {"on": "segment_entered", "segment": "at_risk"},
        "conditions": draw(_conditions_of("at_risk_coupon")),
        "actions": [{"type": "coupon", "kind": "amount",
                     "value": draw(st.integers(1, 1_000_000))}],
    })
    return data


@settings(max_examples=100, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(_valid_packs())
def test_a_valid_pack_round_trips_through_export_with_the_same_behaviour(
    data: dict[str, Any],
) -> None:
    original = build_pack(data)
    text = export_pack(original.spec)
    reloaded = load_pack(text, "exported.yaml")
    assert reloaded.spec == original.spec
    assert export_pack(reloaded.spec) == text
    assert [r.id for r in reloaded.rules] == [r.id for r in original.rules]
    assert _behaviour(reloaded) == _behaviour(original)


def test_the_default_pack_round_trips_and_fires() -> None:
    text = export_pack(default_pack().spec)
    reloaded = load_pack(text, "exported.yaml")
    assert reloaded.spec == default_pack().spec
    actions = _behaviour(reloaded)
    assert actions == _behaviour(default_pack())
    fired = {re.search(rb'"rule_id":"([a-z_0-9]+)"', a)[1].decode()  # type: ignore[index]
             for a in actions}
    # The history exercises most of the pack, so "same behaviour" means something.
    assert {"ticket_opened_ack", "ticket_closed_survey", "vip_upgrade",
            "onboarding_tips", "birthday_coupon", "inactive_30d_followup"} <= fired


def _spec_with(**changes: Any) -> PackSpec:
    data = read_yaml(DEFAULT, NAME).data
    rules = {rule["id"]: rule for rule in data["rules"]}
    rules["ticket_opened_ack"]["actions"][0]["variables"].update(changes)
    return build_pack(data).spec


@pytest.mark.parametrize("value", [
    pytest.param("08002", id="zip-code"),
    pytest.param("1e3", id="exponent"),
    pytest.param("0o17", id="octal"),
])
def test_text_that_looks_like_a_number_stays_text_after_export(value: str) -> None:
    spec = _spec_with(store_zip=value)
    reloaded = load_pack(export_pack(spec), "exported.yaml").spec
    assert reloaded == spec


@pytest.mark.parametrize("char", ["\u2028", "\x85"])
def test_line_separators_survive_export(char: str) -> None:
    text = edit(DEFAULT, "description: Tips a week after the first purchase.",
                f'description: "Tips{char.encode("unicode_escape").decode()}weekly"')
    spec = load_pack(text, NAME).spec
    assert char in next(r for r in spec.rules if r.id == "onboarding_tips").description
    try:
        reloaded = load_pack(export_pack(spec), "exported.yaml").spec
    except PackFileInvalid as exc:
        raise AssertionError(f"the export does not load: {exc.lines}") from None
    assert reloaded == spec

