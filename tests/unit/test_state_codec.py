"""The stored form of a customer state (churnguard/core/state.py, issue 13): binary format 1
round-trips every state exactly, JSON states written by older code (some before fields
existed) still decode, what is not a state of a known format is refused with a clear error,
and a realistic state is several times smaller than its JSON."""

from __future__ import annotations

import dataclasses
import statistics
from dataclasses import fields
from typing import Any

import msgspec
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from churnguard.census import standing, standing_of_raw
from churnguard.core import state_codec as state_module
from churnguard.core.state import CustomerState, Episode, LoggedAction, OpenTicket
from churnguard.core.state_codec import FORMAT_1, FORMAT_2, StateFormatError, score_and_segment
from churnguard.engine import build_engine
from churnguard.replay import replay
from streams.settings import Settings

WORDS = state_module._WORDS

# --- arbitrary states -------------------------------------------------------------------

# Strings: words of the table, "<word>:<rest>" (marks), anything else (no surrogates: not
# storable in either form).
texts = st.one_of(
    st.sampled_from(WORDS),
    st.builds(lambda word, rest: f"{word}:{rest}", st.sampled_from(WORDS), st.text(max_size=8)),
    st.text(max_size=12),
)
# Float fields: any float but NaN (never equal to itself), and ints now and then (an int
# stays an int, as JSON kept it). The small values make columns of one value, and mixes
# that must not be taken for one (0.0, -0.0 and 0; 1.0 and 1).
small = st.sampled_from([0.0, -0.0, 0, 1.0, 1, 15.0])
nums = st.one_of(small, st.floats(allow_nan=False), st.integers(-(2**53), 2**53))
ints = st.integers(-(2**63), 2**64 - 1)
hex_ids = st.binary(min_size=16, max_size=16).map(bytes.hex)
# Action ids: as core/rules makes them (packed), and others (kept as they are).
ids = st.one_of(hex_ids, hex_ids.map(str.upper), st.text(max_size=40),
                # edges: spaces (that bytes.fromhex skips), ids of 31 and 33 digits
                st.sampled_from(["0" * 32, " " * 32, "0" * 31 + " ", "0" * 31, "0" * 33]))
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=6)


def rows(strategy: st.SearchStrategy[Any], width: int,
         max_size: int) -> st.SearchStrategy[list[Any]]:
    """Lists of NamedTuples of `width` fields; often copies of one with a few fields
    changed, so that their columns hold one value, or nearly."""
    def varied(base: Any, others: list[Any], keep: list[list[bool]]) -> list[Any]:
        return [base, *(type(base)(*(b if k else o for b, o, k in zip(base, other, mask,
                                                                      strict=True)))
                        for other, mask in zip(others, keep, strict=False))]
    masks = st.lists(st.booleans(), min_size=width, max_size=width)
    return st.one_of(
        st.lists(strategy, max_size=max_size),
        st.builds(varied, strategy, st.lists(strategy, max_size=max_size - 1),
                  st.lists(masks, min_size=max_size, max_size=max_size)),
    )


logged_actions = st.builds(
    LoggedAction, ids, texts, texts, nums, texts, texts, texts, texts, texts, ints,
    st.none() | nums, nums, texts, ints, st.lists(st.text(max_size=10), max_size=3).map(tuple))
episodes = st.builds(
    Episode, texts, texts, nums, nums, nums, texts, texts, texts, texts,
    st.lists(ids, max_size=4), st.none() | nums, st.booleans())
FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "customer_id": st.text(max_size=20),
    "clock": nums,
    "first_purchase_at": st.none() | nums,
    "last_purchase_at": st.none() | nums,
    "last_active_at": st.none() | nums,
    "order_count": ints,
    "spend_e4": ints,
    "purchase_days": st.dictionaries(ints, ints, max_size=5),
    "login_days": st.dictionaries(ints, ints, max_size=5),
    "open_tickets": st.dictionaries(texts, st.builds(OpenTicket, nums, texts, texts),
                                    max_size=4),
    "closed_tickets": st.lists(st.text(max_size=10), max_size=4),
    "ratings": st.lists(st.tuples(nums, ints), max_size=4),
    "birthday": st.none() | st.text(max_size=10),
    "signup_date": st.none() | st.text(max_size=10),
    "tier": texts,
    "account_manager": st.none() | texts,
    "tags": st.lists(texts, max_size=4),
    "has_email": st.booleans(),
    "has_phone": st.booleans(),
    "timezone": st.none() | st.text(max_size=20),
    "region": st.none() | texts,
    "score": st.none() | nums,
    "components": st.none() | st.tuples(nums, nums, nums),
    "segment": st.none() | texts,
    "rfm": st.none() | st.tuples(ints, ints, ints),
    "score_trend": st.lists(st.tuples(ints, nums), max_size=5),
    "fired": st.lists(texts, max_size=4),
    "marks": st.dictionaries(texts, texts, max_size=5),
    "next_due": st.none() | nums,
    "due_pack": ints,
    "armed": st.lists(texts, max_size=4),
    "rule_fires": st.dictionaries(texts, st.tuples(ints, nums), max_size=3),
    "sent": st.lists(st.tuples(nums, texts, texts), max_size=3),
    "deferred": st.lists(st.tuples(nums, st.dictionaries(st.text(max_size=5), json_values,
                                                         max_size=4)), max_size=2),
    "actions_log": rows(logged_actions, len(LoggedAction._fields), 6),
    "episodes": rows(episodes, len(Episode._fields), 4),
    "seen": st.lists(st.text(max_size=12), max_size=4),
    "offsets": st.dictionaries(st.text(max_size=8), ints, max_size=3),
    "last_event_at": st.none() | nums,
    "last_noticed_at": st.none() | nums,
}
states = st.builds(CustomerState, **FIELDS)


def test_the_strategy_covers_every_field():
    """A field added to CustomerState is generated here too (and must be added to the
    codec's layout: the module refuses to import otherwise)."""
    assert set(FIELDS) == {f.name for f in fields(CustomerState) if f.init}


def exact(state: CustomerState) -> str:
    """Equality that also tells 0 from 0.0 and -0.0, a tuple from a list, a NamedTuple
    from a tuple, and the order of a dict's keys."""
    return repr(state)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(states)
def test_any_state_round_trips_exactly(state):
    raw = state.to_bytes()
    assert raw[:1] == FORMAT_2
    decoded = CustomerState.from_bytes(raw)
    assert decoded == state
    assert exact(decoded) == exact(state)
    assert decoded.to_bytes() == raw  # with the log the decode remembered, and without
    decoded._stored_log = None
    assert decoded.to_bytes() == raw
    found = score_and_segment(raw)
    assert repr(found) == repr((state.score, state.segment))


@pytest.mark.parametrize("change", ["append", "replace", "retype", "trim", "new list"])
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(state=states, new=logged_actions)
def test_a_changed_actions_log_is_stored_again(change, state, new):
    """The codec remembers the log it decoded: a log changed after, in any way, is what
    the next to_bytes stores (an entry replaced by an equal one that is not the same one,
    too: 15.0 for 15)."""
    if state.actions_log:
        state.actions_log[0] = state.actions_log[0]._replace(value=15)
    decoded = CustomerState.from_bytes(state.to_bytes())
    log = decoded.actions_log
    if change == "append":
        log.append(new)
    elif change == "replace" and log:
        log[-1] = log[-1]._replace(flags=log[-1].flags ^ 1)
    elif change == "retype" and log:
        log[0] = log[0]._replace(value=15.0)
    elif change == "trim":
        del log[:1]
    elif change == "new list":
        decoded.actions_log = [*log, new]
    again = CustomerState.from_bytes(decoded.to_bytes())
    assert exact(again) == exact(decoded)


@pytest.mark.parametrize("action_ids", [
    ["0" * 31, "0" * 33],  # 64 hex digits in all, not 32 each
    ["ab" * 16, "AB" * 16],  # upper case: bytes.fromhex reads it, hex() does not give it back
    ["0" * 30 + " 0", "1" * 32],  # a space, that bytes.fromhex skips
    ["", "x"],
])
def test_action_ids_other_than_32_lowercase_hex_digits_are_kept_as_they_are(action_ids):
    action = LoggedAction("", "task", "r", 1.0, "q", "standard", "new", "", "")
    state = CustomerState(customer_id="c1",
                          actions_log=[action._replace(action_id=i) for i in action_ids],
                          episodes=[Episode("r", "treated", 1.0, 2.0, 60.0, "standard", "new",
                                            "", "", action_ids)])
    decoded = CustomerState.from_bytes(state.to_bytes())
    assert [a.action_id for a in decoded.actions_log] == action_ids
    assert decoded.episodes[0].action_ids == action_ids


def test_action_ids_as_core_rules_makes_them_take_16_bytes_each():
    ids = [f"{n:032x}" for n in range(40)]
    action = LoggedAction("", "task", "r", 1.0, "q", "standard", "new", "", "")
    state = CustomerState(customer_id="c1",
                          actions_log=[action._replace(action_id=i) for i in ids])
    raw = state.to_bytes()
    assert bytes.fromhex("".join(ids)) in raw
    assert CustomerState.from_bytes(raw).actions_log == state.actions_log


# --- realistic states --------------------------------------------------------------------

@pytest.fixture(scope="module")
def busy_states() -> list[CustomerState]:
    """The states of a replayed workload (benchmarks/workload.py, small)."""
    from benchmarks.workload import generate
    from churnguard.core.clock import parse_rfc3339
    from churnguard.replay import read_events

    lines = [value for _, value in generate(6_000, 300, days=90, seed=3, end=1_800_000_000)]
    until = max(parse_rfc3339(orjson.loads(line)["occurred_at"]) for line in lines)
    events, bad = read_events(lines, now=until, max_future_hours=24)
    assert not bad
    found: dict[str, CustomerState] = {}
    for _ in replay(events, build_engine(Settings()), until=until, states=found):
        pass
    return sorted(found.values(), key=lambda s: len(s.to_json_bytes()))


def test_realistic_states_round_trip_and_are_far_smaller_than_json(busy_states):
    binary = [len(s.to_bytes()) for s in busy_states]
    json = [len(s.to_json_bytes()) for s in busy_states]
    for state in busy_states:
        decoded = CustomerState.from_bytes(state.to_bytes())
        assert exact(decoded) == exact(state)
        assert CustomerState.from_bytes(state.to_json_bytes()) == without_new_fields(state)
    assert all(b < j for b, j in zip(binary, json, strict=True))
    # About a third of the JSON's bytes (measured here: 0.35 at the median, 0.35 for the
    # busiest, 50 actions; the 100,000-event workload's median: 0.32).
    assert statistics.median(binary) <= 0.4 * statistics.median(json)
    busiest = busy_states[-1]
    assert len(busiest.actions_log) >= 20
    assert len(busiest.to_bytes()) <= 0.5 * len(busiest.to_json_bytes())


def test_the_census_reads_both_forms(busy_states):
    for state in busy_states[:: max(1, len(busy_states) // 20)]:
        assert standing_of_raw(state.to_bytes()) == standing(state)
        assert standing_of_raw(state.to_json_bytes()) == standing(state)
        assert score_and_segment(state.to_json_bytes()) == (state.score, state.segment)


# --- JSON states (every state stored before format 1) ------------------------------------

def without_new_fields(state: CustomerState) -> CustomerState:
    """The state as the JSON form keeps it: without the fields added after format 1."""
    return dataclasses.replace(state, last_event_at=None, last_noticed_at=None)


def test_a_json_state_decodes_and_is_stored_binary_after(busy_states):
    state = busy_states[-1]
    assert state.last_event_at is not None
    decoded = CustomerState.from_bytes(state.to_json_bytes())
    assert decoded == without_new_fields(state)
    assert all(isinstance(entry, LoggedAction) for entry in decoded.actions_log)
    rewritten = decoded.to_bytes()
    assert rewritten[:1] == FORMAT_2
    assert exact(CustomerState.from_bytes(rewritten)) == exact(decoded)


# Fields added after the first stored states (git log -S of state.py), by the change that
# added them: a state written before it has none of them.
ADDED_LATER = {
    "timers": ("last_active_at", "marks", "next_due"),
    "guards": ("rule_fires", "sent", "deferred", "timezone"),
    "kpis": ("region", "actions_log", "episodes"),
    "customer 360": ("score_trend",),
    "due bounds": ("due_pack",),
}


@pytest.mark.parametrize("change", list(ADDED_LATER))
def test_a_json_state_written_before_a_field_existed_decodes(busy_states, change):
    state = next(s for s in reversed(busy_states) if s.actions_log and s.marks)
    old = orjson.loads(state.to_json_bytes())
    for name in ADDED_LATER[change]:
        del old[name]
    decoded = CustomerState.from_bytes(orjson.dumps(old))
    defaults = CustomerState(customer_id=state.customer_id)
    for name in ADDED_LATER[change]:
        assert getattr(decoded, name) == getattr(defaults, name), name
    assert exact(CustomerState.from_bytes(decoded.to_bytes())) == exact(decoded)


def test_the_oldest_json_state_decodes(busy_states):
    """As the first stored states were: none of the later fields, open tickets without a
    category, actions of 9 fields."""
    state = next(s for s in reversed(busy_states) if s.open_tickets and s.actions_log)
    old = orjson.loads(state.to_json_bytes())
    for names in ADDED_LATER.values():
        for name in names:
            old.pop(name)
    for ticket in old["open_tickets"].values():
        del ticket["category"]
    decoded = CustomerState.from_bytes(orjson.dumps(old))
    assert decoded.marks == {}
    assert decoded.actions_log == []
    assert {t.category for t in decoded.open_tickets.values()} == {""}
    assert decoded.score == state.score
    assert exact(CustomerState.from_bytes(decoded.to_bytes())) == exact(decoded)


def test_json_actions_of_fewer_fields_decode(busy_states):
    state = next(s for s in reversed(busy_states) if s.actions_log)
    old = orjson.loads(state.to_json_bytes())
    old["actions_log"] = [entry[:9] for entry in old["actions_log"]]
    decoded = CustomerState.from_bytes(orjson.dumps(old))
    assert {(a.flags, a.rule_version, a.caused_by) for a in decoded.actions_log} == {(0, 0, ())}


# --- what is no state of a known format ---------------------------------------------------

@pytest.mark.parametrize("raw", [b"", b"\x00", b"\x03" + b"\x90", b"[1, 2]", b"\xff"])
def test_an_unknown_first_byte_is_refused_clearly(raw):
    with pytest.raises(StateFormatError, match="not a customer state of a known format"):
        CustomerState.from_bytes(raw)
    with pytest.raises(StateFormatError, match="not a customer state of a known format"):
        score_and_segment(raw)


def test_a_newer_format_is_refused_with_its_first_byte():
    """A worker on this code that reads a state of a later format (another worker, already
    upgraded, wrote it) fails loudly: readers are deployed first."""
    raw = b"\x03" + CustomerState(customer_id="c1").to_bytes()[1:]
    with pytest.raises(StateFormatError, match=r"b'\\x03'.*newer churnguard"):
        CustomerState.from_bytes(raw)


def corrupt_variants(raw: bytes) -> list[bytes]:
    return [raw[:-1], raw[:10], raw + b"\x00", FORMAT_1 + b"\x93\x01\x02\x03",
            FORMAT_1 + b"\xc1"]


def test_a_corrupt_state_is_refused_clearly(busy_states):
    raw = busy_states[-1].to_bytes()
    for bad in corrupt_variants(raw):
        with pytest.raises(StateFormatError, match="corrupt customer state"):
            CustomerState.from_bytes(bad)


def rewritten(raw: bytes, edit: Any) -> bytes:
    """A format 1 state with its MessagePack array edited (decoded as plain values)."""
    values = msgspec.msgpack.decode(raw[1:])
    edit(values)
    return FORMAT_1 + msgspec.msgpack.encode(values)


def test_an_index_past_the_word_table_is_refused():
    """A word index this code does not know is not read as a string, nor as an int."""
    state = CustomerState(customer_id="c1", tier="vip",
                          marks={"onboarding_tips": "done", "ticket_sla_breach:t-1": "done"})
    state.actions_log = [LoggedAction("0" * 32, "task", "vip_upgrade", 1.0, "push", "vip",
                                      "new", "", "")]
    raw = state.to_bytes()
    fields_ = state_module._FIELDS
    tier, marks = fields_.index("tier"), fields_.index("marks")
    log = fields_.index("actions_log")
    past = len(WORDS)

    def set_tier(values: list[Any]) -> None:
        assert values[tier] == WORDS.index("vip")
        values[tier] = past

    def set_mark(values: list[Any]) -> None:
        assert values[marks][1] == WORDS.index("done")
        values[marks][1] = past

    def set_prefix(values: list[Any]) -> None:
        assert values[marks][2] == [WORDS.index("ticket_sla_breach"), "t-1"]
        values[marks][2][0] = past

    def set_action_type(values: list[Any]) -> None:
        assert values[log][2] == [WORDS.index("task")]
        values[log][2] = [past]

    assert exact(CustomerState.from_bytes(rewritten(raw, lambda values: None))) == exact(state)
    for edit in (set_tier, set_mark, set_prefix, set_action_type):
        with pytest.raises(StateFormatError, match="corrupt customer state"):
            CustomerState.from_bytes(rewritten(raw, edit))


# --- the word table ---------------------------------------------------------------------

# Format 1's table as it was first stored. A stored index means this word forever: the
# table is only ever appended to (with a new format byte), never edited.
FORMAT_1_WORDS = (
    "done", "standard", "vip", "notification", "task", "coupon", "profile_update",
    "email", "sms", "push", "percent", "amount", "treated", "held_out",
    "low", "normal", "high", "urgent",
    "champion", "needs_reactivation", "loyal", "new", "promising", "at_risk", "hibernating",
    "prospect",
    "ticket_opened_ack", "ticket_closed_survey", "vip_upgrade", "health_winback",
    "onboarding_tips", "birthday_coupon", "signup_anniversary_coupon",
    "inactive_30d_followup", "ticket_sla_breach",
    "retention-team", "retention-supervisors", "support-escalations",
)


def test_the_word_table_is_only_appended_to():
    assert WORDS[: len(FORMAT_1_WORDS)] == FORMAT_1_WORDS
    assert len(set(WORDS)) == len(WORDS)
    # Format 1 knows these words only: one more needs a new format byte.
    assert len(WORDS) == len(FORMAT_1_WORDS)


def test_the_default_packs_rule_ids_are_words():
    from churnguard.rules.loading import default_pack

    assert {rule.id for rule in default_pack().rules} <= set(WORDS)


def test_json_is_written_while_a_rolling_upgrade_needs_it_and_both_are_read() -> None:
    """CHURNGUARD_STATE_FORMAT=json (the worker calls write_format at start): states are
    written as older workers read them; binary ones written before still decode."""
    state = CustomerState(customer_id="c1", score=71.5, segment="loyal", tags=["a"])
    binary = state.to_bytes()
    state_module.write_format("json")
    try:
        written = state.to_bytes()
    finally:
        state_module.write_format("binary")
    assert written[:1] == b"{"
    assert CustomerState.from_bytes(written) == state == CustomerState.from_bytes(binary)
    assert state.to_bytes()[:1] == FORMAT_2


def test_a_format_1_state_decodes_without_its_last_event_time(busy_states):
    """Format 1 is format 2 less its last field: a state stored before data retention
    decodes with last_event_at None (its clock then stands in: core/rules.retention_due)."""
    state = busy_states[-1]
    values = msgspec.msgpack.decode(state.to_bytes()[1:])
    old = FORMAT_1 + msgspec.msgpack.encode(values[:-2])
    decoded = CustomerState.from_bytes(old)
    assert exact(decoded) == exact(without_new_fields(state))
    assert score_and_segment(old) == (state.score, state.segment)
