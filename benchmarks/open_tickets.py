"""Per-event cost of a customer with many open tickets (the state bound at work):

    python -m benchmarks.open_tickets [--tickets 3000] [--logins 200]

Opens N tickets for one customer through the core, then times logins of that customer.
"""

from __future__ import annotations

import argparse
import time

import orjson

from churnguard.core.clock import rfc3339
from churnguard.core.processor import apply_event
from churnguard.core.state import CustomerState
from churnguard.core.validation import Rejected, parse_event
from churnguard.engine import build_engine
from schemas.events import Event
from streams.settings import Settings

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z


def event(n: int, **fields: object) -> Event:
    raw = orjson.dumps({"event_id": f"e{n}", "customer_id": "c1",
                        "occurred_at": rfc3339(T0 + n), **fields})
    parsed = parse_event(raw, "", now=T0 + 10**7, max_future_hours=24)
    assert not isinstance(parsed, Rejected), parsed
    return parsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tickets", type=int, default=3000)
    parser.add_argument("--logins", type=int, default=200)
    args = parser.parse_args()
    engine = build_engine(Settings())
    state: CustomerState | None = None
    for n in range(args.tickets):
        opened = event(n, type="ticket", ticket_id=f"t{n}", status="opened")
        state = apply_event(state, opened, engine).state
    logins = [event(10**6 + n, type="login") for n in range(args.logins)]
    started = time.perf_counter()
    for login in logins:
        state = apply_event(state, login, engine).state
    per_event_ms = 1000 * (time.perf_counter() - started) / args.logins
    assert state is not None
    print(f"{args.tickets} tickets opened: {len(state.open_tickets)} kept open, state "
          f"{len(state.to_bytes()):,} bytes, {per_event_ms:.3f} ms per login")


if __name__ == "__main__":
    main()
