"""Response times of the business endpoints at scale, and what the KPI aggregation costs the
pipeline:

    python -m benchmarks.insights [--customers 1000000] [--days 365] [--requests 50] \
        [--budget 60] [--profile] [--json]

1. KPI aggregation cost (first, before the big aggregates are in memory): `--events`
   workload events (benchmarks.workload, 10,000 customers) through
   `churnguard.batch.process_partition`, per partition in batches of `--batch` records
   against a dict store, without and with the worker's KPI work (the real
   `WorkerInsights.stage` before the write and `publish` after it, over a dict-backed
   writer), alternating, `--runs` runs each: median CPU seconds, the ratio, and the CPU of
   stage + publish timed inside the runs (steadier than a difference of two medians).
2. `/kpis`: a year (`--days` cohort days) of KPI and feedback aggregates of `--customers`
   customers over `--partitions` partitions, every partition read (`PartitionInsights`
   done), served by the real handler (streams/insights.py `InsightsViews`, mounted as
   streams/web.py mounts it; one worker owning every partition, so no peers) on a real
   aiohttp server on a free port, asked by an aiohttp client: no drill-down and group_by
   rule, region, account_manager, week, month, each for all days and for the last 90 days
   (since/until), `--requests` requests each, or fewer (at least 3) once a question has
   taken `--budget` seconds. The aggregates are what the real folds give
   (`KpiAggregates.fold`, `FeedbackAggregates.fold`/`fold_comment`): per partition,
   `--template-days` days of records in the shape core/outcomes.py and core/feedback.py
   produce are folded (the default pack's 8 rules and its purchases, ~22 records per
   customer-year: ticket acknowledgements and surveys with their feedback, win-back episodes
   with a 10 % held-out arm, their actions, revenue and redemptions, coupons, follow-up
   tasks; tiers standard/silver/gold/platinum, the pack's RFM segments, 50 account managers,
   30 regions, tasks assigned to the account manager or the default queue as the pack does;
   tickets with categories, priorities, ratings and comment terms), and each day of the year
   gets the cells of one of them (counters and histograms copied, keyed by that day).
3. `/customers/{id}`: `--customers` customer states (and their due-index entries) in one
   RocksDB per partition opened with faust's own options (`RocksDBOptions().open`), each a
   copy, under its own id, of a state the core built by replaying the workload
   (benchmarks.workload, `--state-events` events of `--state-customers` customers), the KPI
   aggregates still in memory as in a worker; then `--customer-requests` GETs of random
   customers, each a real RocksDB multi-get of one key.

Per question: the round trip as the client sees it (p50/p99/max ms), the handler's own time
(a middleware), the garbage collector's time per request (gc.callbacks), the longest the
event loop was blocked (what every other request, the agents and the Kafka heartbeats on a
worker's loop wait), and core/kpis.py `report` alone over the in-memory aggregates (what is
left once the handler's gathering is out of the way). Targets (the issue): `/kpis` with a
drill-down p99 <= 100 ms, `/customers/{id}` p99 <= 20 ms, the KPI work <= 10 % of the
pipeline's throughput. `--small` runs every part at a toy size (the smoke test,
tests/unit/test_insights_benchmark.py); `--json` prints one JSON document instead of the
table (progress goes to stderr); `--profile` adds cProfile's top functions of one request of
the slowest `/kpis` question; `--parts` runs some of cost, kpis, customers.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import gc
import io
import math
import pstats
import random
import socket
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import aiohttp
import orjson
from aiohttp import web
from faust.stores.rocksdb import RocksDBOptions
from rocksdict import Rdict, WriteBatch

from agents.insights import WorkerInsights
from agents.locks import PartitionLocks
from benchmarks.workload import generate
from churnguard import due_index
from churnguard.access_tokens import TokenRegistry, new_token
from churnguard.batch import BatchContext, PartitionResult, process_partition
from churnguard.census import CensusTotals, standing
from churnguard.core.clock import DAY, HOUR, day_number, parse_rfc3339, rfc3339
from churnguard.core.feedback import CommentTerms, ticket_closed, ticket_opened
from churnguard.core.kpis import GroupBy, KpiAggregates
from churnguard.core.kpis import report as kpi_report
from churnguard.core.outcomes import OutcomeRecord
from churnguard.core.processor import Engine
from churnguard.core.rfm import PROSPECT
from churnguard.core.state import SPEND_SCALE, CustomerState
from churnguard.engine import build_engine
from churnguard.http_access import AccessPolicy
from churnguard.insights import PartitionInsights, Slices
from churnguard.metrics import Metrics
from churnguard.replay import read_events, replay
from churnguard.rules.loading import default_pack
from streams.insights import InsightsViews, partition_of
from streams.settings import Settings
from tables.state_store import TableBatchWriter

KPI_TARGET_MS = 100.0
CUSTOMER_TARGET_MS = 20.0
COST_TARGET = 0.10
GROUPS: tuple[GroupBy | None, ...] = (None, "rule", "region", "account_manager", "week", "month")
RECENT_DAYS = 90

TIERS = (("standard", 70), ("silver", 20), ("gold", 8), ("platinum", 2))
# The default pack's segments (and `prospect`: no purchase yet), by share of customers.
SEGMENT_SHARE = {"champion": 5, "needs_reactivation": 4, "loyal": 12, "new": 10,
                 "promising": 14, "at_risk": 15, "hibernating": 25, PROSPECT: 15}
MANAGERS = 50
REGIONS = 30
CHANNELS = (("email", 60), ("push", 25), ("sms", 15))
CATEGORIES = (("billing", 25), ("delivery", 25), ("product", 20), ("account", 12),
              ("technical", 10), ("returns", 8), ("", 5))
PRIORITIES = (("low", 20), ("normal", 50), ("high", 22), ("urgent", 8))
VOCABULARY = 3000

# Firings (or events) per customer and year, by what they produce.
RATES = {"ticket": 2.0, "health_winback": 0.6, "vip_upgrade": 0.01, "onboarding_tips": 0.2,
         "birthday_coupon": 0.8, "signup_anniversary_coupon": 0.9,
         "inactive_30d_followup": 0.8, "first_purchase": 0.15, "repeat_purchase": 0.06}
# Feedback a notification or a task gets (each status once, by chance).
NOTIFICATION_FEEDBACK = (("delivered", 0.95), ("opened", 0.5), ("clicked", 0.1),
                         ("failed", 0.03))
TASK_FEEDBACK = (("completed", 0.6), ("failed", 0.05))


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def quantiles(samples: Sequence[float]) -> dict[str, float]:
    """p50/p99/max of seconds, in ms."""
    ordered = sorted(samples)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)] * 1000

    return {"n": len(ordered), "p50_ms": round(at(0.5), 2), "p99_ms": round(at(0.99), 2),
            "max_ms": round(ordered[-1] * 1000, 2)}


# -- 1. the aggregates ---------------------------------------------------------------------------


def _pick(rng: random.Random, choices: Sequence[tuple[str, float]]) -> str:
    return rng.choices([c for c, _ in choices], [w for _, w in choices])[0]


def _count(rng: random.Random, mean: float) -> int:
    """`mean` rounded up or down at random (its expectation is `mean`)."""
    whole = int(mean)
    return whole + (rng.random() < mean - whole)


@dataclass
class DayRecords:
    """One partition-day of what the core would emit: outcome records and comment terms."""

    rng: random.Random
    start: float  # the day's midnight
    records: list[OutcomeRecord] = field(default_factory=list)
    comments: list[CommentTerms] = field(default_factory=list)
    serial: int = 0
    segments: tuple[tuple[str, float], ...] = tuple(SEGMENT_SHARE.items())
    managers: tuple[tuple[str, float], ...] = (
        *((f"am-{n:02d}", 17.0) for n in range(MANAGERS)), ("", 150.0))
    regions: tuple[tuple[str, float], ...] = (
        *((f"region-{n:02d}", 100.0 / (n + 1)) for n in range(REGIONS)), ("", 20.0))
    vocabulary: tuple[tuple[str, float], ...] = tuple(
        (f"term{n:04d}", 1.0 / (n + 1)) for n in range(VOCABULARY))

    def customer(self) -> tuple[str, tuple[str, str, str, str]]:
        self.serial += 1
        rng = self.rng
        dims = (_pick(rng, TIERS), _pick(rng, self.segments), _pick(rng, self.managers),
                _pick(rng, self.regions))
        return f"c{rng.randrange(10**9):09d}", dims

    def moment(self) -> float:
        return self.start + self.rng.uniform(0, DAY - 1)

    def record(self, kind: str, customer: str, at: float, rule: str, cohort: float,
               dims: tuple[str, str, str, str], **fields: Any) -> None:
        tier, segment, manager, region = dims
        self.records.append({
            "kind": kind, "customer_id": customer, "at": rfc3339(at), "rule_id": rule,
            "cohort_at": rfc3339(cohort), "tier": tier, "segment": segment,
            "account_manager": manager, "region": region, **fields})

    def action(self, customer: str, dims: tuple[str, str, str, str], rule: str, at: float,
               action_type: str) -> str:
        """An action sent, its feedback; returns its target."""
        action_id = f"{self.serial:08x}{self.rng.getrandbits(64):016x}"
        feedback: tuple[tuple[str, float], ...]
        match action_type:
            case "notification":
                target = _pick(self.rng, CHANNELS)
                feedback = NOTIFICATION_FEEDBACK
            case "task":
                target = dims[2] or "retention-team"  # `assignee: account_manager`
                feedback = TASK_FEEDBACK
            case "coupon":
                target, feedback = f"CG-{action_id[:10].upper()}", ()
            case _:
                target, feedback = "", ()
        fields = {"action_id": action_id, "action_type": action_type, "target": target}
        self.record("action_issued", customer, at, rule, at, dims, **fields, cost_e4=0)
        for status, chance in feedback:
            if self.rng.random() < chance:
                self.record("action_feedback", customer, at + self.rng.uniform(60, 2 * DAY),
                            rule, at, dims, **fields, status=status)
        return target

    def coupon(self, customer: str, dims: tuple[str, str, str, str], rule: str, at: float,
               percent: float, redeemed: float) -> None:
        code = self.action(customer, dims, rule, at, "coupon")
        if self.rng.random() < redeemed:
            amount = self.rng.uniform(10, 400)
            self.record("coupon_redeemed", customer, at + self.rng.uniform(HOUR, 20 * DAY),
                        rule, at, dims, action_id="", action_type="coupon", target=code,
                        order_amount_e4=round(amount * SPEND_SCALE),
                        cost_e4=round(amount * percent / 100 * SPEND_SCALE))

    def ticket(self) -> None:
        """A ticket opened today, and one closed today (opened earlier or today): each is
        counted on its own day, as core/feedback.py does."""
        rng = self.rng
        customer, dims = self.customer()
        opened = self.moment()
        category, priority = _pick(rng, CATEGORIES), _pick(rng, PRIORITIES)
        self.records.append(ticket_opened(customer, opened, category, priority))
        self.action(customer, dims, "ticket_opened_ack", opened, "notification")
        if rng.random() < 0.05:
            return  # still open
        customer, dims = self.customer()
        category, priority = _pick(rng, CATEGORIES), _pick(rng, PRIORITIES)
        sla = {"urgent": 4, "high": 24, "normal": 72, "low": 168}[priority]
        closed = self.moment()
        rating = rng.choice((1, 2, 3, 4, 5, 5, 4)) if rng.random() < 0.5 else None
        self.records.append(ticket_closed(
            customer, closed, closed - rng.expovariate(1 / (0.6 * sla * HOUR)), category,
            priority, sla, rating))
        self.action(customer, dims, "ticket_closed_survey", closed, "notification")
        if rng.random() < 0.6:
            vocabulary = self.vocabulary
            terms = frozenset(rng.choices([t for t, _ in vocabulary], [w for _, w in vocabulary],
                                          k=rng.randint(3, 12)))
            self.comments.append(CommentTerms(closed, category, rating is not None and
                                              rating <= 2, terms))

    def winback(self) -> None:
        rng = self.rng
        customer, dims = self.customer()
        rule, started = "health_winback", self.moment()
        arm = "held_out" if rng.random() < 0.1 else "treated"
        episode = {"arm": arm}
        self.record("episode_started", customer, started, rule, started, dims, **episode,
                    ends_at=rfc3339(started + 30 * DAY), threshold=60.0, action_ids=[])
        if arm == "treated":
            self.action(customer, dims, rule, started, "notification")
            self.action(customer, dims, rule, started, "task")
            self.coupon(customer, dims, rule, started, 15, 0.15)
        if rng.random() >= (0.45 if arm == "treated" else 0.3):
            self.record("episode_expired", customer, started + 30 * DAY, rule, started, dims,
                        **episode)
            return
        seconds = min(30 * DAY - 1, rng.expovariate(1 / (5 * DAY)))
        by = "purchase" if rng.random() < 0.6 else "score"
        self.record("episode_recovered", customer, started + seconds, rule, started, dims,
                    **episode, by=by, seconds_to_recovery=round(seconds, 3))
        if by == "purchase":
            for first in (True, False) if rng.random() < 0.3 else (True,):
                self.record("episode_revenue", customer, started + seconds, rule, started,
                            dims, **episode,
                            amount_e4=round(rng.uniform(10, 400) * SPEND_SCALE), first=first)

    def fire(self, what: str) -> None:
        customer, dims = self.customer()
        at = self.moment()
        match what:
            case "vip_upgrade":
                self.action(customer, dims, what, at, "profile_update")
                self.action(customer, dims, what, at, "notification")
            case "onboarding_tips":
                self.action(customer, dims, what, at, "notification")
            case "birthday_coupon" | "signup_anniversary_coupon":
                self.coupon(customer, dims, what, at, 10, 0.1)
            case "inactive_30d_followup":
                self.action(customer, dims, what, at, "task")
            case "first_purchase":
                self.record(what, customer, at, "", at, dims)
            case "repeat_purchase":  # counted on the first purchase's day (today)
                gap = self.rng.uniform(DAY, 90 * DAY)
                self.record(what, customer, at + gap, "", at, dims, days=round(gap / DAY, 3))


def partition_day(rng: random.Random, start: float, customers: float) -> DayRecords:
    """What `customers` customers (of one partition) produce in one day."""
    day = DayRecords(rng, start)
    for what, rate in RATES.items():
        for _ in range(_count(rng, customers * rate / 365)):
            if what == "ticket":
                day.ticket()
            elif what == "health_winback":
                day.winback()
            else:
                day.fire(what)
    return day


@dataclass
class AggregatesBuilt:
    partitions: dict[int, PartitionInsights]
    records_folded: int
    comments_folded: int
    seconds: float

    def sizes(self) -> dict[str, int]:
        parts = [p.slices for p in self.partitions.values()]
        return {
            "kpi_cells": sum(len(s.kpis.cells) for s in parts),
            "kpi_counter_entries": sum(len(c) for s in parts for c in s.kpis.cells.values()),
            "recovery_histogram_cells": sum(len(s.kpis.recovery_minutes) for s in parts),
            "feedback_ticket_cells": sum(len(s.feedback.tickets) for s in parts),
            "feedback_resolution_cells": sum(len(s.feedback.resolution) for s in parts),
            "feedback_term_entries": sum(len(c) for s in parts for c in s.feedback.terms.values()),
        }


def _days_of(slices: Slices) -> set[int]:
    return ({cell[0] for cell in slices.kpis.cells} | {cell[0] for cell in slices.feedback.tickets}
            | {cell[0] for cell in slices.feedback.terms})


def _shift(template: Slices, day: int, into: Slices) -> None:
    """The template's cells (all of one day) as `day`'s (copies). KPI cells go in through
    `KpiAggregates.merge`, so whatever the aggregates keep besides their cells is kept."""
    shifted = KpiAggregates(as_of=template.kpis.as_of)
    histograms = template.kpis.recovery_minutes
    for (old, rule, dimension, value), counter in template.kpis.cells.items():
        shifted.cells[(day, rule, dimension, value)] = counter
        histogram = histograms.get((old, rule, dimension, value))
        if histogram is not None:
            shifted.recovery_minutes[(day, rule, dimension, value)] = histogram
    into.kpis.merge(shifted)
    feedback = into.feedback
    for (_, category), counts in template.feedback.tickets.items():
        feedback.tickets[(day, category)] = Counter(counts)
    for (_, category, priority), minutes in template.feedback.resolution.items():
        feedback.resolution[(day, category, priority)] = Counter(minutes)
    for (_, category, low), n in template.feedback.comments.items():
        feedback.comments[(day, category, low)] = n
    for (_, category, low), terms in template.feedback.terms.items():
        feedback.terms[(day, category, low)] = Counter(terms)


def build_aggregates(customers: int, days: int, partitions: int, template_days: int,
                     now: float, seed: int) -> AggregatesBuilt:
    started = time.perf_counter()
    rng = random.Random(seed)
    today = day_number(now)
    first = today - days + 1
    built: dict[int, PartitionInsights] = {}
    folded = comments = 0
    for partition in range(partitions):
        templates: list[Slices] = []
        for n in range(min(days, template_days)):
            one = partition_day(rng, (first + n) * DAY, customers / partitions)
            slices = Slices()
            slices.kpis.fold_all(one.records)
            slices.feedback.fold_all(one.records, one.comments)
            assert _days_of(slices) == {first + n}, "a template's cells are all of its day"
            folded += len(one.records)
            comments += len(one.comments)
            templates.append(slices)
        into = Slices()
        for n in range(days):
            _shift(templates[n % len(templates)], first + n, into)
        into.kpis.as_of = now - 60
        built[partition] = PartitionInsights(slices=into, done=True)
    return AggregatesBuilt(built, folded, comments, time.perf_counter() - started)


# -- the server ------------------------------------------------------------------------------------


class RocksWriter(TableBatchWriter):
    """The table writer's reads, of one RocksDB per partition (no faust app)."""

    def __init__(self, dbs: dict[int, Rdict]) -> None:  # no super(): no table behind it
        self.dbs = dbs

    def get_many(self, partition: int, keys: Sequence[bytes]) -> list[bytes | None]:
        # One multi-get, as TableBatchWriter.get_many does on faust's RocksDB store.
        return cast("list[bytes | None]", self.dbs[partition][list(keys)])


class DictWriter(TableBatchWriter):
    """The table writer's reads, of a dict per partition."""

    def __init__(self, stores: dict[int, dict[bytes, bytes]]) -> None:
        self.stores = stores

    def get_many(self, partition: int, keys: Sequence[bytes]) -> list[bytes | None]:
        store = self.stores[partition]
        return [store.get(key) for key in keys]


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Server:
    views: InsightsViews
    handler_seconds: list[float] = field(default_factory=list)
    runner: web.AppRunner | None = None
    url: str = ""
    headers: dict[str, str] = field(default_factory=dict)

    async def start(self) -> None:
        @web.middleware
        async def timed(request: web.Request, handler: Handler) -> web.StreamResponse:
            began = time.perf_counter()
            try:
                return await handler(request)
            finally:
                self.handler_seconds.append(time.perf_counter() - began)

        # As streams/web.py mounts them: behind the access policy, asked with an agent's token.
        token, stored = new_token("benchmark", ["agent"])
        policy = AccessPolicy(TokenRegistry([stored]), open_probes=True)
        self.headers = {"Authorization": f"Bearer {token}"}
        app = web.Application(middlewares=[timed, policy.middleware])
        for method, path, handler, access in self.views.routes():
            policy.add(app, method, path, handler, access)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        await web.SockSite(self.runner, sock).start()
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"

    async def stop(self) -> None:
        await self.views.close()
        if self.runner is not None:
            await self.runner.cleanup()


def views_of(insights: WorkerInsights, writer: TableBatchWriter, partitions: int,
             census: CensusTotals, engine: Engine, now: float) -> InsightsViews:
    return InsightsViews(insights=insights, census=lambda: census,
                         owned=lambda: set(range(partitions)), engine=lambda: engine,
                         writer=writer, partitions=partitions, distribution=dict,
                         own_url=lambda: "http://self", now=lambda: now)


class GcTimer:
    """Time spent in the cyclic garbage collector (gc.callbacks), per generation."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.collections: Counter[int] = Counter()
        self._began = 0.0
        gc.callbacks.append(self)

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._began = time.perf_counter()
        else:
            self.seconds += time.perf_counter() - self._began
            self.collections[info["generation"]] += 1

    def close(self) -> None:
        gc.callbacks.remove(self)


class LoopLag:
    """The longest the event loop was kept from running a 10 ms timer: how long a request
    stalls everything else on the worker's loop (its agents, Kafka heartbeats, /health)."""

    def __init__(self, interval: float = 0.01) -> None:
        self.interval = interval
        self.worst = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _watch(self) -> None:
        while True:
            began = time.perf_counter()
            await asyncio.sleep(self.interval)
            self.worst = max(self.worst, time.perf_counter() - began - self.interval)

    def start(self) -> None:
        self._task = asyncio.create_task(self._watch())

    async def take(self) -> float:
        """The worst stall since the last take, in ms (once the watcher has woken up after
        whatever blocked the loop last)."""
        await asyncio.sleep(3 * self.interval)
        worst, self.worst = self.worst, 0.0
        return round(worst * 1000, 1)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


async def timed_gets(session: aiohttp.ClientSession, server: Server, paths: Sequence[str],
                     *, budget_s: float = math.inf, at_least: int = 3,
                     profile: cProfile.Profile | None = None) -> dict[str, Any]:
    """The paths in order (stopping once `budget_s` is spent and `at_least` were asked):
    round trips and handler times, the garbage collector's share, response sizes."""
    round_trips: list[float] = []
    sizes: list[int] = []
    first_handler = len(server.handler_seconds)
    gc_timer = GcTimer()
    started = time.perf_counter()
    try:
        for path in paths:
            if len(round_trips) >= at_least and time.perf_counter() - started > budget_s:
                break
            if profile is not None:
                profile.enable()
            began = time.perf_counter()
            async with session.get(server.url + path, headers=server.headers) as response:
                body = await response.read()
                if response.status != 200:
                    raise SystemExit(f"GET {path}: HTTP {response.status} {body[:300]!r}")
            round_trips.append(time.perf_counter() - began)
            if profile is not None:
                profile.disable()
            sizes.append(len(body))
    finally:
        gc_timer.close()
    return {"round_trip": quantiles(round_trips),
            "handler": quantiles(server.handler_seconds[first_handler:]),
            "gc_ms_per_request": round(gc_timer.seconds * 1000 / len(round_trips), 2),
            "gc_collections": {str(g): n for g, n in sorted(gc_timer.collections.items())},
            "response_bytes": round(statistics.mean(sizes))}


@dataclass(frozen=True)
class Question:
    label: str
    path: str
    group_by: GroupBy | None
    since: float | None = None
    until: float | None = None


def kpi_questions(now: float) -> list[Question]:
    since = (day_number(now) - RECENT_DAYS + 1) * DAY
    until = (day_number(now) + 1) * DAY

    def date(ts: float) -> str:
        return datetime.fromtimestamp(ts, UTC).date().isoformat()

    questions = []
    for group_by in GROUPS:
        base = "/kpis" if group_by is None else f"/kpis?group_by={group_by}"
        joiner = "&" if group_by else "?"
        name = group_by or "(none)"
        questions.append(Question(f"{name}, all days", base, group_by))
        questions.append(Question(f"{name}, last {RECENT_DAYS} days",
                                  f"{base}{joiner}since={date(since)}&until={date(until)}",
                                  group_by, since, until))
    return questions


def report_alone(question: Question, parts: Sequence[KpiAggregates], engine: Engine,
                 repeats: int = 3) -> float:
    """ms of core/kpis.py `report` over the partitions' aggregates as they are in memory
    (what the handler computes after gathering them), the median of `repeats`."""
    took = []
    for _ in range(repeats):
        began = time.perf_counter()
        kpi_report(parts, engine.pack.kpis, since=question.since, until=question.until,
                   group_by=question.group_by)
        took.append(time.perf_counter() - began)
    return round(statistics.median(took) * 1000, 1)


async def check_answers(session: aiohttp.ClientSession, server: Server,
                        parts: Sequence[KpiAggregates], questions: Sequence[Question]) -> None:
    """The handler answers from the aggregates built here: treated episodes started, by the
    cells themselves, equal the answer's total, and the groups add up to it."""
    for question in questions:
        first = None if question.since is None else day_number(question.since)
        expected = sum(counter.get("treated.started", 0)
                       for part in parts for (day, _, dimension, _), counter in part.cells.items()
                       if dimension == "" and (first is None or day >= first))
        async with session.get(server.url + question.path, headers=server.headers) as response:
            answer = orjson.loads(await response.read())
        total = answer["total"]["episodes"]["treated"]["started"]
        grouped = sum(g["episodes"]["treated"]["started"] for g in answer["groups"])
        if total != expected or (question.group_by and grouped != expected):
            raise SystemExit(f"{question.path}: {total} treated episodes started (groups "
                             f"{grouped}), the cells say {expected}")


async def run_kpis(server: Server, requests: int, now: float, *, budget_s: float,
                   profile: bool) -> dict[str, Any]:
    results: dict[str, Any] = {}
    parts = [server.views.insights.kpis()[0]]  # what the handler sums
    lag = LoopLag()
    lag.start()
    async with aiohttp.ClientSession() as session:
        await timed_gets(session, server, ["/segments"] * 3)  # warm-up
        await check_answers(session, server, parts, [
            q for q in kpi_questions(now) if q.group_by in (None, "region")])
        await lag.take()
        for question in kpi_questions(now):
            found = await timed_gets(session, server, [question.path] * requests,
                                     budget_s=budget_s)
            found["loop_stall_max_ms"] = await lag.take()
            found["report_alone_ms"] = report_alone(question, parts, server.views.engine())
            await lag.take()  # that was not a request
            results[question.label] = {"path": question.path, **found}
            log(f"  {question.label}: {found['round_trip']}, report() alone "
                f"{found['report_alone_ms']} ms")
        if profile:
            label = max(results, key=lambda k: float(results[k]["round_trip"]["p50_ms"]))
            profiler = cProfile.Profile()
            await timed_gets(session, server, [results[label]["path"]], profile=profiler)
            out = io.StringIO()
            pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(25)
            results["profile"] = {"question": label, "text": out.getvalue()}
    await lag.stop()
    return results


# -- 2. the customer states ------------------------------------------------------------------------


@dataclass
class StatesBuilt:
    customers: int
    templates: int
    mean_bytes: float
    p99_bytes: int
    seconds: float
    replay_seconds: float


def state_templates(events: int, customers: int, now: float) -> list[CustomerState]:
    """The final states of replaying the workload through the core."""
    lines = [value for _, value in generate(events, customers, end=now - 60)]
    parsed, bad = read_events(lines, now=now, max_future_hours=24)
    assert not bad, bad[:3]
    states: dict[str, CustomerState] = {}
    for _ in replay(parsed, build_engine(Settings()), until=now, states=states):
        pass
    return list(states.values())


def customer_key(n: int) -> bytes:
    return b"c%07d" % n


def build_states(dbs: dict[int, Rdict], customers: int, events: int, template_customers: int,
                 now: float) -> tuple[StatesBuilt, list[CustomerState]]:
    began = time.perf_counter()
    templates = state_templates(events, template_customers, now)
    replayed = time.perf_counter() - began
    partitions = len(dbs)
    batches = {p: WriteBatch(raw_mode=True) for p in dbs}
    sizes = []
    for n in range(customers):
        key = customer_key(n)
        template = templates[n % len(templates)]
        # A copy under this customer's id, as the worker stores it (the stored form is
        # binary: a new state, not an edit of its bytes).
        value = replace(template, customer_id=key.decode()).to_bytes()
        due = template.next_due
        sizes.append(len(value))
        partition = partition_of(key, partitions)
        batch = batches[partition]
        batch.put(key, value)
        if due is not None:
            batch.put(due_index.due_key(due, key), b"")
        if n % 50_000 == 49_999:
            for p, pending in batches.items():
                dbs[p].write(pending)
            batches = {p: WriteBatch(raw_mode=True) for p in dbs}
    for p, pending in batches.items():
        dbs[p].write(pending)
        dbs[p].flush()
    sizes.sort()
    built = StatesBuilt(customers, len(templates), statistics.mean(sizes),
                        sizes[len(sizes) * 99 // 100], time.perf_counter() - began, replayed)
    return built, templates


def census_of(templates: Sequence[CustomerState], customers: int,
              partitions: int) -> CensusTotals:
    """Plausible census totals (the /kpis answer carries the census's coverage only)."""
    bands: Counter[str] = Counter()
    segments: Counter[str] = Counter()
    for state in templates:
        found = standing(state)
        if found is not None:
            bands[found[0]] += 1
            segments[found[1]] += 1
    scale = customers / max(1, len(templates))
    return CensusTotals({b: round(n * scale) for b, n in bands.items()},
                        {s: round(n * scale) for s, n in segments.items()},
                        tuple(range(partitions)), ())


async def run_customers(server: Server, customers: int, requests: int,
                        seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    paths = [f"/customers/{customer_key(rng.randrange(customers)).decode()}"
             for _ in range(requests)]
    async with aiohttp.ClientSession() as session:
        await timed_gets(session, server, paths[:20])  # warm-up
        return await timed_gets(session, server, paths)


# -- 3. the KPI work's share of the pipeline -------------------------------------------------------


@dataclass(frozen=True)
class Record:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int = 0


def workload_batches(events: int, partitions: int, batch: int,
                     now: float) -> list[tuple[int, list[Record]]]:
    """The workload's records per partition, in batches, the partitions taking turns."""
    topic = Settings().topics.events
    per_partition: dict[int, list[Record]] = {p: [] for p in range(partitions)}
    for key, value in generate(events, 10_000, end=now - 60):
        partition = partition_of(key, partitions)
        stamp = int(parse_rfc3339(orjson.loads(value)["occurred_at"]) * 1000)
        records = per_partition[partition]
        records.append(Record(topic, partition, len(records), key, value, stamp))
    chunks = {p: [rs[i:i + batch] for i in range(0, len(rs), batch)]
              for p, rs in per_partition.items()}
    turns: list[tuple[int, list[Record]]] = []
    for n in range(max(len(c) for c in chunks.values())):
        turns += [(p, c[n]) for p, c in chunks.items() if n < len(c)]
    return turns


@dataclass
class CostRun:
    with_kpis: bool
    cpu_s: float
    kpi_cpu_s: float
    outcomes: int
    slice_writes: int


def loader(store: dict[bytes, bytes]) -> Callable[[list[bytes]], list[bytes | None]]:
    def load(keys: list[bytes]) -> list[bytes | None]:
        return [store.get(key) for key in keys]

    return load


def cost_run(batches: Sequence[tuple[int, list[Record]]], partitions: int, now: float, *,
             with_kpis: bool) -> CostRun:
    stores: dict[int, dict[bytes, bytes]] = {p: {} for p in range(partitions)}
    ctx = BatchContext.create(build_engine(Settings()), Settings().topics, Metrics(), 24)
    insights = WorkerInsights(DictWriter(stores), PartitionLocks())
    insights.partitions = {p: PartitionInsights(done=True) for p in range(partitions)}
    outcomes = slice_writes = 0
    kpi_cpu = 0.0
    gc.collect()
    began = time.process_time()
    for partition, records in batches:
        store = stores[partition]
        result: PartitionResult = process_partition(records, loader(store), ctx, now=now)
        outcomes += len(result.outcomes)
        added = None
        if with_kpis:
            staged = time.process_time()
            before = len(result.writes)
            added = insights.stage(partition, result)
            slice_writes += len(result.writes) - before
            kpi_cpu += time.process_time() - staged
        for key, value in result.writes.items():
            if value is None:
                store.pop(key, None)
            else:
                store[key] = value
        if with_kpis:
            staged = time.process_time()
            insights.publish(partition, added)
            kpi_cpu += time.process_time() - staged
    return CostRun(with_kpis, time.process_time() - began, kpi_cpu, outcomes, slice_writes)


def kpi_cost(events: int, partitions: int, batch: int, runs: int, now: float) -> dict[str, Any]:
    batches = workload_batches(events, partitions, batch, now)
    cost_run(batches[: partitions * 2], partitions, now, with_kpis=True)  # warm-up
    done: list[CostRun] = []
    for n in range(runs):
        for with_kpis in (False, True):
            done.append(cost_run(batches, partitions, now, with_kpis=with_kpis))
            log(f"  run {n + 1} {'with' if with_kpis else 'without'} the KPI work: "
                f"{done[-1].cpu_s:.2f} s CPU")
    without = statistics.median(r.cpu_s for r in done if not r.with_kpis)
    with_ = statistics.median(r.cpu_s for r in done if r.with_kpis)
    inside = statistics.median(r.kpi_cpu_s for r in done if r.with_kpis)
    last = done[-1]
    return {"events": events, "batches": len(batches), "batch_records": batch,
            "runs": runs, "outcome_records": last.outcomes, "slice_writes": last.slice_writes,
            "cpu_s_without": round(without, 3), "cpu_s_with": round(with_, 3),
            "ratio": round(with_ / without - 1, 4),
            "stage_publish_cpu_s": round(inside, 3),
            "stage_publish_share": round(inside / with_, 4),
            "throughput_without": round(events / without),
            "throughput_with": round(events / with_),
            "runs_cpu_s": [{"with_kpis": r.with_kpis, "cpu_s": round(r.cpu_s, 3),
                            "stage_publish_cpu_s": round(r.kpi_cpu_s, 3)} for r in done]}


# -- the report ------------------------------------------------------------------------------------


def sizes_for(small: bool) -> dict[str, int]:
    if small:
        return {"customers": 5_000, "days": 14, "requests": 3, "customer_requests": 30,
                "events": 2_000, "runs": 1, "template_days": 2, "state_events": 500,
                "state_customers": 200}
    return {"customers": 1_000_000, "days": 365, "requests": 50, "customer_requests": 2_000,
            "events": 100_000, "runs": 3, "template_days": 7, "state_events": 20_000,
            "state_customers": 10_000}


def table(result: dict[str, Any]) -> Iterator[str]:
    config = result["config"]
    if "cost" in result:
        cost = result["cost"]
        yield (f"KPI aggregation cost: {cost['events']:,} events in {cost['batches']} batches "
               f"of <= {cost['batch_records']} over {config['partitions']} partitions, "
               f"{cost['outcome_records']:,} outcome records, {cost['slice_writes']:,} "
               f"slice writes; median of {cost['runs']} alternating runs")
        yield (f"  without {cost['cpu_s_without']:.2f} s CPU ({cost['throughput_without']:,} "
               f"events/s), with {cost['cpu_s_with']:.2f} s ({cost['throughput_with']:,} "
               f"events/s): {cost['ratio']:+.1%} (stage + publish measured inside: "
               f"{cost['stage_publish_cpu_s']:.3f} s, {cost['stage_publish_share']:.1%} of "
               f"the run) target <= {COST_TARGET:.0%}: "
               f"{_verdict(cost['stage_publish_share'] <= COST_TARGET)}")
        spread = [r["cpu_s"] for r in cost["runs_cpu_s"] if not r["with_kpis"]]
        yield (f"  runs without: {min(spread):.2f}-{max(spread):.2f} s CPU (the difference of "
               "medians is as noisy as that spread; stage + publish is timed inside each run)")
    if "kpis" in result:
        built = result["aggregates"]
        sizes = built["sizes"]
        yield (f"/kpis: {config['customers']:,} customers, {config['days']} days, "
               f"{config['partitions']} partitions: {sizes['kpi_cells']:,} KPI cells "
               f"({sizes['kpi_counter_entries']:,} counter entries, "
               f"{sizes['recovery_histogram_cells']:,} recovery histograms), "
               f"{sizes['feedback_ticket_cells']:,} ticket cells, "
               f"{sizes['feedback_term_entries']:,} term entries; from "
               f"{built['records_folded']:,} records and {built['comments_folded']:,} comments "
               f"folded ({config['template_days']} days per partition) in "
               f"{built['seconds']:.0f} s")
        yield (f"  {'question':<31}{'n':>4}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}"
               f"{'handler p99':>12}{'GC ms/req':>10}{'loop stall':>11}{'report()':>9}"
               f"{'bytes':>8}  "
               f"target p99 <= {KPI_TARGET_MS:.0f} ms")
        for label, found in result["kpis"].items():
            if label == "profile":
                continue
            trip, handler = found["round_trip"], found["handler"]
            verdict = _verdict(trip["p99_ms"] <= KPI_TARGET_MS)
            yield (f"  {label:<31}{trip['n']:>4}{trip['p50_ms']:>9.1f}{trip['p99_ms']:>9.1f}"
                   f"{trip['max_ms']:>9.1f}{handler['p99_ms']:>12.1f}"
                   f"{found['gc_ms_per_request']:>10.1f}{found['loop_stall_max_ms']:>11.1f}"
                   f"{found['report_alone_ms']:>9.1f}"
                   f"{found['response_bytes']:>8,}  "
                   f"{verdict}")
    if "customers" in result:
        states, found = result["states"], result["customers"]
        trip, handler = found["round_trip"], found["handler"]
        yield (f"/customers/{{id}}: {states['customers']:,} states in RocksDB (copies of "
               f"{states['templates']:,} replayed, mean {states['mean_bytes']:.0f} bytes, "
               f"p99 {states['p99_bytes']:,}; written in {states['seconds']:.0f} s), "
               f"{trip['n']:,} random GETs: p50 {trip['p50_ms']:.2f} ms, p99 "
               f"{trip['p99_ms']:.2f} ms, max {trip['max_ms']:.1f} ms (handler p50 "
               f"{handler['p50_ms']:.2f}, p99 {handler['p99_ms']:.2f}) target p99 <= "
               f"{CUSTOMER_TARGET_MS:.0f} ms: {_verdict(trip['p99_ms'] <= CUSTOMER_TARGET_MS)}")
    if "profile" in result.get("kpis", {}):
        profile = result["kpis"]["profile"]
        yield f"profile of one request, {profile['question']}:"
        yield profile["text"]


def _verdict(ok: bool) -> str:
    return "ok" if ok else "MISSED"


async def serve_parts(args: argparse.Namespace, sizes: dict[str, int], now: float,
                      result: dict[str, Any]) -> None:
    partitions = args.partitions
    engine = Engine(default_pack())
    with tempfile.TemporaryDirectory() as tmp:
        dbs = {p: RocksDBOptions().open(Path(tmp) / f"p{p}") for p in range(partitions)}
        insights = WorkerInsights(RocksWriter(dbs), PartitionLocks())
        census = CensusTotals({}, {}, tuple(range(partitions)), ())
        if "kpis" in args.parts:
            log("building the aggregates …")
            built = build_aggregates(sizes["customers"], sizes["days"], partitions,
                                     sizes["template_days"], now, args.seed)
            insights.partitions = built.partitions
            for into in built.partitions.values():  # as `step` sums each partition read
                insights.total.merge(into.slices.kpis)
            result["aggregates"] = {"records_folded": built.records_folded,
                                    "comments_folded": built.comments_folded,
                                    "seconds": round(built.seconds, 1), "sizes": built.sizes()}
        if "customers" in args.parts:
            log("writing the customer states …")
            states, templates = build_states(dbs, sizes["customers"], sizes["state_events"],
                                             sizes["state_customers"], now)
            result["states"] = {k: round(v, 1) if isinstance(v, float) else v
                                for k, v in vars(states).items()}
            census = census_of(templates, sizes["customers"], partitions)
        server = Server(views_of(insights, RocksWriter(dbs), partitions, census, engine, now))
        await server.start()
        try:
            if "kpis" in args.parts:
                log("timing /kpis …")
                result["kpis"] = await run_kpis(server, sizes["requests"], now,
                                                budget_s=args.budget, profile=args.profile)
            if "customers" in args.parts:
                log("timing /customers/{id} …")
                result["customers"] = await run_customers(
                    server, sizes["customers"], sizes["customer_requests"], args.seed)
        finally:
            await server.stop()
            for db in dbs.values():
                db.close()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int)
    parser.add_argument("--days", type=int, help="cohort days of aggregates")
    parser.add_argument("--requests", type=int, help="requests per /kpis question")
    parser.add_argument("--budget", type=float, default=60.0,
                        help="seconds per /kpis question: fewer requests (at least 3) when "
                        "they take longer")
    parser.add_argument("--customer-requests", type=int)
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--template-days", type=int,
                        help="days of records folded per partition (the year repeats them)")
    parser.add_argument("--state-events", type=int, help="workload replayed for the states")
    parser.add_argument("--state-customers", type=int)
    parser.add_argument("--events", type=int, help="workload events of the cost part")
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--runs", type=int)
    parser.add_argument("--parts", default="cost,kpis,customers",
                        help="comma-separated: cost, kpis, customers")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--small", action="store_true", help="toy sizes (the smoke test)")
    parser.add_argument("--profile", action="store_true",
                        help="cProfile one request of the slowest /kpis question")
    parser.add_argument("--json", action="store_true", help="one JSON document on stdout")
    args = parser.parse_args(argv)
    args.parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    sizes = sizes_for(args.small)
    for name in sizes:
        if getattr(args, name) is not None:
            sizes[name] = getattr(args, name)
    now = time.time()
    result: dict[str, Any] = {"config": {**sizes, "partitions": args.partitions,
                                         "batch": args.batch, "seed": args.seed}}
    if "cost" in args.parts:
        # First, before the big aggregates are in memory (the garbage collector's work).
        log("the KPI aggregation cost …")
        result["cost"] = kpi_cost(sizes["events"], args.partitions, args.batch, sizes["runs"],
                                  now)
    if args.parts & {"kpis", "customers"}:
        asyncio.run(serve_parts(args, sizes, now, result))
    result["targets"] = targets(result)
    if args.json:
        sys.stdout.write(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        for line in table(result):
            print(line)


def targets(result: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    if "kpis" in result:
        worst = max((v["round_trip"]["p99_ms"] for k, v in result["kpis"].items()
                     if k != "profile"), default=0.0)
        found["kpis_p99_ms"] = {"worst": worst, "target": KPI_TARGET_MS,
                                "met": worst <= KPI_TARGET_MS}
    if "customers" in result:
        p99 = result["customers"]["round_trip"]["p99_ms"]
        found["customers_p99_ms"] = {"p99": p99, "target": CUSTOMER_TARGET_MS,
                                     "met": p99 <= CUSTOMER_TARGET_MS}
    if "cost" in result:
        # Judged by stage + publish timed inside the runs: the difference of the medians is
        # within the run-to-run spread on a shared machine (both are reported).
        cost = result["cost"]
        share = cost["stage_publish_share"]
        found["kpi_cost_ratio"] = {"stage_publish_share": share,
                                   "difference_of_medians": cost["ratio"],
                                   "target": COST_TARGET, "met": share <= COST_TARGET}
    return found


if __name__ == "__main__":
    main()
