"""One lock per partition: the event batches and the timer ticks both read-modify-write a
partition's customers and its changelog; they must not interleave on the same partition."""

from __future__ import annotations

import asyncio
from collections import defaultdict


class PartitionLocks(defaultdict[int, asyncio.Lock]):
    def __init__(self) -> None:
        super().__init__(asyncio.Lock)
