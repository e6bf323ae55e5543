"""What an HTTP answer means for an action and how long deliver waits before the next attempt
(connectors/delivery/retry_policy.py)."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from connectors.delivery.retry_policy import Verdict, backoff_s, retry_after_s, verdict
from connectors.delivery.settings import DeliverySettings

NOW = datetime(2024, 3, 1, 12, 0, tzinfo=UTC).timestamp()


def _http_date(seconds_from_now: float) -> str:
    return format_datetime(datetime.fromtimestamp(NOW, UTC) + timedelta(seconds=seconds_from_now),
                           usegmt=True)


@pytest.mark.parametrize(("status", "expected"), [
    (200, Verdict.DELIVERED), (201, Verdict.DELIVERED), (202, Verdict.DELIVERED),
    (204, Verdict.DELIVERED), (299, Verdict.DELIVERED),
    (100, Verdict.REFUSED),
    (301, Verdict.REFUSED), (302, Verdict.REFUSED), (304, Verdict.REFUSED),
    (307, Verdict.REFUSED), (308, Verdict.REFUSED),
    (400, Verdict.REFUSED), (401, Verdict.REFUSED), (403, Verdict.REFUSED),
    (404, Verdict.REFUSED), (409, Verdict.REFUSED), (410, Verdict.REFUSED),
    (413, Verdict.REFUSED), (422, Verdict.REFUSED),
    (408, Verdict.RETRY), (425, Verdict.RETRY), (429, Verdict.RETRY),
    (500, Verdict.RETRY), (502, Verdict.RETRY), (503, Verdict.RETRY), (504, Verdict.RETRY),
    (599, Verdict.RETRY),
])
def test_verdict(status: int, expected: Verdict) -> None:
    assert verdict(status) is expected


# --- Retry-After -----------------------------------------------------------------------------


@pytest.mark.parametrize("status", [429, 503])
@pytest.mark.parametrize(("header", "expected"), [
    ("120", 120.0), ("0", 0.0), (" 7 ", 7.0), ("3600", 3600.0),
])
def test_retry_after_in_seconds(status: int, header: str, expected: float) -> None:
    assert retry_after_s(status, header, now=NOW) == expected


@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_http_date(status: int) -> None:
    assert retry_after_s(status, _http_date(90), now=NOW) == pytest.approx(90.0)
    assert retry_after_s(status, _http_date(3 * 3600), now=NOW) == pytest.approx(10800.0)


def test_retry_after_date_with_offset_and_without_zone() -> None:
    # +0200: 14:01:30 there is 12:01:30 UTC; -0000 means "UTC, zone unknown" (a naive date).
    assert retry_after_s(429, "Fri, 01 Mar 2024 14:01:30 +0200", now=NOW) == pytest.approx(90.0)
    assert retry_after_s(429, "Fri, 01 Mar 2024 12:01:30 -0000", now=NOW) == pytest.approx(90.0)


@pytest.mark.parametrize("seconds_ago", [1, 3600, 86400 * 365])
def test_retry_after_date_in_the_past_is_no_wait(seconds_ago: float) -> None:
    assert retry_after_s(503, _http_date(-seconds_ago), now=NOW) == 0.0


@pytest.mark.parametrize("header", [
    "soon", "1.5", "-5", "1e3", "Fri, 32 Foo 2024 99:99:99 GMT", "Fri, 01 Mar 99999 12:00:00 GMT",
    "   ", "", None,
])
def test_retry_after_garbage_is_none(header: str | None) -> None:
    assert retry_after_s(429, header, now=NOW) is None


@pytest.mark.parametrize("status", [200, 302, 400, 408, 425, 500, 502, 504])
def test_retry_after_ignored_for_other_statuses(status: int) -> None:
    assert retry_after_s(status, "120", now=NOW) is None
    assert retry_after_s(status, _http_date(90), now=NOW) is None


def test_retry_after_superscript_digit_is_garbage() -> None:
    assert retry_after_s(429, "\u00b2", now=NOW) is None


# --- backoff -------------------------------------------------------------------------------


def _settings(**overrides: float) -> DeliverySettings:
    return DeliverySettings(secret="s" * 16, **overrides)


def test_backoff_is_exponential_with_jitter_in_half_to_all_of_the_ceiling() -> None:
    settings = _settings(backoff_initial_s=1.0, backoff_max_s=10.0)
    rng = random.Random(7)
    ceilings = {1: 1.0, 2: 2.0, 3: 4.0, 4: 8.0, 5: 10.0, 6: 10.0, 20: 10.0}
    for attempt, ceiling in ceilings.items():
        waits = [backoff_s(attempt, settings, rng=rng) for _ in range(200)]
        assert all(ceiling / 2 <= wait <= ceiling for wait in waits), attempt
        # Drawn across the range, not stuck at one end.
        assert min(waits) < ceiling * 0.6
        assert max(waits) > ceiling * 0.9


def test_backoff_never_shrinks_from_one_attempt_to_the_next_until_the_cap() -> None:
    settings = _settings(backoff_initial_s=0.5, backoff_max_s=300.0)
    rng = random.Random(1)
    previous_max = 0.0
    for attempt in range(1, 10):  # ceilings 0.5 .. 128: all below the cap
        waits = [backoff_s(attempt, settings, rng=rng) for _ in range(50)]
        assert min(waits) >= previous_max
        previous_max = max(waits)


def test_backoff_is_the_seeded_draw() -> None:
    settings = _settings(backoff_initial_s=0.5, backoff_max_s=300.0)
    expected = random.Random(42).uniform(2.0, 4.0)  # attempt 4: ceiling 0.5 * 2**3
    assert backoff_s(4, settings, rng=random.Random(42)) == expected
    assert backoff_s(4, settings, rng=random.Random(42)) == backoff_s(
        4, settings, rng=random.Random(42))


def test_backoff_of_a_very_late_attempt_is_capped() -> None:
    settings = _settings(backoff_initial_s=0.5, backoff_max_s=300.0, max_attempts=1000)
    wait = backoff_s(1000, settings, rng=random.Random(3))
    assert 150.0 <= wait <= 300.0


def test_retry_after_lengthens_the_backoff_and_is_capped() -> None:
    settings = _settings(backoff_initial_s=0.5, backoff_max_s=10.0, retry_after_max_s=60.0)
    assert backoff_s(1, settings, asked=30.0) == 30.0
    # Longer than backoff_max_s but within retry_after_max_s: waited as asked.
    assert backoff_s(5, settings, asked=45.0) == 45.0
    assert backoff_s(1, settings, asked=3600.0) == 60.0
    # "Not before": a shorter (or zero) Retry-After never shortens the backoff, so an
    # endpoint answering `Retry-After: 0` cannot spend every attempt at once.
    rng = random.Random(7)
    for attempt in range(1, 8):
        ceiling = min(10.0, 0.5 * 2 ** (attempt - 1))
        assert ceiling / 2 <= backoff_s(attempt, settings, asked=0.0, rng=rng) <= ceiling
