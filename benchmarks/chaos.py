"""Chaos: workers SIGKILLed (and their stores wiped) on a schedule while they consume a
pre-produced workload; afterwards every action and each customer's last score must equal
the reference — the same core run in-process over the same events at the pinned clock.

    python -m benchmarks.chaos --events 200000 --workers 2 --kill-every 5 --wipe-every 3

The workload (benchmarks.workload) is split by customer: each customer's events all go to
the combined topic or all to the per-type topics (`--topics both`, the default), keyed by
customer_id, record timestamp = occurred_at. Workers read a pinned clock (a fixed moment
`--clock-hours` after the workload's last event), so the time-driven rules fire
deterministically. `--kill-every` seconds (± `--jitter`, seeded) after the workers were
ready, one of them is SIGKILLed and restarted — but never before the group's committed offsets
advanced since the previous kill (no livelock); every `--wipe-every`-th kill also deletes
the victim's store directory (rebuilt from the changelog). The run is complete when the
group's committed offsets cover every produced record, at least `--kills` kills happened and
the output topics have been quiet for a while; they are then read back by fresh consumers.

Exits 1 on a lost, unexpected or conflicting action (the same action_id with different
content; identical redeliveries are at-least-once and only counted), an action whose content
differs from the reference, a last score that differs, a worker that exited by itself, or a
timeout.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from benchmarks.harness import (
    ActionCheck,
    Deployment,
    Expected,
    HarnessError,
    Kill,
    Offsets,
    OutRecord,
    Produced,
    ScoreCheck,
    WorkerSlot,
    check_actions,
    check_scores,
    decode,
    expect,
    fmt_s,
    produce,
    read_topics,
    timestamp_ms,
    wait_quiet,
    workspace,
)
from benchmarks.workload import generate
from churnguard.core.clock import HOUR, rfc3339
from churnguard.engine import build_engine
from churnguard.processes import exit_on_sigterm
from churnguard.replay import read_events
from connectors.embedded_broker import EmbeddedBroker

PATHS = ("combined", "per-type")
READY_TIMEOUT_S = 180.0


@dataclass
class ChaosConfig:
    events: int = 200_000
    customers: int | None = None  # default: events / 10
    workers: int = 1
    kill_every: float = 5.0  # seconds after the workers are ready; 0: no kills
    jitter: float = 0.3  # ± this fraction of kill_every
    wipe_every: int = 3  # every n-th kill deletes the victim's store; 0: never
    kills: int = 0  # at least this many kills, even once the input is consumed
    partitions: int = 8
    seed: int = 1
    topics: str = "both"  # per-type | combined | both
    days: float = 90.0
    clock_hours: float = 6.0
    timeout_s: float = 900.0
    broker: str | None = None  # kafka:// URL of a running broker instead of the embedded one
    apache_kafka: bool = False  # the running broker is Apache Kafka: no Tansu workarounds
    # The workers' consumer session (and rebalance) timeout: on the embedded broker a
    # restarted worker's join waits for the killed one's session to expire. Not an option
    # of the command (6 s there); the tests shorten it.
    session_timeout_s: float = 6.0


@dataclass
class PathReport:
    name: str
    customers: int
    events: int
    actions: ActionCheck
    scores: ScoreCheck


@dataclass
class ChaosReport:
    config: ChaosConfig
    pinned: float = 0.0
    produced: Produced | None = None
    expected: Expected | None = None
    kills: list[Kill] = field(default_factory=list)
    paths: list[PathReport] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    consumed_s: float = 0.0
    settled_s: float = 0.0
    elapsed_s: float = 0.0
    logs: list[Path] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures

    def lines(self) -> list[str]:
        c = self.config
        out = [f"chaos: {c.events} events, {c.customers} customers, {c.partitions} partitions, "
               f"{c.workers} worker(s), topics {c.topics}, seed {c.seed}; pinned clock "
               f"{rfc3339(self.pinned)}"]
        if self.produced is not None:
            out.append(f"produced {self.produced.total} records in "
                       f"{self.produced.seconds:.1f}s")
        if self.expected is not None:
            e = self.expected
            out.append(f"reference: churnguard.replay fires {e.replay_actions} actions until "
                       f"the pinned clock; {e.expired_live} of them are time-driven and due "
                       f"more than 24 h before it (a live worker records them as expired); "
                       f"expected {len(e.actions)} ({e.seconds:.1f}s)")
        wiped = sum(k.wiped for k in self.kills)
        out.append(f"kills: {len(self.kills)} ({wiped} with a store wipe); input consumed "
                   f"{self.consumed_s:.1f}s after the first worker was ready, outputs settled "
                   f"{self.settled_s:.1f}s later")
        out += [f"  kill {k.number}: worker {k.worker}{' + wipe' if k.wiped else ''} at "
                f"{k.committed_at_kill} committed; ready after {fmt_s(k.ready_s)}, group "
                f"progress after {fmt_s(k.progress_s)}" for k in self.kills]
        ready = [k.ready_s for k in self.kills if k.ready_s is not None]
        progress = [k.progress_s for k in self.kills if k.progress_s is not None]
        if ready:
            out.append(f"  recovery: ready max {max(ready):.1f}s mean "
                       f"{sum(ready) / len(ready):.1f}s; group progress "
                       + (f"max {max(progress):.1f}s mean {sum(progress) / len(progress):.1f}s"
                          if progress else "-"))
            out.append("  (progress: the group's committed offsets advanced after the kill; "
                       "'-': nothing was left to consume)")
        for path in self.paths:
            out.append(f"{path.name}: {path.customers} customers, {path.events} events")
            out.append(f"  {path.actions.summary()}")
            out += [f"    {example}" for example in path.actions.examples]
            out.append(f"  {path.scores.summary()}")
            out += [f"    {example}" for example in path.scores.examples]
        out += [f"note: {note}" for note in self.notes]
        out += [f"FAILED: {failure}" for failure in self.failures]
        out.append(f"{'OK' if self.ok else 'FAILED'} in {self.elapsed_s:.1f}s")
        return out


def route(customer: str, topics: str, seed: int) -> str:
    """Which path carries all of this customer's events."""
    if topics != "both":
        return topics
    return PATHS[zlib.crc32(f"{seed}:{customer}".encode()) % 2]


def build_records(
    values: list[bytes], deployment: Deployment, config: ChaosConfig
) -> tuple[list[OutRecord], dict[str, str]]:
    """The produced records (in event-time order) and each customer's path."""
    topics = deployment.topics
    by_type = {"purchase": topics.purchases, "login": topics.logins,
               "ticket": topics.tickets, "profile": topics.profiles}
    paths: dict[str, str] = {}
    records = []
    for value in values:
        event: dict[str, Any] = orjson.loads(value)
        customer = str(event["customer_id"])
        path = paths.setdefault(customer, route(customer, config.topics, config.seed))
        stamp = timestamp_ms(str(event["occurred_at"]))
        if path == "combined":
            records.append(OutRecord(topics.events, customer.encode(), value, stamp))
        else:
            kind = event.pop("type")
            records.append(OutRecord(by_type[kind], customer.encode(), orjson.dumps(event),
                                     stamp))
    return records, paths


def run_chaos(
    config: ChaosConfig,
    *,
    broker: EmbeddedBroker | None = None,
    tmp: Path | None = None,
    say: Callable[[str], None] = print,
) -> ChaosReport:
    if config.customers is None:
        config.customers = max(1, config.events // 10)
    if config.topics not in (*PATHS, "both"):
        raise HarnessError(f"--topics must be per-type, combined or both, not {config.topics}")
    report = ChaosReport(config)
    started = time.monotonic()
    with workspace("cg-chaos-", config.broker, broker, tmp) as (url, where):
        _run(config, url, where, report, say)
    report.elapsed_s = time.monotonic() - started
    return report


def _run(
    config: ChaosConfig, url: str, tmp: Path, report: ChaosReport, say: Callable[[str], None]
) -> None:
    assert config.customers is not None
    # The pinned clock is in the past of the wall clock (a live worker never sees later).
    report.pinned = pinned = time.time() // 60 * 60 - HOUR
    end = pinned - config.clock_hours * HOUR
    name = f"chaos-{config.seed}-{int(time.time() * 1000) % 10**9}"
    deployment = Deployment.create(
        broker_url=url, tmp=tmp, name=name, partitions=config.partitions, pinned=pinned,
        embedded_broker=not config.apache_kafka, session_timeout_s=config.session_timeout_s,
    )
    values = [v for _, v in generate(config.events, config.customers, days=config.days,
                                     seed=config.seed, end=end)]
    records, paths = build_records(values, deployment, config)
    say(f"producing {len(records)} records to {deployment.bootstrap} ({name}) ...")
    report.produced = produce(deployment.bootstrap, records)
    events, bad = read_events(values, now=pinned, max_future_hours=24)
    if bad:
        raise HarnessError(f"the workload has invalid events: {bad[:3]}")
    say(f"produced in {report.produced.seconds:.1f}s; computing the reference ...")
    report.expected = expected = expect(events, build_engine(deployment.settings),
                                        pinned=pinned)
    report.notes += [f"reference model differs from churnguard.replay: {d}"
                     for d in expected.model_differences[:10]]

    slots = [WorkerSlot(deployment, i) for i in range(config.workers)]
    report.logs = [slot.log_path for slot in slots]
    offsets = Offsets(deployment.bootstrap, deployment.settings.app_id, report.produced.counts)
    try:
        for slot in slots:
            slot.start()
        for slot in slots:
            slot.wait_ready(READY_TIMEOUT_S)
        say(f"{config.workers} worker(s) ready; consuming with kills ...")
        began = time.monotonic()
        _consume_with_kills(config, slots, offsets, report, say, began)
        report.consumed_s = time.monotonic() - began
        settle_began = time.monotonic()
        outputs = [*deployment.action_topics(), deployment.topics.scores]
        for quiet_s in (3.0, 10.0):
            wait_quiet(deployment.bootstrap, outputs, quiet_s=quiet_s, timeout_s=120,
                       alive=lambda: all(s.alive() for s in slots))
            read = read_topics(deployment.bootstrap, outputs)
            report.paths = _compare(read, deployment, expected, paths, values)
            if not any(p.actions.lost or p.scores.missing or p.scores.differing
                       for p in report.paths):
                break
        report.settled_s = time.monotonic() - settle_began
        for slot in slots:
            slot.check_crash()
            if slot.crashes:
                report.failures.append(f"worker {slot.index} exited by itself with codes "
                                       f"{slot.crashes} (log {slot.log_path})")
    finally:
        offsets.close()
        for slot in slots:
            slot.stop()
    for path in report.paths:
        report.failures += [f"{path.name}: {f}" for f in path.actions.failures()]
        report.failures += [f"{path.name}: {f}" for f in path.scores.failures()]


def _consume_with_kills(
    config: ChaosConfig,
    slots: list[WorkerSlot],
    offsets: Offsets,
    report: ChaosReport,
    say: Callable[[str], None],
    began: float,
) -> None:
    """Kill on schedule until the input is committed and enough kills happened: a kill comes
    `kill_every` (± jitter) seconds after the last restarted worker was ready, but not before
    the group's committed offsets advanced since the previous kill (unless the input is all
    committed): a kill interval shorter than a restart's way to its first commit would
    otherwise livelock the group."""
    rng = random.Random(config.seed)

    def delay() -> float:
        return max(0.1, config.kill_every * (1 + rng.uniform(-config.jitter, config.jitter)))

    deadline = began + config.timeout_s
    next_kill: float | None = time.monotonic() + delay()
    restarting: Kill | None = None
    while True:
        now = time.monotonic()
        if now > deadline:
            report.failures.append(
                f"timeout: {offsets.done()} of {offsets.total} input records committed "
                f"after {config.timeout_s:.0f}s"
                + (" (a restarted worker never became ready)" if restarting else ""))
            return
        for slot in slots:
            code = slot.check_crash()
            if code is not None:
                say(f"worker {slot.index} exited by itself (code {code}); restarting")
                slot.start()
        done = offsets.done()
        finished = done >= offsets.total
        last = report.kills[-1] if report.kills else None
        if last is not None and last.progress_at is None and done > last.committed_at_kill:
            last.progress_at = now
        if restarting is not None and slots[restarting.worker].is_ready():
            restarting.ready_at = now
            next_kill = now + delay()
            say(f"kill {restarting.number}: worker {restarting.worker}"
                f"{' + wipe' if restarting.wiped else ''} at {restarting.committed_at_kill}/"
                f"{offsets.total} committed; ready after {fmt_s(restarting.ready_s)}")
            restarting = None
        ready = restarting is None and all(slot.is_ready() for slot in slots)
        if finished and ready and len(report.kills) >= config.kills:
            return
        progressed = last is None or last.progress_at is not None or finished
        if (config.kill_every > 0 and ready and next_kill is not None and now >= next_kill
                and progressed):
            number = len(report.kills) + 1
            victim = rng.randrange(len(slots))
            wipe = config.wipe_every > 0 and number % config.wipe_every == 0
            restarting = Kill(number, victim, wipe, time.monotonic(), max(done, 0))
            slots[victim].kill(wipe=wipe)
            slots[victim].start()
            report.kills.append(restarting)
            next_kill = None
        time.sleep(0.2)  # committed offsets and logs have no change event to await


def _compare(
    read: dict[str, list[Any]],
    deployment: Deployment,
    expected: Expected,
    paths: dict[str, str],
    values: list[bytes],
) -> list[PathReport]:
    wanted = expected.records()
    received = [r for topic in deployment.action_topics()
                for r in (decode(x) for x in read[topic]) if r is not None]
    scores = [r for r in (decode(x) for x in read[deployment.topics.scores]) if r is not None]
    events_per_path: dict[str, int] = {}
    for value in values:
        customer = orjson.loads(value)["customer_id"]
        events_per_path[paths[customer]] = events_per_path.get(paths[customer], 0) + 1
    reports = []
    for name in sorted(set(paths.values())):
        mine = {c for c, p in paths.items() if p == name}
        actions = check_actions(
            {i: a for i, a in wanted.items() if a["customer_id"] in mine},
            [r for r in received if r.get("customer_id") in mine],
        )
        score_check = check_scores(
            {c: s for c, s in expected.states.items() if c in mine},
            [r for r in scores if r.get("customer_id") in mine],
        )
        reports.append(PathReport(name, len(mine), events_per_path.get(name, 0), actions,
                                  score_check))
    strangers = [r for r in received if r.get("customer_id") not in paths]
    strangers += [r for r in scores if r.get("customer_id") not in paths]
    if strangers:
        reports.append(PathReport("unknown customers", 0, 0,
                                  check_actions({}, [r for r in strangers if "action_id" in r]),
                                  check_scores({}, [r for r in strangers if "score" in r])))
    return reports


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    d = ChaosConfig()
    parser.add_argument("--events", type=int, default=d.events)
    parser.add_argument("--customers", type=int, default=None, help="default: events / 10")
    parser.add_argument("--workers", type=int, default=d.workers, choices=(1, 2))
    parser.add_argument("--kill-every", type=float, default=d.kill_every,
                        help="seconds between kills, counted from the workers being ready")
    parser.add_argument("--jitter", type=float, default=d.jitter)
    parser.add_argument("--wipe-every", type=int, default=d.wipe_every)
    parser.add_argument("--kills", type=int, default=d.kills,
                        help="at least this many kills (also after the input is consumed)")
    parser.add_argument("--partitions", type=int, default=d.partitions)
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--topics", choices=("per-type", "combined", "both"), default=d.topics)
    parser.add_argument("--days", type=float, default=d.days)
    parser.add_argument("--clock-hours", type=float, default=d.clock_hours,
                        help="the pinned clock, this many hours after the last event")
    parser.add_argument("--timeout", type=float, default=d.timeout_s)
    parser.add_argument("--broker", default=None,
                        help="kafka://host:port of a running broker (default: embedded)")
    parser.add_argument("--apache-kafka", action="store_true",
                        help="the --broker is Apache Kafka: no embedded-broker workarounds")
    parser.add_argument("--keep", type=Path, default=None,
                        help="keep stores and worker logs in this directory")
    args = parser.parse_args(argv)
    exit_on_sigterm()
    config = ChaosConfig(
        events=args.events, customers=args.customers, workers=args.workers,
        kill_every=args.kill_every, jitter=args.jitter, wipe_every=args.wipe_every,
        kills=args.kills, partitions=args.partitions, seed=args.seed, topics=args.topics,
        days=args.days, clock_hours=args.clock_hours, timeout_s=args.timeout,
        broker=args.broker, apache_kafka=args.apache_kafka,
    )
    report = run_chaos(config, tmp=args.keep, say=lambda line: print(line, flush=True))
    print("\n".join(report.lines()))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
