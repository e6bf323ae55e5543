"""The access policy of the HTTP endpoints (churnguard/http_access.py) on a real aiohttp
server: a route added without a policy is refused to everyone, the probes close when the
setting says so, a worker with no token says how to make one, and a refusal is reported
without the token."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from churnguard.access_tokens import TokenRegistry, new_token
from churnguard.http_access import AccessPolicy, Refusal, token_of

VIEWER, VIEWER_STORED = new_token("dash", ["viewer"])
ADMIN, ADMIN_STORED = new_token("ops", ["admin"])
INGEST, INGEST_STORED = new_token("shop", ["ingest"])
Client = TestClient[web.Request, web.Application]


async def _hello(request: web.Request) -> web.Response:
    token = token_of(request)
    return web.json_response({"token": None if token is None else token.name})


def _app(policy: AccessPolicy) -> web.Application:
    app = web.Application(middlewares=[policy.middleware])
    policy.add(app, "GET", "/health", _hello, "probe")
    policy.add(app, "GET", "/page", _hello, "open")
    policy.add(app, "GET", "/kpis", _hello, "viewer")
    policy.add(app, "GET", "/customers/{customer_id}", _hello, "agent")
    policy.add(app, "POST", "/forget", _hello, "admin")
    app.router.add_get("/forgotten", _hello)  # added around the policy: a bug
    return app


@pytest.fixture
async def client() -> AsyncIterator[Callable[[AccessPolicy], Client]]:
    clients: list[Client] = []

    def make(policy: AccessPolicy) -> Client:
        made = TestClient(TestServer(_app(policy)))
        clients.append(made)
        return made

    yield make
    for made in clients:
        await made.close()


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_each_access_level(client: Callable[[AccessPolicy], Client]) -> None:
    refusals: list[Refusal] = []
    policy = AccessPolicy(TokenRegistry([VIEWER_STORED, ADMIN_STORED, INGEST_STORED]),
                          open_probes=True, on_refused=refusals.append)
    http = client(policy)
    await http.start_server()
    cases = [("GET", "/health", None, 200), ("GET", "/page", None, 200),
             ("GET", "/kpis", None, 401), ("GET", "/kpis", INGEST, 403),
             ("GET", "/kpis", VIEWER, 200), ("GET", "/kpis", ADMIN, 200),
             ("GET", "/customers/c1", VIEWER, 403), ("GET", "/customers/c1", ADMIN, 200),
             ("POST", "/forget", VIEWER, 403), ("POST", "/forget", ADMIN, 200),
             ("GET", "/forgotten", ADMIN, 403), ("GET", "/forgotten", None, 403),
             ("GET", "/nowhere", None, 404), ("DELETE", "/kpis", ADMIN, 405)]
    for method, path, token, status in cases:
        answer = await http.request(method, path,
                                    headers=_bearer(token) if token else None)
        assert answer.status == status, (method, path, token)
        if status == 200:
            named = {VIEWER: "dash", ADMIN: "ops", None: None}[token]
            assert (await answer.json())["token"] == (named if path != "/health" else None)
        if status in (401, 403):
            body = await answer.json()
            assert body["error"] == ("unauthorized" if status == 401 else "forbidden")
            assert token is None or token not in await answer.text()
        if status == 401:
            assert answer.headers["WWW-Authenticate"] == 'Bearer realm="churnguard"'
    forgotten = await (await http.get("/forgotten", headers=_bearer(ADMIN))).json()
    assert "no access policy" in forgotten["message"]
    assert [(r.status, r.path, r.token_name) for r in refusals][:3] == [
        (401, "/kpis", None), (403, "/kpis", "shop"), (403, "/customers/c1", "dash")]
    assert all(r.remote == "127.0.0.1" for r in refusals)
    assert policy.routes()[("GET", "/customers/{customer_id}")] == "agent"


async def test_closed_probes_need_a_viewer(client: Callable[[AccessPolicy], Client]) -> None:
    http = client(AccessPolicy(TokenRegistry([VIEWER_STORED, INGEST_STORED]),
                               open_probes=False))
    await http.start_server()
    assert (await http.get("/health")).status == 401
    assert (await http.get("/health", headers=_bearer(INGEST))).status == 403
    assert (await http.get("/health", headers=_bearer(VIEWER))).status == 200
    assert (await http.get("/page")).status == 200  # a page's shell holds no data


async def test_no_token_configured_says_how_to_make_one(
    client: Callable[[AccessPolicy], Client],
) -> None:
    http = client(AccessPolicy(TokenRegistry([]), open_probes=True))
    await http.start_server()
    assert (await http.get("/health")).status == 200
    answer = await http.get("/kpis", headers=_bearer(VIEWER))
    assert answer.status == 401
    message = (await answer.json())["message"]
    assert "no access token is configured" in message
    assert "churnguard token new" in message
    assert "CHURNGUARD_WEB_TOKEN_FILE" in message
