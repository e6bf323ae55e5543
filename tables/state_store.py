"""Bulk writes to a faust Table partition, changelog first.

`TableBatchWriter.write` keeps faust's recovery contract without faust's per-key write path
(`Table.__setitem__` costs ~200 µs and needs a current event):

1. output records (actions, DLQ) are produced and acknowledged first, so a crash never
   leaves state updated with its actions unsent (actions are at-least-once);
2. the changelog records go to the table's changelog topic, explicit partition, in the
   table's own (raw) key/value format, and are acknowledged;
3. only then the RocksDB write-batch is written together with faust's persisted changelog
   offset for the partition, so recovery after a restart resumes exactly there.

Records are produced as aiokafka record batches per partition (`create_batch`-style
`BatchBuilder`s of up to `max_batch_bytes`), all partitions at once, and their delivery
futures are awaited together.

`send_batch` skips the producer's own `max_request_size` check of `send()`, and a broker
rejects a record batch over its `message.max.bytes` (Kafka's default ~1 MB) for good: the
batch would be retried and its partition stalled. So every record is checked against the
producer's `max_request_size` before anything of a write is sent (`RecordTooLargeError`;
the batch layer dead-letters such records first, see `BatchContext.max_record_bytes`), and
no record batch is built larger than that limit: several records share a batch only up to
`min(max_batch_bytes, max_request_size)`, and a record larger than `max_batch_bytes` (but
within the limit) goes out alone in its own batch.

Relies on private faust/aiokafka internals (faust-streaming 0.15.3, aiokafka 0.14.0):
`faust.stores.rocksdb.Store._db_for_partition` / `.offset_key`, `faust.stores.memory.Store.data`
/ `._key_partition`, `faust...aiokafka.Producer._ensure_producer`,
`aiokafka.producer.message_accumulator.BatchBuilder`, `AIOKafkaProducer.send_batch`,
`AIOKafkaProducer._partition`, `._partitioner`, `._metadata`, `._max_request_size`,
`._message_accumulator._compression_type`, `client._wait_on_metadata` and
`aiokafka.record.default_records.DefaultRecordBatchBuilder.estimate_size_in_bytes`.

The table must be written only through this writer: faust's own per-key writes persist the
changelog offset from a delivery callback and would race with the offsets written here.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import faust
import rocksdict
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.producer.message_accumulator import BatchBuilder
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from faust.stores import memory as faust_memory
from faust.stores import rocksdb as faust_rocksdb
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TableT

__all__ = ["OutputRecord", "RecordTooLargeError", "TableBatchWriter"]

DEFAULT_MAX_BATCH_BYTES = 512 * 1024
# Key and value lengths up to the limit minus this always fit: aiokafka's upper estimate of
# a record alone in its batch adds at most 61 + 21 + 2 x 5 + 1 = 93 bytes of framing.
_SURELY_FITS_MARGIN = 128
# Keyed partition choices remembered (aiokafka's murmur2 is pure Python, ~3 µs a key).
_PARTITION_CACHE_SIZE = 200_000


class OutputRecord(NamedTuple):
    """A record to produce before the state it belongs to is written (action, DLQ...). A
    tuple: several per event, cheaper to build than a frozen dataclass."""

    topic: str
    key: bytes | None
    value: bytes
    partition: int | None = None  # None: the producer's partitioner (by key)


# (key, value) pairs bound for one topic partition, in order.
_Pairs = list[tuple[bytes | None, bytes | None]]


class RecordTooLargeError(ValueError):
    """A record larger than the producer's `max_request_size`: nothing of the write was
    sent (Kafka would reject it and the partition would stall on retries)."""

    def __init__(self, topic: str, partition: int, size: int, limit: int) -> None:
        super().__init__(
            f"record for {topic} partition {partition} is {size:,} bytes, over the "
            f"producer's max_request_size of {limit:,} bytes: not sent (nothing of this "
            "write was); the batch layer should have dead-lettered it "
            "(BatchContext.max_record_bytes)"
        )
        self.topic = topic
        self.partition = partition
        self.size = size
        self.limit = limit


class TableBatchWriter:
    """Multi-get and changelog-first bulk writes for one raw-serialized faust Table."""

    def __init__(
        self,
        app: faust.App,
        table: TableT[Any, Any],
        *,
        single_record_tail: bool,
        max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES,
    ) -> None:
        """`single_record_tail=True` is for the embedded Tansu broker only: Tansu 0.6
        answers ListOffsets(latest) with the last record batch's base offset + 1, so the
        last changelog write to a partition is sent as a batch of its own and the end
        offset faust's recovery reads is right. Apache Kafka does not need it."""
        if not isinstance(table, faust.Table):
            raise TypeError(f"expected a faust Table, got {type(table).__name__}")
        if table.key_serializer != "raw" or table.value_serializer != "raw":
            raise ValueError(
                f"table {table.name!r} must be declared with key_type=bytes and "
                "value_type=bytes (raw serializers) for bulk writes"
            )
        if table.is_global or table.use_partitioner or table.window is not None:
            raise ValueError(f"table {table.name!r}: only plain partitioned tables are supported")
        self._app = app
        self._table = table
        self._single_record_tail = single_record_tail
        self._max_batch_bytes = max_batch_bytes
        self._partitions: dict[tuple[str, int, bytes], int] = {}

    # -- reads ----------------------------------------------------------------------------

    def get_many(self, partition: int, keys: Sequence[bytes]) -> list[bytes | None]:
        """Values of `keys` in the table's partition, None where missing (one multi-get)."""
        store = self._table.data
        if isinstance(store, faust_rocksdb.Store):
            values: list[bytes | None] = store._db_for_partition(partition)[list(keys)]
            return values
        if isinstance(store, faust_memory.Store):
            data = store.data
            return [data.get(key) for key in keys]
        raise TypeError(f"unsupported table store {type(store).__name__}")

    def scan(self, partition: int, lower: bytes, upper: bytes, limit: int) -> list[bytes]:
        """Keys `lower <= key < upper` of the table's partition in key order, at most `limit`
        (for key-ordered indexes kept in the table, e.g. timers due by time)."""
        store = self._table.data
        found: list[bytes] = []
        if limit <= 0:
            return found
        if isinstance(store, faust_rocksdb.Store):
            offset_key = store.offset_key
            for key in store._db_for_partition(partition).keys(from_key=lower):
                if key >= upper:
                    break
                if key != offset_key:
                    found.append(key)
                    if len(found) >= limit:
                        break
            return found
        if isinstance(store, faust_memory.Store):
            in_partition = store._key_partition
            return sorted(
                key
                for key in store.data
                if lower <= key < upper and in_partition.get(key) == partition
            )[:limit]
        raise TypeError(f"unsupported table store {type(store).__name__}")

    def count_keys(self, partition: int, lower: bytes, upper: bytes) -> int:
        """How many keys `lower <= key < upper` the partition holds (a one-off count of an
        index kept in the table, e.g. the pending timers when a partition is taken over)."""
        store = self._table.data
        if isinstance(store, faust_rocksdb.Store):
            count = 0
            offset_key = store.offset_key  # faust's own bookkeeping key, in the same space
            for key in store._db_for_partition(partition).keys(from_key=lower):
                if key >= upper:
                    break
                count += key != offset_key
            return count
        if isinstance(store, faust_memory.Store):
            in_partition = store._key_partition
            return sum(1 for key in store.data
                       if lower <= key < upper and in_partition.get(key) == partition)
        raise TypeError(f"unsupported table store {type(store).__name__}")

    def store_stats(self, partition: int) -> tuple[int, int] | None:
        """(estimated keys, bytes on disk and in memtables) of the partition's RocksDB, from
        its properties (no scan); None when not open here or not RocksDB."""
        store = self._table.data
        if not isinstance(store, faust_rocksdb.Store):
            return None
        db = store._dbs.get(partition)
        if db is None:
            return None
        keys = db.property_int_value("rocksdb.estimate-num-keys") or 0
        size = (db.property_int_value("rocksdb.total-sst-files-size") or 0) + (
            db.property_int_value("rocksdb.cur-size-all-mem-tables") or 0)
        return int(keys), int(size)

    # -- writes ---------------------------------------------------------------------------

    async def write(
        self,
        partition: int,
        items: Mapping[bytes, bytes | None],
        *,
        outputs: Sequence[OutputRecord] = (),
    ) -> None:
        """Produce `outputs`, then the changelog for `items`, then store `items` locally.

        A None value deletes the key (a changelog tombstone, as faust writes for `del`).

        Writes to the same partition must not run concurrently (their changelog and
        persisted offsets would interleave); different partitions may.

        Raises `RecordTooLargeError`, with nothing sent or stored, when a record is larger
        than the producer's `max_request_size`.
        """
        faust_producer = self._app.producer
        if not isinstance(faust_producer, faust_aiokafka.Producer):
            raise TypeError("bulk writes need faust's aiokafka producer")
        producer = faust_producer._ensure_producer()
        limit = int(producer._max_request_size)
        by_tp = await self._outputs_by_partition(producer, outputs) if outputs else {}
        topic = self._table.changelog_topic_name
        pairs: _Pairs = list(items.items())
        # Before anything is sent: no part of a write with an oversized record goes out.
        for (out_topic, out_partition), out_pairs in by_tp.items():
            _check_sizes(out_topic, out_partition, out_pairs, limit)
        _check_sizes(topic, partition, pairs, limit)
        batch_bytes = min(self._max_batch_bytes, limit)
        if by_tp:
            await asyncio.gather(
                *(
                    self._send_partition(producer, out_topic, out_partition, out_pairs,
                                         tail=False, batch_bytes=batch_bytes)
                    for (out_topic, out_partition), out_pairs in by_tp.items()
                )
            )
        if not items:
            return
        last_offset = await self._send_partition(
            producer, topic, partition, pairs, tail=self._single_record_tail,
            batch_bytes=batch_bytes,
        )
        self._store_locally(partition, items, last_offset)

    async def _outputs_by_partition(
        self, producer: Any, outputs: Sequence[OutputRecord]
    ) -> dict[tuple[str, int], _Pairs]:
        by_tp: defaultdict[tuple[str, int], _Pairs] = defaultdict(list)
        for topic in {record.topic for record in outputs}:
            # The partitioner needs the topic's metadata (a no-op once it is cached).
            await producer.client._wait_on_metadata(topic)
        for record in outputs:
            partition = record.partition
            if partition is None:
                partition = self._partition_for(producer, record)
            by_tp[(record.topic, partition)].append((record.key, record.value))
        return by_tp

    def _partition_for(self, producer: Any, record: OutputRecord) -> int:
        """The producer's partition for a record; cached for keyed records when the
        partitioner is aiokafka's default (deterministic per key and partition count)."""
        topic, key = record.topic, record.key
        if key is None or type(producer._partitioner) is not DefaultPartitioner:
            partition: int = producer._partition(topic, None, None, None, key, record.value)
            return partition
        cache_key = (topic, len(producer._metadata.partitions_for_topic(topic)), key)
        cached = self._partitions.get(cache_key)
        if cached is None:
            if len(self._partitions) >= _PARTITION_CACHE_SIZE:
                self._partitions.clear()
            cached = producer._partition(topic, None, None, None, key, record.value)
            self._partitions[cache_key] = cached
        return cached

    async def _send_partition(
        self,
        producer: Any,
        topic: str,
        partition: int,
        pairs: _Pairs,
        *,
        tail: bool,
        batch_bytes: int,
    ) -> int:
        """Produce `pairs` to one partition in record batches of up to `batch_bytes`
        (a larger record alone in its own); return the last offset."""
        builders: list[tuple[Any, int]] = []
        body, last = (pairs[:-1], pairs[-1:]) if tail and len(pairs) > 1 else (pairs, [])
        compression = producer._message_accumulator._compression_type
        builder, count = self._new_builder(compression, batch_bytes), 0
        for key, value in body:
            if builder.append(timestamp=None, key=key, value=value) is None:
                builders.append((builder, count))
                builder, count = self._new_builder(compression, batch_bytes), 0
                # A builder takes its first record whatever its size.
                builder.append(timestamp=None, key=key, value=value)
            count += 1
        if count:
            builders.append((builder, count))
        if last:
            # aiokafka sends the batches of one partition in order, one request at a
            # time per broker, so the tail lands after the body as its own record batch.
            tail_builder = self._new_builder(compression, batch_bytes)
            tail_builder.append(timestamp=None, key=last[0][0], value=last[0][1])
            builders.append((tail_builder, 1))
        futures: list[asyncio.Future[Any]] = []
        try:
            for builder, _ in builders:
                # Closed: no producer.send() elsewhere can add records to our batches (the
                # offsets and the single-record tail stay ours) and they skip the linger.
                builder.close()
                futures.append(await producer.send_batch(builder, topic, partition=partition))
        except BaseException:
            for future in futures:
                future.cancel()  # only our shield of the delivery: nobody will await it
            raise
        results = await asyncio.gather(*futures)
        metadata = results[-1]
        if metadata is None:
            raise RuntimeError("producer_acks=0 gives no offsets; the batch path needs acks")
        return int(metadata.offset) + builders[-1][1] - 1

    @staticmethod
    def _new_builder(compression: int, batch_bytes: int) -> Any:
        # Larger than faust's producer_max_batch_size (16 KiB): thousands of small records
        # per partition per produce request.
        return BatchBuilder(batch_bytes, compression)

    def _store_locally(
        self, partition: int, items: Mapping[bytes, bytes | None], offset: int
    ) -> None:
        store = self._table.data
        if isinstance(store, faust_rocksdb.Store):
            batch = rocksdict.WriteBatch(raw_mode=True)
            for key, value in items.items():
                if value is None:
                    batch.delete(key)
                else:
                    batch.put(key, value)
            # Same key and format as faust's Store.set_persisted_offset, in the same atomic
            # write as the values: recovery resumes from exactly this changelog offset.
            batch.put(store.offset_key, str(offset).encode())
            store._db_for_partition(partition).write(batch)
            # table[key] reads the RocksDB partitions directly (no value cache to update);
            # its key->partition index only caches locations, which never change.
        elif isinstance(store, faust_memory.Store):
            data, key_partition = store.data, store._key_partition
            for key, value in items.items():
                if value is None:
                    data.pop(key, None)
                    key_partition.pop(key, None)
                else:
                    data[key] = value
                    key_partition[key] = partition
        else:
            raise TypeError(f"unsupported table store {type(store).__name__}")


def _check_sizes(topic: str, partition: int, pairs: _Pairs, limit: int) -> None:
    """Raise `RecordTooLargeError` for the first record whose batch alone (aiokafka's upper
    estimate, as `send()` checks it) would be larger than `limit`."""
    surely_fits = limit - _SURELY_FITS_MARGIN
    for key, value in pairs:
        if len(key or b"") + len(value or b"") <= surely_fits:
            continue
        size = DefaultRecordBatchBuilder.estimate_size_in_bytes(key, value, [])
        if size > limit:
            raise RecordTooLargeError(topic, partition, size, limit)
