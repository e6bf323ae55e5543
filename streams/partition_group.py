"""Stream-time order across co-partitioned input topics, the way Kafka Streams' PartitionGroup
does it: records of partition p of every input topic form one group (one customer's events
may be on several topics, but always on partition p), and a group's records are applied in
the order "always the lowest record timestamp among the partitions' buffered heads", each
partition in offset order.

Fetches bring partitions unevenly (a small topic's backlog arrives whole, a big one's 1 MB at
a time), so fetched records are buffered here and only the prefix that the merge can already
decide is released. A partition whose buffer is empty blocks its group while the broker still
has records for it (it is not caught up), for at most `max_idle_s` (Kafka Streams'
`max.task.idle.ms`); then the group goes on without it ("enforced processing", counted).
A caught-up partition with an empty buffer never blocks: it has nothing older to offer.

Pure (no faust): the batch path feeds it fetched records and asks it what to hand over.
"""

from __future__ import annotations

import heapq
from collections import defaultdict
from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import Generic, Protocol, TypeVar


class TimedRecord(Protocol):
    @property
    def offset(self) -> int: ...
    @property
    def timestamp_ms(self) -> int: ...


class TopicPartition(Hashable, Protocol):
    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...


R = TypeVar("R", bound=TimedRecord)
K = TypeVar("K", bound=TopicPartition)


def merge(per_topic: Iterable[Sequence[R]]) -> list[R]:
    """One group's released records in processing order: the lowest head timestamp first,
    ties to the earlier sequence (callers pass a group's topics in `group_order`)."""
    return list(heapq.merge(*per_topic, key=_timestamp))


def group_order(tp: TopicPartition) -> tuple[int, str]:
    """The order of a group's partitions, and so of timestamp ties: by topic name."""
    return tp.partition, tp.topic


def _timestamp(record: TimedRecord) -> int:
    return record.timestamp_ms


class PartitionGroups(Generic[K, R]):
    """Per-partition buffers of fetched records and the cross-topic release."""

    def __init__(self, *, max_idle_s: float, max_buffered: int) -> None:
        self.max_idle_s = max_idle_s
        self.max_buffered = max_buffered
        self._buffers: dict[K, list[R]] = {}
        # Since when a partition's buffer has been empty while the broker had more for it.
        self._idle_since: dict[K, float] = {}
        # Releases that went on without a partition that had waited out `max_idle_s`.
        self.enforced = 0
        # The last release stopped at its `limit` with more releasable: call again at once.
        self.more = False
        self._rotation = 0

    # -- buffers --------------------------------------------------------------------------

    def add(self, tp: K, records: Sequence[R]) -> None:
        if records:
            self._buffers.setdefault(tp, []).extend(records)
            self._idle_since.pop(tp, None)

    def buffered(self, tp: K) -> int:
        return len(self._buffers.get(tp, ()))

    def first_offset(self, tp: K) -> int | None:
        """The offset the partition's fetch position must go back to if its buffer is
        dropped (None: nothing buffered)."""
        buffer = self._buffers.get(tp)
        return buffer[0].offset if buffer else None

    def drop(self, tp: K) -> None:
        """Forget a partition's buffer (its position is moved back, or it is gone)."""
        self._buffers.pop(tp, None)
        self._idle_since.pop(tp, None)
        self.more = self.more and bool(self._buffers)

    def clear(self) -> None:
        self._buffers.clear()
        self._idle_since.clear()
        self.more = False

    def partitions(self) -> list[K]:
        """Partitions with buffered records."""
        return list(self._buffers)

    def full(self) -> set[K]:
        """Partitions whose fetching should pause until the merge drains them."""
        return {tp for tp, buffer in self._buffers.items() if len(buffer) >= self.max_buffered}

    def next_deadline(self, now: float) -> float | None:
        """When the next waiting partition's idle time runs out (monotonic seconds), if one
        is still waiting at `now` (one already past it no longer holds its group)."""
        future = [since + self.max_idle_s for since in self._idle_since.values()
                  if since + self.max_idle_s > now]
        return min(future, default=None)

    # -- release --------------------------------------------------------------------------

    def release(
        self,
        members: Iterable[K],
        caught_up: Callable[[K], bool],
        now: float,
        *,
        limit: int | None = None,
        arriving: Callable[[K], bool] = lambda tp: False,
    ) -> dict[K, list[R]]:
        """Take what can be applied now, at most `limit` records (a batch's size; the groups
        take turns at being first). `members` are the input partitions to merge (the active
        ones: a paused or revoked partition neither blocks nor is released); `caught_up(tp)`
        says the broker has nothing beyond what was fetched for `tp`; `arriving(tp)` that
        records of `tp` are already fetched and on their way here (a partition is not idle
        while the client holds its records: its wait starts over); `now` is monotonic
        seconds. Returns per partition the records to apply (each in offset order), grouped
        and ordered by `group_order`, so `merge` of a group's lists gives the order decided
        here."""
        groups: defaultdict[int, list[K]] = defaultdict(list)
        for tp in sorted(members, key=group_order):
            groups[tp.partition].append(tp)
        order = sorted(groups)
        if order:
            start = self._rotation % len(order)
            order = order[start:] + order[:start]
            self._rotation += 1
        released: dict[K, list[R]] = {}
        left = limit
        self.more = False
        for partition in order:
            if left is not None and left <= 0:
                self.more = True
                break
            taken = self._release_group(groups[partition], caught_up, arriving, now, released,
                                        left)
            if left is not None:
                left -= taken
        return dict(sorted(released.items(), key=lambda item: group_order(item[0])))

    def _release_group(
        self,
        tps: list[K],
        caught_up: Callable[[K], bool],
        arriving: Callable[[K], bool],
        now: float,
        released: dict[K, list[R]],
        limit: int | None,
    ) -> int:
        """Release one group's decidable prefix (at most `limit`); returns how many."""
        buffers = self._buffers
        waiting: dict[K, bool] = {}
        enforced = False

        def waits(tp: K) -> bool:
            """Must the group wait for more of `tp` before going past its buffer's end?"""
            answer = waiting.get(tp)
            if answer is None:
                nonlocal enforced
                answer = not caught_up(tp)
                if not answer:
                    self._idle_since.pop(tp, None)
                elif tp in self._idle_since and arriving(tp):
                    self._idle_since[tp] = now  # our own backlog delays it, not the broker
                since = self._idle_since.get(tp)
                if answer and since is not None and now - since >= self.max_idle_s:
                    answer, enforced = False, True
                waiting[tp] = answer
            return answer

        taken = _decide([buffers.get(tp, []) for tp in tps], lambda i: waits(tps[i]), limit)
        if taken is None:
            for tp in tps:
                if not buffers.get(tp) and waits(tp):
                    self._idle_since.setdefault(tp, now)
            return 0
        for index, tp in enumerate(tps):
            count = taken[index]
            if not count:
                continue
            buffer = buffers[tp]
            released[tp] = buffer[:count]
            if count == len(buffer):
                del buffers[tp]
                if waits(tp):
                    self._idle_since.setdefault(tp, now)
            else:
                del buffer[:count]
        if enforced and any(taken):
            self.enforced += 1
        if limit is not None and sum(taken) >= limit and any(buffers.get(tp) for tp in tps):
            self.more = True
        return sum(taken)



def _decide(
    buffers: Sequence[Sequence[TimedRecord]], waits: Callable[[int], bool], limit: int | None
) -> list[int] | None:
    """How many records of each buffer the merge can take (at most `limit` in all); None
    when an empty buffer that must be waited for blocks the group from the start."""
    heads: list[tuple[int, int, int]] = []
    for index, buffer in enumerate(buffers):
        if buffer:
            heads.append((buffer[0].timestamp_ms, index, 0))
        elif waits(index):
            return None  # its next record may be the oldest of the group
    taken = [0] * len(buffers)
    if len(heads) == 1:
        # Only one partition has records and none must be waited for: all of it.
        index = heads[0][1]
        taken[index] = len(buffers[index]) if limit is None else min(limit, len(buffers[index]))
        return taken
    heapq.heapify(heads)
    left = -1 if limit is None else limit
    while heads and left != 0:
        left -= 1
        _, index, position = heapq.heappop(heads)
        taken[index] = position + 1
        buffer = buffers[index]
        if position + 1 < len(buffer):
            heapq.heappush(heads, (buffer[position + 1].timestamp_ms, index, position + 1))
        elif waits(index):
            break  # exhausted and more may come: nothing later is decidable
    return taken
