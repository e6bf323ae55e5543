"""The worker's endpoints for the business: `/kpis`, `/feedback`, `/segments` and
`/customers/{id}`, and `/insights` (the page, streams/insights_page.py).

Every worker holds the aggregates of the partitions it owns (agents/insights.py, the census
of churnguard/census.py); a request to any worker is answered for all partitions: it sums
its own with those of the other members of the group, asked over `/insights/local` at the
URLs faust's partition assignor shares with the assignment (each worker's `canonical_url`,
set to its web server's address when it listens, streams/worker.py). A customer's 360 view
is read from the owning worker's store: another worker forwards the request to the owner
(faust's table routing: the assignor knows which URL holds each changelog partition).

Figures are of whole partitions only: a partition still being read (taken over, restoring)
or whose worker did not answer is left out and counted in `pending_partitions`, with
`partial: true` — never a silently smaller number."""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import aiohttp
import orjson
import structlog
from aiohttp import web
from aiokafka.partitioner import DefaultPartitioner

from agents.insights import WorkerInsights
from churnguard.access_tokens import AccessToken
from churnguard.audit import AuditEntry
from churnguard.census import CensusTotals
from churnguard.core.clock import DAY, day_number, parse_rfc3339
from churnguard.core.customer_view import customer_view
from churnguard.core.feedback import FeedbackAggregates
from churnguard.core.feedback import report as feedback_report
from churnguard.core.kpis import GROUP_BY, SLICE_GROUPS, GroupBy, KpiSums, report_of, sums
from churnguard.core.processor import Engine
from churnguard.core.state import CustomerState
from churnguard.core.validation import EARLIEST_VALID
from churnguard.errors import UserError
from churnguard.forget import clean_reason, erasure_record
from churnguard.http_access import Access, Handler, Refusal, audited_path, token_of
from churnguard.kpi_report import kpis_csv
from streams import insights_page
from streams.audit_log import AuditLog, AuditUnavailable, Send
from tables.state_store import TableBatchWriter

log = structlog.get_logger(__name__)

PEER_TIMEOUT_S = 2.0
ROUTED = "X-Churnguard-Routed"  # set on a forwarded request: the receiver never forwards
_DURATION = re.compile(r"(\d{1,100})([dh])")
_UNIT = {"d": DAY, "h": 3600.0}
_CUSTOMER_ID = re.compile(r"[^\x00-\x1f]{1,200}")  # the contract's Id (schemas/events.py)
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
LATEST = datetime(2200, 1, 1, tzinfo=UTC).timestamp()


_PARTITIONER = DefaultPartitioner()


def partition_of(key: bytes, partitions: int) -> int:
    """A customer's partition: the contract's partitioner (Kafka's default, murmur2)."""
    every = list(range(partitions))
    return int(_PARTITIONER(key, every, every))


class BadRequest(ValueError):
    """A query parameter the request got wrong: its message says which and how to fix it."""


class Forbidden(Exception):
    """What the request's token may not see (403): its message says what it may."""


class InsightsViews:
    def __init__(
        self,
        *,
        insights: WorkerInsights,
        census: Callable[[], CensusTotals],
        owned: Callable[[], set[int]],
        engine: Callable[[], Engine],
        writer: TableBatchWriter,
        partitions: int,
        distribution: Callable[[], dict[str, list[int]]],
        own_url: Callable[[], str],
        recovering: Callable[[], bool] = lambda: False,
        now: Callable[[], float] = time.time,
        audit: AuditLog | None = None,
        send_input: Send | None = None,
    ) -> None:
        self.recovering = recovering
        self.audit = audit
        # Produces a record to the combined input topic (an erasure), keyed by customer.
        self.send_input = send_input
        self.insights = insights
        self.census = census
        self.owned = owned
        self.engine = engine
        self.writer = writer
        self.partitions = partitions
        self.distribution = distribution
        self.own_url = own_url
        self.now = now
        self._session: aiohttp.ClientSession | None = None

    def routes(self) -> list[tuple[str, str, Handler, Access]]:
        """(method, path, handler, access): the page's shell is open (a login form and its
        script, no data); what it reads needs a token (churnguard/http_access.py)."""
        return [("GET", "/insights", insights_page.page, "open"),
                ("GET", "/kpis", self.kpis, "viewer"),
                ("GET", "/feedback", self.feedback, "viewer"),
                ("GET", "/segments", self.segments, "viewer"),
                ("GET", "/customers/{customer_id}", self.customer, "agent"),
                ("POST", "/customers/{customer_id}/forget", self.forget, "admin"),
                ("GET", "/insights/local", self.local, "viewer")]

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- endpoints ---------------------------------------------------------------------------

    async def kpis(self, request: web.Request) -> web.Response:
        try:
            since, until = self._period(request)
            group_by = _group_by(request.query.get("group_by"))
            rule = request.query.get("rule") or None
            as_csv = _format(request.query.get("format"))
            manager = _slice(request, group_by)
        except BadRequest as exc:
            return _error(str(exc), 400)
        except Forbidden as exc:
            return self._forbidden(request, str(exc))
        as_of = self.now()
        question = _Question("kpis", since, until, rule, group_by, as_of, manager)
        gathered = await self._gather(question, request)
        within = None if manager is None else ("account_manager", manager)
        result = report_of(gathered.kpis, self.engine().pack.kpis, since=since, until=until,
                           group_by=group_by, rule=rule, as_of=as_of, within=within)
        result.update(gathered.coverage())
        if as_csv:
            return web.Response(text=kpis_csv(result), content_type="text/csv",
                                charset="utf-8", headers={
                                    "Content-Disposition": 'attachment; filename="kpis.csv"'})
        return _json(result)

    async def feedback(self, request: web.Request) -> web.Response:
        try:
            since, until = self._period(request)
            _every_customer(request)
        except BadRequest as exc:
            return _error(str(exc), 400)
        except Forbidden as exc:
            return self._forbidden(request, str(exc))
        gathered = await self._gather(_Question("feedback", since, until), request)
        result = feedback_report(gathered.feedback, since=since, until=until)
        result.update(gathered.coverage())
        return _json(result)

    async def segments(self, request: web.Request) -> web.Response:
        try:
            _every_customer(request)
        except Forbidden as exc:
            return self._forbidden(request, str(exc))
        gathered = await self._gather(_Question("segments"), request)
        return _json({"segments": dict(sorted(gathered.segments.items())),
                      "bands": dict(gathered.bands), **gathered.coverage()})

    async def customer(self, request: web.Request) -> web.Response:
        customer_id = request.match_info["customer_id"]
        if not _CUSTOMER_ID.fullmatch(customer_id):
            return _error("not a customer id: 1 to 200 characters, no control characters "
                          "(docs/contract.md)", 400)
        try:
            personal = _personal(request)
        except BadRequest as exc:
            return _error(str(exc), 400)
        except Forbidden as exc:
            return self._forbidden(request, str(exc))
        key = customer_id.encode()
        partition = partition_of(key, self.partitions)
        if partition not in self.owned():
            if request.headers.get(ROUTED):
                return _error(f"customer {customer_id!r}: partition {partition} is not "
                              "owned here (a rebalance is under way); try again", 503)
            return await self._forward(request, partition)
        if self.recovering():
            return _error(f"partition {partition} is being restored from its changelog; "
                          "try again in a moment", 503)
        [raw] = self.writer.get_many(partition, [key])
        token = token_of(request)
        if raw is None and token is not None and token.account_manager is not None:
            # The same answer as for another manager's customer: a scoped token does not
            # learn which ids exist outside its slice.
            return self._forbidden(request, self._not_theirs(customer_id, token))
        if raw is None:
            return _error(f"no customer {customer_id!r}: churnguard has seen no event of "
                          "theirs (ids are case-sensitive)", 404)
        state = CustomerState.from_bytes(raw)
        if token is not None and token.account_manager not in (None, state.account_manager):
            return self._forbidden(request, self._not_theirs(customer_id, token))
        view = customer_view(state, self.engine().pack, now=self.now(), personal=personal)
        view["partition"] = partition
        if self.audit is not None:
            # The view is shown only once its reading is on the trail.
            try:
                await self.audit.write(AuditEntry(
                    "customer_viewed", None if token is None else token.name,
                    self.audit.clock(), customer_id=customer_id, personal=personal))
            except AuditUnavailable:
                return _error("the audit trail could not be written, so the view is not "
                              "shown; try again in a moment", 503)
        return _json(view)

    async def forget(self, request: web.Request) -> web.Response:
        """POST /customers/{id}/forget {"reason": "…"}: the erasure goes to the customer's
        input partition (churnguard/forget.py), then on the audit trail; 202."""
        if self.send_input is None or self.audit is None:
            return _error("erasure is not available on this worker", 503)
        try:
            body = orjson.loads(await request.read())
            reason = clean_reason(str(body["reason"]) if isinstance(body, dict)
                                  and "reason" in body else "")
            key, value = erasure_record(request.match_info["customer_id"], self.audit.clock())
        except orjson.JSONDecodeError:
            return _error('the body must be JSON: {"reason": "why, for the audit trail"}', 400)
        except UserError as exc:
            return _error(str(exc).removeprefix("forget: "), 400)
        token = token_of(request)
        try:
            await self.send_input(key, value)
        except Exception as exc:
            log.warning("erasure_not_sent", error=str(exc) or type(exc).__name__)
            return _error("the erasure could not be written to the input topic; try again",
                          503)
        try:
            await self.audit.write(AuditEntry(
                "customer_forgotten", None if token is None else token.name,
                self.audit.clock(), customer_id=key.decode(), message=reason))
        except AuditUnavailable:
            return _error("the erasure is sent, but the audit trail could not be written; "
                          "send the same request again (an erasure is applied once more, "
                          "harmlessly) to record it", 503)
        return _json({"customer_id": key.decode(), "erasure": orjson.loads(value)["event_id"],
                      "status": "sent: the owning worker deletes the customer's state"}, 202)

    async def local(self, request: web.Request) -> web.Response:
        """This worker's part of a gathered answer (the other workers ask for it)."""
        try:
            question = _Question.from_query(request.query, self.now())
            # What the caller's token may see, whatever the question says.
            if question.what == "kpis":
                asked = _slice(request, question.group_by)
                if question.account_manager != asked:
                    raise Forbidden(f"account_manager={question.account_manager!r} is not "
                                    "this token's slice")
            else:
                _every_customer(request)
        except (BadRequest, KeyError, ValueError) as exc:
            return _error(f"not a question this version asks: {exc}", 400)
        except Forbidden as exc:
            return self._forbidden(request, str(exc))
        return _json(self._local(question))

    # -- gathering ---------------------------------------------------------------------------

    def _local(self, question: _Question) -> dict[str, Any]:
        """This worker's part: its census, and the partitions read with their sums (KPIs:
        already summed for the question, so the answer is the size of the report, not of
        the cells) or their feedback counts."""
        owned = self.owned()
        census = self.census()
        if question.what == "segments":
            # Only here: the census counts every customer, which a KPI or feedback question
            # (a scoped token's slice) must not carry.
            return {"census": {"counted": list(census.counted), "bands": census.band,
                               "segments": census.segment}}
        answer: dict[str, Any] = {}
        if question.what == "kpis":
            total, answer["read"] = self.insights.kpis()
            within = (None if question.account_manager is None
                      else ("account_manager", question.account_manager))
            answer["kpis"] = sums(
                [total], self.engine().pack.kpis,
                since=question.since, until=question.until, group_by=question.group_by,
                rule=question.rule, as_of=question.as_of, within=within).to_json()
        else:
            ready, pending = self.insights.of(owned)
            answer["read"] = sorted(set(owned) - set(pending))
            first, last = _days(question.since, question.until)
            answer["feedback"] = _dump_feedback([p.slices.feedback for p in ready], first, last)
        return answer

    async def _gather(self, question: _Question, request: web.Request) -> _Gathered:
        gathered = _Gathered(self.partitions, question.what)
        gathered.add(self._local(question))
        peers = [url for url in self.distribution() if url != self.own_url()]
        if peers:
            query = question.to_query()
            # The caller's own token: each worker checks what it may see.
            headers = _credentials(request)
            answers = await asyncio.gather(*(self._ask(url, query, headers)
                                             for url in peers))
            for url, answer in zip(peers, answers, strict=True):
                if answer is None:
                    gathered.unreachable.append(url)
                    continue
                try:
                    gathered.add(answer)
                except (KeyError, TypeError, ValueError) as exc:
                    # Not the shape this version answers: that worker counts as not having
                    # answered (its partitions are pending), not as a 500 here.
                    log.warning("insights_peer_answer_unreadable", url=url,
                                error=type(exc).__name__)
                    gathered.unreachable.append(url)
        return gathered

    async def _ask(self, url: str, query: dict[str, str],
                   headers: dict[str, str]) -> dict[str, Any] | None:
        try:
            async with self._client().get(f"{url.rstrip('/')}/insights/local",
                                          params=query, headers=headers) as response:
                if response.status != 200:
                    raise aiohttp.ClientError(f"HTTP {response.status}")
                answer: dict[str, Any] = orjson.loads(await response.read())
                return answer
        except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
            log.warning("insights_peer_unreachable", url=url, error=str(exc) or
                        type(exc).__name__)
            return None

    async def _forward(self, request: web.Request, partition: int) -> web.Response:
        owner = next((url for url, parts in self.distribution().items()
                      if partition in parts), None)
        if owner is None or owner == self.own_url():
            return _error(f"partition {partition} has no owner right now (a rebalance is "
                          "under way); try again", 503)
        try:
            async with self._client().get(f"{owner.rstrip('/')}{request.rel_url}",
                                          headers={ROUTED: "1", **_credentials(request)}
                                          ) as response:
                body = await response.read()
                # The owner's answer as it gave it: never cached (a 360 view), and a 401
                # still says how to authenticate.
                headers = {"Cache-Control": "no-store"}
                if "WWW-Authenticate" in response.headers:
                    headers["WWW-Authenticate"] = response.headers["WWW-Authenticate"]
                return web.Response(body=body, status=response.status,
                                    content_type="application/json", headers=headers)
        except (TimeoutError, aiohttp.ClientError) as exc:
            log.warning("customer_owner_unreachable", url=owner, partition=partition,
                        error=str(exc) or type(exc).__name__)
            return _error(f"the worker owning partition {partition} ({owner}) did not "
                          "answer; try again", 503)

    @staticmethod
    def _not_theirs(customer_id: str, token: AccessToken) -> str:
        return (f"customer {customer_id!r} is not one of account manager "
                f"{token.account_manager!r}'s, or unknown (token {token.name!r} sees only "
                "theirs)")

    def _forbidden(self, request: web.Request, message: str) -> web.Response:
        """403 for what the token may not see (its role passed: the data refused it)."""
        if self.audit is not None:
            token = token_of(request)
            self.audit.refused(Refusal(403, request.method, audited_path(request),
                                       None if token is None else token.name,
                                       request.remote))
        return _error(message, 403)

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=PEER_TIMEOUT_S))
        return self._session


    def _period(self, request: web.Request) -> tuple[float | None, float | None]:
        now = self.now()
        since = _moment("since", request.query.get("since"), now)
        until = _moment("until", request.query.get("until"), now)
        if since is not None and until is not None and until <= since:
            raise BadRequest("until must be after since")
        return since, until


@dataclass(frozen=True, slots=True)
class _Question:
    """What a gathered answer sums: the same for this worker's part and the others'."""

    what: Literal["kpis", "feedback", "segments"]
    since: float | None = None
    until: float | None = None
    rule: str | None = None
    group_by: GroupBy | None = None
    as_of: float = 0.0
    account_manager: str | None = None  # one account manager's slice of the KPIs

    def to_query(self) -> dict[str, str]:
        query = {"what": self.what, "as_of": repr(self.as_of)}
        for name, value in (("since", self.since), ("until", self.until)):
            if value is not None:
                query[name] = repr(value)
        if self.rule is not None:
            query["rule"] = self.rule
        if self.group_by is not None:
            query["group_by"] = self.group_by
        if self.account_manager is not None:
            query["account_manager"] = self.account_manager
        return query

    @classmethod
    def from_query(cls, query: Mapping[str, str], now: float) -> _Question:
        what = query["what"]
        if what not in ("kpis", "feedback", "segments"):
            raise ValueError(f"what={what!r}")
        return cls(what, _moment("since", query.get("since"), now),  # type: ignore[arg-type]
                   _moment("until", query.get("until"), now), query.get("rule") or None,
                   _group_by(query.get("group_by")), _finite(query.get("as_of"), now),
                   query.get("account_manager") or None)


class _Gathered:
    """The sums of the workers' answers, by partition read."""

    def __init__(self, partitions: int, what: str) -> None:
        self.partitions = partitions
        self.what = what
        self.kpis = KpiSums()
        self.feedback: list[FeedbackAggregates] = []
        self.read: set[int] = set()
        self.counted: set[int] = set()
        self.bands: Counter[str] = Counter()
        self.segments: Counter[str] = Counter()
        self.unreachable: list[str] = []

    def add(self, answer: dict[str, Any]) -> None:
        """Add one worker's answer; an answer of another shape raises before anything of it
        is added. A partition answered by two workers (mid-rebalance) counts once: an
        overlapping answer is left out (the figures say partial), not added twice."""
        if self.what == "segments":
            census = answer["census"]
            counted = set(census["counted"])
            bands, segments = Counter(census["bands"]), Counter(census["segments"])
            if not counted & self.counted:
                self.counted |= counted
                self.bands.update(bands)
                self.segments.update(segments)
            return
        read = set(answer["read"])
        if self.what == "kpis":
            kpis = KpiSums.from_json(answer["kpis"])
            if not read & self.read:
                self.read |= read
                self.kpis.merge(kpis)
        else:
            feedback = _load_feedback(answer["feedback"])
            if not read & self.read:
                self.read |= read
                self.feedback.append(feedback)

    def coverage(self) -> dict[str, Any]:
        covered = self.counted if self.what == "segments" else self.read
        pending = self.partitions - len(covered & set(range(self.partitions)))
        return {"partial": pending > 0, "pending_partitions": pending,
                "unreachable_workers": self.unreachable}


# -- the wire form of aggregates (between workers) ---------------------------------------------


def _days(since: float | None, until: float | None) -> tuple[int | None, int | None]:
    return (None if since is None else day_number(since),
            None if until is None else day_number(until - 0.001))


def _within(day: int, first: int | None, last: int | None) -> bool:
    return (first is None or day >= first) and (last is None or day <= last)


def _dump_feedback(parts: Sequence[FeedbackAggregates], first: int | None,
                   last: int | None) -> dict[str, Any]:
    def rows(cells: Iterable[tuple[tuple[Any, ...], Any]]) -> list[list[Any]]:
        return [[*place, value] for place, value in cells if _within(place[0], first, last)]

    return {"tickets": [r for p in parts for r in rows(p.tickets.items())],
            "resolution": [[*r[:-1], {str(m): n for m, n in r[-1].items()}]
                           for p in parts for r in rows(p.resolution.items())],
            "comments": [r for p in parts for r in rows(p.comments.items())],
            "terms": [r for p in parts for r in rows(p.terms.items())]}


def _load_feedback(data: dict[str, Any]) -> FeedbackAggregates:
    found = FeedbackAggregates()
    for day, category, counts in data["tickets"]:
        found.tickets.setdefault((day, category), Counter()).update(counts)
    for day, category, priority, histogram in data["resolution"]:
        found.resolution.setdefault((day, category, priority), Counter()).update(
            {int(m): n for m, n in histogram.items()})
    for day, category, low, n in data["comments"]:
        place = (day, category, bool(low))
        found.comments[place] = found.comments.get(place, 0) + n
    for day, category, low, counts in data["terms"]:
        found.terms.setdefault((day, category, bool(low)), Counter()).update(counts)
    return found


# -- parameters --------------------------------------------------------------------------------


def _moment(name: str, text: str | None, now: float) -> float | None:
    """RFC 3339, a date (its midnight, UTC), a duration before now (90d, 12h) or epoch
    seconds (what workers send each other)."""
    if text is None or not text.strip():
        return None
    value = text.strip()
    moment: float | None = None
    matched = _DURATION.fullmatch(value)
    if matched is not None:
        # (Capped before it is multiplied: a float would overflow.)
        moment = now - min(int(matched.group(1)), 10**12) * _UNIT[matched.group(2)]
    elif _DATE.fullmatch(value):
        with contextlib.suppress(ValueError):
            moment = datetime.fromisoformat(value).replace(tzinfo=UTC).timestamp()
    else:
        with contextlib.suppress(ValueError):
            moment = float(value)
        if moment is None:
            with contextlib.suppress(ValueError):
                moment = parse_rfc3339(value)
    if moment is not None:
        # Finite and in the years events can have: outside, a bound of "everything".
        if not math.isfinite(moment):
            moment = None
        else:
            return min(max(moment, EARLIEST_VALID), LATEST)
    raise BadRequest(f"{name}={text!r} is not a time: use a date (2026-11-01), an RFC 3339 "
                     "timestamp with its offset (2026-11-01T00:00:00Z) or a duration before "
                     "now (90d, 12h)")


def _finite(text: str | None, default: float) -> float:
    value = default if text is None else float(text)
    if not math.isfinite(value):
        raise ValueError(f"as_of={text!r}")
    return value


def _group_by(text: str | None) -> GroupBy | None:
    if not text:
        return None
    for choice in GROUP_BY:
        if text == choice:
            return choice
    raise BadRequest(f"group_by={text!r} is not a dimension: use one of {', '.join(GROUP_BY)}")


def _slice(request: web.Request, group_by: GroupBy | None) -> str | None:
    """The account manager whose slice of the KPIs is asked (`account_manager=`) or the only
    one the token sees; None: every customer's."""
    asked = request.query.get("account_manager") or None
    token = token_of(request)
    scoped = None if token is None else token.account_manager
    if token is not None and scoped is not None and asked not in (None, scoped):
        raise Forbidden(f"token {token.name!r} sees account manager {scoped!r}'s slice only")
    manager = scoped or asked
    if manager is not None and group_by is not None and group_by not in (
            *SLICE_GROUPS, "account_manager"):
        message = (f"group_by={group_by} within one account manager's slice: the KPI cells "
                   f"are per dimension, so a slice groups by {', '.join(SLICE_GROUPS)} only")
        if scoped is not None:
            raise Forbidden(message)
        raise BadRequest(message)
    return manager


def _every_customer(request: web.Request) -> None:
    """Figures over every customer: not for a token that sees one account manager's."""
    token = token_of(request)
    if token is not None and token.account_manager is not None:
        raise Forbidden(f"token {token.name!r} sees account manager "
                        f"{token.account_manager!r}'s customers only, and these figures "
                        "count every customer: ask /kpis (their slice)")


def _personal(request: web.Request) -> bool:
    """`?personal=true`: the personal fields kept (an admin's token only)."""
    text = request.query.get("personal", "false")
    if text not in ("true", "false"):
        raise BadRequest(f"personal={text!r}: use true or false")
    if text == "false":
        return False
    token = token_of(request)
    if token is None or not token.allows("admin"):
        raise Forbidden("personal=true needs a token with the role 'admin'")
    return True


def _credentials(request: web.Request) -> dict[str, str]:
    authorization = request.headers.get("Authorization")
    return {} if authorization is None else {"Authorization": authorization}


def _format(text: str | None) -> bool:
    if text in (None, "", "json"):
        return False
    if text == "csv":
        return True
    raise BadRequest(f"format={text!r}: use json (the default) or csv")


def _json(body: dict[str, Any], status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status,
                        content_type="application/json", headers={"Cache-Control": "no-store"})


def _error(message: str, status: int) -> web.Response:
    return _json({"error": message}, status)
