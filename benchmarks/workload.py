"""Workload generator: N combined-topic events for K customers with Zipf-like popularity,
spread over D days ending now. Deterministic for a seed.

    python -m benchmarks.workload --events 100000 --customers 10000 > events.jsonl
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import Iterator

import orjson

from churnguard.core.clock import DAY, rfc3339

MIX = (("login", 0.55), ("purchase", 0.3), ("ticket", 0.1), ("profile", 0.05))


def generate(
    events: int, customers: int, *, days: float = 90, seed: int = 1, end: float | None = None
) -> Iterator[tuple[bytes, bytes]]:
    """(key, value) pairs in event-time order."""
    rng = random.Random(seed)
    end = time.time() - 60 if end is None else end
    start = end - days * DAY
    # Zipf-like: customer i is drawn with weight 1/(i+1).
    weights = [1.0 / (i + 1) for i in range(customers)]
    kinds = [k for k, _ in MIX]
    kind_weights = [w for _, w in MIX]
    picks = rng.choices(range(customers), weights=weights, k=events)
    kind_picks = rng.choices(kinds, weights=kind_weights, k=events)
    step = (end - start) / max(1, events)
    open_tickets: dict[int, str] = {}
    for n, (customer, kind) in enumerate(zip(picks, kind_picks, strict=True)):
        cid = f"cust-{customer:07d}"
        event: dict[str, object] = {
            "type": kind,
            "event_id": f"ev-{seed}-{n}",
            "customer_id": cid,
            "occurred_at": rfc3339(start + n * step),
        }
        if kind == "purchase":
            event.update(order_id=f"o-{n}", amount=round(rng.uniform(5, 500), 2), currency="EUR")
        elif kind == "login":
            event["channel"] = "web"
        elif kind == "ticket":
            if customer in open_tickets:
                event.update(ticket_id=open_tickets.pop(customer), status="closed",
                             satisfaction=rng.randint(1, 5))
            else:
                open_tickets[customer] = f"t-{n}"
                event.update(ticket_id=f"t-{n}", status="opened",
                             priority=rng.choice(["low", "normal", "high", "urgent"]))
        else:
            event.update(tier="standard", account_manager=f"am-{customer % 50}")
        yield cid.encode(), orjson.dumps(event)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--customers", type=int, default=10_000)
    parser.add_argument("--days", type=float, default=90)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    out = sys.stdout.buffer
    for _, value in generate(args.events, args.customers, days=args.days, seed=args.seed):
        out.write(value + b"\n")


if __name__ == "__main__":
    main()
