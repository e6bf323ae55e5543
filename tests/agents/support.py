"""Test doubles and builders for the agent tests (no Faust, no broker).

`FakeWriter` is an in-memory TableBatchWriter: a dict per partition, every scan and write
recorded in call order, and a partition's writes can be held open (`hold`) to make
interleavings explicit without sleeping. `Records` builds SourceRecords with consecutive
offsets per topic partition. Times are anchored at T0."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from faust.types import TP

from churnguard import due_index
from churnguard.core.clock import DAY, rfc3339
from churnguard.core.pack import RETENTION_DAYS
from churnguard.core.state import CustomerState
from streams.batch_path import SourceRecord
from streams.settings import TopicNames
from tables.state_store import OutputRecord

# 2024-03-01T12:00:00Z, as in the unit tests.
T0 = datetime(2024, 3, 1, 12, 0, tzinfo=UTC).timestamp()
# The default pack's data retention, in seconds: every customer's last due.
RETAINED = RETENTION_DAYS * DAY
TOPICS = TopicNames()

_DEFAULTS: dict[str, dict[str, Any]] = {
    "purchase": {"order_id": "o-1", "amount": "100", "currency": "EUR"},
    "login": {"channel": "web"},
    "ticket": {"ticket_id": "t-1", "status": "opened"},
    "profile": {},
}


# --- the fake writer -------------------------------------------------------------------------

@dataclass
class WriteCall:
    partition: int
    items: dict[bytes, bytes | None]
    outputs: list[OutputRecord]


@dataclass
class Gate:
    """Holds a partition's writes: `entered` is set when a write arrives, which then waits
    for `release`."""

    entered: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)


class FakeWriter:
    """In-memory stand-in for TableBatchWriter (same three methods, same semantics: a None
    value deletes, `scan` returns keys lower <= key < upper in key order, at most `limit`).
    `log` records ("scan"|"write-start"|"write-end", partition) in call order."""

    def __init__(self) -> None:
        self.data: defaultdict[int, dict[bytes, bytes]] = defaultdict(dict)
        self.writes: list[WriteCall] = []
        self.scans: list[tuple[int, bytes, bytes, int]] = []
        self.log: list[tuple[str, int]] = []
        self.gates: dict[int, Gate] = {}
        # partition -> exception raised by its next write after the outputs are "sent" and
        # before anything is stored (a crash between produce and store).
        self.fail_next: dict[int, BaseException] = {}

    def get_many(self, partition: int, keys: Sequence[bytes]) -> list[bytes | None]:
        data = self.data[partition]
        return [data.get(key) for key in keys]

    def scan(self, partition: int, lower: bytes, upper: bytes, limit: int) -> list[bytes]:
        self.scans.append((partition, lower, upper, limit))
        self.log.append(("scan", partition))
        if limit <= 0:
            return []
        return sorted(key for key in self.data[partition] if lower <= key < upper)[:limit]

    def count_keys(self, partition: int, lower: bytes, upper: bytes) -> int:
        return sum(1 for key in self.data[partition] if lower <= key < upper)

    async def write(
        self,
        partition: int,
        items: Mapping[bytes, bytes | None],
        *,
        outputs: Sequence[OutputRecord] = (),
    ) -> None:
        self.log.append(("write-start", partition))
        self.writes.append(WriteCall(partition, dict(items), list(outputs)))
        gate = self.gates.get(partition)
        if gate is not None:
            gate.entered.set()
            await gate.release.wait()
        failure = self.fail_next.pop(partition, None)
        if failure is not None:
            raise failure
        data = self.data[partition]
        for key, value in items.items():
            if value is None:
                data.pop(key, None)
            else:
                data[key] = value
        self.log.append(("write-end", partition))

    def hold(self, partition: int) -> Gate:
        gate = self.gates[partition] = Gate()
        return gate

    # -- inspection helpers ---------------------------------------------------------------

    def state(self, partition: int, customer: str) -> CustomerState:
        return CustomerState.from_bytes(self.data[partition][customer.encode()])

    def index(self, partition: int) -> list[bytes]:
        return sorted(k for k in self.data[partition] if k.startswith(due_index.PREFIX))

    def writes_to(self, partition: int) -> list[WriteCall]:
        return [call for call in self.writes if call.partition == partition]


# --- records ---------------------------------------------------------------------------------

class Records:
    """Builds SourceRecords with consecutive offsets per topic partition.

    `rec(topic, partition, ts_ms, type_=..., event_id=..., customer=..., at=..., **fields)`:
    the value is a valid event of the topic's type (the combined topic needs `type_`),
    `at` its occurred_at in epoch seconds (default T0), keyed by the customer unless `key=`
    is given; `raw=` replaces the value with those bytes."""

    def __init__(self, topics: TopicNames) -> None:
        self.types = topics.inputs()
        self.offsets: defaultdict[tuple[str, int], int] = defaultdict(int)

    def __call__(
        self,
        topic: str,
        partition: int,
        ts_ms: int,
        *,
        event_id: str = "e-1",
        customer: str = "c1",
        type_: str | None = None,
        at: float = T0,
        raw: bytes | None = None,
        key: bytes | str | None = "",
        **fields: Any,
    ) -> SourceRecord:
        offset = self.offsets[(topic, partition)]
        self.offsets[(topic, partition)] = offset + 1
        if raw is None:
            kind = self.types[topic] or type_
            assert kind, "the combined topic needs type_="
            data: dict[str, Any] = {
                "event_id": event_id,
                "customer_id": customer,
                "occurred_at": rfc3339(at),
                **_DEFAULTS[kind],
                **fields,
            }
            if not self.types[topic]:
                data["type"] = kind
            value = orjson.dumps(data)
        else:
            value = raw
        record_key = customer.encode() if key == "" else key
        if isinstance(record_key, str):
            record_key = record_key.encode()
        return SourceRecord(topic, partition, offset, record_key, value, ts_ms)


def batch_of(*records: SourceRecord) -> dict[TP, list[SourceRecord]]:
    """The handler's argument: records grouped by topic partition, in the given order."""
    grouped: dict[TP, list[SourceRecord]] = {}
    for record in records:
        grouped.setdefault(TP(record.topic, record.partition), []).append(record)
    return grouped


# --- outputs ---------------------------------------------------------------------------------

def actions(outputs: Sequence[OutputRecord]) -> list[dict[str, Any]]:
    """The decoded action records among `outputs` (not scores, outcomes or dead letters), in
    order."""
    return [
        orjson.loads(o.value) for o in outputs
        if o.topic not in {TOPICS.scores, TOPICS.dlq, TOPICS.outcomes}
    ]



def emitted(write: Any) -> list[Any]:
    """A write's outputs but its outcome records (the KPIs' input, tested on their own)."""
    return [o for o in write.outputs if o.topic != TOPICS.outcomes]
