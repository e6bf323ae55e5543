"""The rule-condition language: rule `conditions` and per-action `when`, and the `$`-variables
of action templates.

A condition is plain data as read from YAML, parsed into a small AST, type-checked against
the field catalogue (FIELDS, plus the fields the rule's trigger provides) and compiled into
closures at load time. Every problem of a condition tree is reported at once, with its path in
the data and its column in the leaf string; a condition that compiled cannot fail at run time.

Grammar (data form)::

    condition := leaf                         a string, below
               | [condition, ...]             all must hold; [] is always true
               | {and: [condition, ...]}      non-empty; all must hold
               | {or: [condition, ...]}       non-empty; at least one holds
               | {not: condition}
    leaf      := field op value               whitespace (space, tab, CR, LF) free between tokens
    field     := name ("." name)*             name := [A-Za-z_][A-Za-z0-9_]*
    op        := "==" | "!=" | "<" | "<=" | ">" | ">=" | "in" | "not" "in" | "contains"
    value     := scalar | "[" (scalar ("," scalar)*)? "]"      lists only for in / not in
    scalar    := number                       JSON: -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)?
                                              finite, |x| <= 1e15
               | "true" | "false" | "null"
               | quoted                       '...' or "...", escapes \\ \' \" only
               | bareword                     [A-Za-z_][A-Za-z0-9_.-]*, meaning that string

Nesting is limited to MAX_DEPTH containers and lists to MAX_LIST_ITEMS items. Barewords that
look like a differently spelled literal (True, NULL, None, ...) are refused: write the literal
or quote the string.

Run-time semantics: a field whose value is absent (None) fails every comparison except
`== null`, `!= <value>` and `not in` (`!=` and `not in` are always the negations of `==` and
`in`). Numbers compare as floats; strings exactly. A value that is not of its field's type
(possible only for event fields of future event models and trigger fields) reads as absent;
the untyped `event.properties.<key>` compares only with literals of the value's own type.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from types import MappingProxyType
from typing import Any, Literal, TypeAlias
from zoneinfo import ZoneInfo

from pydantic import BaseModel

from churnguard.core.clock import DAY, day_number, rfc3339
from churnguard.core.state import (
    LOGIN_WINDOW_DAYS,
    PURCHASE_WINDOW_DAYS,
    CustomerState,
    count_in_window,
)
from schemas.events import CURRENCIES

__all__ = [
    "ALWAYS",
    "FIELDS",
    "MAX_DEPTH",
    "MAX_LIST_ITEMS",
    "MAX_NUMBER",
    "PROPERTY_PREFIX",
    "AllOf",
    "AnyOf",
    "Condition",
    "ConditionError",
    "FieldType",
    "Kind",
    "Leaf",
    "Node",
    "Not",
    "Op",
    "Problem",
    "Subject",
    "compile_condition",
    "compile_variable",
    "format_path",
    "interpret",
    "parse_condition",
]

# The YAML reader's nesting limit: deeper trees are refused, not recursed into.
MAX_DEPTH = 32
MAX_LIST_ITEMS = 1000
# Beyond 2**53 floats stop being exact integers; nothing a rule compares comes close to 1e15.
MAX_NUMBER = 1e15
PROPERTY_PREFIX = "event.properties."

Kind = Literal["string", "number", "boolean", "string_list", "any"]
Op = Literal["==", "!=", "<", "<=", ">", ">=", "in", "not in", "contains"]
Scalar: TypeAlias = str | float | bool | None
Value: TypeAlias = Scalar | tuple[Scalar, ...]
Path: TypeAlias = tuple[str | int, ...]


@dataclass(frozen=True, slots=True)
class FieldType:
    kind: Kind
    nullable: bool = False
    # Fixed set of allowed strings (checked at compile time), None when free-form.
    vocabulary: frozenset[str] | None = None
    description: str = field(default="", compare=False)


@dataclass(slots=True)
class Subject:
    """What conditions and variables read; built once per rule firing."""

    state: CustomerState
    # A validated schemas.events model, None for time-driven firings.
    event: BaseModel | None
    now: float
    # Business time zone: now.hour and now.weekday are local to it.
    tz: ZoneInfo = field(default_factory=lambda: ZoneInfo("UTC"))
    # Trigger context (ticket.priority, due_at, ...), see compile_condition(extra_fields=).
    extra: Mapping[str, Any] = field(default_factory=dict)


Getter: TypeAlias = Callable[[Subject], Any]
Test: TypeAlias = Callable[[Subject], bool]


# --- Problems ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Problem:
    # Where in the condition data: ("and", 1) is item 1 of the `and` list, (2,) item 2 of a
    # plain list, ("not",) the negated condition.
    path: Path
    # 0-based character offset inside the leaf string (0 for a problem that is not in a leaf).
    column: int
    message: str

    def __str__(self) -> str:
        return f"{format_path(self.path)}, column {self.column}: {self.message}"


def format_path(path: Path) -> str:
    """("or", 0, "not", "and", 3) -> "or[0].not.and[3]"; () -> "the condition"."""
    if not path:
        return "the condition"
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else part
    return text


# Problems a ConditionError lists (a module constant: a class attribute of an exception is
# not readable from its instances once the module is compiled).
_SHOWN_PROBLEMS = 20


class ConditionError(ValueError):
    """Every problem of one condition tree (or variable). A ValueError, so a pydantic
    validator that compiles a condition turns it into a validation error."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        lines = [str(problem) for problem in problems[:_SHOWN_PROBLEMS]]
        if len(problems) > _SHOWN_PROBLEMS:
            lines.append(f"... and {len(problems) - _SHOWN_PROBLEMS} more problems")
        count = len(problems)
        head = "1 problem in the condition" if count == 1 else f"{count} problems in the condition"
        super().__init__(head + ":\n  " + "\n  ".join(lines))


# --- The catalogue ------------------------------------------------------------------------------

_WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_NUMBER_TYPES = (int, float)


def _number(value: object) -> float | int | None:
    """Conform a number read from an event or a trigger: Decimal -> float, others absent."""
    if isinstance(value, bool):
        return None
    if isinstance(value, _NUMBER_TYPES):
        return value
    if isinstance(value, Decimal):
        return float(value)
    return None


def _scalar(value: object) -> str | float | int | bool | None:
    if isinstance(value, str | bool):
        return value
    return _number(value)


def _conform(kind: Kind) -> Callable[[object], Any]:
    """The value of a field of this kind, or None when the value is of another type."""
    match kind:
        case "number":
            return _number
        case "string":
            return lambda v: v if isinstance(v, str) else None
        case "boolean":
            return lambda v: v if isinstance(v, bool) else None
        case "string_list":
            return lambda v: v if isinstance(v, list) else None
        case "any":
            return _scalar


def _event_getter(attr: str, kind: Kind) -> Getter:
    # `attr` is a catalogue constant, never a name from a rule.
    conform = _conform(kind)

    def get(s: Subject) -> Any:
        e = s.event
        return None if e is None else conform(getattr(e, attr, None))

    return get


def _event_text(attr: str) -> Getter:
    """Timestamps and dates as strings (RFC 3339, YYYY-MM-DD)."""

    def get(s: Subject) -> str | None:
        e = s.event
        v = None if e is None else getattr(e, attr, None)
        if isinstance(v, datetime):
            return rfc3339(v.timestamp())
        if isinstance(v, date):
            return v.isoformat()
        return v if isinstance(v, str) else None

    return get


def _custom_name(s: Subject) -> str | None:
    # `name` is personal data on a profile: only a custom event's name (what happened) is read.
    e = s.event
    if e is None or getattr(e, "type", None) != "custom":
        return None
    v = getattr(e, "name", None)
    return v if isinstance(v, str) else None


def _property_getter(key: str) -> Getter:
    def get(s: Subject) -> str | float | int | bool | None:
        e = s.event
        if e is None or getattr(e, "type", None) != "custom":
            return None
        props = getattr(e, "properties", None)
        return _scalar(props.get(key)) if isinstance(props, Mapping) else None

    return get


def _extra_getter(name: str, kind: Kind) -> Getter:
    conform = _conform(kind)
    return lambda s: conform(s.extra.get(name))


def _rfm(index: int) -> Getter:
    return lambda s: None if (rfm := s.state.rfm) is None else rfm[index]


def _component(index: int) -> Getter:
    return lambda s: None if (c := s.state.components) is None else c[index]


def _days_since(attr: Literal["last_purchase_at", "last_active_at"]) -> Getter:
    if attr == "last_purchase_at":
        return lambda s: None if (t := s.state.last_purchase_at) is None else (s.now - t) / DAY
    return lambda s: None if (t := s.state.last_active_at) is None else (s.now - t) / DAY


def _weekday(s: Subject) -> str:
    return _WEEKDAYS[datetime.fromtimestamp(s.now, s.tz).weekday()]


def _hour(s: Subject) -> int:
    return datetime.fromtimestamp(s.now, s.tz).hour


def _logins_30d(s: Subject) -> int:
    st = s.state
    return count_in_window(st.login_days, day_number(st.clock), LOGIN_WINDOW_DAYS)


def _purchases_90d(s: Subject) -> int:
    st = s.state
    return count_in_window(st.purchase_days, day_number(st.clock), PURCHASE_WINDOW_DAYS)


def _t(kind: Kind, description: str, *, nullable: bool = False,
       vocabulary: frozenset[str] | None = None) -> FieldType:
    return FieldType(kind, nullable, vocabulary, description)


_TIERS = frozenset({"standard", "vip"})
_ENTRIES: dict[str, tuple[FieldType, Getter]] = {
    "state.tier": (_t("string", "customer tier", vocabulary=_TIERS), lambda s: s.state.tier),
    "state.tags": (_t("string_list", "customer tags"), lambda s: s.state.tags),
    "state.segment": (
        _t("string", "RFM segment (names defined by the pack); null before scoring",
           nullable=True),
        lambda s: s.state.segment,
    ),
    "state.rfm.r": (_t("number", "RFM recency score 1-5", nullable=True), _rfm(0)),
    "state.rfm.f": (_t("number", "RFM frequency score 1-5", nullable=True), _rfm(1)),
    "state.rfm.m": (_t("number", "RFM monetary score 1-5", nullable=True), _rfm(2)),
    "state.lifetime_spend": (_t("number", "sum of purchase amounts"),
                             lambda s: s.state.lifetime_spend),
    "state.order_count": (_t("number", "number of purchases"), lambda s: s.state.order_count),
    "state.days_since_last_purchase": (
        _t("number", "days from the last purchase to now", nullable=True),
        _days_since("last_purchase_at"),
    ),
    "state.days_since_last_activity": (
        _t("number", "days from the last login or purchase to now", nullable=True),
        _days_since("last_active_at"),
    ),
    "state.open_tickets": (_t("number", "number of open tickets"),
                           lambda s: len(s.state.open_tickets)),
    "state.account_manager": (_t("string", "assigned account manager", nullable=True),
                              lambda s: s.state.account_manager),
    "logins_30d": (_t("number", "logins in the 30 days up to the customer's clock"),
                   _logins_30d),
    "purchases_90d": (_t("number", "purchases in the 90 days up to the customer's clock"),
                      _purchases_90d),
    "health_score": (_t("number", "health score 0-100; null before scoring", nullable=True),
                     lambda s: s.state.score),
    "health.recency": (_t("number", "recency component 0-100", nullable=True), _component(0)),
    "health.engagement": (_t("number", "engagement component 0-100", nullable=True),
                          _component(1)),
    "health.service": (_t("number", "service component 0-100", nullable=True), _component(2)),
    "now.hour": (_t("number", "hour 0-23 of the firing in the pack's time zone"), _hour),
    "now.weekday": (
        _t("string", "weekday of the firing in the pack's time zone",
           vocabulary=frozenset(_WEEKDAYS)),
        _weekday,
    ),
}
_EVENT_FIELDS: dict[str, tuple[Kind, str, frozenset[str] | None]] = {
    "type": ("string", "event type",
             frozenset({"purchase", "login", "ticket", "profile", "custom"})),
    "event_id": ("string", "event id", None),
    "order_id": ("string", "purchase: order id", None),
    "amount": ("number", "purchase: amount", None),
    "currency": ("string", "purchase: ISO 4217 currency code", CURRENCIES),
    "channel": ("string", "login: channel", None),
    "ticket_id": ("string", "ticket: ticket id", None),
    "status": ("string", "ticket: status", frozenset({"opened", "closed"})),
    "priority": ("string", "ticket: priority", frozenset({"low", "normal", "high", "urgent"})),
    "satisfaction": ("number", "ticket: satisfaction rating 1-5", None),
    "tier": ("string", "profile: new tier", _TIERS),
    "account_manager": ("string", "profile: new account manager", None),
    "tags": ("string_list", "profile: new tags", None),
}


def _event_entries() -> dict[str, tuple[FieldType, Getter]]:
    entries: dict[str, tuple[FieldType, Getter]] = {}
    for attr, (kind, doc, vocabulary) in _EVENT_FIELDS.items():
        entries[f"event.{attr}"] = (
            _t(kind, f"{doc}; null when absent or no event", nullable=True,
               vocabulary=vocabulary),
            _event_getter(attr, kind),
        )
    for attr, doc in (("occurred_at", "event time, RFC 3339 UTC"),
                      ("birthday", "profile: birthday YYYY-MM-DD"),
                      ("signup_date", "profile: signup date YYYY-MM-DD")):
        entries[f"event.{attr}"] = (
            _t("string", f"{doc}; null when absent or no event", nullable=True),
            _event_text(attr),
        )
    return entries


_ENTRIES.update(_event_entries())
_ENTRIES["event.name"] = (
    _t("string", "custom events: the event's name (never a profile's personal name)",
       nullable=True),
    _custom_name,
)
_PROPERTY = _t("any", "custom events: a property, any scalar type; key [a-z][a-z0-9_]*",
               nullable=True)
_PROPERTY_KEY = re.compile(r"[a-z][a-z0-9_]*\Z")

# The documented catalogue: every field a condition or a variable can read.
FIELDS: Mapping[str, FieldType] = MappingProxyType(
    {name: entry[0] for name, entry in sorted(_ENTRIES.items())}
    | {f"{PROPERTY_PREFIX}<key>": _PROPERTY}
)
_PERSONAL = frozenset({"event.email", "event.phone"})


def _lookup(name: str, extra: Mapping[str, FieldType]) -> tuple[FieldType, Getter] | str:
    """The field's type and getter, or the message saying why it cannot be read."""
    ftype = extra.get(name)
    if ftype is not None:
        return ftype, _extra_getter(name, ftype.kind)
    entry = _ENTRIES.get(name)
    if entry is not None:
        return entry
    if name.startswith(PROPERTY_PREFIX):
        key = name[len(PROPERTY_PREFIX):]
        if _PROPERTY_KEY.match(key):
            return _PROPERTY, _property_getter(key)
        return (f"invalid property key {_show(key)}: keys are lower-case letters, digits "
                "and _, starting with a letter")
    if name in _PERSONAL:
        return f"{name} is personal data; rules cannot read it"
    close = _close_matches(name, [*_ENTRIES, f"{PROPERTY_PREFIX}<key>", *extra])
    if close:
        return f"unknown field {_show(name)} (did you mean {_alternatives(close)}?)"
    return (f"unknown field {_show(name)}; fields are state.*, event.*, now.*, health.*, "
            "health_score, logins_30d, purchases_90d and the trigger's fields")


def _close_matches(name: str, candidates: list[str]) -> list[str]:
    """The best few suggestions: those about as close as the closest (a typo of state.tier
    suggests state.tier, not every state.t* field)."""
    scored = []
    for candidate in candidates:
        matcher = difflib.SequenceMatcher(None, name, candidate)
        # Cheap upper bounds first: a 1000-character name is rejected without the full ratio.
        if matcher.real_quick_ratio() >= 0.6 and matcher.quick_ratio() >= 0.6:
            ratio = matcher.ratio()
            if ratio >= 0.6:
                scored.append((ratio, candidate))
    if not scored:
        return []
    best = max(ratio for ratio, _ in scored)
    return [c for r, c in sorted(scored, key=lambda rc: (-rc[0], rc[1])) if r >= best - 0.05][:3]


def _check_extra(extra: Mapping[str, FieldType]) -> None:
    # The engine's own mistakes (not a rule author's): fail loudly.
    for name, ftype in extra.items():
        if not isinstance(ftype, FieldType):
            raise TypeError(f"extra field {name!r} needs a FieldType, got {ftype!r}")
        if not _FIELD.match(name):
            raise ValueError(f"extra field name {name!r} is not a field name")
        if name in _ENTRIES or name.startswith(PROPERTY_PREFIX) or name in _PERSONAL:
            raise ValueError(f"extra field {name!r} shadows a catalogue field")


# --- The AST --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Leaf:
    field: str
    op: Op
    # A float, str, bool or None; a tuple of them for in / not in.
    value: Value


@dataclass(frozen=True, slots=True)
class AllOf:
    items: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class AnyOf:
    items: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class Not:
    item: Node


Node: TypeAlias = Leaf | AllOf | AnyOf | Not


# --- Parsing a leaf -------------------------------------------------------------------------

_EXPECTED = "expected '<field> <operator> <value>', e.g. 'state.tier == vip'"
_OPERATORS = "==, !=, <, <=, >, >=, in, not in, contains"
_WS = re.compile(r"[ \t\r\n]*")
_FIELD_TOKEN = re.compile(r"[^ \t\r\n=!<>\[\]'\",]+")
_FIELD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_]+)*\Z")
_SYMBOLS = re.compile(r"[=!<>]+")
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SYMBOL_OPS: frozenset[str] = frozenset({"==", "!=", "<", "<=", ">", ">="})
_SYMBOL_HINTS = {"=": "==", "===": "==", "=>": ">=", "=<": "<=", "<>": "!=", "!": "!=",
                 "=!": "!=", "!==": "!="}
_BAREWORD = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*")
_NUMBER_TOKEN = re.compile(r"[-+0-9A-Za-z_.]+")
_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?\Z")
_QUOTED = {
    "'": re.compile(r"'([^'\\]*(?:\\.[^'\\]*)*)'", re.DOTALL),
    '"': re.compile(r'"([^"\\]*(?:\\.[^"\\]*)*)"', re.DOTALL),
}
_ESCAPE = re.compile(r"\\(.)", re.DOTALL)
_LITERALS: dict[str, Scalar] = {"true": True, "false": False, "null": None}


@dataclass(frozen=True, slots=True)
class _Parsed:
    leaf: Leaf
    field_col: int
    op_col: int
    value_col: int
    item_cols: tuple[int, ...]


class _Syntax(Exception):
    """Internal control flow of the leaf parser; never escapes it."""

    def __init__(self, column: int, message: str) -> None:
        self.column = column
        self.message = message


def _show(text: str, limit: int = 40) -> str:
    """A user's text quoted for a one-line message, shortened when long."""
    return repr(text if len(text) <= limit else text[:limit] + "…")


def _alternatives(names: list[str]) -> str:
    quoted = [f"'{n}'" for n in names]
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " or " + quoted[-1]


def _parse_leaf(text: str) -> _Parsed:
    n = len(text)
    pos = _WS.match(text, 0).end()  # type: ignore[union-attr]  # `*` always matches
    if pos == n:
        raise _Syntax(0, _EXPECTED)
    token = _FIELD_TOKEN.match(text, pos)
    if token is None:
        if text[pos] in "'\"":
            raise _Syntax(pos, "field names are not quoted; " + _EXPECTED)
        raise _Syntax(pos, _EXPECTED)
    name, field_col = token.group(), pos
    if name == "not":
        raise _Syntax(pos, "'not' cannot start a comparison; use {not: ...} to negate one")
    if name in ("and", "or"):
        raise _Syntax(pos, f"'{name}' cannot start a comparison; use {{{name}: [...]}} to "
                           "combine comparisons")
    if not _FIELD.match(name):
        raise _Syntax(pos, f"invalid field name {_show(name)}; field names look like "
                           "state.tier or event.properties.carrier")
    pos = _skip(text, token.end())
    op, op_col, pos = _parse_op(text, pos, name)
    pos = _skip(text, pos)
    if pos == n:
        raise _Syntax(pos, f"missing value after '{op}'")
    value_col = pos
    item_cols: tuple[int, ...] = ()
    value: Value
    if text[pos] == "[":
        value, item_cols, pos = _parse_list(text, pos)
    else:
        value, pos = _parse_scalar(text, pos)
    pos = _skip(text, pos)
    if pos != n:
        rest = text[pos:]
        word = _WORD.match(rest)
        if word is not None and word.group() in ("and", "or"):
            hint = "to combine comparisons use a list or {and: [...]} / {or: [...]}"
        else:
            hint = "quote text that has spaces or other characters, e.g. 'two words'"
        raise _Syntax(pos, f"unexpected {_show(rest)} after the value; {hint}")
    return _Parsed(Leaf(name, op, value), field_col, op_col, value_col, item_cols)


def _skip(text: str, pos: int) -> int:
    return _WS.match(text, pos).end()  # type: ignore[union-attr]  # `*` always matches


def _parse_op(text: str, pos: int, name: str) -> tuple[Op, int, int]:
    if pos == len(text):
        raise _Syntax(pos, f"missing operator after {_show(name)}; {_EXPECTED}")
    if symbols := _SYMBOLS.match(text, pos):
        sym = symbols.group()
        if sym in _SYMBOL_OPS:
            return sym, pos, symbols.end()  # type: ignore[return-value]  # checked just above
        hint = f" (did you mean '{_SYMBOL_HINTS[sym]}'?)" if sym in _SYMBOL_HINTS else ""
        raise _Syntax(pos, f"unknown operator {_show(sym)}{hint}; expected one of {_OPERATORS}")
    word = _WORD.match(text, pos)
    if word is None:
        raise _Syntax(pos, f"unknown operator {_show(text[pos:pos + 10])}; expected one of "
                           f"{_OPERATORS}")
    if word.group() == "in":
        return "in", pos, word.end()
    if word.group() == "contains":
        return "contains", pos, word.end()
    if word.group() == "not":
        after = _skip(text, word.end())
        second = _WORD.match(text, after) if after > word.end() else None
        if second is not None and second.group() == "in":
            return "not in", pos, second.end()
        if second is not None and second.group() == "contains":
            raise _Syntax(pos, "'not contains' is not an operator; wrap the comparison in "
                               "{not: ...}")
        raise _Syntax(pos, "expected 'in' after 'not'")
    if word.group() == "is":
        raise _Syntax(pos, "unknown operator 'is'; use '==' (e.g. 'state.segment == null')")
    raise _Syntax(pos, f"unknown operator {_show(word.group())}; expected one of {_OPERATORS}")


def _parse_list(text: str, start: int) -> tuple[tuple[Scalar, ...], tuple[int, ...], int]:
    items: list[Scalar] = []
    cols: list[int] = []
    pos = _skip(text, start + 1)
    if pos < len(text) and text[pos] == "]":
        return (), (), pos + 1
    while True:
        if pos == len(text):
            raise _Syntax(start, "unterminated list; close it with ']'")
        if len(items) == MAX_LIST_ITEMS:
            raise _Syntax(start, f"a list holds at most {MAX_LIST_ITEMS} items")
        if text[pos] == "[":
            raise _Syntax(pos, "a list holds single values (numbers, strings, true, false), "
                               "not lists")
        cols.append(pos)
        item, pos = _parse_scalar(text, pos)
        items.append(item)
        pos = _skip(text, pos)
        if pos == len(text):
            raise _Syntax(start, "unterminated list; close it with ']'")
        if text[pos] == "]":
            return tuple(items), tuple(cols), pos + 1
        if text[pos] != ",":
            raise _Syntax(pos, "expected ',' or ']' in the list")
        pos = _skip(text, pos + 1)
        if pos < len(text) and text[pos] == "]":
            raise _Syntax(pos, "expected a value after ','")


def _parse_scalar(text: str, pos: int) -> tuple[Scalar, int]:
    ch = text[pos]
    if ch in _QUOTED:
        return _parse_quoted(text, pos)
    if ch == "-" or (ch.isdigit() and ch.isascii()):
        token = _NUMBER_TOKEN.match(text, pos)
        assert token is not None
        raw = token.group()
        if not _NUMBER.match(raw):
            raise _Syntax(pos, f"invalid number {_show(raw)}; write numbers like 12, -3.5 "
                               "or 1e3")
        number = float(raw)  # no int(): a 5,000-digit literal must not hit int's digit limit
        if not abs(number) <= MAX_NUMBER:
            raise _Syntax(pos, f"number too large: {_show(raw)}; numbers are at most 1e15 "
                               "in size")
        return number, token.end()
    bare = _BAREWORD.match(text, pos)
    if bare is None:
        raise _Syntax(pos, "expected a value: a number, a quoted string, a word, true, "
                           "false, null or a [list]")
    word = bare.group()
    if word in _LITERALS:
        return _LITERALS[word], bare.end()
    if word.lower() in _LITERALS or word == "None":
        meaning = "null for no value" if word.lower() in ("null", "none") else word.lower()
        raise _Syntax(pos, f"ambiguous value {_show(word)}: write {meaning}, or quote it "
                           f"({_show(word)}) for the string")
    return word, bare.end()


def _parse_quoted(text: str, pos: int) -> tuple[str, int]:
    quote = text[pos]
    match = _QUOTED[quote].match(text, pos)
    if match is None:
        raise _Syntax(pos, f"unterminated string; close it with {quote}")
    body = match.group(1)
    for escape in _ESCAPE.finditer(body):
        if escape.group(1) not in "\\'\"":
            raise _Syntax(pos + 1 + escape.start(),
                          f"unknown escape {_show(escape.group())} in a string; only "
                          "\\\\, \\' and \\\" are allowed")
    return _ESCAPE.sub(lambda m: m.group(1), body), match.end()


# --- Type checking ------------------------------------------------------------------------------

_KIND_PHRASE: dict[str, str] = {
    "string": "a string", "number": "a number", "boolean": "true or false",
    "string_list": "a list of strings", "any": "of any type",
}


def _value_kind(value: Scalar) -> Kind | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, str):
        return "string"
    return "number"


def _describe(value: Value) -> str:
    if isinstance(value, tuple):
        return "a list"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f"string {_show(value)}"
    return f"number {value:g}"


def _check(parsed: _Parsed, name: str, ftype: FieldType) -> list[tuple[int, str]]:
    """The leaf's type problems as (column, message)."""
    op, kind = parsed.leaf.op, ftype.kind
    if op in ("<", "<=", ">", ">="):
        if kind not in ("number", "any"):
            return [(parsed.op_col, f"'{op}' needs a number field; {name} is "
                                    f"{_KIND_PHRASE[kind]}")]
        return _check_order(parsed)
    if op == "contains":
        if kind != "string_list":
            return [(parsed.op_col, "'contains' needs a list-of-strings field such as "
                                    f"state.tags; {name} is {_KIND_PHRASE[kind]}")]
        value = parsed.leaf.value
        if not isinstance(value, str):
            return [(parsed.value_col, f"'contains' needs a string; got {_describe(value)}")]
        return _vocabulary(name, ftype, value, parsed.value_col)
    if kind == "string_list" and not (op in ("==", "!=") and parsed.leaf.value is None):
        return [(parsed.op_col, f"'{op}' does not apply to {name}, a list of strings; use "
                                "'contains'")]
    if op in ("==", "!="):
        value = parsed.leaf.value
        if isinstance(value, tuple):
            return [(parsed.value_col, f"'{op}' compares with a single value; use 'in' or "
                                       "'not in' for a list")]
        return _scalar_problems(name, ftype, value, parsed.value_col, "")
    return _check_members(parsed, name, ftype)


def _check_order(parsed: _Parsed) -> list[tuple[int, str]]:
    op, value, column = parsed.leaf.op, parsed.leaf.value, parsed.value_col
    if isinstance(value, tuple):
        return [(column, f"'{op}' needs a single number, not a list")]
    if value is None:
        return [(column, f"'{op}' cannot compare with null; use '== null'")]
    if _value_kind(value) != "number":
        return [(column, f"'{op}' needs a number; got {_describe(value)}")]
    return []


def _check_members(parsed: _Parsed, name: str, ftype: FieldType) -> list[tuple[int, str]]:
    """in / not in: a list whose items all have the field's type."""
    op, value = parsed.leaf.op, parsed.leaf.value
    if not isinstance(value, tuple):
        return [(parsed.value_col, f"'{op}' needs a list such as [a, b]; got "
                                   f"{_describe(value)}")]
    problems: list[tuple[int, str]] = []
    bad = 0
    for index, (item, column) in enumerate(zip(value, parsed.item_cols, strict=True)):
        if item is None:
            found = [(column, f"list item {index} is null; lists cannot hold null, use "
                              f"'{name} == null' in an {{or: [...]}}")]
        else:
            found = _scalar_problems(name, ftype, item, column, f"list item {index}: ")
        if found:
            bad += 1
            if bad <= _ITEM_PROBLEMS:
                problems.extend(found)
    if bad > _ITEM_PROBLEMS:
        problems.append((parsed.value_col,
                         f"... and {bad - _ITEM_PROBLEMS} more invalid list items"))
    return problems


# Problems reported per list: a 1000-item list of wrong types says so in a few lines.
_ITEM_PROBLEMS = 10


def _scalar_problems(name: str, ftype: FieldType, value: Scalar, column: int,
                     prefix: str) -> list[tuple[int, str]]:
    if value is None:
        if ftype.nullable:
            return []
        hint = ("; quote it ('null') for the string"
                if ftype.kind == "string" and ftype.vocabulary is None else "")
        return [(column, f"{prefix}{name} is never null{hint}")]
    kind = _value_kind(value)
    if ftype.kind not in ("any", kind):
        hint = ""
        if ftype.kind == "string" and isinstance(value, bool):
            hint = f" (quote it, '{_describe(value)}', for the string)"
        return [(column, f"{prefix}{name} is {_KIND_PHRASE[ftype.kind]}; got "
                         f"{_describe(value)}{hint}")]
    if isinstance(value, str):
        return [(column, prefix + m) for _, m in _vocabulary(name, ftype, value, column)]
    return []


def _vocabulary(name: str, ftype: FieldType, value: str, column: int) -> list[tuple[int, str]]:
    vocabulary = ftype.vocabulary
    if vocabulary is None or value in vocabulary:
        return []
    lower = value.lower()
    same_case = [v for v in vocabulary if v.lower() == lower]
    # "saturday" -> "sat", "open" -> "opened": difflib misses abbreviations.
    prefixed = [v for v in vocabulary if len(lower) >= 2 and (
        lower.startswith(v.lower()) or v.lower().startswith(lower))]
    close = (same_case or (prefixed if len(prefixed) == 1 else [])
             or difflib.get_close_matches(value, vocabulary, n=1, cutoff=0.6))
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    if len(vocabulary) <= 12:
        allowed = ", ".join(v for v in _ordered(vocabulary))
        return [(column, f"{name} is one of {allowed}; got {_show(value)}{hint}")]
    return [(column, f"{name} is one of {len(vocabulary)} known values; got "
                     f"{_show(value)}{hint}")]


def _ordered(vocabulary: frozenset[str]) -> list[str]:
    # Weekdays in week order, everything else alphabetically.
    if vocabulary == frozenset(_WEEKDAYS):
        return list(_WEEKDAYS)
    return sorted(vocabulary)


# --- Walking the data ------------------------------------------------------------------------


class _Analysis:
    def __init__(self, extra: Mapping[str, FieldType]) -> None:
        self.extra = extra
        self.problems: list[Problem] = []
        self.fields: dict[str, tuple[FieldType, Getter]] = {}
        # Why a name cannot be read, once per name (suggestions cost a difflib pass each).
        self.unreadable: dict[str, str] = {}
        # Where each field is read: (path of the leaf, column of the name), in data order.
        self.places: dict[str, list[tuple[Path, int]]] = {}

    def walk(self, data: Any, path: Path, depth: int) -> Node | None:
        if isinstance(data, str):
            return self.leaf(data, path)
        if not isinstance(data, list | tuple | Mapping):
            self.problem(path, 0, "a condition is a string '<field> <operator> <value>', a "
                                  "list, or a mapping {and: [...]}, {or: [...]} or {not: ...}; "
                                  f"got {_type_name(data)}")
            return None
        if depth >= MAX_DEPTH:
            self.problem(path, 0, f"conditions are nested more than {MAX_DEPTH} levels deep")
            return None
        if isinstance(data, list | tuple):
            items = self.items(data, path, depth)
            return None if items is None else AllOf(items)
        if len(data) != 1:
            keys = ", ".join(_key_text(k) for k in list(data)[:5]) or "none"
            self.problem(path, 0, "a condition mapping has exactly one key, and, or or not; "
                                  f"got {len(data)} keys ({keys})")
            return None
        ((key, value),) = data.items()
        if key in ("and", "or"):
            if not isinstance(value, list | tuple):
                self.problem((*path, key), 0, f"'{key}' takes a list of conditions; got "
                                              f"{_type_name(value)}")
                return None
            if not value:
                self.problem((*path, key), 0, f"'{key}' needs at least one condition")
                return None
            items = self.items(value, (*path, key), depth)
            if items is None:
                return None
            return AllOf(items) if key == "and" else AnyOf(items)
        if key == "not":
            item = self.walk(value, (*path, "not"), depth + 1)
            return None if item is None else Not(item)
        hint = ""
        if isinstance(key, str) and _FIELD.match(key):
            hint = f"; a comparison is a string such as '{_show(key, 30)[1:-1]} == ...'"
        self.problem(path, 0, f"unknown key {_key_text(key)}; a condition mapping is "
                              f"{{and: [...]}}, {{or: [...]}} or {{not: ...}}{hint}")
        return None

    def items(self, data: list[Any] | tuple[Any, ...], path: Path,
              depth: int) -> tuple[Node, ...] | None:
        nodes = [self.walk(item, (*path, i), depth + 1) for i, item in enumerate(data)]
        if any(node is None for node in nodes):
            return None
        return tuple(node for node in nodes if node is not None)

    def leaf(self, text: str, path: Path) -> Leaf | None:
        try:
            parsed = _parse_leaf(text)
        except _Syntax as problem:
            self.problem(path, problem.column, problem.message)
            return None
        name = parsed.leaf.field
        found = self.fields.get(name) or self.unreadable.get(name) or _lookup(name, self.extra)
        if isinstance(found, str):
            self.unreadable[name] = found
            self.problem(path, parsed.field_col, found)
            return None
        self.fields[name] = found
        self.places.setdefault(name, []).append((path, parsed.field_col))
        problems = _check(parsed, name, found[0])
        for column, message in problems:
            self.problem(path, column, message)
        return None if problems else parsed.leaf

    def problem(self, path: Path, column: int, message: str) -> None:
        self.problems.append(Problem(path, column, message))


def _type_name(data: object) -> str:
    if data is None:
        return "null"
    if isinstance(data, bool):
        return "true" if data else "false"
    if isinstance(data, int | float):
        # repr() of a 5,000-digit int raises: show only numbers of a sensible size.
        return f"a number ({data!r})" if abs(data) <= MAX_NUMBER else "a number"
    if isinstance(data, Mapping):
        return "a mapping"
    if isinstance(data, list | tuple):
        return "a list"
    return f"a {type(data).__name__}"


def _key_text(key: object) -> str:
    return _show(key) if isinstance(key, str) else _type_name(key)


_NO_FIELDS: Mapping[str, FieldType] = MappingProxyType({})


def _analyze(data: Any, extra: Mapping[str, FieldType]) -> tuple[Node, _Analysis]:
    _check_extra(extra)
    analysis = _Analysis(extra)
    node = analysis.walk(data, (), 0)
    if analysis.problems or node is None:
        raise ConditionError(analysis.problems)
    return node, analysis


def parse_condition(data: Any, *, extra_fields: Mapping[str, FieldType] = _NO_FIELDS) -> Node:
    """The checked AST of a condition (lists and `and` both become AllOf)."""
    return _analyze(data, extra_fields)[0]


# --- Compiling ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, eq=False)
class Condition:
    """A compiled condition: call it with a Subject. `test` is the bare closure."""

    test: Test = field(repr=False)
    fields: frozenset[str]
    # The condition data as given.
    source: Any
    # Where each field is read: (path of the leaf in `source`, offset of the field's name in
    # it) for every leaf, in data order (to report a field the rule cannot read at its leaf).
    places: Mapping[str, tuple[tuple[Path, int], ...]] = field(default_factory=dict,
                                                              repr=False)

    def __call__(self, subject: Subject) -> bool:
        return self.test(subject)


def _true(s: Subject) -> bool:
    return True


def _false(s: Subject) -> bool:
    return False


ALWAYS = Condition(_true, frozenset(), [])


def compile_condition(data: Any, *,
                      extra_fields: Mapping[str, FieldType] = _NO_FIELDS) -> Condition:
    """Parse, type-check and compile; ConditionError lists every problem of the tree."""
    if isinstance(data, list) and not data:
        return ALWAYS
    node, analysis = _analyze(data, extra_fields)
    getters = {name: getter for name, (_, getter) in analysis.fields.items()}
    kinds = {name: ftype.kind for name, (ftype, _) in analysis.fields.items()}
    test = _compile(node, getters, kinds)
    places = {name: tuple(found) for name, found in analysis.places.items()}
    return Condition(test, frozenset(analysis.fields), data, places)


def compile_variable(text: str, *,
                     extra_fields: Mapping[str, FieldType] = _NO_FIELDS) -> Getter:
    """`"$event.ticket_id"` -> a getter of that field (None when absent). List values are
    copied, so an action never shares a list with the state."""
    _check_extra(extra_fields)
    if not isinstance(text, str) or not text.startswith("$"):
        raise ConditionError([Problem((), 0, "a variable is '$' followed by a field name, "
                                             "e.g. '$event.ticket_id'")])
    name = text[1:]
    if not _FIELD.match(name):
        raise ConditionError([Problem((), 1, f"invalid field name {_show(name)}; field names "
                                             "look like state.tier or event.ticket_id")])
    found = _lookup(name, extra_fields)
    if isinstance(found, str):
        raise ConditionError([Problem((), 1, found)])
    ftype, get = found
    if ftype.kind == "string_list":
        return lambda s: None if (v := get(s)) is None else list(v)
    return get


def _compile(node: Node, getters: Mapping[str, Getter], kinds: Mapping[str, Kind]) -> Test:
    if isinstance(node, Leaf):
        return _leaf_test(getters[node.field], kinds[node.field], node.op, node.value)
    if isinstance(node, Not):
        inner = _compile(node.item, getters, kinds)
        if inner is _true:
            return _false
        if inner is _false:
            return _true
        return lambda s: not inner(s)
    tests = [_compile(item, getters, kinds) for item in node.items]
    if isinstance(node, AllOf):
        if _false in tests:
            return _false
        return _all(tuple(t for t in tests if t is not _true))
    if _true in tests:
        return _true
    return _any(tuple(t for t in tests if t is not _false))


def _all(tests: tuple[Test, ...]) -> Test:
    match tests:
        case ():
            return _true
        case (only,):
            return only
        case (a, b):
            return lambda s: a(s) and b(s)
        case (a, b, c):
            return lambda s: a(s) and b(s) and c(s)

    def test(s: Subject) -> bool:
        for t in tests:  # noqa: SIM110 - no generator allocated per call on the hot path
            if not t(s):
                return False
        return True

    return test


def _any(tests: tuple[Test, ...]) -> Test:
    match tests:
        case ():
            return _false
        case (only,):
            return only
        case (a, b):
            return lambda s: a(s) or b(s)
        case (a, b, c):
            return lambda s: a(s) or b(s) or c(s)

    def test(s: Subject) -> bool:
        for t in tests:  # noqa: SIM110 - no generator allocated per call on the hot path
            if t(s):
                return True
        return False

    return test


def _leaf_test(get: Getter, kind: Kind, op: Op, value: Value) -> Test:
    """The comparison, chosen once. Getters return a value of the field's kind or None."""
    if value is None:
        if op == "==":
            return lambda s: get(s) is None
        return lambda s: get(s) is not None
    if kind == "string_list":
        return _contains(get, value)
    if kind in ("number", "string"):
        return _typed(get, op, value)
    return _loose(get, op, value)


def _contains(get: Getter, value: Value) -> Test:
    item = value

    def contains(s: Subject) -> bool:
        v: list[str] | None = get(s)
        return v is not None and item in v

    return contains


def _typed(get: Getter, op: Op, value: Value) -> Test:
    """Number and string fields: the getter's value is already of the literal's type."""
    if isinstance(value, tuple):
        members = frozenset(value)
        if op == "in":
            return lambda s: get(s) in members
        return lambda s: get(s) not in members
    c = value
    if op == "==":
        return lambda s: get(s) == c
    if op == "!=":
        return lambda s: get(s) != c
    assert isinstance(c, float)
    return _order(get, op, c)


def _order(get: Getter, op: Op, c: float) -> Test:
    def lt(s: Subject) -> bool:
        v: float | None = get(s)
        return v is not None and v < c

    def le(s: Subject) -> bool:
        v: float | None = get(s)
        return v is not None and v <= c

    def gt(s: Subject) -> bool:
        v: float | None = get(s)
        return v is not None and v > c

    def ge(s: Subject) -> bool:
        v: float | None = get(s)
        return v is not None and v >= c

    return {"<": lt, "<=": le, ">": gt, ">=": ge}[op]


def _loose(get: Getter, op: Op, value: Value) -> Test:
    """`any` and boolean fields: the value's type decides (True is not 1, "1" is not 1)."""
    if isinstance(value, tuple):
        strings = frozenset(v for v in value if isinstance(v, str))
        flags = frozenset(v for v in value if isinstance(v, bool))
        numbers = frozenset(v for v in value if isinstance(v, float) and not isinstance(v, bool))

        def member(s: Subject) -> bool:
            v = get(s)
            if isinstance(v, str):
                return v in strings
            if isinstance(v, bool):
                return v in flags
            return isinstance(v, _NUMBER_TYPES) and v in numbers

        if op == "in":
            return member
        return lambda s: not member(s)
    if op in ("<", "<=", ">", ">="):
        assert isinstance(value, float)
        ordered = _order(get, op, value)

        def order(s: Subject) -> bool:
            v = get(s)
            return isinstance(v, _NUMBER_TYPES) and not isinstance(v, bool) and ordered(s)

        return order
    c = value
    eq: Test
    if isinstance(c, bool):
        def eq(s: Subject) -> bool:
            return get(s) is c
    elif isinstance(c, str):
        def eq(s: Subject) -> bool:
            v = get(s)
            return isinstance(v, str) and v == c
    else:
        def eq(s: Subject) -> bool:
            v = get(s)
            return isinstance(v, _NUMBER_TYPES) and not isinstance(v, bool) and v == c
    if op == "==":
        return eq
    return lambda s: not eq(s)


# --- The reference interpreter ------------------------------------------------------------------


def interpret(data: Any, subject: Subject, *,
              extra_fields: Mapping[str, FieldType] = _NO_FIELDS) -> bool:
    """Evaluate condition data directly: the semantics in their plainest form, written apart
    from the compiler (own field reading, no closures) so the two can be checked against each
    other. Raises ConditionError like compile_condition."""
    node = parse_condition(data, extra_fields=extra_fields)
    return _evaluate(node, subject, extra_fields)


def _evaluate(node: Node, subject: Subject, extra: Mapping[str, FieldType]) -> bool:
    if isinstance(node, Leaf):
        return _compare(node.op, node.value, _read(node.field, subject, extra))
    if isinstance(node, Not):
        return not _evaluate(node.item, subject, extra)
    results = [_evaluate(item, subject, extra) for item in node.items]
    return all(results) if isinstance(node, AllOf) else any(results)


def _runtime_kind(value: object) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float | Decimal):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "string_list"
    return "other"


def _compare(op: Op, literal: Value, value: Any) -> bool:
    if op == "!=":
        return not _compare("==", literal, value)
    if op == "not in":
        return not _compare("in", literal, value)
    if op == "==" and literal is None:
        return value is None
    if value is None:
        return False
    if op == "in":
        assert isinstance(literal, tuple)
        return any(_compare("==", item, value) for item in literal)
    if op == "contains":
        return isinstance(value, list) and literal in value
    assert not isinstance(literal, tuple)
    if _runtime_kind(value) != _runtime_kind(literal):
        return False
    if op == "==":
        return bool(float(value) == literal if _runtime_kind(value) == "number"
                    else value == literal)
    number = float(value)
    assert isinstance(literal, float)
    if op == "<":
        return number < literal
    if op == "<=":
        return number <= literal
    if op == ">":
        return number > literal
    return number >= literal


def _read(name: str, subject: Subject, extra: Mapping[str, FieldType]) -> Any:
    if name in extra:
        return _reference_conform(subject.extra.get(name), extra[name].kind)
    prefix, _, rest = name.partition(".")
    if prefix == "event":
        return _read_event(rest, subject.event)
    if prefix == "now":
        local = datetime.fromtimestamp(subject.now, UTC).astimezone(subject.tz)
        if rest == "hour":
            return local.hour
        return {1: "mon", 2: "tue", 3: "wed", 4: "thu", 5: "fri", 6: "sat",
                7: "sun"}[local.isoweekday()]
    return _read_state(name, subject)


def _read_state(name: str, subject: Subject) -> Any:
    st = subject.state
    today = int(st.clock // DAY)
    match name:
        case "logins_30d":
            return sum(n for d, n in st.login_days.items() if today - 30 < d <= today)
        case "purchases_90d":
            return sum(n for d, n in st.purchase_days.items() if today - 90 < d <= today)
        case "health_score":
            return st.score
        case "health.recency" | "health.engagement" | "health.service":
            which = ("recency", "engagement", "service").index(name.partition(".")[2])
            return None if st.components is None else st.components[which]
        case "state.rfm.r" | "state.rfm.f" | "state.rfm.m":
            return None if st.rfm is None else st.rfm["rfm".index(name[-1])]
        case "state.days_since_last_purchase":
            last = st.last_purchase_at
            return None if last is None else (subject.now - last) / DAY
        case "state.days_since_last_activity":
            last = st.last_active_at
            return None if last is None else (subject.now - last) / DAY
        case "state.open_tickets":
            return len(st.open_tickets)
        case "state.lifetime_spend":
            return st.spend_e4 / 10_000
    return {"state.tier": st.tier, "state.tags": st.tags, "state.segment": st.segment,
            "state.order_count": st.order_count,
            "state.account_manager": st.account_manager}[name]


def _read_event(attr: str, event: BaseModel | None) -> Any:
    if event is None:
        return None
    data = vars(event)
    custom = data.get("type") == "custom"
    if attr.startswith("properties."):
        props = data.get("properties") if custom else None
        raw = props.get(attr[len("properties."):]) if isinstance(props, dict) else None
        return _reference_conform(raw, "any")
    if attr == "name" and not custom:
        return None
    raw = data.get(attr)
    if isinstance(raw, datetime):
        raw = rfc3339(raw.timestamp())
    elif isinstance(raw, date):
        raw = raw.isoformat()
    return _reference_conform(raw, FIELDS[f"event.{attr}"].kind)


def _reference_conform(value: object, kind: Kind) -> Any:
    found = _runtime_kind(value)
    if kind == "any":
        if found in ("string", "boolean"):
            return value
        return float(value) if found == "number" else None  # type: ignore[arg-type]
    return value if found == kind else None
