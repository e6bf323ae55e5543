"""The stored form of a customer state (RocksDB and the changelog): `encode` and `decode`,
behind CustomerState.to_bytes and from_bytes.

Format 2 (written): the byte FORMAT_2, then a MessagePack array of the fields in _Wire's
order, with no names (msgspec; issue 13: a third of the JSON form's bytes, read two to three times
faster). Within it: an open ticket is [opened_at, priority, category]; the actions log
and the episodes are stored by column, a column whose rows all hold one value as that
value once; a run of action ids (32 lowercase hex digits, core/rules.action_id) is one
binary of 16 bytes per id; and a string of _WORDS, in a field that may hold one, is its
index there (one byte), in a mark "<word>:<rest>" too.

What keeps every stored state readable, forever (states live in RocksDB and on the
changelog, and a rolling upgrade has workers on both sides of a change):
- _Wire's field order is the layout: never reorder, remove or retype a field.
- _WORDS is append-only: a stored index means _WORDS[index] to every later reader, so a
  word is never removed, reordered or changed.
- Any change (a CustomerState field appended to _Wire, with a default so that older states
  decode with it; a word appended to _WORDS; a new column) takes a new first byte, which
  from_bytes then reads along with FORMAT_1. A worker on older code refuses a newer state
  (StateFormatError) instead of dropping the field it does not know or reading an index
  it does not know as a string. Deploy the readers first (see docs/design.md;
  CHURNGUARD_STATE_FORMAT=json keeps writing JSON while older workers run).
- A JSON state (first byte "{", every state written before format 1) still decodes, and
  so does format 1 (format 2 less its last two fields, last_event_at and last_noticed_at:
  they decode as None).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import fields
from functools import partial
from itertools import chain, repeat
from operator import attrgetter, is_, itemgetter
from typing import Annotated, Any, Literal, get_args

import msgspec
import orjson

from churnguard.core.state import CustomerState, Episode, LoggedAction, OpenTicket

StateFormat = Literal["binary", "json"]


class StateFormatError(ValueError):
    """Stored bytes that are no customer state this code can read."""


def encode(state: CustomerState) -> bytes:
    """The state in the format written (`write_format`): format 2 unless a rolling upgrade
    from a version that cannot read it is under way."""
    return _write(state)


def decode(raw: bytes) -> CustomerState:
    """A stored state, of any format: binary (formats 1 and 2) or JSON (older states)."""
    head = raw[:1]
    try:
        if head in _BINARY:
            return _decode(raw)
        if head == b"{":
            return CustomerState.from_json(raw)
    except TypeError as exc:  # a value the compiled state refuses (core/native.py): 1.0 in an int
        raise StateFormatError(f"corrupt customer state: {exc}") from exc
    raise StateFormatError(f"not a customer state of a known format: first byte "
                           f"{head!r} (a state written by a newer churnguard?)")


def write_format(name: StateFormat) -> None:
    """What `encode` writes from now on (the worker sets CHURNGUARD_STATE_FORMAT at start).
    Both are always read."""
    global _write  # noqa: PLW0603 (one process-wide setting, set once at start)
    _write = _encode if name == "binary" else CustomerState.to_json_bytes


FORMAT_1 = b"\x01"
# Format 2: format 1 with last_event_at and last_noticed_at appended (data retention).
# Written from its first release on; format 1 is still read (a worker on older code
# refuses a format 2 state).
FORMAT_2 = b"\x02"
_BINARY = frozenset({FORMAT_1, FORMAT_2})

# Common strings: the default pack's rule ids, segments, tiers, action types, channels,
# priorities, coupon kinds, KPI arms, task queues and mark values. APPEND-ONLY, FOREVER (see
# above): only appended, and only with a new format byte.
_WORDS: tuple[str, ...] = (
    # marks, tiers, action types, channels, coupon kinds, arms, priorities
    "done", "standard", "vip", "notification", "task", "coupon", "profile_update",
    "email", "sms", "push", "percent", "amount", "treated", "held_out",
    "low", "normal", "high", "urgent",
    # segments (the default pack's and core/rfm.PROSPECT)
    "champion", "needs_reactivation", "loyal", "new", "promising", "at_risk", "hibernating",
    "prospect",
    # the default pack's rule ids
    "ticket_opened_ack", "ticket_closed_survey", "vip_upgrade", "health_winback",
    "onboarding_tips", "birthday_coupon", "signup_anniversary_coupon",
    "inactive_30d_followup", "ticket_sla_breach",
    # the default pack's task queues and assignees
    "retention-team", "retention-supervisors", "support-escalations",
)
_WORD_OF = {word: index for index, word in enumerate(_WORDS)}
_WORD_AT = dict(enumerate(_WORDS))
# _word(s, s): the index of s, or s itself; _word_at(v, v): the word of index v, or v (a
# string) itself. Bound methods: called per value, from map() in C.
_word: Callable[[str, str], int | str] = _WORD_OF.get
_word_at: Callable[[Any, Any], Any] = _WORD_AT.get

_Word = Annotated[int, msgspec.Meta(ge=0, lt=len(_WORDS))]
_Text = _Word | str  # a field that may hold a word
# A float field keeps an int it holds as an int (as the JSON form did).
_Num = int | float
# Marks, [key, value, key, value, ...]: a string "<word>:<rest>" (a ticket's mark, an
# inactivity's occurrence) is [index, rest]. The index is checked by _unmark (msgspec
# 0.23 crashes decoding a union of a constrained int and an array).
_Mark = int | str | tuple[int, str]
# Action ids: one binary of 16 bytes per id, or the strings (one that is not lowercase hex).
_Ids = bytes | list[str]

# The actions log and the episodes, by column: [rows, column, column, ...], a column per
# NamedTuple field in its order, holding one value per row, or a single value that every
# row has (of one type; a float, of the same bits). Columns of action ids are packed.
_ActionColumns = tuple[
    int, _Ids, list[_Text], list[_Text], list[_Num], list[_Text], list[_Text], list[_Text],
    list[str], list[str], list[int], list[_Num | None], list[_Num], list[_Text], list[int],
    list[tuple[str, ...]],
]
_EpisodeColumns = tuple[
    int, list[_Text], list[_Text], list[_Num], list[_Num], list[_Num], list[_Text],
    list[_Text], list[str], list[str], list[_Ids], list[_Num | None], list[bool],
]


class _Wire(msgspec.Struct, array_like=True, gc=False):
    """The layout of formats 1 and 2 (see above: append-only)."""

    customer_id: str
    clock: _Num
    first_purchase_at: _Num | None
    last_purchase_at: _Num | None
    last_active_at: _Num | None
    order_count: int
    spend_e4: int
    purchase_days: dict[int, int]
    login_days: dict[int, int]
    open_tickets: dict[str, tuple[_Num, _Text, _Text]]
    closed_tickets: list[str]
    ratings: list[tuple[_Num, int]]
    birthday: str | None
    signup_date: str | None
    tier: _Text
    account_manager: str | None
    tags: list[str]
    has_email: bool
    has_phone: bool
    timezone: str | None
    region: str | None
    score: _Num | None
    components: tuple[_Num, _Num, _Num] | None
    segment: _Text | None
    rfm: tuple[int, int, int] | None
    score_trend: list[tuple[int, _Num]]
    fired: list[_Text]
    marks: list[_Mark]
    next_due: _Num | None
    due_pack: int
    armed: list[_Text]
    rule_fires: dict[_Text, tuple[int, _Num]]
    sent: list[tuple[_Num, _Text, _Text]]
    deferred: list[tuple[_Num, dict[str, Any]]]
    actions_log: msgspec.Raw  # _ActionColumns | None, decoded apart (_stored_log)
    episodes: _EpisodeColumns | None
    seen: list[str]
    offsets: dict[str, int]
    # Format 2: appended (a format 1 state, without them, decodes with the defaults).
    last_event_at: _Num | None = None
    last_noticed_at: _Num | None = None


_FIELDS = _Wire.__struct_fields__
_SEGMENT = _FIELDS.index("segment")
# Format 1 up to the segment, for score_and_segment: the fields before it are skipped as raw
# bytes, those after it are not read.
_Head: Any = msgspec.defstruct(
    "_Head",
    [(name, _Num | None if name == "score" else _Text | None if name == "segment"
      else msgspec.Raw) for name in _FIELDS[: _SEGMENT + 1]],
    array_like=True, gc=False)


class _Table:
    """A list of NamedTuples stored by column (see _ActionColumns)."""

    def __init__(self, kind: type[tuple[Any, ...]], columns: Any, *, words: Sequence[str],
                 ids: str, ids_per_row: bool) -> None:
        names: tuple[str, ...] = getattr(kind, "_fields")  # noqa: B009 (a NamedTuple type)
        hints = get_args(columns)[1:]
        if len(names) != len(hints):
            raise RuntimeError(f"{kind.__name__} has {len(names)} fields, its columns "
                               f"{len(hints)}: a new column takes a new format byte")
        self.new = partial(tuple.__new__, kind)
        self.words = frozenset(names.index(name) for name in words)
        self.ids = names.index(ids)
        self.ids_per_row = ids_per_row
        # Columns of float fields (list[_Num] or list[_Num | None]): a value stands for all
        # the column only if every one has its bits (0.0 is not -0.0, nor 0).
        self.floats = frozenset(index for index, hint in enumerate(hints)
                                if float in get_args(get_args(hint)[0]))

    def encode(self, rows: list[Any]) -> list[Any] | None:
        if not rows:
            return None
        count = len(rows)
        words, floats, ids = self.words, self.floats, self.ids
        out: list[Any] = [count]
        append = out.append
        for index, column in enumerate(zip(*rows, strict=False)):  # rows of one length
            if index == ids:
                append(list(map(_pack_ids, column)) if self.ids_per_row else _pack_ids(column))
                continue
            first = column[0]
            # (the second value first: most columns that are not one value differ there)
            if count > 1 and column[1] == first and column.count(first) == count and (
                    first is None or index not in floats or _same_bits(column)):
                append([_word(first, first)] if index in words else [first])
            elif index in words:
                append(list(map(_word, column, column)))
            else:
                append(column)
        return out

    def decode(self, stored: Sequence[Any] | None) -> list[Any]:
        if stored is None:
            return []
        count = stored[0]
        columns: list[Any] = []
        for index, column in enumerate(stored[1:]):
            if index == self.ids:
                columns.append(map(_unpack_ids, column) if self.ids_per_row
                               else _unpack_ids(column))
            elif len(column) == 1 and count > 1:
                # One value for every row: immutable (action_ids, a list, is never one).
                value = column[0]
                columns.append(repeat(_word_at(value, value) if index in self.words
                                      else value, count))
            elif len(column) != count:
                raise ValueError(f"a column of {len(column)} values in a table of {count}")
            elif index in self.words:
                columns.append(map(_word_at, column, column))
            else:
                columns.append(column)
        # strict: the ids' column has as many as the others.
        return list(map(self.new, zip(*columns, strict=True)))


def _same_bits(column: Sequence[Any]) -> bool:
    try:
        return len(set(map(float.hex, column))) == 1
    except TypeError:  # an int among the floats
        return False


def _check_layout() -> None:
    names = [f.name for f in fields(CustomerState) if f.init]
    if sorted(names) != sorted(_FIELDS):
        missing = sorted(set(names) - set(_FIELDS))
        extra = sorted(set(_FIELDS) - set(names))
        raise RuntimeError(f"the state codec's layout (_Wire) does not match CustomerState: "
                           f"missing {missing}, extra {extra} (append a new field to _Wire, "
                           f"with a default, and take a new format byte)")


_check_layout()
_ACTIONS = _Table(LoggedAction, _ActionColumns,
                  words=("type", "rule_id", "target", "tier", "segment", "kind"),
                  ids="action_id", ids_per_row=False)
_EPISODES = _Table(Episode, _EpisodeColumns, words=("rule_id", "arm", "tier", "segment"),
                   ids="action_ids", ids_per_row=True)
_wire_values = attrgetter(*_FIELDS)
# CustomerState's arguments, in its field order, from the decoded values in _Wire's order.
_as_arguments = itemgetter(*[_FIELDS.index(f.name) for f in fields(CustomerState) if f.init])
_OPEN_TICKETS = _FIELDS.index("open_tickets")
_TIER = _FIELDS.index("tier")
_FIRED = _FIELDS.index("fired")
_MARKS = _FIELDS.index("marks")
_ARMED = _FIELDS.index("armed")
_RULE_FIRES = _FIELDS.index("rule_fires")
_SENT = _FIELDS.index("sent")
_ACTIONS_LOG = _FIELDS.index("actions_log")
_EPISODE_LIST = _FIELDS.index("episodes")
_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(_Wire)
_actions_decoder = msgspec.msgpack.Decoder(_ActionColumns | None)
_head_decoder = msgspec.msgpack.Decoder(_Head)


def score_and_segment(raw: bytes) -> tuple[float | None, str | None]:
    """A stored state's score and segment (either format) without building the state: the
    census scan reads every state of a partition."""
    head = raw[:1]
    if head in _BINARY:
        try:
            found = _head_decoder.decode(memoryview(raw)[1:])
        except msgspec.MsgspecError as exc:
            raise StateFormatError(f"corrupt customer state (format {raw[0]}): {exc}") from exc
        return found.score, _word_at(found.segment, found.segment)
    if head == b"{":
        data = orjson.loads(raw)
        return data.get("score"), data.get("segment")
    raise StateFormatError(f"not a customer state of a known format: first byte {head!r}")



def _encode(state: CustomerState) -> bytes:
    values: list[Any] = list(_wire_values(state))
    if state.open_tickets:
        values[_OPEN_TICKETS] = {
            key: (ticket.opened_at, _word(ticket.priority, ticket.priority),
                  _word(ticket.category, ticket.category))
            for key, ticket in state.open_tickets.items()}
    values[_TIER] = _word(state.tier, state.tier)
    segment = state.segment
    values[_SEGMENT] = None if segment is None else _word(segment, segment)
    if state.fired:
        values[_FIRED] = list(map(_word, state.fired, state.fired))
    if state.marks:
        values[_MARKS] = list(map(_prefixed, chain.from_iterable(state.marks.items())))
    else:
        values[_MARKS] = ()
    if state.armed:
        values[_ARMED] = list(map(_word, state.armed, state.armed))
    if state.rule_fires:
        values[_RULE_FIRES] = {_word(k, k): v for k, v in state.rule_fires.items()}
    if state.sent:
        values[_SENT] = [(at, _word(kind, kind), _word(channel, channel))
                         for at, kind, channel in state.sent]
    log = state.actions_log
    stored = state._stored_log
    if stored is None or len(stored[0]) != len(log) or not all(map(is_, stored[0], log)):
        # Entries are immutable: the same entries, the same bytes.
        stored = state._stored_log = tuple(log), _encoder.encode(_ACTIONS.encode(log))
    values[_ACTIONS_LOG] = msgspec.Raw(stored[1])
    values[_EPISODE_LIST] = _EPISODES.encode(state.episodes)
    return FORMAT_2 + _encoder.encode(values)


def _decode(raw: bytes) -> CustomerState:
    try:
        wire = _decoder.decode(memoryview(raw)[1:])
        values: list[Any] = list(msgspec.structs.astuple(wire))
        if wire.open_tickets:
            values[_OPEN_TICKETS] = {
                key: OpenTicket(at, _word_at(priority, priority), _word_at(category, category))
                for key, (at, priority, category) in wire.open_tickets.items()}
        values[_TIER] = _word_at(wire.tier, wire.tier)
        values[_SEGMENT] = _word_at(wire.segment, wire.segment)
        if wire.fired:
            values[_FIRED] = list(map(_word_at, wire.fired, wire.fired))
        if wire.marks:
            marks = iter(map(_unmark, wire.marks))
            values[_MARKS] = dict(zip(marks, marks, strict=True))
        else:
            values[_MARKS] = {}
        if wire.armed:
            values[_ARMED] = list(map(_word_at, wire.armed, wire.armed))
        if wire.rule_fires:
            values[_RULE_FIRES] = {_word_at(k, k): v for k, v in wire.rule_fires.items()}
        if wire.sent:
            values[_SENT] = [(at, _word_at(kind, kind), _word_at(channel, channel))
                             for at, kind, channel in wire.sent]
        stored_log = bytes(wire.actions_log)  # not a view of the whole state
        log = values[_ACTIONS_LOG] = _ACTIONS.decode(_actions_decoder.decode(stored_log))
        values[_EPISODE_LIST] = _EPISODES.decode(wire.episodes)
    except (msgspec.MsgspecError, ValueError, LookupError) as exc:
        raise StateFormatError(f"corrupt customer state (format {raw[0]}): {exc}") from exc
    state = CustomerState(*_as_arguments(values))
    state._stored_log = tuple(log), stored_log
    return state


def _prefixed(text: str) -> _Mark:
    index = _WORD_OF.get(text)
    if index is not None:
        return index
    head, colon, rest = text.partition(":")
    if colon:
        index = _WORD_OF.get(head)
        if index is not None:
            return index, rest
    return text


def _unmark(stored: _Mark) -> str:
    if isinstance(stored, str):
        return stored
    if isinstance(stored, int):
        return _WORD_AT[stored]
    index, rest = stored
    return f"{_WORD_AT[index]}:{rest}"


def _pack_ids(ids: Sequence[str]) -> bytes | Sequence[str]:
    """Ids of 32 lowercase hex digits (every action id core/rules makes): 16 bytes each, in
    one binary; any other run of ids, as it is."""
    if set(map(len, ids)) != {32}:
        return ids
    joined = "".join(ids)
    try:
        packed = bytes.fromhex(joined)
    except ValueError:
        return ids
    # fromhex also takes upper case and spaces: only what hex() gives back is packed.
    return packed if packed.hex() == joined else ids


def _unpack_ids(ids: bytes | list[str]) -> list[str]:
    if not isinstance(ids, bytes):
        return ids
    if len(ids) % 16:
        raise ValueError(f"{len(ids)} bytes of action ids, not a multiple of 16")
    text = ids.hex()
    return [text[start:start + 32] for start in range(0, len(text), 32)]


_write: Callable[[CustomerState], bytes] = _encode
