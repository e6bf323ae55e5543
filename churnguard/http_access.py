"""Who may call which HTTP endpoint: the worker's policy (`AccessPolicy`), and the one check
of a bearer token against a role (`authorize`) that the gateway's POST /v1/events uses too.

Every route is registered with the access it needs (`AccessPolicy.add`): a route added
without one is refused to everybody (403), so a new endpoint cannot be open by mistake. A
request without a configured bearer token is 401, one whose token lacks the role 403, both
with a JSON error `{"error": …, "message": …}` that never repeats the token. The token a
request was allowed with is `request[TOKEN]` for the handler (its name for the audit, its
account manager for the slice it sees).

Access levels:
- `open`: no data at all (a page's shell: its login form and script).
- `probe`: /health, /ready, /metrics: open when the probes are left open (a setting, for
  Kubernetes' probes and Prometheus' scrapers), else a `viewer`'s.
- a role of churnguard/access_tokens.py: `viewer`, `agent`, `admin`, `ingest`."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

import orjson
from aiohttp import web

from churnguard.access_tokens import AccessToken, Role, TokenRegistry

Access = Literal["open", "probe", "viewer", "agent", "admin", "ingest"]
# The request's key of the token it was allowed with.
TOKEN = web.RequestKey("churnguard.token", AccessToken)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
CHALLENGE = {"WWW-Authenticate": 'Bearer realm="churnguard"'}
MAX_AUDITED_PATH = 256


class AccessRefused(Exception):
    """A request refused for its token: 401 (none, or not a configured one) or 403 (the
    configured token `token_name`, which lacks the role)."""

    def __init__(self, status: Literal[401, 403], error: str, message: str,
                 token_name: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.error = error
        self.message = message
        self.token_name = token_name

    def refusal(self, request: web.Request) -> Refusal:
        """What the audit keeps of this refusal."""
        return Refusal(self.status, request.method, audited_path(request), self.token_name,
                       request.remote)

    def response(self) -> web.Response:
        return web.Response(
            body=orjson.dumps({"error": self.error, "message": self.message}),
            status=self.status, content_type="application/json",
            headers=CHALLENGE if self.status == 401 else None)


@dataclass(frozen=True, slots=True)
class Refusal:
    """What a refused request leaves for the audit and the counters: never the token."""

    status: int
    method: str
    path: str
    token_name: str | None
    remote: str | None


def authorize(tokens: TokenRegistry, authorization: str | None, role: Role) -> AccessToken:
    """The configured token of an `Authorization: Bearer …` header if it holds `role`."""
    token = tokens.from_header(authorization)
    if token is None:
        if not tokens:
            raise AccessRefused(
                401, "unauthorized", "no access token is configured here, so every request "
                "is refused: make one with `churnguard token new NAME --role viewer --file "
                "tokens.jsonl` and set CHURNGUARD_WEB_TOKEN_FILE (docs/security.md)")
        raise AccessRefused(401, "unauthorized", "a valid bearer token is required: "
                            "Authorization: Bearer <token>")
    if not token.allows(role):
        raise AccessRefused(
            403, "forbidden", f"token {token.name!r} ({', '.join(token.roles)}) lacks the "
            f"role {role!r} this needs", token.name)
    return token


class AccessPolicy:
    """The access of each route of one aiohttp application, and the middleware applying it."""

    def __init__(self, tokens: TokenRegistry, *, open_probes: bool,
                 on_refused: Callable[[Refusal], None] | None = None) -> None:
        self.tokens = tokens
        self.open_probes = open_probes
        self.on_refused = on_refused
        self._access: dict[web.AbstractRoute, Access] = {}

    def add(self, app: web.Application, method: str, path: str, handler: Handler,
            access: Access) -> None:
        route = app.router.add_route(method, path, handler)
        self._access[route] = access

    def routes(self) -> dict[tuple[str, str], Access]:
        """(method, path) -> access of every route registered through the policy."""
        return {(route.method, route.resource.canonical if route.resource else ""): access
                for route, access in self._access.items()}

    def required(self, access: Access) -> Role | None:
        """The role a route of this access needs; None: none."""
        if access == "open" or (access == "probe" and self.open_probes):
            return None
        return "viewer" if access == "probe" else access

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        route = request.match_info.route
        if request.match_info.http_exception is not None:
            return await handler(request)  # no such route (404, 405): aiohttp's answer
        access = self._access.get(route)
        try:
            if access is None:
                raise AccessRefused(403, "forbidden", "this endpoint has no access policy "
                                    "(a bug: every route is added with one)")
            role = self.required(access)
            if role is not None:
                request[TOKEN] = authorize(self.tokens, request.headers.get("Authorization"),
                                           role)
        except AccessRefused as refused:
            if self.on_refused is not None:
                self.on_refused(refused.refusal(request))
            return refused.response()
        return await handler(request)


def audited_path(request: web.Request) -> str:
    """The path as the client sent it (percent-encoded: no control characters a terminal
    would act on, no query string), cut short: what a refusal's audit entry keeps."""
    raw = request.rel_url.raw_path
    return raw if len(raw) <= MAX_AUDITED_PATH else raw[:MAX_AUDITED_PATH] + "…"


def token_of(request: web.Request) -> AccessToken | None:
    """The token the request was allowed with (None on an open route)."""
    return request.get(TOKEN)
