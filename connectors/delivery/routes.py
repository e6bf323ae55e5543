"""Where each action goes: `--url` (everything to one endpoint) or a routing file, whose
routes are tried in order (the first whose `match` fits the action wins), then `default`.

    routes:
      - match: {type: notification, template: winback_care}
        url: https://sms.example.com/hooks/churnguard
      - match: {type: task}
        url: https://crm.example.com/api/tasks
        headers: {X-Tenant: shop-eu}
      - match: {type: profile_update}
        skip: true        # read from Kafka by the CRM: acknowledged, not sent
    default: https://hooks.example.com/churnguard

An action no route fits, without a default, is dead-lettered (`no_route`): never dropped."""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from churnguard.errors import UserError
from churnguard.rules.yaml_file import YamlFileError, format_loc, read_yaml_file

ActionType = Literal["notification", "task", "coupon", "profile_update"]
# Not in a URL, a header value or an id that goes into one (aiohttp would refuse the request).
_CONTROL = re.compile(r"[\x00-\x20\x7f]")
_VALUE_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # a header value may hold tabs


def _header_value(value: str) -> str:
    if _VALUE_CONTROL.search(value):
        raise ValueError("a header value must not contain line breaks or control characters")
    return value


# Headers deliver sets itself: a route cannot replace them.
_OWN_HEADERS = frozenset({"content-type", "idempotency-key", "x-churnguard-signature",
                          "content-length", "host"})


def _http_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise ValueError("must be an http:// or https:// URL with a host")
    try:
        parts.port  # noqa: B018 (urllib checks the port only when it is read)
    except ValueError:
        raise ValueError("has an invalid port (1-65535)") from None
    if _CONTROL.search(url):
        raise ValueError("must not contain control characters or spaces")
    return url


Url = Annotated[str, Field(max_length=2000), AfterValidator(_http_url)]


def shown_url(url: str) -> str:
    """The URL without user:password and query (where tokens hide): what logs and the
    delivery DLQ say."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, "", ""))


class Match(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    type: ActionType | None = None
    # A notification's payload.template.
    template: str | None = Field(None, min_length=1, max_length=200)
    rule_id: str | None = Field(None, min_length=1, max_length=200)


class Route(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    match: Match = Match()
    url: Url | None = None
    skip: bool = False
    headers: dict[Annotated[str, Field(min_length=1, max_length=200,
                                       pattern=r"^[A-Za-z0-9-]+$")],
                  Annotated[str, Field(max_length=4000), AfterValidator(_header_value)]] = {}

    @model_validator(mode="after")
    def _url_or_skip(self) -> Route:
        if self.skip == (self.url is not None):
            raise ValueError("give a route either `url` or `skip: true`")
        own = sorted(name for name in self.headers if name.lower() in _OWN_HEADERS)
        if own:
            raise ValueError(f"headers {', '.join(own)} are set by deliver itself")
        return self

    def fits(self, action: dict[str, Any]) -> bool:
        match = self.match
        if match.type is not None and action.get("type") != match.type:
            return False
        if match.rule_id is not None and action.get("rule_id") != match.rule_id:
            return False
        if match.template is not None:
            payload = action.get("payload")
            return isinstance(payload, dict) and payload.get("template") == match.template
        return True


class RoutingFile(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    routes: list[Route] = Field([], max_length=1000)
    default: Url | None = None


@dataclass(frozen=True, slots=True)
class Router:
    routes: tuple[Route, ...]
    source: str  # "--url" or the routing file's name: what a no_route reason names

    @classmethod
    def to_url(cls, url: str) -> Router:
        try:
            route = Route(url=url)
        except ValidationError as exc:
            raise UserError(f"deliver: --url {shown_url(url)!r} "
                            f"{_first_message(exc)}") from None
        return cls((route,), "--url")

    def route(self, action: dict[str, Any]) -> Route | None:
        for route in self.routes:
            if route.fits(action):
                return route
        return None


def load_routes(path: Path) -> Router:
    """The routing file, or UserError with each problem as FILE:LINE:COL: where: what."""
    try:
        document = read_yaml_file(path)
    except YamlFileError as exc:
        raise UserError(f"deliver: {exc}") from None
    try:
        parsed = RoutingFile.model_validate(document.data)
    except ValidationError as exc:
        problems = []
        for error in exc.errors(include_url=False, include_input=False)[:10]:
            # ("[key]": pydantic's mark of a dict key that is itself wrong)
            loc = tuple(p for p in error["loc"] if isinstance(p, str | int) and p != "[key]")
            unknown = error["type"] == "extra_forbidden" or len(loc) < len(error["loc"])
            message = (_unknown(str(loc[-1]), error["loc"]) if error["type"] == "extra_forbidden"
                       else str(error["msg"]).removeprefix("Value error, "))
            where = document.where(loc, key=unknown)
            problems.append(f"{where}: {format_loc(loc)}: {message}" if loc
                            else f"{where}: {message}")
        raise UserError("deliver: invalid routing file: " + "; ".join(problems)
                        + "; see docs/deliver.md") from None
    routes = [*parsed.routes]
    if parsed.default is not None:
        routes.append(Route(url=parsed.default))
    if not routes:
        raise UserError(f"deliver: {path} routes nothing: give `routes` or a `default` URL "
                        "(docs/deliver.md)")
    return Router(tuple(routes), str(path))


def _unknown(name: str, loc: tuple[Any, ...]) -> str:
    known = {"match": list(Match.model_fields)}.get(str(loc[-2]) if len(loc) > 1 else "")
    if known is None:
        known = list(Route.model_fields) if len(loc) > 2 else list(RoutingFile.model_fields)
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"{name!r} is not a known key{hint}; they are {', '.join(known)}"


def _first_message(exc: ValidationError) -> str:
    return str(exc.errors(include_url=False)[0]["msg"]).removeprefix("Value error, ")
