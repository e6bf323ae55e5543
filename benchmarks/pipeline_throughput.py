"""Throughput of the full pipeline (parse, validate, state, score, RFM, rules, timers index,
changelog and action records) on the embedded broker.

    python -m benchmarks.pipeline_throughput --events 200000 --customers 20000 [--per-type]

Pre-produces the workload to the combined topic (or, with --per-type, each event to its
type's topic, stamped with its event time, so the worker merges four topics per partition),
starts a worker child process, and times from the worker being ready until the consumer
group's committed offsets cover every event.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import orjson
from kafka import KafkaAdminClient, KafkaProducer
from kafka.structs import TopicPartition

from benchmarks.workload import generate
from churnguard.core.clock import parse_rfc3339
from churnguard.processes import exit_on_sigterm, running_worker, wait_ready
from connectors.embedded_broker import embedded_broker
from streams.settings import Settings
from streams.topology import ensure_all_topics


def produce(
    bootstrap: str, settings: Settings, events: int, customers: int, *, per_type: bool
) -> dict[TopicPartition, int]:
    """Returns the end offset per topic partition."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, batch_size=256 * 1024,
                             acks=1)
    topic_of = {kind: topic for topic, kind in settings.topics.inputs().items()}
    ends: dict[TopicPartition, int] = {}
    futures = []
    for key, value in generate(events, customers):
        if per_type:
            event = orjson.loads(value)
            topic = topic_of[event.pop("type")]
            stamp = int(parse_rfc3339(event["occurred_at"]) * 1000)
            futures.append(producer.send(topic, key=key, value=orjson.dumps(event),
                                         timestamp_ms=stamp))
        else:
            futures.append(producer.send(settings.topics.events, key=key, value=value))
    producer.flush(timeout=120)
    for future in futures:
        meta = future.get(timeout=30)
        tp = TopicPartition(meta.topic, meta.partition)
        ends[tp] = max(ends.get(tp, 0), meta.offset + 1)
    producer.close()
    return ends


def committed(admin: KafkaAdminClient, group: str, ends: dict[TopicPartition, int]) -> int:
    """Events covered by the group's committed offsets."""
    offsets = admin.list_group_offsets({group: None}).get(group, {})
    done = 0
    for tp, end in ends.items():
        meta = offsets.get(tp)
        if meta is not None and meta.offset > 0:
            done += min(meta.offset, end)
    return done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--customers", type=int, default=20_000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--per-type", action="store_true",
                        help="produce to the four per-type topics instead of the combined one")
    args = parser.parse_args()
    exit_on_sigterm()
    with tempfile.TemporaryDirectory() as tmp, embedded_broker() as broker:
        settings = Settings(broker=broker.url, partitions=args.partitions, embedded_broker=True,
                            store_dir=Path(tmp) / "store", app_id="churnguard-bench",
                            log_level="info", commit_interval_s=0.2, web_port=0)
        ensure_all_topics(settings)
        started = time.perf_counter()
        ends = produce(broker.bootstrap, settings, args.events, args.customers,
                       per_type=args.per_type)
        print(f"produced {args.events} events in {time.perf_counter() - started:.1f}s")
        log_path = Path(tmp) / "worker.log"
        admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
        with running_worker(settings, log_path) as worker:
            wait_ready(log_path, worker, timeout_s=60)
            began = time.perf_counter()
            total = sum(ends.values())
            while committed(admin, settings.app_id, ends) < total:
                if worker.poll() is not None:
                    raise SystemExit(f"worker died: {log_path.read_text()[-2000:]}")
                time.sleep(0.05)
            elapsed = time.perf_counter() - began
        admin.close()
        print(f"pipeline: {total} events in {elapsed:.2f}s = {total / elapsed:,.0f} events/s "
              f"({args.customers} customers, {args.partitions} partitions, "
              f"{'per-type topics' if args.per_type else 'combined topic'})")


if __name__ == "__main__":
    main()
