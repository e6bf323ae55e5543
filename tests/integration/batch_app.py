"""A faust worker using the batch path, for the integration tests and the throughput
benchmark. Configured through BATCH_APP_* environment variables (see `AppConfig`).

Its handler keeps a per-key counter, value = {"count": n, "offsets": {topic: last_offset}},
skips records at or below the stored offset (a replay changes nothing) and writes one
output record per input: key = input key, value = input value.

    python tests/integration/batch_app.py worker            # run a worker (env-configured)
    python tests/integration/batch_app.py bench [--events N --keys K --partitions P]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faust
import orjson
from faust.types import TP

from streams.batch_path import SourceRecord, install_batch_path
from tables.state_store import OutputRecord, TableBatchWriter

TABLE = "customer_to_state"


@dataclass(frozen=True)
class AppConfig:
    broker: str
    prefix: str
    partitions: int
    store_dir: Path
    store: str = "rocksdb://"
    fail_batch: int = 0  # the n-th batch (1-based) raises once
    delay_ms: int = 0  # sleep per batch, to stretch a run for kill tests
    max_poll_records: int | None = None
    stats_file: Path | None = None
    single_record_tail: bool = True  # the Tansu workaround (see TableBatchWriter)
    log_level: str = "warn"

    @property
    def app_id(self) -> str:
        return f"{self.prefix}app"

    @property
    def inputs(self) -> list[str]:
        return [f"{self.prefix}purchases", f"{self.prefix}logins"]

    @property
    def output(self) -> str:
        return f"{self.prefix}output"

    @property
    def changelog(self) -> str:
        return f"{self.app_id}-{TABLE}-changelog"

    def env(self) -> dict[str, str]:
        env = {
            "BATCH_APP_BROKER": self.broker,
            "BATCH_APP_PREFIX": self.prefix,
            "BATCH_APP_PARTITIONS": str(self.partitions),
            "BATCH_APP_STORE_DIR": str(self.store_dir),
            "BATCH_APP_STORE": self.store,
            "BATCH_APP_FAIL_BATCH": str(self.fail_batch),
            "BATCH_APP_DELAY_MS": str(self.delay_ms),
            "BATCH_APP_SINGLE_RECORD_TAIL": "1" if self.single_record_tail else "0",
            "BATCH_APP_LOG_LEVEL": self.log_level,
        }
        if self.max_poll_records is not None:
            env["BATCH_APP_MAX_POLL_RECORDS"] = str(self.max_poll_records)
        if self.stats_file is not None:
            env["BATCH_APP_STATS_FILE"] = str(self.stats_file)
        return env

    @classmethod
    def from_env(cls) -> AppConfig:
        env = os.environ
        max_poll = env.get("BATCH_APP_MAX_POLL_RECORDS")
        stats = env.get("BATCH_APP_STATS_FILE")
        return cls(
            broker=env["BATCH_APP_BROKER"],
            prefix=env["BATCH_APP_PREFIX"],
            partitions=int(env["BATCH_APP_PARTITIONS"]),
            store_dir=Path(env["BATCH_APP_STORE_DIR"]),
            store=env.get("BATCH_APP_STORE", "rocksdb://"),
            fail_batch=int(env.get("BATCH_APP_FAIL_BATCH", "0")),
            delay_ms=int(env.get("BATCH_APP_DELAY_MS", "0")),
            max_poll_records=int(max_poll) if max_poll else None,
            stats_file=Path(stats) if stats else None,
            single_record_tail=env.get("BATCH_APP_SINGLE_RECORD_TAIL", "1") == "1",
            log_level=env.get("BATCH_APP_LOG_LEVEL", "warn"),
        )


def build_app(cfg: AppConfig) -> faust.App:
    app = faust.App(
        cfg.app_id,
        broker=cfg.broker,
        store=cfg.store,
        datadir=str(cfg.store_dir),
        topic_partitions=cfg.partitions,
        web_enabled=False,
        # Tansu: short group timeouts, otherwise every join waits the full 30 s.
        broker_session_timeout=3.0,
        broker_heartbeat_interval=0.5,
        broker_rebalance_timeout=3.0,
        broker_commit_interval=0.5,
        broker_max_poll_records=cfg.max_poll_records,
        consumer_auto_offset_reset="earliest",
    )
    table = app.Table(TABLE, key_type=bytes, value_type=bytes, partitions=cfg.partitions)
    writer = TableBatchWriter(app, table, single_record_tail=cfg.single_record_tail)
    stats = {"batches": 0, "events": 0, "first": 0.0, "last": 0.0}

    async def handle_partition(partition: int, records: Sequence[SourceRecord]) -> None:
        keys = list({r.key for r in records if r.key is not None})
        current = writer.get_many(partition, keys)
        state: dict[bytes, dict[str, Any]] = {
            key: orjson.loads(raw) if raw is not None else {"count": 0, "offsets": {}}
            for key, raw in zip(keys, current, strict=True)
        }
        dirty: set[bytes] = set()
        outputs: list[OutputRecord] = []
        for r in records:
            if r.key is None or r.value is None:
                continue
            entry = state[r.key]
            offsets = entry["offsets"]
            if r.offset <= offsets.get(r.topic, -1):
                continue  # already applied: a replay changes nothing
            entry["count"] += 1
            offsets[r.topic] = r.offset
            dirty.add(r.key)
            outputs.append(OutputRecord(cfg.output, r.key, r.value))  # partitioned by key
        await writer.write(
            partition, {key: orjson.dumps(state[key]) for key in dirty}, outputs=outputs
        )

    async def handle(batch: Mapping[TP, Sequence[SourceRecord]]) -> None:
        stats["batches"] += 1
        if not stats["first"]:
            stats["first"] = time.monotonic()
        if cfg.fail_batch and stats["batches"] == cfg.fail_batch:
            raise RuntimeError(f"injected failure in batch {cfg.fail_batch}")
        if cfg.delay_ms:
            await asyncio.sleep(cfg.delay_ms / 1000)
        by_partition: dict[int, list[SourceRecord]] = {}
        for tp, records in batch.items():
            by_partition.setdefault(tp.partition, []).extend(records)
        await asyncio.gather(*(handle_partition(p, rs) for p, rs in by_partition.items()))
        stats["events"] += sum(len(rs) for rs in by_partition.values())
        stats["last"] = time.monotonic()

    install_batch_path(app, cfg.inputs, handle)

    @app.task  # type: ignore[untyped-decorator]
    async def quiet_logging() -> None:
        # The worker CLI leaves the root logger at DEBUG for its spinner; every produced
        # message would then build a debug LogRecord.
        logging.getLogger().setLevel(logging.INFO if cfg.log_level == "info" else logging.WARNING)

    if cfg.stats_file is not None:
        stats_file = cfg.stats_file

        @app.timer(0.2)  # type: ignore[untyped-decorator]
        async def write_stats() -> None:
            tmp = stats_file.with_suffix(".tmp")
            tmp.write_bytes(orjson.dumps(stats))
            tmp.replace(stats_file)

    return app


def run_worker() -> None:
    cfg = AppConfig.from_env()
    app = build_app(cfg)
    # The worker CLI overrides web_enabled with its own --with-web default.
    sys.argv = [sys.argv[0], "worker", "-l", cfg.log_level, "--without-web"]
    app.main()


# -- benchmark ---------------------------------------------------------------------------


def _bench(events: int, keys: int, partitions: int, max_poll_records: int | None) -> None:
    from kafka import KafkaProducer

    from connectors.admin import ensure_topics
    from connectors.embedded_broker import embedded_broker

    with embedded_broker() as broker, tempfile.TemporaryDirectory() as tmp:
        cfg = AppConfig(
            broker=broker.url,
            prefix="bench-",
            partitions=partitions,
            store_dir=Path(tmp) / "store",
            stats_file=Path(tmp) / "stats.json",
            max_poll_records=max_poll_records,
        )
        ensure_topics(broker.bootstrap, [*cfg.inputs, cfg.output, cfg.changelog], partitions)
        started = time.monotonic()
        producer = KafkaProducer(
            bootstrap_servers=broker.bootstrap, linger_ms=20, batch_size=256 * 1024
        )
        for i in range(events):
            key = b"customer-%d" % (i * 7919 % keys)
            producer.send(cfg.inputs[i % 2], key=key, value=orjson.dumps({"id": i}))
        producer.flush()
        producer.close()
        print(f"produced {events} events in {time.monotonic() - started:.1f}s", flush=True)

        proc = subprocess.Popen(
            [sys.executable, __file__, "worker"],
            env={**os.environ, **cfg.env()},
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + 600
            stats: dict[str, Any] = {}
            while time.monotonic() < deadline:
                if cfg.stats_file and cfg.stats_file.exists():
                    stats = orjson.loads(cfg.stats_file.read_bytes())
                    if stats["events"] >= events:
                        break
                time.sleep(0.2)  # polling a file another process writes
            elapsed = stats["last"] - stats["first"]
            print(
                f"{stats['events']} events in {stats['batches']} batches, "
                f"{elapsed:.2f}s from first batch to last: {stats['events'] / elapsed:,.0f} "
                "events/s",
                flush=True,
            )
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("worker")
    bench = sub.add_parser("bench")
    bench.add_argument("--events", type=int, default=200_000)
    bench.add_argument("--keys", type=int, default=10_000)
    bench.add_argument("--partitions", type=int, default=4)
    bench.add_argument("--max-poll-records", type=int, default=None)
    args = parser.parse_args()
    if args.command == "worker":
        run_worker()
    else:
        _bench(args.events, args.keys, args.partitions, args.max_poll_records)


if __name__ == "__main__":
    main()
