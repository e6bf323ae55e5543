"""The Faust app: settings in, app with its topics and the customer-state table out."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import faust
from faust.types import TableT

from streams.health import BrokerHealth
from streams.settings import Settings
from streams.topology import STATE_TABLE
from tables.rocksdb_memory import share_memory

MIB = 1024 * 1024


@dataclass(frozen=True)
class Topology:
    app: faust.App
    # Source topics: raw bytes, decoded and validated by the batch path's handler.
    inputs: list[str]
    customer_to_state: TableT[bytes, bytes]
    # Whether the broker answered the worker's last probe (streams/worker.py): what a
    # readiness endpoint reads.
    health: BrokerHealth = field(default_factory=BrokerHealth)
    # The worker's own HTTP endpoints (streams/web.py), when enabled.
    web: Any = None


def create_app(settings: Settings) -> Topology:
    app = faust.App(
        settings.app_id,
        broker=settings.broker,
        # TLS and SASL (connectors/kafka_link.py): every client faust makes uses them.
        broker_credentials=settings.link.faust_credentials(),
        store="rocksdb://" if settings.store == "rocksdb" else "memory://",
        datadir=str(settings.store_dir),
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        consumer_auto_offset_reset="earliest",
        # Group joins wait for these; short values keep restarts and the demo fast.
        broker_session_timeout=settings.session_timeout_s,
        broker_rebalance_timeout=settings.rebalance_timeout_s,
        broker_heartbeat_interval=max(0.5, settings.session_timeout_s / 5),
        # Records of a batch go out in a few produce requests instead of one each.
        producer_linger=0.005,
        # The largest record sent (aiokafka's per-record check; the table writer checks
        # its record batches against it too); the batch layer dead-letters larger ones.
        producer_max_request_size=settings.max_record_bytes,
        broker_commit_interval=settings.commit_interval_s,
        broker_max_poll_records=settings.max_poll_records,
        # The worker serves its own endpoints (streams/web.py), up during recovery too.
        web_enabled=False,
        autodiscover=False,
    )
    # Every input is keyed by customer_id with the same partition count, so partition p of
    # each input, of the table's changelog and of the outputs hold the same customers: no
    # repartition topic is needed and faust co-assigns the table with the inputs (the batch
    # path subscribes the inputs, see streams/batch_path.py).
    # Values are orjson bytes written by the batch path; faust only stores and changelogs them.
    table = app.Table(
        STATE_TABLE,
        # bytes key/value types give faust's raw serializers: the changelog carries our bytes.
        key_type=bytes,
        value_type=bytes,
        partitions=settings.partitions,
        default=None,
    )
    if settings.store == "rocksdb":
        # One memory budget for all the partitions this worker opens, not one per partition.
        share_memory(table.data, memory_bytes=settings.rocksdb_memory_mb * MIB,
                     write_buffer_bytes=settings.rocksdb_write_buffer_mb * MIB)
    return Topology(app=app, inputs=list(settings.topics.inputs()), customer_to_state=table)
