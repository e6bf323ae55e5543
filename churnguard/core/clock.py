"""Time helpers. churnguard computes in epoch seconds (float, UTC) and renders RFC 3339."""

from __future__ import annotations

from datetime import UTC, datetime
from functools import lru_cache
from typing import Annotated
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AfterValidator

DAY = 86_400.0
HOUR = 3_600.0


def day_number(ts: float) -> int:
    """Days since the epoch (UTC) — the key of the per-day activity buckets."""
    return int(ts // DAY)


# Both are pure and hot (every action, outcome record and score record renders its times;
# the same moment several times over): memoised, bounded.
@lru_cache(maxsize=4096)
def rfc3339(ts: float) -> str:
    """Deterministic rendering: always UTC, `Z`, milliseconds only when present."""
    moment = datetime.fromtimestamp(ts, UTC)
    if moment.microsecond:
        return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


@lru_cache(maxsize=4096)
def parse_rfc3339(text: str) -> float:
    """Inverse of rfc3339 for any aware ISO 8601 timestamp; raises ValueError otherwise."""
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        raise ValueError(f"timestamp {text!r} has no UTC offset")
    return moment.timestamp()


def _known_zone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError, OSError) as exc:  # "Europe" is a directory
        raise ValueError(f"unknown time zone {value!r}; use an IANA name such as "
                         "'Europe/Paris' or 'UTC'") from exc
    return value


# A setting or pack field naming a time zone: checked when it is read, not when it is used.
ZoneName = Annotated[str, AfterValidator(_known_zone)]
