"""churnguard.state_cache: states a worker wrote, kept decoded. A batch run with the cache
gives exactly what it gives without (outputs, stored bytes), whatever writes the store
between batches (the re-index after a publish; erasures; ticks, which use the cache too,
and their retention removals), however often a batch's write fails (before or after the
store was written) and it is read again under its first pack, and when a record makes the
core fail (the isolating pass); an entry is used only while the store holds the bytes it
was kept with."""

from __future__ import annotations

import random

import orjson
import pytest

from benchmarks.workload import generate
from churnguard import batch, due_index
from churnguard.batch import BatchContext, process_due, process_partition, reindex
from churnguard.core.clock import DAY, parse_rfc3339
from churnguard.core.processor import Engine, Outcome
from churnguard.core.state import CustomerState
from churnguard.metrics import Metrics
from churnguard.state_cache import DecodedStates
from schemas.events import Event
from tests.unit.memory_store import MemoryStore
from tests.unit.packs import make_pack
from tests.unit.raw_records import TOPICS, Record

END = parse_rfc3339("2026-06-30T12:00:00Z")
# Two packs published in turn: quiet hours and caps keep deferrals and guard memory in the
# states, a short retention removes customers at ticks.
GUARDS = {"quiet_hours": {"start": "21:00", "end": "09:00"},
          "frequency_caps": [{"type": "notification", "max": 2, "days": 7}]}
FIRST = Engine(pack=make_pack(changes={"guards": GUARDS, "retention_days": 15}),
               dedup_window=64)
SECOND = Engine(pack=make_pack(changes={"retention_days": 10,
                                        "rules.health_winback.trigger.below": 70}),
                dedup_window=64)
# The event ids the core fails on (the isolating pass dead-letters them).
FAILING = {"ev-1-300", "ev-2-300", "ev-3-300"}


def _state(customer: str = "c1", orders: int = 1) -> tuple[bytes, CustomerState]:
    state = CustomerState(customer_id=customer, order_count=orders, clock=END)
    return state.to_bytes(), state


def test_a_kept_state_is_taken_while_the_store_holds_its_bytes() -> None:
    cache = DecodedStates(10)
    raw, state = _state()
    cache.keep({b"c1": raw}, {b"c1": state})
    assert cache.take(b"c1", bytes(raw)) is state  # equal bytes, another object: a hit
    assert cache.take(b"c1", raw) is None  # taken out: the caller changes it in place
    assert (cache.hits, cache.misses) == (1, 1)


def test_other_bytes_in_the_store_are_a_miss_and_drop_the_entry() -> None:
    cache = DecodedStates(10)
    raw, state = _state(orders=1)
    cache.keep({b"c1": raw}, {b"c1": state})
    newer, _ = _state(orders=2)  # written by another path (a tick, another worker)
    assert cache.take(b"c1", newer) is None
    assert len(cache) == 0


def test_the_json_form_of_a_rolling_upgrade_is_not_kept() -> None:
    # It leaves fields out: it does not decode to the object that wrote it.
    cache = DecodedStates(10)
    _, state = _state()
    json_raw = state.to_json_bytes()
    cache.keep({b"c1": json_raw}, {b"c1": state})
    assert len(cache) == 0
    assert cache.take(b"c1", json_raw) is None


def test_the_least_recently_written_go_first_and_zero_keeps_none() -> None:
    cache = DecodedStates(2)
    kept = {}
    for name in ("a", "b", "c"):
        raw, state = _state(name)
        kept[name] = raw
        cache.keep({name.encode(): raw}, {name.encode(): state})
    raw_a, state_a = _state("a")
    cache.keep({b"b": kept["b"]}, {b"b": _state("b")[1]})  # b written again: the newest
    cache.keep({b"d": raw_a}, {b"d": state_a})
    assert len(cache) == 2
    assert cache.take(b"c", kept["c"]) is None  # the oldest written, evicted
    assert cache.take(b"b", kept["b"]) is not None
    off = DecodedStates(0)
    off.keep({b"a": raw_a}, {b"a": state_a})
    assert len(off) == 0


def test_forget_drops_everything() -> None:
    cache = DecodedStates(10)
    raw, state = _state()
    cache.keep({b"c1": raw}, {b"c1": state})
    cache.forget()
    assert cache.take(b"c1", raw) is None


def _records(seed: int) -> list[Record]:
    """The benchmark workload (Zipf customers: most recur within a few batches), with an
    erasure of a busy customer now and then."""
    rng = random.Random(seed)
    out: list[Record] = []
    for key, value in generate(1_500, 60, days=20, seed=seed, end=END):
        occurred_at = orjson.loads(value)["occurred_at"]
        at = parse_rfc3339(occurred_at)
        if rng.random() < 0.01:
            erasure = orjson.dumps({"type": "erasure", "event_id": f"erase-{len(out)}",
                                    "customer_id": key.decode(), "occurred_at": occurred_at})
            out.append(Record(TOPICS.events, 0, len(out), key, erasure, int(at * 1000)))
        out.append(Record(TOPICS.events, 0, len(out), key, value, int(at * 1000)))
    return out


def _worker_run(records: list[Record], seed: int, cache: DecodedStates | None
                ) -> tuple[list[tuple[str, bytes | None, bytes]], dict[bytes, bytes], Metrics]:
    """The worker's loop over one partition: batches of random sizes; some writes failing
    (nothing kept; the store sometimes written all the same) and read again under the
    pack of their first attempt; packs published in turn, the re-index and ticks between
    batches (the re-index's writes bypass the cache; the ticks' take and keep as batches do)."""
    rng = random.Random(seed)  # the same choices with and without the cache
    ctx = BatchContext.create(FIRST, TOPICS, Metrics(), 24)
    store = MemoryStore()
    sent: list[tuple[str, bytes | None, bytes]] = []
    start = 0
    pinned: Engine | None = None
    while start < len(records):
        part = records[start:start + rng.randint(1, 80)]
        now = part[-1].timestamp_ms / 1000 + rng.choice([1, 3600])
        engine = ctx.engine if pinned is None else pinned
        result = process_partition(part, store.load, ctx, now=now, engine=engine,
                                   decoded=cache)
        sent += [(o.topic, o.key, o.value) for o in result.outputs]
        if rng.random() < 0.15:
            # The write failed after its outputs went out (or even after the store took
            # it): read again, by the same engine.
            if rng.random() < 0.3:
                store.write(result.writes)
            pinned = engine
            continue
        pinned = None
        store.write(result.writes)
        if cache is not None:
            cache.keep(result.writes, result.states)
        start += len(part)
        if rng.random() < 0.05:
            ctx.engine = SECOND if ctx.engine is FIRST else FIRST
        if rng.random() < 0.3:
            customers = sorted(k for k in store.data
                               if due_index.FIRST_CUSTOMER <= k < due_index.AFTER_CUSTOMERS)
            if customers:
                first = rng.randrange(len(customers))
                store.write(reindex(customers[first:first + 10], store.load, ctx)[0].writes)
        if rng.random() < 0.3:
            until = now + rng.choice([0, DAY, 7 * DAY, 30 * DAY])
            upper = due_index.scan_upper_bound(until)
            entries = sorted(k for k in store.data if due_index.PREFIX <= k < upper)
            ticked = process_due(entries, store.load, ctx, until=until, noticed_at=until,
                                 decoded=cache)
            sent += [(o.topic, o.key, o.value) for o in ticked.outputs]
            store.write(ticked.writes)
            if cache is not None:
                cache.keep(ticked.writes, ticked.states)
    return sent, store.data, ctx.metrics


@pytest.fixture
def failing_core(monkeypatch: pytest.MonkeyPatch) -> None:
    apply_event = batch.apply_event

    def failing(state: CustomerState | None, event: Event, engine: Engine,
                **kwargs: object) -> Outcome:
        if event.event_id in FAILING:
            raise RuntimeError("a record the core fails on")
        return apply_event(state, event, engine, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(batch, "apply_event", failing)


@pytest.mark.usefixtures("failing_core")
@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("capacity", [5, 10_000])
def test_batches_give_the_same_outputs_and_states_with_the_cache(seed: int,
                                                                 capacity: int) -> None:
    records = _records(seed)
    assert FAILING & {orjson.loads(r.value or b"{}").get("event_id") for r in records}
    cache = DecodedStates(capacity)
    sent, stored, metrics = _worker_run(records, seed, cache)
    assert (sent, stored) == _worker_run(records, seed, None)[:2]
    # What it is run through.
    assert metrics.customers_retired > 0
    assert metrics.dead_letters["processing_error"] == 1
    # Both paths taken.
    assert cache.hits > 0
    assert cache.misses > 0
