"""churnguard.state_cache: states a worker wrote, kept decoded. A batch run with the cache
gives exactly what it gives without (outputs, stored bytes), whatever writes the store
between batches (timer ticks, erasures) and however often a batch's write fails and it is
read again; an entry is used only while the store holds the bytes it was kept with."""

from __future__ import annotations

import random

import orjson
import pytest

from benchmarks.workload import generate
from churnguard import due_index
from churnguard.batch import BatchContext, process_due, process_partition
from churnguard.core.clock import DAY, parse_rfc3339
from churnguard.core.state import CustomerState
from churnguard.engine import build_engine
from churnguard.metrics import Metrics
from churnguard.state_cache import DecodedStates
from streams.settings import Settings
from tests.unit.memory_store import MemoryStore
from tests.unit.raw_records import TOPICS, Record

END = parse_rfc3339("2026-06-30T12:00:00Z")


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
        at = parse_rfc3339(orjson.loads(value)["occurred_at"])
        if rng.random() < 0.01:
            erasure = orjson.dumps({"type": "erasure", "event_id": f"erase-{len(out)}",
                                    "customer_id": key.decode(),
                                    "occurred_at": orjson.loads(value)["occurred_at"]})
            out.append(Record(TOPICS.events, 0, len(out), key, erasure, int(at * 1000)))
        out.append(Record(TOPICS.events, 0, len(out), key, value, int(at * 1000)))
    return out


def _worker_run(records: list[Record], seed: int, cache: DecodedStates | None
                ) -> tuple[list[tuple[str, bytes | None, bytes]], dict[bytes, bytes]]:
    """The worker's loop over one partition: batches of random sizes, a tick after some
    (its writes bypass the cache), and some writes failing (nothing stored or kept; the
    batch is read again)."""
    rng = random.Random(seed)  # the same choices with and without the cache
    ctx = BatchContext.create(build_engine(Settings()), TOPICS, Metrics(), 24)
    store = MemoryStore()
    sent: list[tuple[str, bytes | None, bytes]] = []
    start = 0
    while start < len(records):
        batch = records[start:start + rng.randint(1, 80)]
        now = batch[-1].timestamp_ms / 1000 + 1
        result = process_partition(batch, store.load, ctx, now=now, decoded=cache)
        if rng.random() < 0.15:
            continue  # the write failed: read again (its outputs may be out: sent twice)
        sent += [(o.topic, o.key, o.value) for o in result.outputs]
        store.write(result.writes)
        if cache is not None:
            cache.keep(result.writes, result.states)
        start += len(batch)
        if rng.random() < 0.3:
            until = now + rng.choice([0, DAY, 7 * DAY])
            upper = due_index.scan_upper_bound(until)
            entries = sorted(k for k in store.data if due_index.PREFIX <= k < upper)
            ticked = process_due(entries, store.load, ctx, until=until, noticed_at=until)
            sent += [(o.topic, o.key, o.value) for o in ticked.outputs]
            store.write(ticked.writes)
    return sent, store.data


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("capacity", [5, 10_000])
def test_batches_give_the_same_outputs_and_states_with_the_cache(seed: int,
                                                                 capacity: int) -> None:
    records = _records(seed)
    cache = DecodedStates(capacity)
    assert _worker_run(records, seed, cache) == _worker_run(records, seed, None)
    # Both paths taken.
    assert cache.hits > 0
    assert cache.misses > 0
