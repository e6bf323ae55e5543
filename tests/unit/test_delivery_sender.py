"""One action to its endpoint (connectors/delivery/sender.py, signing.py), against a real
local HTTP server answering scripted statuses; backoff waits are recorded, never slept."""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from http import HTTPStatus
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from connectors.delivery.metrics import DeliveryMetrics
from connectors.delivery.routes import Route
from connectors.delivery.sender import USER_AGENT, Attempted, Sender
from connectors.delivery.settings import DeliverySettings
from connectors.delivery.signing import sign, verify
from tests.unit.delivery_endpoint import HANG, Answer, Endpoint, Sleeps

SECRET = "s" * 16
def settings(**overrides: Any) -> DeliverySettings:
    values: dict[str, Any] = {"secret": SECRET, "backoff_initial_s": 0.01, "timeout_s": 2.0,
                              **overrides}
    return DeliverySettings(**values)


def closed_port_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/refused"


def sample(metrics: DeliveryMetrics, name: str, labels: dict[str, str] | None = None) -> float:
    value = metrics.registry.get_sample_value(name, labels or {})
    return 0.0 if value is None else value


@dataclass
class Rig:
    session: aiohttp.ClientSession
    metrics: DeliveryMetrics = field(default_factory=DeliveryMetrics)
    sleeps: Sleeps = field(default_factory=Sleeps)

    async def send(self, url: str, body: bytes = b'{"action_id": "a-1"}', *,
                   headers: dict[str, str] | None = None, **overrides: Any) -> Attempted:
        sender = Sender(self.session, settings(**overrides), self.metrics, sleep=self.sleeps)
        route = Route(url=url, headers=headers or {})
        return await sender.send(route, body, "a-1", "notification")

    @property
    def retries(self) -> float:
        return sample(self.metrics, "churnguard_delivery_retries_total")

    @property
    def attempts_timed(self) -> float:
        return sample(self.metrics, "churnguard_delivery_duration_seconds_count")


@pytest.fixture
def rig(session: aiohttp.ClientSession) -> Rig:
    return Rig(session)


# --- signing ---------------------------------------------------------------------------------


def test_signature_roundtrip() -> None:
    body = b'{"action_id": "a-1", "customer_id": "c-1"}'
    header = sign(body, SECRET.encode())
    assert header.startswith("sha256=")
    assert len(header) == len("sha256=") + 64
    assert verify(body, SECRET.encode(), header)
    assert sign(body, SECRET.encode()) == header


@pytest.mark.parametrize(("body", "secret", "header"), [
    (b"{}", b"another-secret-16", sign(b"{}", SECRET.encode())),
    (b"{} ", SECRET.encode(), sign(b"{}", SECRET.encode())),
    (b"{}", SECRET.encode(), None),
    (b"{}", SECRET.encode(), ""),
    (b"{}", SECRET.encode(), sign(b"{}", SECRET.encode()).removeprefix("sha256=")),
    (b"{}", SECRET.encode(), sign(b"{}", SECRET.encode()).upper()),
])
def test_signature_does_not_verify(body: bytes, secret: bytes, header: str | None) -> None:
    assert not verify(body, secret, header)


# --- one attempt ---------------------------------------------------------------------------


async def test_delivered_request_carries_signed_body_and_headers(
        endpoint: Endpoint, session: aiohttp.ClientSession) -> None:
    body = b'{"action_id":"act-9",  "customer_id":"c-1" ,"type":"task"}'  # odd spacing: kept
    sender = Sender(session, settings(), DeliveryMetrics(), sleep=Sleeps())
    route = Route(url=endpoint.url("hook", 200), headers={"X-Tenant": "shop-eu"})
    attempted = await sender.send(route, body, "act-9", "task")
    assert attempted == Attempted("delivered", 1, 200, "")
    [hit] = endpoint.hits
    assert hit.body == body
    assert hit.headers["Idempotency-Key"] == "act-9"
    assert verify(hit.body, SECRET.encode(), hit.headers["X-Churnguard-Signature"])
    assert not verify(hit.body, b"x" * 16, hit.headers["X-Churnguard-Signature"])
    assert hit.headers["Content-Type"] == "application/json"
    assert hit.headers["X-Tenant"] == "shop-eu"
    assert hit.headers["X-Churnguard-Attempt"] == "1"
    assert hit.headers["X-Churnguard-Action-Type"] == "task"
    assert hit.headers["User-Agent"] == USER_AGENT
    assert hit.headers.getall("Idempotency-Key") == ["act-9"]


@pytest.mark.parametrize("status", [200, 201, 202, 204])
async def test_any_2xx_is_delivered(endpoint: Endpoint, rig: Rig, status: int) -> None:
    attempted = await rig.send(endpoint.url("hook", status))
    assert attempted == Attempted("delivered", 1, status, "")
    assert rig.sleeps.waits == []
    assert rig.retries == 0


async def test_500_then_200_is_delivered_on_the_second_attempt(
        endpoint: Endpoint, rig: Rig) -> None:
    attempted = await rig.send(endpoint.url("hook", 500, 200), body=b'{"n": 1}')
    assert attempted == Attempted("delivered", 2, 200, "")
    assert [hit.headers["X-Churnguard-Attempt"] for hit in endpoint.hits] == ["1", "2"]
    first, second = endpoint.hits
    assert first.body == second.body == b'{"n": 1}'
    assert first.headers["Idempotency-Key"] == second.headers["Idempotency-Key"] == "a-1"
    assert verify(second.body, SECRET.encode(), second.headers["X-Churnguard-Signature"])
    assert rig.retries == 1
    assert len(rig.sleeps.waits) == 1
    assert 0.005 <= rig.sleeps.waits[0] <= 0.01  # backoff_initial_s, jittered
    assert rig.attempts_timed == 2


@pytest.mark.parametrize(("status", "reason"), [
    (400, "Bad Request"), (401, "Unauthorized"), (404, "Not Found"), (409, "Conflict"),
    (422, "Unprocessable Entity"),
])
async def test_a_permanent_4xx_is_refused_at_once(
        endpoint: Endpoint, rig: Rig, status: int, reason: str) -> None:
    attempted = await rig.send(endpoint.url("hook", status, 200), max_attempts=5)
    assert attempted == Attempted("refused", 1, status, f"HTTP {status} {reason}")
    assert len(endpoint.hits) == 1
    assert rig.sleeps.waits == []
    assert rig.retries == 0
    assert rig.attempts_timed == 1


@pytest.mark.parametrize("status", [408, 425, 429, 502, 503])
async def test_temporary_answers_are_retried(endpoint: Endpoint, rig: Rig, status: int) -> None:
    attempted = await rig.send(endpoint.url("hook", status, 200))
    assert attempted == Attempted("delivered", 2, 200, "")
    assert rig.retries == 1


async def test_out_of_attempts_gives_up_with_the_last_error(endpoint: Endpoint, rig: Rig) -> None:
    attempted = await rig.send(endpoint.url("hook", 500, 502, 503, 200), max_attempts=3)
    assert attempted == Attempted("gave_up", 3, 503, "HTTP 503 Service Unavailable")
    assert len(endpoint.hits) == 3
    assert [hit.headers["X-Churnguard-Attempt"] for hit in endpoint.hits] == ["1", "2", "3"]
    assert rig.retries == 2
    assert rig.attempts_timed == 3
    # Waits after attempts 1 and 2: exponential ceilings 0.01 and 0.02, jittered to [½, 1].
    first, second = rig.sleeps.waits
    assert 0.005 <= first <= 0.01
    assert 0.01 <= second <= 0.02


async def test_max_attempts_one_never_retries(endpoint: Endpoint, rig: Rig) -> None:
    attempted = await rig.send(endpoint.url("hook", 500, 200), max_attempts=1)
    assert attempted == Attempted("gave_up", 1, 500, "HTTP 500 Internal Server Error")
    assert rig.sleeps.waits == []
    assert rig.retries == 0


async def test_retry_after_seconds_is_waited(endpoint: Endpoint, rig: Rig) -> None:
    url = endpoint.url("hook", (429, {"Retry-After": "7"}), (503, {"Retry-After": "2"}), 200)
    attempted = await rig.send(url)
    assert attempted == Attempted("delivered", 3, 200, "")
    assert rig.sleeps.waits == [7.0, 2.0]
    assert rig.retries == 2


async def test_retry_after_date_is_waited(endpoint: Endpoint, rig: Rig) -> None:
    when = datetime.fromtimestamp(time.time(), UTC) + timedelta(seconds=120)
    url = endpoint.url("hook", (503, {"Retry-After": format_datetime(when, usegmt=True)}), 200)
    attempted = await rig.send(url)
    assert attempted.status == "delivered"
    [wait] = rig.sleeps.waits
    assert 115 <= wait <= 121


async def test_retry_after_is_capped(endpoint: Endpoint, rig: Rig) -> None:
    url = endpoint.url("hook", (429, {"Retry-After": "86400"}), 200)
    attempted = await rig.send(url, retry_after_max_s=30.0)
    assert attempted.status == "delivered"
    assert rig.sleeps.waits == [30.0]


async def test_retry_after_of_a_500_is_not_waited(endpoint: Endpoint, rig: Rig) -> None:
    url = endpoint.url("hook", (500, {"Retry-After": "600"}), 200)
    await rig.send(url, backoff_initial_s=1.0)
    [wait] = rig.sleeps.waits
    assert 0.5 <= wait <= 1.0


async def test_an_answer_past_the_timeout_is_a_failed_attempt(endpoint: Endpoint, rig: Rig
                                                              ) -> None:
    attempted = await rig.send(endpoint.url("slow", HANG, 200), timeout_s=0.05)
    assert attempted == Attempted("delivered", 2, 200, "")
    assert rig.retries == 1
    assert rig.attempts_timed == 2
    timed = sample(rig.metrics, "churnguard_delivery_duration_seconds_sum")
    assert timed >= 0.05


async def test_only_timeouts_give_up_naming_the_timeout(endpoint: Endpoint, rig: Rig) -> None:
    attempted = await rig.send(endpoint.url("slow", HANG), timeout_s=0.05, max_attempts=2)
    assert attempted == Attempted("gave_up", 2, None, "no answer within 0.05 s")
    assert len(endpoint.hits) == 2


@pytest.mark.parametrize(("script", "last_status", "last_error"), [
    ((500, HANG), None, "no answer within 0.05 s"),
    ((HANG, 500), 500, "HTTP 500 Internal Server Error"),
])
async def test_gave_up_reports_the_last_attempt_not_an_earlier_one(
        endpoint: Endpoint, rig: Rig, script: tuple[Answer, ...], last_status: int | None,
        last_error: str) -> None:
    attempted = await rig.send(endpoint.url("hook", *script), timeout_s=0.05, max_attempts=2)
    assert attempted == Attempted("gave_up", 2, last_status, last_error)


async def test_connection_refused_is_retried(rig: Rig) -> None:
    attempted = await rig.send(closed_port_url(), max_attempts=3)
    assert attempted.status == "gave_up"
    assert attempted.attempts == 3
    assert attempted.http_status is None
    assert attempted.error == "ClientConnectorError"
    assert rig.retries == 2
    assert len(rig.sleeps.waits) == 2
    assert rig.attempts_timed == 3


async def test_a_redirect_is_refused_not_followed(endpoint: Endpoint, rig: Rig) -> None:
    target = endpoint.url("elsewhere", 200)
    attempted = await rig.send(endpoint.url("moved", (302, {"Location": target})),
                               max_attempts=5)
    assert attempted == Attempted("refused", 1, 302, "HTTP 302 Found")
    assert [hit.path for hit in endpoint.hits] == ["moved"]
    assert rig.sleeps.waits == []


async def test_duration_is_observed_per_attempt(endpoint: Endpoint, rig: Rig) -> None:
    await rig.send(endpoint.url("hook", 500, 500, 500, 200))
    assert rig.attempts_timed == 4
    await rig.send(endpoint.url("other", 404))
    assert rig.attempts_timed == 5
    assert rig.retries == 3


async def test_sender_requires_a_secret(session: aiohttp.ClientSession) -> None:
    with pytest.raises(AssertionError):
        Sender(session, DeliverySettings(), DeliveryMetrics())


async def test_an_unparsable_retry_after_from_the_endpoint_is_ignored(
        endpoint: Endpoint, rig: Rig) -> None:
    attempted = await rig.send(endpoint.url("hook", (429, {"Retry-After": "\u00b2"}), 200))
    assert attempted == Attempted("delivered", 2, 200, "")


# --- what an endpoint answers beyond the status ---------------------------------------------


async def test_an_endless_answer_body_is_not_read_to_its_end(rig: Rig) -> None:
    """A 200 whose body never ends (or is gigabytes): deliver reads 64 KiB at most and
    closes the connection, instead of holding the attempt until the timeout (or memory)."""

    async def endless(request: web.Request) -> web.StreamResponse:
        answer = web.StreamResponse(status=200)
        await answer.prepare(request)
        chunk = b"x" * 65_536
        while True:  # until deliver hangs up
            await answer.write(chunk)

    app = web.Application()
    app.router.add_post("/endless", endless)
    async with TestServer(app, host="127.0.0.1", port=0) as server:
        attempted = await rig.send(str(server.make_url("/endless")), timeout_s=30.0)
    assert attempted.status == "delivered"
    assert attempted.attempts == 1


async def test_the_dead_letter_error_is_the_standard_phrase_not_the_endpoints_text(
        rig: Rig) -> None:
    async def odd(_: web.Request) -> web.Response:
        return web.Response(status=422, reason="Nope, ask alice@example.com")

    app = web.Application()
    app.router.add_post("/odd", odd)
    async with TestServer(app, host="127.0.0.1", port=0) as server:
        attempted = await rig.send(str(server.make_url("/odd")))
    assert attempted.status == "refused"
    assert attempted.error == f"HTTP 422 {HTTPStatus(422).phrase}"
