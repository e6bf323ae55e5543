"""Who may call which endpoint of a live worker (docs/security.md): every route the worker
registers (its http_listening line lists them with their access) is in this test's table,
and each answers 401, 403 or 200 to no token, a wrong token and each role's token as the
table says. An agent scoped to one account manager sees only that manager's customers and
their slice of the KPIs; personal fields are an admin's, and only when asked for."""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import quote

import orjson
import pytest

from churnguard.audit import AuditEntry, read_audit
from churnguard.rules.export import export_pack
from tests.integration.pipeline_support import TOKENS, Pipeline, http_get, wait_for
from tests.unit.test_kpis import PACK, UNTIL, A, B, scenario

pytestmark = pytest.mark.integration

# What each route needs: a route the worker adds that is missing here fails the test.
ROUTES = {
    "GET /metrics": "probe", "GET /health": "probe", "GET /ready": "probe",
    "GET /status": "viewer",
    "GET /dashboard": "open", "GET /dashboard/data": "viewer",
    "GET /insights": "open",
    "GET /kpis": "viewer", "GET /feedback": "viewer", "GET /segments": "viewer",
    "GET /insights/local": "viewer",
    "GET /customers/{customer_id}": "agent",
    "POST /customers/{customer_id}/forget": "admin",
}
FORGET = b'{"reason": "the access walk"}'

# A request of each route that its holders get a 200 to (A is am-alice's customer).
REQUESTS = {"GET /customers/{customer_id}": f"/customers/{quote(A)}",
            "GET /insights/local": "/insights/local?what=segments",
            # (a customer never seen: erasing it changes nothing the test reads)
            "POST /customers/{customer_id}/forget": "/customers/walk-target/forget"}
# Figures over every customer: refused to a token scoped to one account manager.
EVERY_CUSTOMER = {"GET /feedback", "GET /segments", "GET /insights/local"}
WHO = (None, "forged", *TOKENS)  # no token, a token nobody configured, each test token


def _expected(route: str, who: str | None) -> int:
    access = ROUTES[route]
    if access in ("open", "probe"):  # the probes are left open by default
        return 200
    if who is None or who == "forged":
        return 401
    if not TOKENS[who][1].allows(access):  # type: ignore[arg-type]
        return 403
    if TOKENS[who][1].account_manager is not None and route in EVERY_CUSTOMER:
        return 403
    return 202 if route.startswith("POST") else 200


def _get(port: int, path: str, who: str | None, body: bytes | None = None
         ) -> tuple[int, Any]:
    if who == "forged":  # a well-formed token no one configured
        status, answer = http_get(port, path, bearer="cg_" + "x" * 43, body=body)
    else:
        status, answer = http_get(port, path, who, body=body)
    try:
        return status, orjson.loads(answer)
    except orjson.JSONDecodeError:
        return status, answer


def _listed_routes(pipeline: Pipeline) -> dict[str, str]:
    for line in pipeline.log().splitlines():
        if '"http_listening"' in line:
            endpoints: dict[str, str] = orjson.loads(line)["endpoints"]
            return endpoints
    raise AssertionError("the worker logged no http_listening")


def test_every_route_answers_each_role_as_the_table_says(pipeline_factory: Any) -> None:
    story = scenario()
    pipeline: Pipeline = pipeline_factory(UNTIL)
    rules = pipeline.tmp / "pack.yaml"
    rules.write_text(export_pack(PACK.spec))
    pipeline.settings = pipeline.settings.model_copy(update={"rules_file": rules})
    pipeline.start()
    for event in sorted(story.events, key=lambda e: e["occurred_at"]):
        pipeline.send(pipeline.topics.events, event)
    pipeline.flush()
    port = pipeline.http_port()
    assert _listed_routes(pipeline) == ROUTES

    def settled() -> bool:
        if _get(port, "/ready", None)[0] != 200:  # (its first broker probe done)
            return False
        status, kpis = _get(port, "/kpis", "admin")
        return status == 200 and not kpis["partial"] and bool(
            kpis["total"]["episodes"]["treated"]["started"]) and all(
            _get(port, f"/customers/{quote(c)}", "admin")[0] == 200 for c in (A, B))

    wait_for("ready, every partition read and both customers stored", settled)
    walk_started = time.time()  # the audit entries of what follows are after this

    found = {(route, who): _get(port, REQUESTS.get(route, route.split(" ", 1)[1]), who,
                                FORGET if route.startswith("POST") else None)
             for route in ROUTES for who in WHO}
    statuses = {key: status for key, (status, _) in found.items()}
    assert statuses == {(route, who): _expected(route, who) for route in ROUTES
                        for who in WHO}
    for (route, who), (status, body) in found.items():
        if status in (401, 403):
            assert isinstance(body, dict), (route, who)
            assert body["error"] in ("unauthorized", "forbidden") or status == 403, body
            assert all(token not in orjson.dumps(body).decode()
                       for token, _ in TOKENS.values()), (route, who)

    # Alice's token: her customer, not Bob's; her slice of the KPIs, the same figures as
    # an admin's drill-down by account manager shows for her.
    assert _get(port, f"/customers/{quote(A)}", "alice")[0] == 200
    status, refused = _get(port, f"/customers/{quote(B)}", "alice")
    assert status == 403
    assert "am-alice" in refused["error"]
    _, by_manager = _get(port, "/kpis?group_by=account_manager", "admin")
    groups = {g["group"]: g for g in by_manager["groups"]}
    status, hers = _get(port, "/kpis", "alice")
    assert status == 200
    assert hers["within"] == {"account_manager": "am-alice"}
    assert hers["total"] == {k: v for k, v in groups["am-alice"].items() if k != "group"}
    assert hers["total"] != by_manager["total"]
    _, by_rule = _get(port, "/kpis?group_by=rule", "alice")
    assert sum(g["episodes"]["treated"]["started"] for g in by_rule["groups"]) == (
        hers["total"]["episodes"]["treated"]["started"])
    for refused_path in ("/kpis?group_by=tier", "/kpis?account_manager=am-bob"):
        status, body = _get(port, refused_path, "alice")
        assert status == 403, refused_path
        assert "am-alice" in body["error"] or "slice" in body["error"], body
    # Her unknown id is answered as another manager's customer (she learns no ids); her
    # slice's part from a worker carries no census of every customer.
    status, unknown = _get(port, "/customers/nobody-at-all", "alice")
    assert status == 403
    assert "or unknown" in unknown["error"]
    status, part = _get(port, "/insights/local?what=kpis&account_manager=am-alice", "alice")
    assert status == 200
    assert "census" not in part
    assert "census" in _get(port, "/insights/local?what=segments", "viewer")[1]
    # Absurd parameters are a 400, not a 500.
    for absurd in (f"/kpis?since={'9' * 400}d", f"/kpis?since={'9' * 5000}d",
                   "/insights/local?what=kpis&as_of=nan"):
        assert _get(port, absurd, "viewer")[0] == 400, absurd[:40]
    # Anyone who sees every customer may ask for one manager's slice.
    _, bobs = _get(port, "/kpis?account_manager=am-bob", "viewer")
    assert bobs["total"] == {k: v for k, v in groups["am-bob"].items() if k != "group"}
    assert _get(port, "/kpis?account_manager=am-bob&group_by=tier", "viewer")[0] == 400

    # Personal fields: an admin's, when asked for.
    status, plain = _get(port, f"/customers/{quote(A)}", "admin")
    assert "personal" not in plain
    status, personal = _get(port, f"/customers/{quote(A)}?personal=true", "admin")
    assert status == 200
    assert set(personal["personal"]) == {"birthday"}
    assert _get(port, f"/customers/{quote(A)}?personal=true", "agent")[0] == 403
    assert _get(port, f"/customers/{quote(A)}?personal=maybe", "admin")[0] == 400

    # The audit trail: every 360 view shown (who, whether personal), every refusal (the
    # token's name when it was a configured one; never a token).
    viewed: list[tuple[str, str, bool]] = []
    for (route, who), (status, _) in found.items():
        if route == "GET /customers/{customer_id}" and status == 200:
            viewed.append((f"test-{who}", A, False))
    viewed += [("test-alice", A, False), ("test-admin", A, False), ("test-admin", A, True)]
    refused = sorted((f"test-{who}" if who not in (None, "forged") else "", status,
                      REQUESTS.get(route, route.split(" ", 1)[1]).split("?")[0])
                     for (route, who), status in statuses.items() if status in (401, 403))
    refused += [("test-alice", 403, f"/customers/{B}"), ("test-alice", 403, "/kpis"),
                ("test-alice", 403, "/kpis"), ("test-alice", 403, "/customers/nobody-at-all"),
                ("test-agent", 403, f"/customers/{A}")]
    refused.sort()

    def trail() -> list[AuditEntry]:
        entries, unreadable = read_audit(pipeline.settings.bootstrap, pipeline.topics.audit,
                                         since=0, timeout_s=10)
        assert unreadable == 0
        return [e for e in entries if e.at >= walk_started]

    wait_for("every view and refusal on the audit trail",
             lambda: len(trail()) >= len(viewed) + len(refused))
    entries = trail()
    assert sorted((e.actor, e.customer_id, e.personal) for e in entries
                  if e.action == "customer_viewed") == sorted(viewed)
    assert sorted((e.actor or "", e.status, e.path) for e in entries
                  if e.action == "access_refused") == refused
    assert {e.remote for e in entries if e.action == "access_refused"} == {"127.0.0.1"}
    assert [(e.actor, e.customer_id, e.message) for e in entries
            if e.action == "customer_forgotten"] == [("test-admin", "walk-target",
                                                      "the access walk")]
    assert {e.action for e in entries} == {"customer_viewed", "access_refused",
                                           "customer_forgotten"}
    raw = b"".join(e.to_value() for e in entries).decode()
    assert all(token not in raw for token, _ in TOKENS.values())
