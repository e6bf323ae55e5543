"""TableBatchWriter and the producer's max_request_size (issue 16): `send_batch` skips the
size check of `send()`, so a 1.24 MB state or a 1.33 MB dead letter went out and Kafka
rejected it forever. The writer refuses such a record before anything of the write is sent,
and never builds a record batch above the limit. A real faust app and table (memory
store) over a recording fake of aiokafka's producer: no broker."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import faust
import pytest
from aiokafka.record.default_records import DefaultRecordBatchBuilder

from tables.state_store import (
    DEFAULT_MAX_BATCH_BYTES,
    OutputRecord,
    RecordTooLargeError,
    TableBatchWriter,
)

LIMIT = 1_000_000  # faust's producer_max_request_size
KIB = 1024


@dataclass
class SentBatch:
    topic: str
    partition: int
    size: int  # bytes of the built record batch, as it goes on the wire
    records: int


@dataclass
class FakeAioProducer:
    """What the writer uses of AIOKafkaProducer; records every batch it is given."""

    _max_request_size: int = LIMIT
    sent: list[SentBatch] = field(default_factory=list)
    offsets: dict[tuple[str, int], int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._message_accumulator = SimpleNamespace(_compression_type=0)
        self._partitioner = object()  # not aiokafka's DefaultPartitioner: no caching

        async def wait_on_metadata(topic: str) -> set[int]:
            return {0, 1, 2, 3}

        self.client = SimpleNamespace(_wait_on_metadata=wait_on_metadata)

    def _partition(self, topic: str, *_: Any) -> int:
        return 0

    async def send_batch(self, builder: Any, topic: str, *, partition: int) -> Any:
        size = len(builder._build())
        records = builder.record_count()
        self.sent.append(SentBatch(topic, partition, size, records))
        base = self.offsets.get((topic, partition), 0)
        self.offsets[(topic, partition)] = base + records
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        future.set_result(SimpleNamespace(offset=base))
        return future


@pytest.fixture
def app() -> faust.App:
    return faust.App("limits", broker="kafka://127.0.0.1:1", store="memory://",
                     autodiscover=False)


@pytest.fixture
def table(app: faust.App) -> Any:
    return app.Table("state", key_type=bytes, value_type=bytes, partitions=4, default=None)


@pytest.fixture
def producer(app: faust.App) -> FakeAioProducer:
    fake = FakeAioProducer()
    app.producer._producer = fake  # faust's Producer, "started" on the fake
    return fake


@pytest.fixture
def writer(app: faust.App, table: Any, producer: FakeAioProducer) -> TableBatchWriter:
    return TableBatchWriter(app, table, single_record_tail=False)


def value(size: int, fill: bytes = b"x") -> bytes:
    return fill * size


async def test_an_oversized_output_is_refused_before_anything_is_sent(
    writer: TableBatchWriter, producer: FakeAioProducer, table: Any
) -> None:
    dead_letter = value(1_330_000)  # the 1.33 MB DLQ record of the incident
    outputs = [
        OutputRecord("actions", b"c1", value(100)),
        OutputRecord("dlq", b"c1", dead_letter, partition=2),
    ]
    with pytest.raises(RecordTooLargeError) as refused:
        await writer.write(1, {b"c1": value(200)}, outputs=outputs)
    error = refused.value
    size = DefaultRecordBatchBuilder.estimate_size_in_bytes(b"c1", dead_letter, [])
    assert (error.topic, error.partition, error.size, error.limit) == ("dlq", 2, size, LIMIT)
    assert str(error).startswith(
        f"record for dlq partition 2 is {size:,} bytes, over the producer's "
        f"max_request_size of {LIMIT:,} bytes: not sent"
    )
    assert producer.sent == []  # not the small action either
    assert writer.get_many(1, [b"c1"]) == [None]  # and no state stored


async def test_an_oversized_state_is_refused_and_its_outputs_are_not_sent(
    writer: TableBatchWriter, producer: FakeAioProducer, table: Any
) -> None:
    with pytest.raises(RecordTooLargeError) as refused:
        await writer.write(
            3, {b"c1": value(100), b"c2": value(1_240_000)},  # the 1.24 MB state
            outputs=[OutputRecord("actions", b"c1", value(100))],
        )
    assert refused.value.topic == table.changelog_topic_name
    assert refused.value.partition == 3
    assert producer.sent == []
    assert writer.get_many(3, [b"c1", b"c2"]) == [None, None]


async def test_a_record_over_the_batch_size_but_within_the_limit_goes_alone(
    writer: TableBatchWriter, producer: FakeAioProducer, table: Any
) -> None:
    small = [(b"k%d" % n, value(100 * KIB)) for n in range(6)]  # 6 x 100 KiB
    big = (b"big", value(900 * KIB))  # over the 512 KiB batch size, under 1 MB
    items = dict([*small[:3], big, *small[3:]])
    await writer.write(0, items)
    sent = producer.sent
    assert [batch.records for batch in sent] == [3, 1, 3]
    assert {batch.topic for batch in sent} == {table.changelog_topic_name}
    assert all(batch.size <= LIMIT for batch in sent)
    assert sent[1].size > DEFAULT_MAX_BATCH_BYTES  # alone, as the builder must take it
    assert all(batch.size <= DEFAULT_MAX_BATCH_BYTES for batch in (sent[0], sent[2]))
    # Stored with the right values (the offsets of the batches line up).
    assert writer.get_many(0, [b"big", b"k5"]) == [big[1], small[5][1]]


async def test_no_batch_is_larger_than_a_smaller_max_request_size(
    writer: TableBatchWriter, producer: FakeAioProducer
) -> None:
    producer._max_request_size = 100_000  # below the writer's 512 KiB batches
    outputs = [OutputRecord("scores", b"c%d" % n, value(9_000)) for n in range(50)]
    await writer.write(0, {}, outputs=outputs)
    assert sum(batch.records for batch in producer.sent) == 50
    assert len(producer.sent) > 1
    assert all(batch.size <= 100_000 for batch in producer.sent)


async def test_the_limit_is_aiokafkas_own_estimate_of_a_record_alone(
    writer: TableBatchWriter, producer: FakeAioProducer, table: Any
) -> None:
    framing = DefaultRecordBatchBuilder.estimate_size_in_bytes(b"key", value(LIMIT - 200), [])
    fits = value(LIMIT - 200 + LIMIT - framing)  # estimated at exactly the limit
    assert DefaultRecordBatchBuilder.estimate_size_in_bytes(b"key", fits, []) == LIMIT
    await writer.write(0, {b"key": fits})
    [batch] = producer.sent
    assert batch.size <= LIMIT
    with pytest.raises(RecordTooLargeError):
        await writer.write(0, {b"key": fits + b"x"})
    assert len(producer.sent) == 1


def test_the_worker_gives_one_limit_to_the_producer_and_the_batch_layer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from churnguard.batch import BatchContext
    from streams import worker
    from streams.settings import Settings

    contexts: list[BatchContext] = []
    create = BatchContext.create

    def capture(*args: Any, **kwargs: Any) -> BatchContext:
        contexts.append(create(*args, **kwargs))
        return contexts[-1]

    monkeypatch.setattr(worker.BatchContext, "create", capture)
    topology = worker.build_worker_app(Settings(store="memory", max_record_bytes=500_000))
    assert topology.app.conf.producer_max_request_size == 500_000
    [ctx] = contexts
    assert ctx.max_record_bytes == 500_000
