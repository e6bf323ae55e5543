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
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

import aiohttp
import orjson
import structlog
from aiohttp import web
from aiokafka.partitioner import DefaultPartitioner

from agents.insights import WorkerInsights
from churnguard.census import CensusTotals
from churnguard.core.clock import DAY, day_number, parse_rfc3339
from churnguard.core.customer_view import customer_view
from churnguard.core.feedback import FeedbackAggregates
from churnguard.core.feedback import report as feedback_report
from churnguard.core.kpis import GROUP_BY, GroupBy, KpiAggregates
from churnguard.core.kpis import report as kpi_report
from churnguard.core.processor import Engine
from churnguard.core.state import CustomerState
from churnguard.kpi_report import kpis_csv
from streams import insights_page
from tables.state_store import TableBatchWriter

log = structlog.get_logger(__name__)

PEER_TIMEOUT_S = 2.0
ROUTED = "X-Churnguard-Routed"  # set on a forwarded request: the receiver never forwards
_DURATION = re.compile(r"(\d+)([dh])")
_UNIT = {"d": DAY, "h": 3600.0}
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


_PARTITIONER = DefaultPartitioner()


def partition_of(key: bytes, partitions: int) -> int:
    """A customer's partition: the contract's partitioner (Kafka's default, murmur2)."""
    every = list(range(partitions))
    return int(_PARTITIONER(key, every, every))


class BadRequest(ValueError):
    """A query parameter the request got wrong: its message says which and how to fix it."""


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
        now: Callable[[], float] = time.time,
    ) -> None:
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

    def routes(self) -> list[tuple[str, Callable[[web.Request], Any]]]:
        return [("/insights", insights_page.page), ("/kpis", self.kpis),
                ("/feedback", self.feedback), ("/segments", self.segments),
                ("/customers/{customer_id}", self.customer),
                ("/insights/local", self.local)]

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
        except BadRequest as exc:
            return _error(str(exc), 400)
        gathered = await self._gather(since, until, rule)
        result = kpi_report(gathered.kpis, self.engine().pack.kpis, since=since, until=until,
                            group_by=group_by, rule=rule, as_of=self.now())
        result.update(gathered.coverage())
        if as_csv:
            return web.Response(text=kpis_csv(result), content_type="text/csv",
                                charset="utf-8", headers={
                                    "Content-Disposition": 'attachment; filename="kpis.csv"'})
        return _json(result)

    async def feedback(self, request: web.Request) -> web.Response:
        try:
            since, until = self._period(request)
        except BadRequest as exc:
            return _error(str(exc), 400)
        gathered = await self._gather(since, until, None)
        result = feedback_report(gathered.feedback, since=since, until=until)
        result.update(gathered.coverage())
        return _json(result)

    async def segments(self, request: web.Request) -> web.Response:
        gathered = await self._gather(None, None, None, aggregates=False)
        return _json({"segments": dict(sorted(gathered.segments.items())),
                      "bands": dict(gathered.bands), **gathered.coverage()})

    async def customer(self, request: web.Request) -> web.Response:
        customer_id = request.match_info["customer_id"]
        key = customer_id.encode()
        partition = partition_of(key, self.partitions)
        if partition not in self.owned():
            if request.headers.get(ROUTED):
                return _error(f"customer {customer_id!r}: partition {partition} is not "
                              "owned here (a rebalance is under way); try again", 503)
            return await self._forward(request, partition)
        [raw] = self.writer.get_many(partition, [key])
        if raw is None:
            return _error(f"no customer {customer_id!r}: churnguard has seen no event of "
                          "theirs (ids are case-sensitive)", 404)
        view = customer_view(CustomerState.from_bytes(raw), self.engine().pack,
                             now=self.now())
        view["partition"] = partition
        return _json(view)

    async def local(self, request: web.Request) -> web.Response:
        """This worker's part of a gathered answer (the other workers ask for it)."""
        try:
            since, until = self._period(request)
        except BadRequest as exc:
            return _error(str(exc), 400)
        rule = request.query.get("rule") or None
        with_aggregates = request.query.get("aggregates", "1") == "1"
        return _json(self._local(since, until, rule, aggregates=with_aggregates))

    # -- gathering ---------------------------------------------------------------------------

    def _local(self, since: float | None, until: float | None, rule: str | None, *,
               aggregates: bool) -> dict[str, Any]:
        owned = self.owned()
        ready, pending = self.insights.of(owned)
        census = self.census()
        answer: dict[str, Any] = {
            "owned": sorted(owned),
            "census": {"counted": list(census.counted), "bands": census.band,
                       "segments": census.segment},
        }
        if aggregates:
            first, last = _days(since, until)
            answer["read"] = sorted(set(owned) - set(pending))
            answer["kpis"] = _dump_kpis([p.slices.kpis for p in ready], first, last, rule)
            answer["feedback"] = _dump_feedback([p.slices.feedback for p in ready], first, last)
        return answer

    async def _gather(self, since: float | None, until: float | None, rule: str | None, *,
                      aggregates: bool = True) -> _Gathered:
        gathered = _Gathered(self.partitions)
        own = self._local(since, until, rule, aggregates=aggregates)
        gathered.add(own, aggregates=aggregates)
        peers = [url for url in self.distribution() if url != self.own_url()]
        if peers:
            query = {"aggregates": "1" if aggregates else "0"}
            for name, value in (("since", since), ("until", until)):
                if value is not None:
                    query[name] = repr(value)
            if rule is not None:
                query["rule"] = rule
            answers = await asyncio.gather(*(self._ask(url, query) for url in peers))
            for url, answer in zip(peers, answers, strict=True):
                if answer is None:
                    gathered.unreachable.append(url)
                else:
                    gathered.add(answer, aggregates=aggregates)
        return gathered

    async def _ask(self, url: str, query: dict[str, str]) -> dict[str, Any] | None:
        try:
            async with self._client().get(f"{url.rstrip('/')}/insights/local",
                                          params=query) as response:
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
                                          headers={ROUTED: "1"}) as response:
                body = await response.read()
                return web.Response(body=body, status=response.status,
                                    content_type="application/json")
        except (TimeoutError, aiohttp.ClientError) as exc:
            log.warning("customer_owner_unreachable", url=owner, partition=partition,
                        error=str(exc) or type(exc).__name__)
            return _error(f"the worker owning partition {partition} ({owner}) did not "
                          "answer; try again", 503)

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


class _Gathered:
    """The sums of the workers' answers, by partition read."""

    def __init__(self, partitions: int) -> None:
        self.partitions = partitions
        self.kpis: list[KpiAggregates] = []
        self.feedback: list[FeedbackAggregates] = []
        self.read: set[int] = set()
        self.counted: set[int] = set()
        self.bands: Counter[str] = Counter()
        self.segments: Counter[str] = Counter()
        self.unreachable: list[str] = []
        self._aggregates = True

    def add(self, answer: dict[str, Any], *, aggregates: bool) -> None:
        self._aggregates = aggregates
        census = answer["census"]
        # A partition answered by two workers (mid-rebalance) counts once.
        fresh = set(census["counted"]) - self.counted
        if fresh == set(census["counted"]):
            self.counted |= fresh
            self.bands.update(census["bands"])
            self.segments.update(census["segments"])
        if not aggregates:
            return
        read = set(answer["read"])
        if read & self.read:
            return
        self.read |= read
        self.kpis.append(_load_kpis(answer["kpis"]))
        self.feedback.append(_load_feedback(answer["feedback"]))

    def coverage(self) -> dict[str, Any]:
        covered = self.read if self._aggregates else self.counted
        pending = self.partitions - len(covered & set(range(self.partitions)))
        return {"partial": pending > 0, "pending_partitions": pending,
                "unreachable_workers": self.unreachable}


# -- the wire form of aggregates (between workers) ---------------------------------------------


def _days(since: float | None, until: float | None) -> tuple[int | None, int | None]:
    return (None if since is None else day_number(since),
            None if until is None else day_number(until - 0.001))


def _within(day: int, first: int | None, last: int | None) -> bool:
    return (first is None or day >= first) and (last is None or day <= last)


def _dump_kpis(parts: Sequence[KpiAggregates], first: int | None, last: int | None,
               rule: str | None) -> dict[str, Any]:
    cells, minutes = [], []
    for part in parts:
        for (day, cell_rule, dimension, value), counts in part.cells.items():
            if _within(day, first, last) and (rule is None or cell_rule == rule):
                cells.append([day, cell_rule, dimension, value, counts])
        for (day, cell_rule, dimension, value), histogram in part.recovery_minutes.items():
            if _within(day, first, last) and (rule is None or cell_rule == rule):
                minutes.append([day, cell_rule, dimension, value,
                                {str(m): n for m, n in histogram.items()}])
    return {"cells": cells, "minutes": minutes,
            "as_of": max((p.as_of for p in parts), default=0.0)}


def _load_kpis(data: dict[str, Any]) -> KpiAggregates:
    found = KpiAggregates(as_of=data["as_of"])
    for day, rule, dimension, value, counts in data["cells"]:
        found.cells.setdefault((day, rule, dimension, value), Counter()).update(counts)
    for day, rule, dimension, value, histogram in data["minutes"]:
        found.recovery_minutes.setdefault((day, rule, dimension, value), Counter()).update(
            {int(m): n for m, n in histogram.items()})
    return found


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
    matched = _DURATION.fullmatch(value)
    if matched is not None:
        return now - int(matched.group(1)) * _UNIT[matched.group(2)]
    if _DATE.fullmatch(value):
        try:
            return datetime.fromisoformat(value).replace(tzinfo=UTC).timestamp()
        except ValueError:
            pass
    else:
        try:
            return float(value)
        except ValueError:
            pass
        try:
            return parse_rfc3339(value)
        except ValueError:
            pass
    raise BadRequest(f"{name}={text!r} is not a time: use a date (2026-11-01), an RFC 3339 "
                     "timestamp with its offset (2026-11-01T00:00:00Z) or a duration before "
                     "now (90d, 12h)")


def _group_by(text: str | None) -> GroupBy | None:
    if not text:
        return None
    for choice in GROUP_BY:
        if text == choice:
            return choice
    raise BadRequest(f"group_by={text!r} is not a dimension: use one of {', '.join(GROUP_BY)}")


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
