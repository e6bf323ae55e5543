"""Property tests (hypothesis): parse_event takes anything without raising, and a customer's
order-insensitive history does not depend on the arrival order of its events."""

from __future__ import annotations

import base64
import os
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from churnguard.core.clock import DAY, rfc3339
from churnguard.core.processor import apply_event
from churnguard.core.state import CustomerState
from churnguard.core.validation import Rejected, parse_event
from churnguard.engine import build_engine
from schemas.events import MODEL_BY_TYPE, PERSONAL_FIELDS, Event
from streams.codecs import encode_dead_letter
from streams.settings import Settings

# Random locally; the same examples on CI (CI=true), so a red run can be reproduced.
PROPERTY = settings(max_examples=150, deadline=None, database=None,
                    derandomize=bool(os.environ.get("CI")))

T0 = datetime(2024, 3, 1, 12, 0, tzinfo=UTC).timestamp()
NOW = T0 + 30 * DAY
TOPIC_TYPES = ["", "purchase", "login", "ticket", "profile"]
KINDS = {"malformed_json", "too_large", "invalid_event", "unknown_type", "absurd_timestamp",
         "key_mismatch"}
ENGINE = build_engine(Settings())

# --- parse_event never raises ------------------------------------------------------------

json_scalars = (st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1)
                | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=30))
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=20,
)
FIELD_NAMES = sorted({"type", *(name for model in MODEL_BY_TYPE.values()
                                for name in model.model_fields)})
plausible = st.one_of(
    st.sampled_from(["purchase", "login", "ticket", "profile", "refund", ""]),
    st.sampled_from(["c1", "e-1", "t-1", "o-1", " ", "\x00", "x" * 201]),
    st.floats(T0 - 400 * DAY, NOW + 2 * DAY).map(rfc3339),
    st.sampled_from(["2024-03-01 12:00:00Z", "2024-03-01T12:00:00", "1990-04-17",
                     "2024-02-30T00:00:00Z", "9999-12-31T23:59:59-23:59",
                     "0001-01-01T00:00:00+23:59", "2024-03-01T12:00:00.999999999Z"]),
    st.integers(-(2**40), 2**40),
    st.decimals(allow_nan=True, allow_infinity=True, places=6).map(str),
    st.sampled_from(["EUR", "eur", "€€€", "XYZ", "opened", "closed", "urgent", "vip", "gold"]),
    st.lists(st.text(max_size=5), max_size=60),
    st.lists(st.dictionaries(st.text(max_size=3), json_scalars, max_size=2), max_size=110),
    json_values,
)
plausible_objects = st.dictionaries(st.sampled_from(FIELD_NAMES), plausible, max_size=14)


def check_parse(raw: bytes, event_type: str, key: bytes | None) -> None:
    result = parse_event(raw, event_type, now=NOW, max_future_hours=24, key=key,
                         require_key=key is not None)
    if isinstance(result, Rejected):
        assert result.kind in KINDS
        assert result.reason.strip()
    else:
        assert isinstance(result, Event)
        assert event_type in {"", result.type}


@PROPERTY
@given(st.binary(max_size=300), st.sampled_from(TOPIC_TYPES))
def test_parse_event_takes_any_bytes(raw, event_type):
    check_parse(raw, event_type, None)


@PROPERTY
@given(json_values, st.sampled_from(TOPIC_TYPES))
def test_parse_event_takes_any_json(value, event_type):
    check_parse(orjson.dumps(value), event_type, None)


@PROPERTY
@given(plausible_objects, st.sampled_from(TOPIC_TYPES), st.none() | st.sampled_from([b"c1", b""]))
def test_parse_event_takes_any_object_of_plausible_fields(value, event_type, key):
    check_parse(orjson.dumps(value), event_type, key)


@PROPERTY
@given(plausible_objects, st.lists(st.sampled_from(sorted(PERSONAL_FIELDS)), min_size=1))
def test_a_dead_letter_never_holds_a_personal_value(value, personal):
    for n, name in enumerate(personal):
        value[name] = f"PII-{n}-secret"
    raw = orjson.dumps(value)
    rejected = parse_event(raw, "", now=NOW, max_future_hours=24)
    reason = rejected.reason if isinstance(rejected, Rejected) else "valid"
    record = encode_dead_letter(topic="t", partition=0, offset=0, key=b"c1", value=raw,
                                kind="invalid_event", reason=reason, at=NOW)
    kept = base64.b64decode(orjson.loads(record)["value_b64"])
    assert b"secret" not in record
    assert b"secret" not in kept
    assert "secret" not in reason


# --- arrival order ---------------------------------------------------------------------------

SPAN_S = 20 * DAY  # inside every bucket window: no pruning differs between orders
moments = st.integers(0, int(SPAN_S)).map(lambda s: rfc3339(T0 + s))


@st.composite
def histories(draw: st.DrawFn) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    for _ in range(draw(st.integers(0, 8))):
        amount = draw(st.decimals(Decimal("0.01"), Decimal("6000"), places=2))
        events.append({"type": "purchase", "order_id": f"o{len(events)}",
                       "amount": str(amount), "currency": "EUR"})
    for _ in range(draw(st.integers(0, 8))):
        events.append({"type": "login", "channel": "web"})
    # Each ticket opens and closes at most once (a second "opened" would keep its first
    # arrival's time: that is arrival order by design).
    for ticket in range(draw(st.integers(0, 5))):
        if draw(st.booleans()):
            events.append({"type": "ticket", "ticket_id": f"t{ticket}", "status": "opened",
                           "priority": draw(st.sampled_from(["low", "normal", "high",
                                                             "urgent"]))})
        if draw(st.booleans()):
            closed = {"type": "ticket", "ticket_id": f"t{ticket}", "status": "closed"}
            satisfaction = draw(st.none() | st.integers(1, 5))
            if satisfaction is not None:
                closed["satisfaction"] = satisfaction
            events.append(closed)
    for n, event in enumerate(events):
        event |= {"event_id": f"e{n}", "customer_id": "c1", "occurred_at": draw(moments)}
    return events


def final_state(events: list[dict[str, Any]]) -> CustomerState:
    state = None
    for data in events:
        event = MODEL_BY_TYPE[data["type"]].model_validate(data)
        state = apply_event(state, event, ENGINE).state  # type: ignore[arg-type]
    assert state is not None
    return state


def history(state: CustomerState) -> dict[str, Any]:
    """What the contract keeps by occurred_at, whatever the arrival order."""
    return {
        "clock": state.clock,
        "first_purchase_at": state.first_purchase_at,
        "last_purchase_at": state.last_purchase_at,
        "last_active_at": state.last_active_at,
        "order_count": state.order_count,
        "spend_e4": state.spend_e4,
        "purchase_days": state.purchase_days,
        "login_days": state.login_days,
        "ratings": state.ratings,
        "open_tickets": state.open_tickets,
        "closed_tickets": set(state.closed_tickets),
        "tier": state.tier,  # vip exactly when the spend crossed the threshold, in any order
        "seen": set(state.seen),
        # Scored at the final clock from the parts above.
        "score": state.score,
        "components": state.components,
        "segment": state.segment,
        "rfm": state.rfm,
    }


def arrivals() -> st.SearchStrategy[tuple[list[dict[str, Any]], list[dict[str, Any]]]]:
    """A customer's history and the same events in another arrival order."""
    return histories().flatmap(lambda events: st.tuples(st.just(events),
                                                        st.permutations(events)))


@PROPERTY
@given(arrivals())
def test_history_does_not_depend_on_arrival_order(pair):
    events, shuffled = pair
    if not events:
        return
    assert history(final_state(shuffled)) == history(final_state(events))


@PROPERTY
@given(arrivals())
def test_event_time_order_and_arrival_order_agree(pair):
    """Arrival in event-time order (what replay does) is one of the arrival orders."""
    events, shuffled = pair
    if not events:
        return
    in_time = sorted(events, key=lambda e: (e["occurred_at"], e["event_id"]))
    assert history(final_state(shuffled)) == history(final_state(in_time))
