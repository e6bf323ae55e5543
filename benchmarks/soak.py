"""Soak: steady load over many customers into one live churnguard worker, on the embedded
broker; the worker's memory over time and the state's size per customer at the end.

    python -m benchmarks.soak [--customers 1000000] [--minutes 10] [--rate 2000]
        [--distribution uniform|zipf] [--partitions 4] [--linger-ms 5] [--json OUT]

Once the worker is ready, events are made on the fly (the workload's mix: 55 % logins, 30 %
purchases, 10 % tickets opened then closed, 5 % profile updates; the customer drawn uniformly
from `--customers` ids, or Zipf-like with weight 1/(i+1)), `occurred_at` and the record
timestamp the send time, and sent to the combined topic at `--rate` by one producer on a
schedule on the monotonic clock (benchmarks.latency.Pacer). The default 2,000 events/s is a
fifth of what one worker does at best on the 2-core machine (~10,000/s), so it keeps up.

Every `--sample-every` s (10) the worker's resident set (VmRSS in /proc/PID/status, summed
over its process group), its CPU share since the previous sample and the group's lag
(acknowledged produced records - committed) are sampled; the report gives the samples and the
least-squares slope of RSS in MB/min over the second half (after warm-up; the first half's
and the whole run's too). The customers touched keep growing under a uniform draw, so a slope
is expected: the question is how much of it stays. RocksDB's memory (block cache, memtables,
index and filter blocks of every partition together) fills up to CHURNGUARD_ROCKSDB_MEMORY_MB
(64 MiB by default) over the first minutes, as the customers stored grow: a slope measured
before that plateau does not tell a leak from it. On the embedded broker (memory storage),
the broker's own CPU grows with the record batches it holds: with the producer's default
5 ms linger (~800 batches/s at 1,000 or 2,000 events/s) it stops serving the worker's
fetches in time after ~4 minutes on 2 cores (lag grows while the worker idles), which
flattens the worker's RSS for the wrong reason; `--linger-ms 100` (~40 batches/s) keeps it
serving for 10 minutes. Read the lag column with the RSS.

At the end (everything committed) the worker is stopped (SIGTERM) and its RocksDB partitions
of the state table are opened read-only: customer state values (every key but faust's offset
key and the keys starting with NUL — the due index, census, KPI aggregates and re-index
cursor of churnguard/due_index.py) give the value bytes per customer (median, p99, mean,
max); the store directory's total size on disk, by kind of file, per customer stored.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

import orjson
from kafka import KafkaAdminClient
from rocksdict import AccessType, Options, Rdict

from benchmarks.harness import workspace
from benchmarks.latency import (
    Acked,
    Dist,
    Pacer,
    Stamps,
    bench_settings,
    committed_offsets,
    covered,
    fmt,
    producer_for,
    run_meta,
    run_name,
    wait_committed,
    wall_ms,
    write_json,
)
from churnguard import due_index
from churnguard.processes import exit_on_sigterm, start_worker, stop_process_group, wait_ready
from connectors.embedded_broker import EmbeddedBroker
from streams.topology import STATE_TABLE, ensure_all_topics

Distribution = Literal["uniform", "zipf"]
# faust's own bookkeeping key in every partition's RocksDB (faust.stores.rocksdb.Store).
FAUST_OFFSET_KEY = b"__faust\x00offset__"
MB = 1024 * 1024
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# -- events on the fly -------------------------------------------------------------------------


class LiveEvents:
    """The workload's mix over `customers` ids, one event at a time, stamped when sent."""

    def __init__(self, customers: int, distribution: Distribution, seed: int) -> None:
        self.customers = customers
        self.distribution = distribution
        self.rng = random.Random(seed)
        self.seed = seed
        self.made = 0
        self.open_tickets: dict[int, int] = {}
        self.touched = bytearray(customers)
        self.distinct = 0
        self._log_span = math.log(customers + 1)

    def pick(self) -> int:
        u = self.rng.random()
        if self.distribution == "uniform":
            return min(self.customers - 1, int(u * self.customers))
        # Continuous 1/x on [1, N+1): customer i with probability ~ log((i+2)/(i+1)).
        return min(self.customers - 1, int(math.exp(u * self._log_span)) - 1)

    def next(self, occurred_at: str) -> tuple[bytes, bytes]:
        n = self.made
        self.made += 1
        customer = self.pick()
        if not self.touched[customer]:
            self.touched[customer] = 1
            self.distinct += 1
        cid = f"cust-{customer:07d}"
        event: dict[str, object] = {"event_id": f"soak-{self.seed}-{n}", "customer_id": cid,
                                    "occurred_at": occurred_at}
        draw = self.rng.random()
        if draw < 0.55:
            event.update(type="login", channel="web")
        elif draw < 0.85:
            event.update(type="purchase", order_id=f"o-{n}",
                         amount=round(self.rng.uniform(5, 500), 2), currency="EUR")
        elif draw < 0.95:
            opened = self.open_tickets.pop(customer, None)
            if opened is not None:
                event.update(type="ticket", ticket_id=f"t-{opened}", status="closed",
                             satisfaction=self.rng.randint(1, 5))
            else:
                self.open_tickets[customer] = n
                event.update(type="ticket", ticket_id=f"t-{n}", status="opened",
                             priority=self.rng.choice(("low", "normal", "high", "urgent")))
        else:
            event.update(type="profile", tier="standard", account_manager=f"am-{customer % 50}")
        return cid.encode(), orjson.dumps(event)


# -- the worker's process ----------------------------------------------------------------------


def group_usage(pgid: int) -> tuple[int, int, int]:
    """(VmRSS bytes, user+sys CPU clock ticks, processes) of a process group."""
    rss = ticks = count = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
            fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) "
            if int(fields[2]) != pgid:  # pgrp
                continue
            status = Path(entry.path, "status").read_text()
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile
        count += 1
        ticks += int(fields[11]) + int(fields[12])  # utime, stime
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                rss += int(line.split()[1]) * 1024
                break
    return rss, ticks, count


@dataclass(frozen=True, slots=True)
class Sample:
    t_s: float  # since production started
    rss_mb: float
    cpu_pct: float | None  # of one core, since the previous sample
    processes: int
    produced: int
    committed: int | None
    customers_touched: int

    @property
    def lag(self) -> int | None:
        return None if self.committed is None else self.produced - self.committed


class Sampler:
    """RSS, CPU and lag every `every_s` in a thread of its own (its own admin client)."""

    def __init__(self, bootstrap: str, group: str, pgid: int, acked: Acked,
                 touched: Callable[[], int], *, started: float, every_s: float) -> None:
        self.bootstrap = bootstrap
        self.group = group
        self.pgid = pgid
        self.acked = acked
        self.touched = touched
        self.started = started
        self.every_s = every_s
        self.samples: list[Sample] = []
        self._last: tuple[float, int] | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="soak-sampler", daemon=True)
        self._admin: Any = None

    def start(self) -> Sampler:
        self._admin = KafkaAdminClient(bootstrap_servers=self.bootstrap,
                                       client_id="cg-bench-soak")
        self.sample()
        self._thread.start()
        return self

    def sample(self) -> None:
        now = time.monotonic()
        rss, ticks, processes = group_usage(self.pgid)
        cpu = None
        if self._last is not None and now > self._last[0]:
            cpu = 100.0 * (ticks - self._last[1]) / CLOCK_TICKS / (now - self._last[0])
        self._last = (now, ticks)
        ends = self.acked.snapshot()
        offsets = committed_offsets(self._admin, self.group)
        self.samples.append(Sample(
            now - self.started, rss / MB, cpu, processes, sum(ends.values()),
            None if offsets is None else covered(ends, offsets), self.touched()))

    def _run(self) -> None:
        while not self._stop.wait(self.every_s - (time.monotonic() - self.started)
                                  % self.every_s):
            self.sample()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    def close(self) -> None:
        self.stop()
        if self._admin is not None:
            self._admin.close()
            self._admin = None


def slope_mb_per_min(samples: Sequence[Sample]) -> float | None:
    """Least-squares slope of RSS over time, MB/min (None under two samples)."""
    if len(samples) < 2:
        return None
    xs = [s.t_s / 60 for s in samples]
    ys = [s.rss_mb for s in samples]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        return None
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx


# -- the store at the end ----------------------------------------------------------------------


@dataclass
class StoreSizes:
    partitions: int = 0
    customers: int = 0
    value_bytes: Dist = field(default_factory=lambda: Dist.of([]))
    customer_value_bytes: int = 0  # sum
    key_bytes: int = 0  # customer keys, sum
    # NUL-prefixed keys by kind (due, census, insights, reindex, other): (count, value bytes)
    other_keys: dict[str, tuple[int, int]] = field(default_factory=dict)
    dir_bytes: int = 0  # every file under the store directory (apparent size)
    dir_allocated: int = 0  # blocks allocated on disk
    by_file_kind: dict[str, int] = field(default_factory=dict)  # sst, wal, other

    @property
    def dir_bytes_per_customer(self) -> float | None:
        return self.dir_bytes / self.customers if self.customers else None


def _kind(key: bytes) -> str:
    for name, prefix in (("due", due_index.PREFIX), ("census", due_index.CENSUS),
                         ("insights", due_index.INSIGHTS),
                         ("reindex", due_index.REINDEX_CURSOR)):
        if key.startswith(prefix):
            return name
    return "other"


def measure_store(store_dir: Path) -> StoreSizes:
    """Open every partition of the state table read-only (the worker stopped) and size it."""
    sizes = StoreSizes()
    values: list[float] = []
    for path in sorted(store_dir.rglob(f"{STATE_TABLE}-*.db")):
        if not path.is_dir():
            continue
        sizes.partitions += 1
        db = Rdict(str(path), options=Options(raw_mode=True),
                   access_type=AccessType.read_only())
        try:
            for raw_key, raw_value in db.items():
                # raw mode: bytes keys and values
                key, value = cast("bytes", raw_key), cast("bytes", raw_value)
                if key == FAUST_OFFSET_KEY:
                    continue
                if key.startswith(b"\x00"):
                    kind = _kind(key)
                    count, total = sizes.other_keys.get(kind, (0, 0))
                    sizes.other_keys[kind] = (count + 1, total + len(value))
                    continue
                values.append(len(value))
                sizes.key_bytes += len(key)
        finally:
            db.close()
    sizes.customers = len(values)
    sizes.customer_value_bytes = int(sum(values))
    sizes.value_bytes = Dist.of(values)
    for file in store_dir.rglob("*"):
        if file.is_file():
            stat = file.stat()
            sizes.dir_bytes += stat.st_size
            sizes.dir_allocated += stat.st_blocks * 512
            kind = ("sst" if file.suffix == ".sst" else
                    "wal" if file.suffix == ".log" else "other")
            sizes.by_file_kind[kind] = sizes.by_file_kind.get(kind, 0) + stat.st_size
    return sizes


# -- the soak ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SoakConfig:
    customers: int = 1_000_000
    minutes: float = 10.0
    rate: float = 2_000.0
    partitions: int = 4
    distribution: Distribution = "uniform"
    sample_every_s: float = 10.0
    seed: int = 1
    linger_ms: int = 5
    commit_interval_s: float = 2.8  # the worker's default
    ready_timeout_s: float = 120.0
    drain_timeout_s: float = 300.0

    @property
    def events(self) -> int:
        return max(1, round(self.rate * self.minutes * 60))


@dataclass
class SoakReport:
    config: SoakConfig
    ready_s: float = 0.0
    produced: int = 0
    send_s: float = 0.0
    behind_max_ms: float = 0.0
    produce_failures: int = 0
    produce_error: str | None = None
    customers_touched: int = 0
    samples: list[Sample] = field(default_factory=list)
    input_records: int = 0
    committed_at_end: int = 0
    committed_final: int = 0
    drain_s: float | None = None
    worker_alive: bool = True
    worker_exit: int | None = None
    store: StoreSizes = field(default_factory=StoreSizes)

    @property
    def achieved_rate(self) -> float:
        return self.produced / self.send_s if self.send_s > 0 else 0.0

    def _during(self) -> list[Sample]:
        return [s for s in self.samples if s.t_s <= self.send_s + 1.0]

    def second_half(self) -> list[Sample]:
        return [s for s in self._during() if s.t_s >= self.send_s / 2]

    def first_half(self) -> list[Sample]:
        return [s for s in self._during() if s.t_s <= self.send_s / 2]

    @property
    def slope(self) -> float | None:
        return slope_mb_per_min(self.second_half())

    @property
    def ok(self) -> bool:
        return (self.worker_alive and self.produce_failures == 0 and self.drain_s is not None
                and len(self.samples) >= 2 and self.store.customers > 0)

    def lines(self) -> list[str]:
        c = self.config
        out = [
            f"soak: {c.rate:,.0f} events/s for {c.minutes:g} min over {c.customers:,} "
            f"customers ({c.distribution}), {c.partitions} partitions, 1 worker; ready after "
            f"{self.ready_s:.1f} s",
            f"sent {self.produced:,} events in {self.send_s:.0f} s = {self.achieved_rate:,.0f}/s"
            f" (furthest behind schedule {self.behind_max_ms:,.0f} ms); produce failures "
            f"{self.produce_failures}{': ' + self.produce_error if self.produce_error else ''}"
            f"; {self.customers_touched:,} customers touched",
            "",
        ]
        rows = [["t s", "RSS MB", "CPU %", "lag", "customers"]]
        rows += [[f"{s.t_s:.0f}", f"{s.rss_mb:.1f}", fmt(s.cpu_pct), fmt(s.lag),
                  f"{s.customers_touched:,}"] for s in self.samples]
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        for n, r in enumerate(rows):
            out.append("  ".join(cell.rjust(w) for cell, w in zip(r, widths, strict=True)))
            if n == 0:
                out.append("  ".join("-" * w for w in widths))
        st = self.store
        v = st.value_bytes
        out += [
            "",
            f"RSS slope: {fmt(self.slope, '{:+.2f}')} MB/min over the second half "
            f"({len(self.second_half())} samples); first half "
            f"{fmt(slope_mb_per_min(self.first_half()), '{:+.2f}')}, whole run "
            f"{fmt(slope_mb_per_min(self._during()), '{:+.2f}')}",
            f"keeping up: {self.input_records:,} input records; lag "
            f"{self.input_records - self.committed_at_end:,} when production ended; "
            + (f"all committed {self.drain_s:.1f} s later" if self.drain_s is not None
               else f"NOT all committed ({self.committed_final:,})")
            + ("" if self.worker_alive else "; the worker DIED")
            + f"; worker exit code {self.worker_exit}",
            f"state: {st.customers:,} customers in {st.partitions} partitions; value bytes "
            f"median {fmt(v.p50)}, p99 {fmt(v.p99)}, mean {fmt(v.mean)}, max {fmt(v.max)}; "
            f"{st.customer_value_bytes / MB:,.1f} MB of values, {st.key_bytes / MB:,.1f} MB "
            "of keys",
            "other keys: " + (", ".join(f"{k} {n:,} ({b / 1024:,.0f} KiB)"
                                        for k, (n, b) in sorted(st.other_keys.items()))
                              or "none"),
            f"store directory: {st.dir_bytes / MB:,.1f} MB ("
            + ", ".join(f"{k} {b / MB:,.1f} MB" for k, b in sorted(st.by_file_kind.items()))
            + f"; {st.dir_allocated / MB:,.1f} MB allocated) = "
            f"{fmt(st.dir_bytes_per_customer)} bytes per customer",
        ]
        return out

    def to_json(self, argv: Sequence[str]) -> dict[str, Any]:
        st = self.store
        return {
            **run_meta("benchmarks.soak", argv),
            "config": asdict(self.config),
            "ok": self.ok,
            "ready_s": round(self.ready_s, 2),
            "produced": self.produced,
            "send_s": round(self.send_s, 2),
            "achieved_rate": round(self.achieved_rate, 1),
            "behind_max_ms": round(self.behind_max_ms, 1),
            "produce_failures": self.produce_failures,
            "customers_touched": self.customers_touched,
            "samples": [{**asdict(s), "lag": s.lag} for s in self.samples],
            "rss_slope_mb_per_min": {
                "second_half": self.slope,
                "first_half": slope_mb_per_min(self.first_half()),
                "whole_run": slope_mb_per_min(self._during()),
            },
            "input_records": self.input_records,
            "lag_at_end": self.input_records - self.committed_at_end,
            "committed_final": self.committed_final,
            "drain_s": None if self.drain_s is None else round(self.drain_s, 2),
            "worker_alive": self.worker_alive,
            "worker_exit": self.worker_exit,
            "store": {
                "partitions": st.partitions,
                "customers": st.customers,
                "value_bytes": asdict(st.value_bytes),
                "customer_value_bytes": st.customer_value_bytes,
                "customer_key_bytes": st.key_bytes,
                "other_keys": {k: {"count": n, "value_bytes": b}
                               for k, (n, b) in sorted(st.other_keys.items())},
                "dir_bytes": st.dir_bytes,
                "dir_allocated_bytes": st.dir_allocated,
                "dir_bytes_by_file_kind": st.by_file_kind,
                "dir_bytes_per_customer": st.dir_bytes_per_customer,
            },
            "definitions": {
                "rss_mb": "VmRSS of the worker's process group (MiB)",
                "cpu_pct": "user+sys CPU of the worker's process group since the previous "
                           "sample, % of one core",
                "lag": "acknowledged produced records - records covered by the group's "
                       "committed offsets",
                "rss_slope_mb_per_min": "least-squares slope of rss_mb over the samples "
                                        "taken while sending (second half: t >= send_s/2)",
                "value_bytes": "customer state values in the state table's RocksDB "
                               "(not the faust offset key nor NUL-prefixed index keys)",
            },
        }


def run_soak(
    config: SoakConfig,
    *,
    broker: EmbeddedBroker | None = None,
    tmp: Path | None = None,
    say: Callable[[str], None] = print,
) -> SoakReport:
    report = SoakReport(config)
    with workspace("cg-soak-", None, broker, tmp) as (url, where):
        settings = bench_settings(url, where, run_name("soak"), partitions=config.partitions,
                                  commit_interval_s=config.commit_interval_s)
        ensure_all_topics(settings)
        log_path = where / "worker.log"
        worker = start_worker(settings, log_path)
        try:
            began = time.monotonic()
            wait_ready(log_path, worker, timeout_s=config.ready_timeout_s)
            report.ready_s = time.monotonic() - began
            say(f"worker ready after {report.ready_s:.1f} s; sending {config.rate:,.0f}/s for "
                f"{config.minutes:g} min")
            _produce(config, settings.bootstrap, settings.topics.events, settings.app_id,
                     worker.pid, report, alive=lambda: worker.poll() is None, say=say)
            report.worker_alive = worker.poll() is None
        finally:
            stop_process_group(worker, grace_s=60.0)
        report.worker_exit = worker.returncode
        say("worker stopped; measuring its store")
        report.store = measure_store(settings.store_dir)
    return report


def _produce(config: SoakConfig, bootstrap: str, topic: str, group: str, pgid: int,
             report: SoakReport, *, alive: Callable[[], bool],
             say: Callable[[str], None]) -> None:
    acked = Acked()
    live = LiveEvents(config.customers, config.distribution, config.seed)
    producer = producer_for(bootstrap, config.linger_ms)
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="cg-bench")
    stamps = Stamps()
    sampler: Sampler | None = None
    try:
        pacer = Pacer(config.rate, config.events)
        sampler = Sampler(bootstrap, group, pgid, acked, lambda: live.distinct,
                          started=pacer.start, every_s=config.sample_every_s).start()
        sent = 0
        progress = pacer.start + 60
        send = producer.send
        while sent < config.events:
            due = pacer.due(sent)
            while sent < due:
                ms = wall_ms()
                key, value = live.next(stamps.text(ms).decode())
                send(topic, key=key, value=value, timestamp_ms=ms).add_callback(
                    acked.ok).add_errback(acked.fail)
                sent += 1
            if not alive():
                say("the worker died; stopping")
                break
            if time.monotonic() >= progress:
                progress += 60
                last = sampler.samples[-1]
                say(f"{last.t_s:.0f} s: {sent:,} sent, RSS {last.rss_mb:.0f} MB, "
                    f"lag {fmt(last.lag)}, {live.distinct:,} customers")
            pacer.wait(sent)
        report.send_s = time.monotonic() - pacer.start
        report.produced = sent
        report.behind_max_ms = pacer.behind_max_s * 1000
        report.customers_touched = live.distinct
        producer.flush(timeout=120)
        ends = acked.snapshot()
        report.input_records = sum(ends.values())
        offsets = committed_offsets(admin, group)
        report.committed_at_end = 0 if offsets is None else covered(ends, offsets)
        report.committed_final, report.drain_s = wait_committed(
            admin, group, ends, timeout_s=config.drain_timeout_s, alive=alive)
        sampler.stop()
        sampler.sample()  # once more, everything committed
    finally:
        if sampler is not None:
            sampler.close()
            report.samples = sampler.samples
        producer.close(timeout=10)
        admin.close()
        report.produce_failures = acked.failures
        report.produce_error = acked.first_error


# -- command line -----------------------------------------------------------------------------


def parse_config(argv: Sequence[str]) -> tuple[SoakConfig, Path | None]:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.soak", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=2_000.0, help="events/s (default 2000)")
    parser.add_argument("--distribution", choices=("uniform", "zipf"), default="uniform")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--sample-every", type=float, default=10.0, help="s (default 10)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--linger-ms", type=int, default=5,
                        help="producer linger (default 5); see above for 10-minute runs")
    parser.add_argument("--json", type=Path, default=None, help="write the report here")
    args = parser.parse_args(argv)
    if (args.customers < 1 or args.minutes <= 0 or args.rate <= 0 or args.partitions < 1
            or args.sample_every <= 0):
        parser.error("customers, minutes, rate, partitions and --sample-every must be positive")
    config = SoakConfig(customers=args.customers, minutes=args.minutes, rate=args.rate,
                        partitions=args.partitions, distribution=args.distribution,
                        sample_every_s=args.sample_every, seed=args.seed,
                        linger_ms=args.linger_ms)
    return config, args.json


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    config, json_path = parse_config(argv)
    exit_on_sigterm()
    report = run_soak(config)
    print("\n".join(report.lines()))
    if json_path is not None:
        write_json(json_path, report.to_json(argv))
        print(f"wrote {json_path}")
    return 0 if report.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
