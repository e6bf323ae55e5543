"""Which offset of a partition may be committed: the first one not yet delivered or
dead-lettered. Actions finish out of order (different customers are delivered concurrently),
so a committed offset never passes one still in flight: a crash re-delivers, never skips."""

from __future__ import annotations

from collections import deque


class PartitionProgress:
    def __init__(self) -> None:
        self._read: deque[int] = deque()  # offsets in flight, in the order read
        self._finished: set[int] = set()  # in flight but done, behind an unfinished one
        self.commit_point: int | None = None  # the next offset to commit, None before any

    def read(self, offset: int) -> None:
        self._read.append(offset)

    def finish(self, offset: int) -> None:
        self._finished.add(offset)
        read, finished = self._read, self._finished
        while read and read[0] in finished:
            done = read.popleft()
            finished.discard(done)
            self.commit_point = done + 1

    @property
    def uncommitted(self) -> int:
        """Offsets read past the commit point: in flight, or finished behind one that is."""
        return len(self._read)
