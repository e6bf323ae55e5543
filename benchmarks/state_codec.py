"""Customer-state bytes and codec times, JSON (the old form) against binary format 1.

    .venv/bin/python -m benchmarks.workload --events 100000 > /tmp/events100k.jsonl
    .venv/bin/python -m benchmarks.state_codec /tmp/events100k.jsonl

1. The final states of the 10,000-customer workload (churnguard.replay, default pack): bytes
   per state, and per-call times of each state's to_bytes / from_bytes (best of 7 runs of 20
   calls, per state; medians and p99 over the states; "busy": the 1% largest states).
   Binary to_bytes twice: "new" (a state whose log the codec has not seen: the first write
   of a JSON state, a state built in memory) and "read" (a state as from_bytes returned it,
   log unchanged: a write after an event that sent nothing).
2. The worker's pattern: the events in batches of 1,000; per batch, each customer's state
   is read (from_bytes), its events applied (core apply_event) and written (to_bytes); total
   codec time and the share of writes whose log was unchanged. Both forms run batch by batch
   in lockstep, and must end with the same states.
"""

from __future__ import annotations

import gc
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from functools import partial

import orjson

from churnguard.core.clock import parse_rfc3339
from churnguard.core.processor import Engine, apply_event
from churnguard.core.state import CustomerState
from churnguard.engine import build_engine
from churnguard.replay import read_events, replay
from schemas.events import Event
from streams.settings import Settings


def pct(values: Sequence[float], p: int) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, len(ordered) * p // 100)]


def best_us(fn: Callable[[], object], loops: int = 20, runs: int = 7) -> float:
    best = float("inf")
    for _ in range(runs):
        began = time.perf_counter()
        for _ in range(loops):
            fn()
        best = min(best, (time.perf_counter() - began) / loops)
    return best * 1e6


def summary(values: list[float], busy: list[int]) -> str:
    return (f"median {statistics.median(values):7.2f}  p99 {pct(values, 99):7.2f}  "
            f"busy median {statistics.median(values[i] for i in busy):7.2f}")


def per_state(states: list[CustomerState]) -> None:
    js = [s.to_json_bytes() for s in states]
    bs = [s.to_bytes() for s in states]
    for s, j, b in zip(states, js, bs, strict=True):
        assert CustomerState.from_bytes(j) == s
        assert repr(CustomerState.from_bytes(b)) == repr(s)
    busy = sorted(range(len(states)), key=lambda i: -len(js[i]))[: max(1, len(states) // 100)]
    read = [CustomerState.from_bytes(b) for b in bs]
    times: defaultdict[str, list[float]] = defaultdict(list)
    for s, j, b, r in zip(states, js, bs, read, strict=True):
        def fresh(s: CustomerState = s) -> bytes:
            s._stored_log = None
            return s.to_bytes()
        times["json to_bytes"].append(best_us(s.to_json_bytes))
        times["binary to_bytes (new)"].append(best_us(fresh))
        times["binary to_bytes (read)"].append(best_us(r.to_bytes))
        times["json from_bytes"].append(best_us(partial(CustomerState.from_bytes, j)))
        times["binary from_bytes"].append(best_us(partial(CustomerState.from_bytes, b)))
    jl, bl = [len(j) for j in js], [len(b) for b in bs]
    print(f"{len(states):,} states")
    print(f"  bytes JSON    median {statistics.median(jl):7,.0f}  p99 {pct(jl, 99):7,}  "
          f"max {max(jl):7,}  total {sum(jl):,}")
    print(f"  bytes binary  median {statistics.median(bl):7,.0f}  p99 {pct(bl, 99):7,}  "
          f"max {max(bl):7,}  total {sum(bl):,}")
    for name, values in times.items():
        print(f"  {name:24s} us: {summary(values, busy)}")


def batch_flow(events: list[Event], engine: Engine, size: int = 1000
               ) -> tuple[dict[bool, dict[str, bytes]], dict[bool, float], dict[bool, float],
                          int, int]:
    """Both forms in lockstep, batch by batch (a load on the machine hits both alike)."""
    stored: dict[bool, dict[str, bytes]] = {False: {}, True: {}}
    read_s = {False: 0.0, True: 0.0}
    write_s = {False: 0.0, True: 0.0}
    writes = unchanged = 0
    for start in range(0, len(events), size):
        by_customer: defaultdict[str, list[Event]] = defaultdict(list)
        for event in events[start:start + size]:
            by_customer[event.customer_id].append(event)
        for binary in (False, True):
            mine_stored = stored[binary]
            for customer, mine in by_customer.items():
                raw = mine_stored.get(customer)
                began = time.perf_counter()
                state = None if raw is None else CustomerState.from_bytes(raw)
                read_s[binary] += time.perf_counter() - began
                for event in mine:
                    state = apply_event(state, event, engine).state
                assert state is not None
                if binary:
                    memo = state._stored_log
                    if memo is not None and len(memo[0]) == len(state.actions_log) and all(
                            a is b for a, b in zip(memo[0], state.actions_log, strict=True)):
                        unchanged += 1
                    writes += 1
                began = time.perf_counter()
                mine_stored[customer] = state.to_bytes() if binary else state.to_json_bytes()
                write_s[binary] += time.perf_counter() - began
    return stored, read_s, write_s, writes, unchanged


def main(path: str) -> None:
    with open(path, "rb") as f:
        lines = f.read().splitlines()
    until = parse_rfc3339(max(orjson.loads(line)["occurred_at"] for line in lines))
    events, bad = read_events(lines, now=until, max_future_hours=24)
    assert not bad
    engine = build_engine(Settings())
    final: dict[str, CustomerState] = {}
    for _ in replay(events, engine, until=until, states=final):
        pass
    gc.disable()
    per_state(sorted(final.values(), key=lambda s: s.customer_id))
    gc.enable()
    stored, read_s, write_s, writes, unchanged = batch_flow(events, engine)
    assert stored[False].keys() == stored[True].keys()
    for key, raw in stored[False].items():
        assert CustomerState.from_bytes(raw) == CustomerState.from_bytes(stored[True][key])
    print(f"batch flow: {len(events):,} events in batches of 1,000, {writes:,} reads and "
          f"writes of a state per form; log unchanged at {unchanged / writes:.0%} of writes")
    for binary in (False, True):
        name = "binary" if binary else "JSON  "
        print(f"  {name} read {read_s[binary] * 1e3:6.0f} ms "
              f"({read_s[binary] / writes * 1e6:5.1f} us each), write "
              f"{write_s[binary] * 1e3:6.0f} ms ({write_s[binary] / writes * 1e6:5.1f} us each)")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "/tmp/events100k.jsonl")
