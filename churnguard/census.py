"""A partition's census: its customers per score band and per RFM segment, exact, kept in
the partition's own state store (`due_index.CENSUS`) and written in the same write as the
states whose band or segment changed, so it goes through the changelog with them and a
restored or rebalanced partition has exact counts without a scan.

A store that has customers but no census yet (written before the census existed) gets its
baseline from a throttled background scan in key order (agents/census.py) whose cursor
(`after`, the last customer key counted) is part of the record. Until the scan is `done`, a
batch's change for a customer at or before the cursor is applied (the scan counted that
customer already), one after it is not (the scan will count the customer's state as it is
when it gets there) — so no change is lost or counted twice.

Pure: no Faust, no store. The counts are of the stored states (their `score` and `segment`
as last computed by an event or a timer), as `churnguard_customers` counts stored states."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import orjson

from churnguard.core.scoring import BANDS, band_of
from churnguard.core.state import CustomerState
from churnguard.core.state_codec import score_and_segment

# A customer's place in the census: (score band, RFM segment).
Standing = tuple[str, str]
# Per customer key: its standing before and after a write (None: no state).
Change = tuple[Standing | None, Standing | None]

UNSCORED = "unscored"
# Always present in a record's bands (zero or not); others only when counted.
SCORED_BANDS = tuple(band for band in BANDS if band != UNSCORED)


def standing(state: CustomerState | None) -> Standing | None:
    if state is None:
        return None
    return band_of(state.score), state.segment or UNSCORED


def standing_of_raw(raw: bytes) -> Standing:
    """A stored state's standing (either format), without building the state (the scan)."""
    score, segment = score_and_segment(raw)
    return band_of(score), segment or UNSCORED


def change(before: Standing | None, after: Standing | None) -> Change | None:
    """What a write does to the census: None when the customer's standing is the same."""
    return None if before == after else (before, after)


@dataclass(slots=True)
class Census:
    band: Counter[str] = field(default_factory=Counter)
    segment: Counter[str] = field(default_factory=Counter)
    # The last customer key the baseline scan counted (None: none yet); meaningless once
    # done.
    after: bytes | None = None
    done: bool = False

    @classmethod
    def from_bytes(cls, raw: bytes) -> Census:
        data = orjson.loads(raw)
        after = data.get("after")
        return cls(Counter(data["band"]), Counter(data["segment"]),
                   None if after is None else bytes.fromhex(after), bool(data["done"]))

    def to_bytes(self) -> bytes:
        return orjson.dumps({
            "band": self.bands(),
            "segment": self.segments(),
            "after": None if self.after is None else self.after.hex(),
            "done": self.done,
        })

    def bands(self) -> dict[str, int]:
        bands = {band: self.band[band] for band in SCORED_BANDS}
        bands.update((band, n) for band, n in sorted(self.band.items())
                     if n and band not in bands)
        return bands

    def segments(self) -> dict[str, int]:
        return {segment: n for segment, n in sorted(self.segment.items()) if n}

    def counted(self, key: bytes) -> bool:
        """Whether the census already counts this customer's stored state (its change then
        applies): always once done, else only up to the scan's cursor."""
        return self.done or (self.after is not None and key <= self.after)

    def add(self, standing: Standing, n: int = 1) -> None:
        band, segment = standing
        self.band[band] += n
        self.segment[segment] += n

    def apply(self, changes: Mapping[bytes, Change]) -> bool:
        """Apply the changes of the customers already counted; whether any applied."""
        applied = False
        for key, (before, after) in changes.items():
            if not self.counted(key):
                continue  # the scan counts this customer when it gets there
            if before is not None:
                self.add(before, -1)
            if after is not None:
                self.add(after)
            applied = True
        return applied


@dataclass(frozen=True, slots=True)
class CensusTotals:
    """A worker's census over the partitions it owns: the sums of those whose census is
    done; `pending` lists the owned partitions still being counted (or not read yet), so a
    partial sum is never taken for the figure."""

    band: dict[str, int]
    segment: dict[str, int]
    counted: tuple[int, ...]
    pending: tuple[int, ...]

    @property
    def complete(self) -> bool:
        return not self.pending


def totals(censuses: Mapping[int, Census], owned: Iterable[int]) -> CensusTotals:
    total = Census()
    counted, pending = [], []
    for partition in sorted(set(owned)):
        census = censuses.get(partition)
        if census is None or not census.done:
            pending.append(partition)
            continue
        counted.append(partition)
        total.band.update(census.band)
        total.segment.update(census.segment)
    return CensusTotals(total.bands(), total.segments(), tuple(counted), tuple(pending))
