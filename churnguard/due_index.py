"""The time-ordered due index, kept in the state table itself: one entry per customer with a
pending timer, keyed so that RocksDB's byte order is due-time order. A tick seeks to the
prefix and reads only what is due; the entry moves in the same write as the state (and the
same changelog), so after a restart or rebalance the index is exactly the states'."""

from __future__ import annotations

import struct
from collections.abc import Mapping

# Customer ids cannot start with a NUL byte (schemas.events.Id), so no state key collides.
PREFIX = b"\x00due\x00"
# Every entry sorts in [PREFIX, PREFIX_END).
PREFIX_END = b"\x00due\x01"
ENTRY = b"1"
# The re-index's progress (agents/reindex.py), in the same key space, written with the
# states it re-indexed: {"version": pack version, "after": last customer key (hex) or null,
# "done": bool}.
REINDEX_CURSOR = b"\x00reindex\x00"
# The partition's census (churnguard/census.py: customers per score band and per RFM
# segment, and how far the baseline scan got), in the same key space, written with the
# states whose band or segment changed, so a restored partition has exact counts unscanned.
CENSUS = b"\x00census\x00"
# The partition's KPI and feedback aggregates (churnguard/insights.py), as slices under this
# prefix, written with the states whose outcomes they count; all sort in [INSIGHTS, INSIGHTS_END).
INSIGHTS = b"\x00insights\x00"
INSIGHTS_END = b"\x00insights\x01"
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


def due_of(key: bytes) -> float:
    """The due time of an entry, to the millisecond it is kept in (its start: the state's own
    due may lie up to 1 ms later)."""
    (ms,) = struct.unpack_from(">Q", key, len(PREFIX))
    return float(ms) / 1000


def moves(customer: bytes, old: float | None, new: float | None) -> dict[bytes, bytes | None]:
    """Index writes for a customer whose next due went from `old` to `new` (None deletes)."""
    if old == new or (old is not None and new is not None
                       and due_key(old, customer) == due_key(new, customer)):
        return {}  # the same entry (dues within the same millisecond)
    writes: dict[bytes, bytes | None] = {}
    if old is not None:
        writes[due_key(old, customer)] = None
    if new is not None:
        writes[due_key(new, customer)] = ENTRY
    return writes


def entries_delta(writes: Mapping[bytes, bytes | None]) -> int:
    """How many index entries a write adds (negative: removes). Every delete in a batch's
    writes is of an existing entry and every put a new one (moves() keeps that true), so
    the worker keeps a count of pending timers without scanning."""
    return index_changes(writes)[0]


def index_changes(writes: Mapping[bytes, bytes | None]) -> tuple[int, bytes | None]:
    """`entries_delta` and the first entry the write adds (None: it adds none), in one pass
    over a batch's writes: the batch tells the timer tick about an earlier due with it."""
    delta = 0
    first: bytes | None = None
    for key, value in writes.items():
        if key.startswith(PREFIX):
            if value is None:
                delta -= 1
            else:
                delta += 1
                if first is None or key < first:
                    first = key
    return delta, first
