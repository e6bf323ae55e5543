"""How long a timer tick takes with many customers in state, and how the cost follows what is
due rather than the table size.

    python -m benchmarks.timer_tick --customers 1000000 --due 1000

Writes N customer states and their due-index entries into one RocksDB partition (as the
worker's table writer does, without the Kafka round trips), then times ticks that read the
due index up to the clock and advance the due customers with the real core.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from rocksdict import Options, Rdict, WriteBatch

from churnguard import due_index
from churnguard.batch import BatchContext, process_due
from churnguard.core.clock import DAY, HOUR, rfc3339
from churnguard.core.processor import apply_event
from churnguard.core.validation import Rejected, parse_event
from churnguard.engine import build_engine
from churnguard.metrics import Metrics
from streams.settings import Settings


def build(db: Rdict, customers: int, due: int, now: float, ctx: BatchContext) -> None:
    """`due` customers have an urgent ticket breaching its SLA 1 s before `now`; the rest
    have one breaching in a week."""
    batch = WriteBatch(raw_mode=True)
    template: dict[bytes, bytes | None] = {}
    for n in range(customers):
        opened = now - 4 * HOUR - 1 if n < due else now + 7 * DAY
        raw = (b'{"type":"ticket","event_id":"e%d","customer_id":"c%07d","occurred_at":"%s",'
               b'"ticket_id":"t%d","status":"opened","priority":"urgent"}'
               % (n, n, rfc3339(opened - 60).encode(), n))
        event = parse_event(raw, "", now=now + 8 * DAY, max_future_hours=24)
        assert not isinstance(event, Rejected), event
        state = apply_event(None, event, ctx.engine).state
        key = b"c%07d" % n
        batch.put(key, state.to_bytes())
        template = due_index.moves(key, None, state.next_due)
        for index_key, value in template.items():
            batch.put(index_key, value or b"")
        if n % 50_000 == 49_999:
            db.write(batch)
            batch = WriteBatch(raw_mode=True)
    db.write(batch)


def scan(db: Rdict, upper: bytes, limit: int) -> list[bytes]:
    found = []
    for key in db.keys(from_key=due_index.PREFIX):
        if key >= upper or len(found) >= limit:
            break
        found.append(key)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--due", type=int, default=1_000)
    parser.add_argument("--limit", type=int, default=5_000)
    args = parser.parse_args()
    settings = Settings()
    ctx = BatchContext.create(build_engine(settings), settings.topics, Metrics(), 24)
    now = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        db = Rdict(str(Path(tmp) / "db"), options=Options(raw_mode=True))
        started = time.perf_counter()
        build(db, args.customers, args.due, now, ctx)
        print(f"state: {args.customers:,} customers written in "
              f"{time.perf_counter() - started:.1f}s")

        def load(keys: list[bytes]) -> list[bytes | None]:
            values: list[bytes | None] = db[keys]
            return values

        for label, moment in (("nothing due yet", now - 2 * HOUR), ("due", now)):
            began = time.perf_counter()
            entries = scan(db, due_index.scan_upper_bound(moment), args.limit)
            scanned = time.perf_counter() - began
            result = process_due(entries, load, ctx, until=moment, noticed_at=moment)
            processed = time.perf_counter() - began - scanned
            batch = WriteBatch(raw_mode=True)
            for key, value in result.writes.items():
                if value is None:
                    batch.delete(key)
                else:
                    batch.put(key, value)
            db.write(batch)
            total = time.perf_counter() - began
            actions = sum(1 for o in result.outputs if o.topic == settings.topics.tasks)
            print(f"tick ({label}): {len(entries):,} due of {args.customers:,} customers, "
                  f"{actions:,} actions; index read {scanned * 1000:.1f} ms, advance "
                  f"{processed * 1000:.1f} ms, total {total * 1000:.1f} ms "
                  "(plus the Kafka round trips of the outputs and changelog)")
        db.close()


if __name__ == "__main__":
    main()
