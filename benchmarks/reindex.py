"""What re-indexing the due index costs when a published pack changes a timer:

    python -m benchmarks.reindex [--customers 200000] [--chunk 500]

Builds N customers (two logins each, through the core: their next due is the inactivity
follow-up) in an in-memory store,
then re-indexes them chunk by chunk (churnguard.batch.reindex, what agents/reindex.py runs
per chunk, without the RocksDB write) under a pack whose inactivity is 21 days instead of
30. Prints the CPU time per customer and per chunk, and what that means for 1,000,000
customers at the worker's pace (one chunk per REINDEX_INTERVAL_S).
"""

from __future__ import annotations

import argparse
import time

from agents.reindex import CHUNK
from churnguard import due_index
from churnguard.batch import BatchContext, reindex
from churnguard.core.clock import rfc3339
from churnguard.core.pack import build_pack
from churnguard.core.processor import apply_event
from churnguard.engine import build_engine
from churnguard.metrics import Metrics
from churnguard.rules.loading import default_pack_text
from churnguard.rules.yaml_file import read_yaml
from schemas.events import Login
from streams.settings import Settings
from streams.worker import REINDEX_INTERVAL_S

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--customers", type=int, default=200_000)
    parser.add_argument("--chunk", type=int, default=CHUNK)
    args = parser.parse_args()
    settings = Settings()
    engine = build_engine(settings)
    store: dict[bytes, bytes] = {}
    for n in range(args.customers):
        customer = f"c{n:07d}"
        state = apply_event(None, Login(
            event_id=f"p{n}", customer_id=customer, occurred_at=rfc3339(T0 + n % 86_400)),
            engine).state
        state = apply_event(state, Login(
            event_id=f"l{n}", customer_id=customer,
            occurred_at=rfc3339(T0 + 86_400 + n % 86_400)), engine).state
        store[customer.encode()] = state.to_bytes()
    data = read_yaml(default_pack_text(), "default.yaml").data
    for rule in data["rules"]:
        if rule["id"] == "inactive_30d_followup":
            rule["trigger"]["days"] = 21
    data["version"] = 1
    ctx = BatchContext.create(build_engine(settings, build_pack(data)), settings.topics,
                              Metrics(), 24)
    keys = sorted(store)

    def load(wanted: list[bytes]) -> list[bytes | None]:
        return [store.get(key) for key in wanted]

    started = time.process_time()
    moved = 0
    for first in range(0, len(keys), args.chunk):
        result, count = reindex(keys[first:first + args.chunk], load, ctx)
        moved += count
        store.update({k: v for k, v in result.writes.items()
                      if v is not None and not k.startswith(due_index.PREFIX)})
    cpu = time.process_time() - started
    chunks = -(-len(keys) // args.chunk)
    per_million_s = 1_000_000 / args.chunk * max(REINDEX_INTERVAL_S, cpu / chunks)
    print(f"re-indexed {len(keys):,} customers ({moved:,} moved) in {cpu:.2f} s CPU: "
          f"{cpu / len(keys) * 1e6:.1f} µs per customer, {cpu / chunks * 1e3:.1f} ms per "
          f"chunk of {args.chunk}; 1,000,000 customers at one chunk per "
          f"{REINDEX_INTERVAL_S} s: {per_million_s:.0f} s")


if __name__ == "__main__":
    main()
