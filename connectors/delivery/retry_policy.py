"""What an answer means for an action, and how long to wait before the next attempt."""

from __future__ import annotations

import random
from datetime import UTC
from email.utils import parsedate_to_datetime
from enum import Enum

from connectors.delivery.settings import DeliverySettings


class Verdict(Enum):
    DELIVERED = "delivered"
    RETRY = "retry"
    REFUSED = "refused"  # permanent: dead-lettered at once


# Timeout and rate limit say "later"; every other 4xx says the request itself is wrong.
_RETRIED_4XX = frozenset({408, 425, 429})
# Answers whose Retry-After is honoured.
_RETRY_AFTER = frozenset({429, 503})


def verdict(status: int) -> Verdict:
    if 200 <= status < 300:
        return Verdict.DELIVERED
    if status in _RETRIED_4XX or status >= 500:
        return Verdict.RETRY
    # Other 4xx, and 1xx/3xx (redirects are not followed: a POST must reach its endpoint).
    return Verdict.REFUSED


def retry_after_s(status: int, header: str | None, *, now: float) -> float | None:
    """The wait a 429/503 asks for (seconds or an HTTP date), None when it asks none."""
    if status not in _RETRY_AFTER or not header:
        return None
    text = header.strip()
    if text.isascii() and text.isdigit():  # ("²".isdigit() is true too)
        return float(text)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - now)


def backoff_s(attempt: int, settings: DeliverySettings, *, asked: float | None = None,
              rng: random.Random | None = None) -> float:
    """The wait after failed attempt number `attempt` (1-based). A Retry-After asks for
    "not before": it lengthens the backoff, never shortens it (`Retry-After: 0` on every
    answer would otherwise spend all the attempts at once)."""
    ceiling = min(settings.backoff_max_s, settings.backoff_initial_s * 2 ** (attempt - 1))
    backoff = (rng or random).uniform(ceiling / 2, ceiling)
    if asked is not None:
        return max(backoff, min(asked, settings.retry_after_max_s))
    return backoff

