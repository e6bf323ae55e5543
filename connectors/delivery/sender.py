"""One action to its endpoint: attempts until an answer settles it or attempts run out."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus

import aiohttp

from connectors.delivery.metrics import DeliveryMetrics
from connectors.delivery.retry_policy import Verdict, backoff_s, retry_after_s, verdict
from connectors.delivery.routes import Route
from connectors.delivery.settings import DeliverySettings
from connectors.delivery.signing import IDEMPOTENCY_HEADER, SIGNATURE_HEADER, sign

USER_AGENT = "churnguard-deliver/1"


@dataclass(frozen=True, slots=True)
class Attempted:
    status: str  # delivered | refused | gave_up
    attempts: int
    http_status: int | None  # the last answer's, None when none came
    error: str  # the last failure, "" when delivered


class Sender:
    def __init__(self, session: aiohttp.ClientSession, settings: DeliverySettings,
                 metrics: DeliveryMetrics, *,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        assert settings.secret is not None
        self._session = session
        self._settings = settings
        self._secret = settings.secret.get_secret_value().encode()
        self._metrics = metrics
        self._sleep = sleep
        # Requests at once; waits between attempts hold no slot.
        self._slots = asyncio.Semaphore(settings.concurrency)
        self._timeout = aiohttp.ClientTimeout(total=settings.timeout_s)

    async def send(self, route: Route, body: bytes, action_id: str, action_type: str
                   ) -> Attempted:
        assert route.url is not None
        headers = {
            **route.headers,
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            IDEMPOTENCY_HEADER: action_id,
            SIGNATURE_HEADER: sign(body, self._secret),
            "X-Churnguard-Action-Type": action_type,
        }
        status: int | None = None
        error = ""
        attempt = 0
        first = time.monotonic()
        while True:
            attempt += 1
            headers["X-Churnguard-Attempt"] = str(attempt)
            asked: float | None = None
            async with self._slots:
                started = time.monotonic()
                try:
                    async with self._session.post(route.url, data=body, headers=headers,
                                                  timeout=self._timeout,
                                                  allow_redirects=False) as answer:
                        await _drain(answer)
                        status = answer.status
                        error = _http_error(status)
                        asked = retry_after_s(status, answer.headers.get("Retry-After"),
                                              now=time.time())
                except TimeoutError:
                    status, error = None, f"no answer within {self._settings.timeout_s:g} s"
                except aiohttp.ClientError as exc:
                    status, error = None, type(exc).__name__
                finally:
                    self._metrics.duration.observe(time.monotonic() - started)
            settled = Verdict.RETRY if status is None else verdict(status)
            if settled is Verdict.DELIVERED:
                return Attempted("delivered", attempt, status, "")
            if settled is Verdict.REFUSED:
                return Attempted("refused", attempt, status, error)
            wait = backoff_s(attempt, self._settings, asked=asked)
            if attempt >= self._settings.max_attempts or (
                    time.monotonic() - first + wait > self._settings.give_up_after_s):
                return Attempted("gave_up", attempt, status, error)
            self._metrics.retries.inc()
            await self._sleep(wait)


# An answer's body is never used: read this much at most (the connection is reused only
# once an answer is read whole; a larger one is closed instead of filling memory).
MAX_ANSWER_BYTES = 64 * 1024


async def _drain(answer: aiohttp.ClientResponse) -> None:
    size = 0
    async for chunk in answer.content.iter_chunked(16 * 1024):
        size += len(chunk)
        if size > MAX_ANSWER_BYTES:
            answer.close()
            return


def _http_error(status: int) -> str:
    """`HTTP 503 Service Unavailable`: the standard phrase, never the endpoint's own text
    (which lands in the delivery DLQ and may hold anything)."""
    try:
        return f"HTTP {status} {HTTPStatus(status).phrase}"
    except ValueError:
        return f"HTTP {status}"
