"""The time-ordered due index, kept in the state table itself: one entry per customer with a
pending timer, keyed so that RocksDB's byte order is due-time order. A tick seeks to the
prefix and reads only what is due; the entry moves in the same write as the state (and the
same changelog), so after a restart or rebalance the index is exactly the states'."""

from __future__ import annotations

import struct

# Customer ids cannot start with a NUL byte (schemas.events.Id), so no state key collides.
PREFIX = b"\x00due\x00"
ENTRY = b"1"
# The re-index's progress (agents/reindex.py), in the same key space, written with the
# states it re-indexed: {"version": pack version, "after": last customer key (hex) or null,
# "done": bool}.
REINDEX_CURSOR = b"\x00reindex\x00"
# Every customer key sorts in [FIRST_CUSTOMER, AFTER_CUSTOMERS) (ids are UTF-8 without
# control characters; 0xFF never occurs in UTF-8).
FIRST_CUSTOMER = b"\x01"
AFTER_CUSTOMERS = b"\xff"


def due_key(due: float, customer: bytes) -> bytes:
    # Milliseconds, big-endian: byte order == time order.
    return PREFIX + struct.pack(">Q", max(0, int(due * 1000))) + customer


def scan_upper_bound(now: float) -> bytes:
    """Every key of an entry due at or before `now` sorts below this."""
    return PREFIX + struct.pack(">Q", max(0, int(now * 1000)) + 1)


def customer_of(key: bytes) -> bytes:
    return key[len(PREFIX) + 8 :]


def moves(customer: bytes, old: float | None, new: float | None) -> dict[bytes, bytes | None]:
    """Index writes for a customer whose next due went from `old` to `new` (None deletes)."""
    if old == new:
        return {}
    writes: dict[bytes, bytes | None] = {}
    if old is not None:
        writes[due_key(old, customer)] = None
    if new is not None:
        writes[due_key(new, customer)] = ENTRY
    return writes
