"""Fixtures for the pure-core unit tests: event/record/state factories and a default engine.

Everything here is in-process (no Faust, no broker). Times are anchored at T0, a fixed
mid-day instant, so that day-bucket edges are explicit in the tests.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Callable, Iterable
from datetime import UTC, datetime
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp.test_utils import TestServer

from churnguard.core.clock import DAY, rfc3339
from churnguard.core.pack import RulePack
from churnguard.core.processor import Engine, Outcome, apply_event
from churnguard.core.rules import Action
from churnguard.core.specs import ScoringSettings
from churnguard.core.state import CustomerState
from churnguard.engine import build_engine
from schemas.events import MODEL_BY_TYPE, Event
from streams.settings import Settings
from tests.unit.delivery_endpoint import Endpoint
from tests.unit.packs import make_pack

# 2024-03-01T12:00:00Z: mid-day, so "day N" and "day N ± 12 h" fall in different buckets.
T0 = datetime(2024, 3, 1, 12, 0, tzinfo=UTC).timestamp()

_DEFAULTS: dict[str, dict[str, Any]] = {
    "purchase": {"order_id": "o-1", "amount": "100", "currency": "EUR"},
    "login": {"channel": "web"},
    "ticket": {"ticket_id": "t-1", "status": "opened"},
    "profile": {},
}


@pytest.fixture
def t0() -> float:
    return T0


@pytest.fixture
def iso() -> Callable[..., str]:
    """iso(day, hours=0) -> RFC 3339 of T0 + day days + hours hours."""

    def make(day: float = 0.0, hours: float = 0.0) -> str:
        return rfc3339(T0 + day * DAY + hours * 3600.0)

    return make


@pytest.fixture
def record_factory() -> Callable[..., dict[str, Any]]:
    """A raw event dict (combined-topic shape, with `type`) with valid defaults.

    `day=` / `hours=` set occurred_at relative to T0; any other keyword overrides a field,
    and a value of `...` (Ellipsis) removes the field."""
    counter = itertools.count(1)

    def make(type_: str = "purchase", *, day: float = 0.0, hours: float = 0.0,
             **overrides: Any) -> dict[str, Any]:
        data: dict[str, Any] = {
            "type": type_,
            "event_id": f"e-{next(counter):04d}",
            "customer_id": "c1",
            "occurred_at": rfc3339(T0 + day * DAY + hours * 3600.0),
            **_DEFAULTS.get(type_, {}),
        }
        data.update(overrides)
        return {k: v for k, v in data.items() if v is not ...}

    return make


@pytest.fixture
def raw_factory(record_factory: Callable[..., dict[str, Any]]) -> Callable[..., bytes]:
    """Like record_factory, serialized to JSON bytes (the Kafka value)."""

    def make(type_: str = "purchase", **kwargs: Any) -> bytes:
        return orjson.dumps(record_factory(type_, **kwargs))

    return make


@pytest.fixture
def event_factory(record_factory: Callable[..., dict[str, Any]]) -> Callable[..., Event]:
    """A validated event model: event_factory("login", day=3, customer_id="c2")."""

    def make(type_: str = "purchase", **kwargs: Any) -> Event:
        data = record_factory(type_, **kwargs)
        return MODEL_BY_TYPE[type_].model_validate(data)  # type: ignore[return-value]

    return make


@pytest.fixture
def state_factory() -> Callable[..., CustomerState]:
    def make(**overrides: Any) -> CustomerState:
        overrides.setdefault("customer_id", "c1")
        return CustomerState(**overrides)

    return make


@pytest.fixture
def engine() -> Engine:
    """The default engine exactly as the worker and replay build it."""
    return build_engine(Settings())


@pytest.fixture
def engine_factory() -> Callable[..., Engine]:
    """An engine whose pack is the default one changed (tests/unit/packs.pack_data):
    engine_factory(only=["vip_upgrade"], changes={"rules.vip_upgrade.trigger.at_least": 500}),
    engine_factory(scoring=ScoringSettings(...)), or engine_factory(pack=a_pack)."""

    def make(*, pack: RulePack | None = None, scoring: ScoringSettings | None = None,
             dedup_window: int = 64, **pack_kwargs: Any) -> Engine:
        if pack is None:
            changes = dict(pack_kwargs.pop("changes", {}))
            if scoring is not None:
                changes["scoring"] = scoring.model_dump()
            pack = make_pack(changes=changes, **pack_kwargs)
        return Engine(pack=pack, dedup_window=dedup_window)

    return make


class Feed:
    """Applies events one after the other to one evolving state per customer."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.states: dict[str, CustomerState] = {}
        self.outcomes: list[Outcome] = []

    def __call__(self, *events: Event) -> list[Action]:
        """Apply `events`; return the actions they produced, in order."""
        actions: list[Action] = []
        for event in events:
            outcome = apply_event(self.states.get(event.customer_id), event, self.engine)
            self.states[event.customer_id] = outcome.state
            self.outcomes.append(outcome)
            actions.extend(outcome.actions)
        return actions

    def state(self, customer_id: str = "c1") -> CustomerState:
        return self.states[customer_id]

    def all_actions(self) -> list[Action]:
        return [a for o in self.outcomes for a in o.actions]


@pytest.fixture
def feed_factory(engine: Engine) -> Callable[..., Feed]:
    def make(engine_: Engine | None = None) -> Feed:
        return Feed(engine_ or engine)

    return make


@pytest.fixture
def feed(feed_factory: Callable[..., Feed]) -> Feed:
    return feed_factory()


@pytest.fixture
def ids_of() -> Callable[[Iterable[Action]], list[tuple[str, str]]]:
    """(rule_id, type) of each action, in order."""

    def pick(actions: Iterable[Action]) -> list[tuple[str, str]]:
        return [(a.rule_id, a.type) for a in actions]

    return pick


# --- the delivery tests' local HTTP server and client (tests/unit/test_delivery_*.py) -------


@pytest.fixture
async def endpoint() -> AsyncIterator[Endpoint]:
    served = Endpoint()
    async with TestServer(served.app(), host="127.0.0.1", port=0,
                          handler_cancellation=True) as server:
        served.server = server
        yield served


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client
