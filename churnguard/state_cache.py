"""The customer states a worker last wrote, kept decoded: a batch that finds a customer's
stored bytes unchanged since takes the object instead of decoding it again (decoding is
about a tenth of a batch's processing, and most customers of a batch were in a recent one).

Sound by construction rather than by invalidation: an entry is the object *and* the bytes
it was stored as, and it is used only when the store still holds exactly those bytes, so a
write by any other path (the re-index, an erasure, a store rebuilt from the changelog,
another worker after a rebalance) makes it a miss, never a wrong state. The batches and the
timer tick take and keep. Only the current binary format is kept: it decodes to an exactly
equal state (test_state_codec), which the JSON form of a rolling upgrade does not (it leaves
fields out).

An entry is taken out when used (the batch then changes the object in place) and put back
only after the write that stored its new bytes succeeded, so a failed or isolated batch
starts again from the stored bytes. Bounded: the least recently written go first.

A kept state also keeps what is not stored: that its next due is exact under `due_pack`
(`_due_exact`), as replay's states do. That holds while next_due depends on nothing but the
stored fields and the pack (whose fingerprint `due_pack` is); the equivalence test
(tests/unit/test_state_cache.py) would tell otherwise."""

from __future__ import annotations

from collections.abc import Mapping
from itertools import islice

from churnguard.core.state import CustomerState
from churnguard.core.state_codec import FORMAT_2

__all__ = ["DEFAULT_CAPACITY", "DecodedStates"]

# Customers kept (CHURNGUARD_STATE_CACHE_CUSTOMERS): ~4 KB each, some 40 MB.
DEFAULT_CAPACITY = 10_000


class DecodedStates:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        # Customer key -> (stored bytes, the state they decode to); insertion order is write
        # order (an entry is taken out before it is put back).
        self._entries: dict[bytes, tuple[bytes, CustomerState]] = {}
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def take(self, key: bytes, raw: bytes) -> CustomerState | None:
        """The state stored as `raw` under `key` if kept, now the caller's; else None."""
        entry = self._entries.pop(key, None)
        if entry is not None and entry[0] == raw:
            self.hits += 1
            return entry[1]
        self.misses += 1
        return None

    def keep(self, writes: Mapping[bytes, bytes | None],
             states: Mapping[bytes, CustomerState]) -> None:
        """A write succeeded: `states` are stored as `writes` has them."""
        if self.capacity <= 0:
            return
        entries = self._entries
        for key, state in states.items():
            raw = writes.get(key)
            if raw is not None and raw.startswith(FORMAT_2):
                entries.pop(key, None)  # (moved to the newest end)
                entries[key] = (raw, state)
        excess = len(entries) - self.capacity
        if excess > 0:
            for key in list(islice(entries, excess)):  # the least recently written
                del entries[key]

    def forget(self) -> None:
        """Partitions given up: their entries would only ever be misses."""
        self._entries.clear()
