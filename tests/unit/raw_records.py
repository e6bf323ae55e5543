"""A raw input record for the batch shell's tests (churnguard.batch.RawRecord), and the
default topic names they use."""

from __future__ import annotations

from dataclasses import dataclass

from streams.settings import TopicNames

TOPICS = TopicNames()


@dataclass(frozen=True)
class Record:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int = 0
