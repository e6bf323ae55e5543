"""churnguard against its peers on the same data: the real worker, a Quix Streams app, a bare
faust agent and a raw aiokafka consumer, one after another, on one broker.

    python -m benchmarks.peers [--events 100000] [--customers 10000] [--partitions 4]
                               [--json OUT.json] [--peers churnguard,quix,faust,aiokafka]

Starts the embedded broker (or uses `--broker`), pre-produces ONE workload
(benchmarks.workload.generate) to the combined events topic, keyed by customer id, with one
producer flushed before any consumer starts (Tansu: a reader tailing a partition that two
producers write can skip batches), and counts the produced offsets per partition from the
producer's futures (Tansu's ListOffsets answers are wrong). The topic is created with
`retention.ms=-1` set explicitly: Tansu's DescribeConfigs answers only the configs a topic
was created with, and Quix Streams needs the input's retention. Then each peer runs in its own
child process, with its own consumer group, from the beginning of the topic:

- churnguard: the real worker (`python -m churnguard worker`, full pipeline, default pack,
  commit interval 0.2 s as in benchmarks.pipeline_throughput).
- quix: a Quix Streams app (`Application`, `auto_offset_reset="earliest"`, library defaults
  otherwise: commit every 5 s and at stop) with a stateful `apply` keeping per-customer
  counters (events, purchases, amount sum, last seen) in its RocksDB state, changelogged to
  its changelog topic; `app.run(count=N)` stops it after the N-th event, committing its
  checkpoint (offsets, state, changelog) on the way out.
- faust: a bare faust agent iterating the stream (raw bytes, orjson.loads) and writing one
  RocksDB Table entry (orjson bytes, changelogged) per event; after the last event it
  commits until the group's committed offsets cover everything.
- aiokafka: `getmany` + `orjson.loads` + the same counters in a dict per customer; one commit
  at the end.

The peers other than churnguard all apply the same `update_counters` to each event.

Per peer:
- events: the events the peer consumed (churnguard: `churnguard_events_consumed_total` on its
  `/metrics`, the events it applied; the others count in their processing code).
- wall s: from the start of consuming to the last event. churnguard: from `worker_ready` in
  its log (partitions assigned, tables recovered, consuming) until the group's committed
  offsets cover every produced record, as benchmarks.pipeline_throughput measures — its last
  applied event is not observable from outside, so this includes up to one commit interval
  (0.2 s) and the 50 ms polling. aiokafka: from its partitions being assigned (it fetches in
  the background from then on, so its first batch may already hold most of the workload)
  until the last event is processed. quix, faust: from the first record handed to the
  processing code (neither has a public hook at assignment; both fetch once assigned and
  recovered) until the last one is processed. Their final commit comes after; the JSON has
  `committed_s`, from the same start to that commit acknowledged, and `window_start`.
- events/s: events / wall s; ratio: that over churnguard's events/s.
- CPU s / 1M events: user + system CPU of the peer's process over the same window, per
  million events (churnguard: /proc/PID/stat sampled at both ends; the others:
  getrusage(RUSAGE_SELF) at both ends, all threads). The JSON also has `cpu_total_s`, the
  child's whole life (imports, group join, shutdown), from getrusage(RUSAGE_CHILDREN).
- peak RSS: the child's high-water resident set (churnguard: VmHWM in /proc/PID/status at
  the end of the window; the others: ru_maxrss at the end of their run).

Checks: a peer passes when it consumed every produced event (exactly that many), its group's
committed offsets (kafka-python `KafkaAdminClient.list_group_offsets`) cover every produced
record, and its process finished cleanly; otherwise it is FAILED (a missing package, e.g.
quixstreams, fails its peer with one line) and the exit code is 1. `--json` writes the
figures, the settings, the date, the git commit and the command line.

The broker runs on the same machine as the peer being measured (2 cores here) and competes
for its cores; the CPU figures are the peer's process only, not the broker's. One run on a
shared machine: the figures are noisy.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import os
import resource
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
from kafka import KafkaAdminClient
from kafka.structs import TopicPartition

from benchmarks.pipeline_throughput import committed, produce
from churnguard.processes import exit_on_sigterm, running_worker, wait_ready
from connectors.admin import ensure_topics
from connectors.embedded_broker import embedded_broker
from streams.settings import Settings, TopicNames
from streams.topology import ensure_all_topics

if TYPE_CHECKING:
    from quixstreams import State

PEERS = ("churnguard", "quix", "faust", "aiokafka")
# The module each peer needs beyond churnguard's own dependencies, and how to get it.
REQUIRES = {
    "quix": ("quixstreams", "pip install 'quixstreams>=3.28,<4' (or pip install -e '.[dev]')"),
    "faust": ("faust", "pip install faust-streaming"),
    "aiokafka": ("aiokafka", "pip install aiokafka"),
}
WINDOW_START = {"quix": "first record", "faust": "first record",
                "aiokafka": "partitions assigned"}
REPO = Path(__file__).resolve().parent.parent
SESSION_TIMEOUT_S = 6.0  # Tansu's group joins wait for it (docs/design.md)
CHURNGUARD_COMMIT_INTERVAL_S = 0.2
POLL_S = 0.05
EXIT_GRACE_S = 60.0  # a child's shutdown after its last event
MISSING_PACKAGE_EXIT = 3

Ends = dict[TopicPartition, int]
Say = Callable[[str], None]


# -- the report -------------------------------------------------------------------------


@dataclass
class PeerResult:
    name: str
    ok: bool = False
    events: int = 0
    wall_s: float | None = None
    events_per_s: float | None = None
    cpu_s_per_1m: float | None = None
    peak_rss_mib: float | None = None
    ratio: float | None = None  # events/s over churnguard's
    committed: int = 0  # events covered by the group's committed offsets
    committed_s: float | None = None
    cpu_window_s: float | None = None
    cores_used: float | None = None  # cpu_window_s / wall_s: below ~1 the peer was starved
    cpu_total_s: float | None = None
    loadavg_1m: float = field(default_factory=lambda: os.getloadavg()[0])  # at its start
    group: str = ""
    window_start: str = ""  # what starts the wall-clock window (see the module docstring)
    # Topics named after the group: the peer's changelogs (and faust's assignor topic).
    state_topics: list[str] = field(default_factory=list)
    error: str | None = None

    def finish(self, total: int, cpu_s: float | None) -> None:
        if self.wall_s is not None and self.wall_s > 0 and self.events:
            self.events_per_s = self.events / self.wall_s
        if cpu_s is not None and self.events:
            self.cpu_window_s = cpu_s
            self.cpu_s_per_1m = cpu_s / self.events * 1e6
            if self.wall_s:
                self.cores_used = cpu_s / self.wall_s
        problems = []
        if self.events != total:
            problems.append(f"consumed {self.events} of {total} events")
        if self.committed != total:
            problems.append(f"committed offsets cover {self.committed} of {total}")
        if problems and self.error is None:
            self.error = "; ".join(problems)
        self.ok = self.error is None


@dataclass
class PeersConfig:
    events: int = 100_000
    customers: int = 10_000
    partitions: int = 4
    peers: tuple[str, ...] = PEERS
    timeout_s: float = 300.0  # per peer, from its start


@dataclass
class PeersReport:
    config: PeersConfig
    produced: int = 0
    produced_s: float = 0.0
    topic: str = ""
    results: list[PeerResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.results) and all(r.ok for r in self.results)

    def lines(self) -> list[str]:
        header = ("peer", "status", "events", "wall s", "events/s", "CPU s/1M ev",
                  "cores used", "peak RSS MiB", "vs churnguard", "load")
        rows = [header]
        for r in self.results:
            rows.append((
                r.name, "ok" if r.ok else "FAILED", f"{r.events:,}", _fmt(r.wall_s, "{:.2f}"),
                _fmt(r.events_per_s, "{:,.0f}"), _fmt(r.cpu_s_per_1m, "{:.1f}"),
                _fmt(r.cores_used, "{:.2f}"), _fmt(r.peak_rss_mib, "{:.0f}"),
                _fmt(r.ratio, "{:.2f}x"), f"{r.loadavg_1m:.1f}",
            ))
        widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
        out = [f"{self.produced:,} events, {self.config.customers:,} customers, "
               f"{self.config.partitions} partitions, topic {self.topic} "
               f"(produced in {self.produced_s:.1f}s)"]
        for n, row in enumerate(rows):
            out.append("  ".join(cell.ljust(w) if i < 2 else cell.rjust(w)
                                 for i, (cell, w) in enumerate(zip(row, widths, strict=True))))
            if n == 0:
                out.append("  ".join("-" * w for w in widths))
        out.extend(f"{r.name}: FAILED: {r.error}" for r in self.results if not r.ok)
        out.append(f"cores used: the peer's CPU over its wall time; load: the 1-minute load "
                   f"average at its start ({os.cpu_count()} cores)")
        return out

    def to_json(self, argv: Sequence[str]) -> dict[str, Any]:
        return {
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "git_commit": git_commit(),
            "command": shlex.join([Path(sys.executable).name, "-m", "benchmarks.peers",
                                   *argv]),
            "config": {**asdict(self.config), "peers": list(self.config.peers)},
            "cpus": os.cpu_count(),
            "produced": self.produced,
            "produced_s": round(self.produced_s, 3),
            "topic": self.topic,
            "ok": self.ok,
            "definitions": {
                "wall_s": "start of consuming (window_start: churnguard worker_ready, "
                          "aiokafka partitions assigned, quix and faust the first record "
                          "handed to the processing code) to the last event processed "
                          "(churnguard: the group's committed offsets covering every record)",
                "cpu_s_per_1m": "user+sys CPU of the peer's process over wall_s, per 1M events",
                "peak_rss_mib": "the peer process's high-water RSS",
                "cpu_total_s": "user+sys CPU of the child over its whole life",
                "committed_s": "start of consuming to the final commit acknowledged",
                "cores_used": "cpu_window_s / wall_s (well below 1 for a single-threaded "
                              "peer: it was starved of CPU by other work)",
                "loadavg_1m": "the machine's 1-minute load average when the peer started",
            },
            "settings": {
                "churnguard": {"commit_interval_s": CHURNGUARD_COMMIT_INTERVAL_S,
                               "session_timeout_s": SESSION_TIMEOUT_S},
                "quix": {"commit_interval_s": 5.0, "state": "rocksdb + changelog",
                         "stop": "app.run(count=N)"},
                "faust": {"commit_interval_s": 2.8, "table": "rocksdb, one write per event"},
                "aiokafka": {"commit": "once, at the end"},
            },
            "results": [asdict(r) for r in self.results],
        }


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else spec.format(value)


def git_commit() -> str | None:
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                              text=True, check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=REPO, capture_output=True, text=True, check=True,
                               timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{head}{'+dirty' if dirty else ''}"


# -- the run ----------------------------------------------------------------------------


@dataclass
class Run:
    config: PeersConfig
    bootstrap: str
    tmp: Path
    prefix: str
    ends: Ends

    @property
    def total(self) -> int:
        return sum(self.ends.values())


def run_peers(
    config: PeersConfig, *, broker_url: str | None = None, tmp: Path | None = None,
    say: Say = print,
) -> PeersReport:
    """Produce the workload once and run every peer of `config` over it, one after
    another; `broker_url` (kafka://host:port) uses a running broker, else an embedded one."""
    unknown = [p for p in config.peers if p not in PEERS]
    if unknown:
        raise ValueError(f"unknown peers {unknown}; known: {', '.join(PEERS)}")
    with contextlib.ExitStack() as stack:
        if tmp is None:
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="cg-peers-")))
        if broker_url is None:
            broker_url = stack.enter_context(embedded_broker()).url
        return _run(config, broker_url, tmp, say)


def _run(config: PeersConfig, broker_url: str, tmp: Path, say: Say) -> PeersReport:
    # A prefix of its own: a shared broker (the tests') may hold other runs' topics.
    prefix = f"peers{os.getpid()}x{int(time.time() * 1000) % 10**8}."
    tmp = tmp / prefix.rstrip(".")  # logs and stores of this run (--keep may hold others)
    tmp.mkdir(parents=True)
    settings = churnguard_settings(broker_url, tmp, prefix, config.partitions)
    # Tansu's DescribeConfigs answers only the configs a topic was created with, and Quix
    # Streams derives its changelog's retention from the input's `retention.ms` (a KeyError
    # without it).
    ensure_topics(settings.bootstrap, [settings.topics.events], config.partitions,
                  configs={settings.topics.events: {"retention.ms": "-1",
                                                    "retention.bytes": "-1"}})
    ensure_all_topics(settings)
    report = PeersReport(config, topic=settings.topics.events)
    started = time.perf_counter()
    ends = produce(settings.bootstrap, settings, config.events, config.customers,
                   per_type=False)
    report.produced = sum(ends.values())
    report.produced_s = time.perf_counter() - started
    say(f"produced {report.produced:,} events to {report.topic} "
        f"({len(ends)} partitions) in {report.produced_s:.1f}s")
    run = Run(config, settings.bootstrap, tmp, prefix, ends)
    for name in config.peers:
        say(f"{name}: running ...")
        result = run_churnguard(run, settings) if name == "churnguard" else run_child(run, name)
        report.results.append(result)
        say(f"{name}: {'ok' if result.ok else 'FAILED'}: {result.events:,} events"
            + (f" in {result.wall_s:.2f}s" if result.wall_s is not None else "")
            + (f", {result.events_per_s:,.0f} events/s" if result.events_per_s else "")
            + (f" ({result.error})" if result.error else ""))
    base = next((r.events_per_s for r in report.results
                 if r.name == "churnguard" and r.ok and r.events_per_s), None)
    for r in report.results:
        if base and r.events_per_s:
            r.ratio = r.events_per_s / base
    return report


def churnguard_settings(broker_url: str, tmp: Path, prefix: str, partitions: int) -> Settings:
    return Settings(
        broker=broker_url, partitions=partitions, embedded_broker=True,
        store_dir=tmp / "churnguard-store", app_id=f"{prefix}churnguard",
        topics=TopicNames().with_prefix(prefix), log_level="info",
        commit_interval_s=CHURNGUARD_COMMIT_INTERVAL_S, web_port=0,
        session_timeout_s=SESSION_TIMEOUT_S, rebalance_timeout_s=SESSION_TIMEOUT_S,
    )


@contextlib.contextmanager
def admin_client(bootstrap: str) -> Iterator[KafkaAdminClient]:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="cg-peers")
    try:
        yield admin
    finally:
        admin.close()


def committed_events(bootstrap: str, group: str, ends: Ends) -> int:
    with admin_client(bootstrap) as admin:
        return committed(admin, group, ends)


def group_topics(bootstrap: str, group: str) -> list[str]:
    with admin_client(bootstrap) as admin:
        return sorted(t for t in admin.list_topics() if group in t)


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def proc_cpu_s(pid: int) -> float:
    """User + system CPU of a live process, from /proc."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rfind(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_peak_rss_kib(pid: int) -> int | None:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return None


def log_tail(path: Path, lines: int = 15) -> str:
    if not path.exists():
        return "(no log)"
    text = path.read_text(errors="replace").splitlines()
    return "\n".join(text[-lines:])


def run_churnguard(run: Run, settings: Settings) -> PeerResult:
    result = PeerResult("churnguard", group=settings.app_id, window_start="worker_ready")
    log_path = run.tmp / "churnguard.log"
    cpu_before = children_cpu_s()
    cpu_s: float | None = None
    deadline = time.monotonic() + run.config.timeout_s
    try:
        with admin_client(run.bootstrap) as admin, running_worker(settings, log_path) as worker:
            wait_ready(log_path, worker, timeout_s=min(180.0, run.config.timeout_s))
            began = time.perf_counter()
            cpu0 = proc_cpu_s(worker.pid)
            while committed(admin, settings.app_id, run.ends) < run.total:
                if worker.poll() is not None:
                    raise RuntimeError(f"worker exited with code {worker.returncode}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"not every offset committed within "
                                       f"{run.config.timeout_s:.0f}s")
                time.sleep(POLL_S)  # committed offsets have no change event to await
            result.wall_s = time.perf_counter() - began
            result.committed_s = result.wall_s
            cpu_s = proc_cpu_s(worker.pid) - cpu0
            peak = proc_peak_rss_kib(worker.pid)
            result.peak_rss_mib = None if peak is None else peak / 1024
            result.events = churnguard_events(log_path, settings.topics.events)
    except (RuntimeError, TimeoutError, OSError) as exc:
        result.error = f"{exc}; its log: {log_path}\n{log_tail(log_path)}"
    result.cpu_total_s = children_cpu_s() - cpu_before
    result.committed = committed_events(run.bootstrap, settings.app_id, run.ends)
    result.state_topics = group_topics(run.bootstrap, settings.app_id)
    result.finish(run.total, cpu_s)
    return result


def churnguard_events(log_path: Path, topic: str) -> int:
    """The events the worker applied from `topic`, from its /metrics (the port it logged as
    `http_listening`)."""
    port = None
    for line in log_path.read_text(errors="replace").splitlines():
        if '"http_listening"' in line:
            with contextlib.suppress(orjson.JSONDecodeError):
                port = orjson.loads(line).get("port")
    if port is None:
        raise RuntimeError("the worker logged no http_listening port")
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    events = 0.0
    for line in text.splitlines():
        if line.startswith("churnguard_events_consumed_total{") and f'topic="{topic}"' in line:
            events += float(line.rsplit(" ", 1)[1])
    return int(events)


def _installed(module: str) -> bool:
    # The peer runs in a child process: what this one imported (a test may have replaced
    # a module, whose __spec__ is then None and makes find_spec raise) does not matter.
    if module in sys.modules:
        return True
    return importlib.util.find_spec(module) is not None


def run_child(run: Run, name: str) -> PeerResult:
    group = f"{run.prefix}{name}"
    result = PeerResult(name, group=group, window_start=WINDOW_START[name])
    module, how = REQUIRES[name]
    if not _installed(module):
        result.error = f"{module} is not installed: {how}"
        result.finish(run.total, None)
        return result
    log_path = run.tmp / f"{name}.log"
    result_path = run.tmp / f"{name}.result.json"
    ends = {str(tp.partition): end for tp, end in run.ends.items()}
    argv = [sys.executable, "-m", "benchmarks.peers", "--child", name,
            "--bootstrap", run.bootstrap, "--topic", next(iter(run.ends)).topic,
            "--group", group, "--ends", orjson.dumps(ends).decode(),
            "--state-dir", str(run.tmp / f"{name}-state"), "--result", str(result_path),
            "--timeout", str(run.config.timeout_s)]
    cpu_before = children_cpu_s()
    with log_path.open("ab") as log_file:
        process = subprocess.Popen(argv, cwd=REPO, stdout=log_file, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        process.wait(timeout=run.config.timeout_s + EXIT_GRACE_S)
    except subprocess.TimeoutExpired:
        result.error = (f"still running after {run.config.timeout_s + EXIT_GRACE_S:.0f}s; "
                        f"its log: {log_path}\n{log_tail(log_path)}")
    finally:
        _stop_group(process)
    result.cpu_total_s = children_cpu_s() - cpu_before
    cpu_s = None
    if process.returncode == MISSING_PACKAGE_EXIT:
        result.error = log_tail(log_path, 1)
    elif result_path.exists():
        child = orjson.loads(result_path.read_bytes())
        result.events = child["events"]
        result.wall_s = child["wall_s"]
        result.committed_s = child["committed_s"]
        cpu_s = child["cpu_s"]
        result.peak_rss_mib = child["peak_rss_kib"] / 1024
        if child["error"]:
            result.error = f"{child['error']}; its log: {log_path}"
    if result.error is None and process.returncode != 0:
        result.error = (f"exited with code {process.returncode}; its log: {log_path}\n"
                        f"{log_tail(log_path)}")
    if result.error is None and not result_path.exists():
        result.error = f"wrote no result; its log: {log_path}\n{log_tail(log_path)}"
    result.committed = committed_events(run.bootstrap, group, run.ends)
    result.state_topics = group_topics(run.bootstrap, group)
    result.finish(run.total, cpu_s)
    return result


def _stop_group(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL whatever is left of the child's process group (it has exited or timed out)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    if process.poll() is None:
        process.wait(timeout=10)


# -- the peers, each in its child process ------------------------------------------------


Counters = dict[str, Any]


def update_counters(current: Counters | None, event: dict[str, Any]) -> Counters:
    """A customer's counters after one more event (every peer but churnguard applies this)."""
    if current is None:
        current = {"events": 0, "purchases": 0, "amount": 0.0, "last_seen": ""}
    current["events"] += 1
    if event.get("type") == "purchase":
        current["purchases"] += 1
        current["amount"] += float(event.get("amount") or 0.0)
    seen = event.get("occurred_at") or ""
    current["last_seen"] = max(current["last_seen"], seen)
    return current


def _cpu_self_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass
class ChildConfig:
    bootstrap: str
    topic: str
    group: str
    ends: dict[int, int]
    state_dir: Path
    result: Path
    timeout_s: float

    @property
    def total(self) -> int:
        return sum(self.ends.values())

    def ends_tp(self) -> Ends:
        return {TopicPartition(self.topic, p): end for p, end in self.ends.items()}


class Meter:
    """Counts a peer's events and times its window (first record to last event)."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.count = 0
        self.t0: float | None = None
        self.cpu0 = 0.0
        self.wall_s: float | None = None
        self.cpu_s: float | None = None
        self.committed_s: float | None = None

    def begin(self) -> None:
        if self.t0 is None:
            self.t0 = time.perf_counter()
            self.cpu0 = _cpu_self_s()

    def end(self) -> None:
        if self.t0 is not None and self.wall_s is None:
            self.wall_s = time.perf_counter() - self.t0
            self.cpu_s = _cpu_self_s() - self.cpu0

    def committed(self) -> None:
        if self.t0 is not None:
            self.committed_s = time.perf_counter() - self.t0

    def write(self, path: Path, error: str | None = None) -> None:
        if error is None and self.count != self.total:
            error = f"consumed {self.count} of {self.total} events"
        body = {"events": self.count, "wall_s": self.wall_s, "cpu_s": self.cpu_s,
                "committed_s": self.committed_s,
                "peak_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                "error": error}
        partial = path.with_suffix(".partial")
        partial.write_bytes(orjson.dumps(body))
        partial.replace(path)


def child_quix(cfg: ChildConfig) -> None:
    from quixstreams import Application

    meter = Meter(cfg.total)
    app = Application(
        broker_address=cfg.bootstrap,
        consumer_group=cfg.group,
        auto_offset_reset="earliest",
        state_dir=cfg.state_dir,
        loglevel="WARNING",
        consumer_extra_config={"session.timeout.ms": int(SESSION_TIMEOUT_S * 1000),
                               "heartbeat.interval.ms": 1000},
    )
    topic = app.topic(cfg.topic, key_deserializer="bytes", value_deserializer="json")
    sdf = app.dataframe(topic)

    def step(value: dict[str, Any], state: State[str, Counters]) -> dict[str, Any]:
        if meter.t0 is None:
            meter.begin()
        state.set("c", update_counters(state.get("c"), value))
        meter.count += 1
        if meter.count == meter.total:
            meter.end()
        return value

    sdf = sdf.apply(step, stateful=True)
    # Stops after the N-th output (one per event) and commits its checkpoint on the way out;
    # the timeout (no new message for that long) stops a run that would never get there.
    app.run(count=cfg.total, timeout=min(60.0, cfg.timeout_s), collect=False)
    meter.committed()
    meter.write(cfg.result)


def child_faust(cfg: ChildConfig) -> None:
    import faust

    meter = Meter(cfg.total)
    partitions = len(cfg.ends)
    app = faust.App(
        cfg.group,
        broker=f"kafka://{cfg.bootstrap}",
        store="rocksdb://",
        datadir=str(cfg.state_dir),
        topic_partitions=partitions,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=SESSION_TIMEOUT_S,
        broker_rebalance_timeout=SESSION_TIMEOUT_S,
        broker_heartbeat_interval=1.0,
        web_enabled=False,
        autodiscover=False,
    )
    topic = app.topic(cfg.topic, key_type=bytes, value_type=bytes, key_serializer="raw",
                      value_serializer="raw")
    table = app.Table("customers", key_type=bytes, value_type=bytes, partitions=partitions,
                      default=None)
    loads, dumps = orjson.loads, orjson.dumps
    done = asyncio.Event()

    def finish(error: str | None = None) -> None:
        meter.write(cfg.result, error)
        os.kill(os.getpid(), signal.SIGTERM)  # the worker's graceful stop

    @app.agent(topic)
    async def counters(stream: Any) -> None:
        try:
            async for key, value in stream.items():
                if meter.t0 is None:
                    meter.begin()
                old = table.get(key)
                table[key] = dumps(update_counters(None if old is None else loads(old),
                                                   loads(value)))
                meter.count += 1
                if meter.count == meter.total:
                    meter.end()
                    done.set()
        except Exception as exc:
            # faust would restart the agent and go on: a benchmark peer fails instead.
            finish(f"the agent crashed: {exc!r}")
            raise

    @app.task  # type: ignore[untyped-decorator]
    async def commit_at_the_end() -> None:
        try:
            await asyncio.wait_for(done.wait(), timeout=cfg.timeout_s)
        except TimeoutError:
            finish(f"timed out after {cfg.timeout_s:.0f}s")
            return
        # The last event is acked once the agent asks for the next one: commit until the
        # group's committed offsets cover everything.
        ends = cfg.ends_tp()
        deadline = time.monotonic() + 30.0
        while time.monotonic() < deadline:
            await app.consumer.commit()
            if await asyncio.to_thread(committed_events, cfg.bootstrap, cfg.group,
                                       ends) >= cfg.total:
                meter.committed()
                finish()
                return
            await asyncio.sleep(POLL_S)
        finish("offsets not committed within 30s of the last event")

    worker = faust.Worker(app, loglevel="WARNING", quiet=True)
    worker.execute_from_commandline()


def child_aiokafka(cfg: ChildConfig) -> None:
    asyncio.run(_aiokafka(cfg))


async def _aiokafka(cfg: ChildConfig) -> None:
    from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener

    meter = Meter(cfg.total)

    class StartOnAssignment(ConsumerRebalanceListener):  # type: ignore[misc]
        """aiokafka fetches in the background as soon as it is assigned: the window starts
        there, not at the first (already buffered) batch."""

        async def on_partitions_revoked(self, revoked: object) -> None:
            pass

        async def on_partitions_assigned(self, assigned: object) -> None:
            meter.begin()

    consumer = AIOKafkaConsumer(
        bootstrap_servers=cfg.bootstrap,
        group_id=cfg.group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        session_timeout_ms=int(SESSION_TIMEOUT_S * 1000),
        rebalance_timeout_ms=int(SESSION_TIMEOUT_S * 1000),
        heartbeat_interval_ms=1000,
    )
    state: dict[bytes, Counters] = {}
    loads = orjson.loads
    error = None
    await consumer.start()
    try:
        consumer.subscribe(topics=[cfg.topic], listener=StartOnAssignment())
        deadline = time.monotonic() + cfg.timeout_s
        while meter.count < meter.total:
            if time.monotonic() > deadline:
                error = f"timed out after {cfg.timeout_s:.0f}s"
                break
            batches = await consumer.getmany(timeout_ms=1000)
            if not batches:
                continue
            meter.begin()
            for records in batches.values():
                for record in records:
                    key = record.key
                    state[key] = update_counters(state.get(key), loads(record.value))
                meter.count += len(records)
        meter.end()
        await consumer.commit()
        meter.committed()
    finally:
        await consumer.stop()
    meter.write(cfg.result, error)


CHILDREN: dict[str, Callable[[ChildConfig], None]] = {
    "quix": child_quix, "faust": child_faust, "aiokafka": child_aiokafka,
}


def child_main(name: str, args: argparse.Namespace) -> int:
    module, how = REQUIRES[name]
    if importlib.util.find_spec(module) is None:
        print(f"{module} is not installed: {how}", file=sys.stderr, flush=True)
        return MISSING_PACKAGE_EXIT
    cfg = ChildConfig(
        bootstrap=args.bootstrap, topic=args.topic, group=args.group,
        ends={int(p): int(end) for p, end in orjson.loads(args.ends).items()},
        state_dir=Path(args.state_dir), result=Path(args.result), timeout_s=args.timeout,
    )
    cfg.state_dir.mkdir(parents=True, exist_ok=True)
    CHILDREN[name](cfg)
    return 0


# -- the command ------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    d = PeersConfig()
    parser.add_argument("--events", type=int, default=d.events)
    parser.add_argument("--customers", type=int, default=d.customers)
    parser.add_argument("--partitions", type=int, default=d.partitions)
    parser.add_argument("--peers", default=",".join(PEERS),
                        help=f"comma-separated, in order (default: {','.join(PEERS)})")
    parser.add_argument("--timeout", type=float, default=d.timeout_s,
                        help="seconds per peer before it is FAILED")
    parser.add_argument("--json", type=Path, default=None, help="write the report here")
    parser.add_argument("--broker", default=None,
                        help="kafka://host:port of a running broker (default: embedded)")
    parser.add_argument("--keep", type=Path, default=None,
                        help="keep the peers' logs and stores in this directory")
    # A peer's own process (started by the benchmark, not by hand).
    parser.add_argument("--child", choices=tuple(CHILDREN), help=argparse.SUPPRESS)
    for name in ("--bootstrap", "--topic", "--group", "--ends", "--state-dir", "--result"):
        parser.add_argument(name, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child_main(args.child, args)
    exit_on_sigterm()
    peers = tuple(p.strip() for p in args.peers.split(",") if p.strip())
    if not peers or any(p not in PEERS for p in peers):
        parser.error(f"--peers: a comma-separated list of {', '.join(PEERS)}")
    config = PeersConfig(events=args.events, customers=args.customers,
                         partitions=args.partitions, peers=peers, timeout_s=args.timeout)
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
    report = run_peers(config, broker_url=args.broker, tmp=args.keep)
    print()
    print("\n".join(report.lines()))
    print("(one run on a shared machine: figures are noisy)")
    if args.json is not None:
        args.json.write_bytes(orjson.dumps(report.to_json(argv), option=orjson.OPT_INDENT_2))
        print(f"report written to {args.json}")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
