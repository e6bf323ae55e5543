"""The gateway's HTTP API: POST /v1/events (bearer token, scope `ingest`), and, without a
token, /health, /ready, /metrics and /openapi.json. Answers are JSON; docs/gateway.md
describes each status."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

from churnguard.access_tokens import AccessToken, Role, TokenRegistry
from churnguard.http_access import CHALLENGE, AccessRefused, authorize
from churnguard.http_listen import metrics_response
from connectors.gateway.admission import Admitted, admit
from connectors.gateway.body import BodyRefused, split_events
from connectors.gateway.idempotency import EventKey, RecentEvents
from connectors.gateway.metrics import GatewayMetrics
from connectors.gateway.openapi import openapi_document
from connectors.gateway.rate_limit import EventRateLimit
from connectors.gateway.sink import BrokerUnavailable, EventSink, Record
from streams.audit_log import AuditLog
from streams.settings import Settings

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
INGEST_PATH = "/v1/events"
# What aiohttp decodes (brotli would need a package the gateway does not install).
_ENCODINGS = frozenset({"identity", "gzip", "deflate"})


class Refused(Exception):
    """Ends a request with a JSON error answer (turned into the response by a middleware)."""

    def __init__(self, status: int, error: str, message: str,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.response = json_response({"error": error, "message": message}, status, headers)


def json_response(body: Any, status: int, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, headers=headers,
                        content_type="application/json")


@dataclass
class Tally:
    """POST /v1/events counts since the last summary line (the hot path logs nothing per
    request)."""

    requests: dict[int, int] = field(default_factory=dict)
    events: dict[str, int] = field(default_factory=dict)
    broker_failures: int = 0
    last_broker_error: str = ""

    def add_events(self, result: str, count: int) -> None:
        if count:
            self.events[result] = self.events.get(result, 0) + count


class Gateway:
    def __init__(self, settings: Settings, tokens: TokenRegistry) -> None:
        self.settings = settings
        self.limits = settings.gateway
        self.tokens = tokens
        self.sink = EventSink(settings)
        # Every refused request on the audit trail, as the workers' (docs/security.md).
        self.audit = AuditLog(self.sink.send_audit)
        self.metrics = GatewayMetrics()
        self.rate_limit = EventRateLimit(self.limits.rate_limit_events_per_s,
                                         self.limits.rate_limit_burst)
        self.recent = RecentEvents(self.limits.idempotency_window_s,
                                   self.limits.idempotency_max_ids)
        # Every event on the combined topic: one customer's events are then in one partition
        # in the order posted (per-type topics are merged by the worker only as far as
        # their fetches show, so a live ticket and purchase a millisecond apart could swap).
        self.topic = settings.topics.events
        self.tally = Tally()
        self.stopping = False
        self._openapi = orjson.dumps(openapi_document(self.limits))

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._observe])
        app.router.add_post(INGEST_PATH, self.ingest)
        app.router.add_get("/health", self.health)
        app.router.add_get("/ready", self.ready)
        app.router.add_get("/metrics", self.metrics_text)
        app.router.add_get("/openapi.json", self.openapi)
        return app

    @web.middleware
    async def _observe(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except Refused as refused:
            status = refused.response.status
            return refused.response
        except web.HTTPException as exc:  # aiohttp's own: 404, 405
            status = exc.status
            raise
        finally:
            # Ingest only: probes and scrapes are not traffic (and would swamp the figures).
            if request.path == INGEST_PATH:
                self.metrics.requests.labels(status=str(status)).inc()
                self.metrics.duration.observe(time.perf_counter() - started)
                self.tally.requests[status] = self.tally.requests.get(status, 0) + 1

    # -- POST /v1/events ------------------------------------------------------------------

    async def ingest(self, request: web.Request) -> web.Response:
        token = self._authorize(request, "ingest")
        if not self.sink.ready or self.stopping:
            raise Refused(503, "not_ready", "the gateway is starting or stopping: retry",
                          {"Retry-After": str(self.limits.retry_after_s)})
        items = split_events(await self._read_body(request), request.content_type,
                             max_events=self.limits.max_batch_events)
        if isinstance(items, BodyRefused):
            raise Refused(items.status, items.error, items.message)
        self.metrics.batch_events.observe(len(items))
        wait_s = self.rate_limit.take(token.name, len(items))
        if wait_s:
            self._count("rate_limited", len(items))
            raise Refused(429, "rate_limited",
                          f"token {token.name!r} may send "
                          f"{self.limits.rate_limit_events_per_s:g} events/s (bursts of "
                          f"{self.limits.rate_limit_burst:,}): retry in {wait_s} s",
                          {"Retry-After": str(wait_s)})

        admitted, rejected = admit(items, now=time.time(),
                                   max_future_hours=self.settings.max_future_skew_hours)
        fresh, duplicates = self._split_duplicates(admitted)
        now_ms = int(time.time() * 1000)
        try:
            await self.sink.deliver([self._record(a, now_ms) for a in fresh])
        except BrokerUnavailable as exc:
            # What was acknowledged is remembered: the client's retry of the whole request
            # gets those as duplicates, the rest produced.
            self.recent.remember(_key(fresh[i]) for i in exc.acknowledged)
            self._count("unavailable", len(fresh))
            self.tally.broker_failures += 1
            self.tally.last_broker_error = exc.reason
            raise Refused(503, "broker_unavailable",
                          f"the broker did not acknowledge the events in time ({exc.reason}); "
                          "nothing of this request is reported accepted: retry it whole (what "
                          "was taken comes back as duplicates)",
                          {"Retry-After": str(self.limits.retry_after_s)}) from None
        self.recent.remember(_key(a) for a in fresh)
        self._count("accepted", len(fresh))
        self._count("duplicate", len(duplicates))
        self._count("rejected", len(rejected))

        body: dict[str, Any] = {"accepted": [a.event.event_id for a in fresh],
                                "duplicates": [a.event.event_id for a in duplicates]}
        if not rejected:
            return json_response(body, 202)
        body["rejected"] = [r.as_json() for r in rejected]
        return json_response(body, 207 if admitted else 400)

    def _authorize(self, request: web.Request, role: Role) -> AccessToken:
        try:
            return authorize(self.tokens, request.headers.get("Authorization"), role)
        except AccessRefused as refused:
            self.audit.refused(refused.refusal(request))
            raise Refused(refused.status, refused.error, refused.message,
                          CHALLENGE if refused.status == 401 else None) from None

    async def _read_body(self, request: web.Request) -> bytes:
        limit = self.limits.max_body_bytes
        too_large = Refused(413, "body_too_large",
                            f"the body is over the limit of {limit:,} bytes: split the batch")
        if request.content_length is not None and request.content_length > limit:
            raise too_large
        encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding not in _ENCODINGS:
            raise Refused(415, "unsupported_encoding",
                          f"Content-Encoding {encoding[:40]!r} is not supported: send the body "
                          "as it is, or gzip or deflate it")
        chunks, size = [], 0
        try:
            # A client that stops sending holds its request no longer than this.
            async with asyncio.timeout(self.limits.body_timeout_s):
                async for chunk in request.content.iter_any():
                    size += len(chunk)
                    if size > limit:  # (after decompression: a gzip bomb stops here)
                        raise too_large
                    chunks.append(chunk)
        except TimeoutError:
            raise Refused(408, "body_timeout",
                          f"the body did not arrive within {self.limits.body_timeout_s:g} s: "
                          "send it at once") from None
        except (HttpProcessingError, RequestPayloadError):
            raise Refused(400, "malformed_body",
                          f"the body could not be decoded as Content-Encoding {encoding}: "
                          "check the compression, or send it as it is") from None
        return b"".join(chunks)

    def _split_duplicates(self, admitted: list[Admitted]) -> tuple[list[Admitted], list[Admitted]]:
        fresh: list[Admitted] = []
        duplicates: list[Admitted] = []
        in_request: set[EventKey] = set()
        for item in admitted:
            key = _key(item)
            if key in in_request or key in self.recent:
                duplicates.append(item)
            else:
                in_request.add(key)
                fresh.append(item)
        return fresh, duplicates

    def _record(self, item: Admitted, now_ms: int) -> Record:
        event = item.event
        # Keyed by customer_id (the contract's partitioning): the key is the parsed id, the
        # one the worker compares the key with. Stamped with the event's time (CreateTime =
        # occurred_at, as the contract asks): the worker merges the combined topic with the
        # per-type topics other producers write by record timestamp. Never ahead of now: a
        # broker refuses timestamps too far in the future (Kafka 4: one hour).
        return Record(self.topic, event.customer_id.encode(), item.raw,
                      min(int(event.at * 1000), now_ms))

    def _count(self, result: str, count: int) -> None:
        if count:
            self.metrics.events.labels(result=result).inc(count)
            self.tally.add_events(result, count)

    # -- open endpoints ---------------------------------------------------------------------

    async def health(self, _: web.Request) -> web.Response:
        return json_response({"status": "ok"}, 200)

    async def ready(self, _: web.Request) -> web.Response:
        ready = self.sink.ready and not self.stopping
        return json_response({"ready": ready, "producer_connected": self.sink.ready,
                              "stopping": self.stopping}, 200 if ready else 503)

    async def metrics_text(self, _: web.Request) -> web.Response:
        return metrics_response(self.metrics.registry)

    async def openapi(self, _: web.Request) -> web.Response:
        return web.Response(body=self._openapi, content_type="application/json")


def _key(item: Admitted) -> EventKey:
    return (item.event.customer_id, item.event.event_id)
