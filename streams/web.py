"""The worker's HTTP endpoints for SREs and probes: `/metrics` (Prometheus), `/health`
(alive, event loop responsive), `/ready` (partitions assigned, table recovered,
consuming) and `/status` (each owned partition, Burrow-style). Its own small aiohttp
server, started with the worker and up during table recovery too (faust's web server only
starts after recovery: a liveness probe would then kill a worker restoring a large table).
Every route is added with the access it needs (churnguard/http_access.py, docs/security.md)."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry

from churnguard.http_access import Access, AccessPolicy, Handler
from churnguard.http_listen import listen, metrics_response
from streams.audit_log import AuditLog
from streams.dashboard import Dashboard
from streams.insights import InsightsViews

log = structlog.get_logger(__name__)

# The loop is unresponsive when its heartbeat (a 1 s timer) is older than this.
STALE_LOOP_S = 10.0


@dataclass(frozen=True, slots=True)
class Readiness:
    ready: bool
    partitions: int
    recovering: bool
    consuming: bool
    broker_reachable: bool


class Heartbeat:
    """Beaten by a 1 s timer on the worker's loop: /health reads how fresh it is."""

    def __init__(self) -> None:
        self.last = time.monotonic()

    def beat(self) -> None:
        self.last = time.monotonic()

    def age(self) -> float:
        return time.monotonic() - self.last


class WorkerWeb:
    def __init__(self, registry: CollectorRegistry, heartbeat: Heartbeat,
                 readiness: Callable[[], Readiness],
                 status: Callable[[], dict[str, Any]], *, host: str, port: int,
                 policy: AccessPolicy,
                 dashboard: Dashboard | None = None,
                 insights: InsightsViews | None = None,
                 audit: AuditLog | None = None,
                 advertised_host: str | None = None) -> None:
        self.registry = registry
        self.heartbeat = heartbeat
        self.readiness = readiness
        self.status = status
        self.host = host
        self.port = port
        self.policy = policy
        self.audit = audit
        # How the other workers reach this one (the 360 view's routing, the KPI sums).
        wildcard = host in ("", "0.0.0.0", "::")
        self.advertised_host = advertised_host or (socket.gethostname() if wildcard else host)
        self.url = f"http://{self.advertised_host}:{port}"
        self._runner: web.AppRunner | None = None
        app = web.Application(middlewares=[policy.middleware])
        routes: list[tuple[str, str, Handler, Access]] = [
            ("GET", "/metrics", self._metrics, "probe"),
            ("GET", "/health", self._health, "probe"),
            ("GET", "/ready", self._ready, "probe"),
            ("GET", "/status", self._status, "viewer"),
        ]
        if dashboard is not None:
            routes += [("GET", "/dashboard", dashboard.page, "open"),
                       ("GET", "/dashboard/data", dashboard.data, "viewer")]
        self.insights = insights
        if insights is not None:
            routes += insights.routes()
        for method, path, handler, access in routes:
            policy.add(app, method, path, handler, access)
        # "GET /kpis": "viewer", … (logged at start: what each endpoint needs).
        self.endpoints = {f"{method} {path}": access for method, path, _, access in routes}
        self.app = app

    async def start(self) -> int:
        """Listen; returns the port (0 asks the system for a free one)."""
        self._runner, port = await listen(self.app, self.host, self.port,
                                          setting="CHURNGUARD_WEB_PORT")
        self.url = f"http://{self.advertised_host}:{port}"
        log.info("http_listening", host=self.host, port=port, url=self.url,
                 endpoints=self.endpoints, tokens=len(self.policy.tokens),
                 open_probes=self.policy.open_probes)
        if not self.policy.tokens:
            log.warning("http_no_tokens", message="no access token is configured: every "
                        "endpoint but the open probes answers 401; see docs/security.md")
        return port

    async def stop(self) -> None:
        if self.insights is not None:
            await self.insights.close()
        if self.audit is not None:
            await self.audit.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _metrics(self, request: web.Request) -> web.Response:
        return metrics_response(self.registry)

    async def _health(self, request: web.Request) -> web.Response:
        age = self.heartbeat.age()
        healthy = age < STALE_LOOP_S
        return _json({"status": "ok" if healthy else "event loop stalled",
                      "heartbeat_age_s": round(age, 3)}, 200 if healthy else 503)

    async def _ready(self, request: web.Request) -> web.Response:
        state = self.readiness()
        return _json({"ready": state.ready, "partitions": state.partitions,
                      "recovering": state.recovering, "consuming": state.consuming,
                      "broker_reachable": state.broker_reachable},
                     200 if state.ready else 503)


    async def _status(self, request: web.Request) -> web.Response:
        return _json(self.status(), 200)


def _json(body: dict[str, object], status: int) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status,
                        content_type="application/json")
