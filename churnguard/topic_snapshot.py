"""Reading topics as they are now, from a moment on, with a plain kafka-python consumer: what
`churnguard backtest` reads its input history with and `churnguard audit` the audit topic.

Read-only: an assigned consumer without a group (no join, no commits). The start is
`offsets_for_times` (the embedded broker answers offset 0 to every such query, hence the
timestamp filter too); the end is the high watermark of the first fetch response of each
partition, never ListOffsets alone (the embedded broker reports the last batch's base
offset + 1 there); records produced after that are left out."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from churnguard.errors import UserError


def read_snapshot(
    consumer: Any, topics: Sequence[str], *, since: float, take: Callable[[Any], None],
    timeout_s: float, idle_s: float, command: str, where: str, missing_hint: str,
) -> None:
    """Call `take(record)` for each record of `topics` stamped at or after `since` (epoch
    seconds), partition by partition in offset order, up to the snapshot's end. `command`,
    `where` and `missing_hint` word the errors (`backtest: … on the broker at …`)."""
    from kafka.structs import TopicPartition

    since_ms = max(0, math.floor(since * 1000))
    existing = set(consumer.topics())
    missing = [topic for topic in topics if topic not in existing]
    if missing:
        raise UserError(f"{command}: topics {', '.join(missing)} do not exist on {where}; "
                        f"{missing_hint}")
    tps = [TopicPartition(topic, p) for topic in topics
           for p in sorted(consumer.partitions_for_topic(topic) or ())]
    starts = consumer.offsets_for_times(dict.fromkeys(tps, since_ms))
    begins = consumer.beginning_offsets(tps)
    reported = {tp: int(end) for tp, end in consumer.end_offsets(tps).items()}
    # Where a partition has nothing at or after `since`, Kafka answers None: skip it.
    active = [tp for tp in tps if starts.get(tp) is not None]
    consumer.assign(active)
    for tp in active:
        consumer.seek(tp, max(int(starts[tp].offset), int(begins[tp])))
    _drain(consumer, active, reported, since_ms, take, timeout_s=timeout_s, idle_s=idle_s,
           timed_out=f"{command}: reading {', '.join(topics)} on {where} took more than "
           f"{timeout_s:g} s; check the broker, or give a later --since")


def _drain(consumer: Any, active: Iterable[Any], reported: dict[Any, int], since_ms: int,
           take: Callable[[Any], None], *, timeout_s: float, idle_s: float,
           timed_out: str) -> None:
    ends: dict[Any, int] = {}  # the first high watermark seen: the snapshot's end
    pending = set(active)
    deadline = time.monotonic() + timeout_s
    quiet_since = time.monotonic()
    while pending:
        if time.monotonic() > deadline:
            raise UserError(timed_out)
        batch = consumer.poll(timeout_ms=200, max_records=50_000)
        for tp in pending:
            high = consumer.highwater(tp)
            if high is not None and tp not in ends:
                ends[tp] = max(int(high), reported[tp])
        for tp, records in batch.items():
            end = ends.get(tp)
            for record in records:
                if (end is None or record.offset < end) and record.timestamp >= since_ms:
                    take(record)
        if batch:
            quiet_since = time.monotonic()
        quiet = time.monotonic() - quiet_since >= idle_s
        for tp in list(pending):
            position = int(consumer.position(tp))
            # Before any fetch answered for it, only a long silence ends a partition.
            if position >= ends[tp] if tp in ends else quiet and position >= reported[tp]:
                pending.discard(tp)
