"""A dict standing in for a partition's store in the batch and tick tests: `load` is the
multi-get process_partition / process_due take, `write` applies their writes (None
deletes)."""

from __future__ import annotations


class MemoryStore:
    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}

    def load(self, keys: list[bytes]) -> list[bytes | None]:
        return [self.data.get(k) for k in keys]

    def write(self, writes: dict[bytes, bytes | None]) -> None:
        for key, value in writes.items():
            if value is None:
                self.data.pop(key, None)
            else:
                self.data[key] = value
