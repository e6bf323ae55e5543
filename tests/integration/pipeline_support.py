"""Support for the end-to-end tests: a worker child process with its own topics, group,
store and clock file, a producer and readers of the output topics."""

from __future__ import annotations

import itertools
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from kafka import KafkaConsumer, KafkaProducer

from churnguard.access_tokens import ROLES, AccessToken, new_token
from churnguard.clocks import FileClock
from churnguard.core.clock import rfc3339
from churnguard.processes import start_worker, stop_process_group, wait_ready
from connectors.embedded_broker import EmbeddedBroker
from streams.settings import Settings, TopicNames
from streams.topology import ensure_all_topics

DEADLINE_S = 60.0
_names = itertools.count()

# The test workers' access tokens (docs/security.md): one per role, and an agent who sees
# only account manager am-alice's customers. name -> (token, what the worker stores).
TOKENS: dict[str, tuple[str, AccessToken]] = {
    role: new_token(f"test-{role}", [role]) for role in ROLES}
TOKENS["alice"] = new_token("test-alice", ["agent"], account_manager="am-alice")


def token(name: str) -> str:
    return TOKENS[name][0]


def wait_for(what: str, check: Callable[[], bool], timeout: float = DEADLINE_S) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)  # polls state another process produces: no event to await here
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class Pipeline:
    """One isolated churnguard deployment on the shared embedded broker."""

    def __init__(self, broker: EmbeddedBroker, tmp: Path, now: float, **overrides: Any) -> None:
        """`overrides`: settings of this worker (e.g. `clock_file=None`: the wall clock)."""
        name = f"t{next(_names)}-{int(time.time() * 1000) % 10**8}"
        self.tmp = tmp
        tmp.mkdir(parents=True, exist_ok=True)
        self.clock_file = tmp / "clock"
        FileClock.set(self.clock_file, now)
        self.settings = Settings(
            broker=broker.url,
            app_id=f"cg-{name}",
            partitions=4,
            embedded_broker=True,
            store_dir=tmp / "store",
            topics=TopicNames().with_prefix(f"{name}."),
            clock_file=self.clock_file,
            tick_interval_s=0.1,
            session_timeout_s=6.0,
            rebalance_timeout_s=6.0,
            web_port=0,  # each worker's endpoints on a free port (logged: http_listening)
            web_tokens=tuple(stored for _, stored in TOKENS.values()),
        ).model_copy(update=overrides)
        self.topics = self.settings.topics
        ensure_all_topics(self.settings)
        self.producer = KafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=1)
        self.reader = KafkaConsumer(
            self.topics.notifications, self.topics.tasks, self.topics.coupons,
            self.topics.profile_updates, self.topics.scores, self.topics.dlq,
            bootstrap_servers=broker.bootstrap, auto_offset_reset="earliest",
            enable_auto_commit=False, group_id=None,
        )
        self.records: dict[str, list[dict[str, Any]]] = {}
        # action_id -> its record's timestamp (ms; CreateTime: when the worker produced it).
        self.stamps: dict[str, int] = {}
        self.worker: subprocess.Popen[bytes] | None = None
        self.others: list[subprocess.Popen[bytes]] = []
        self.log_path = tmp / "worker.log"

    # -- the worker --------------------------------------------------------------------

    def start(self) -> None:
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        self.worker = start_worker(self.settings, self.log_path)
        wait_ready(self.log_path, self.worker, timeout_s=DEADLINE_S, after=offset)

    def stop(self, *, kill: bool = False) -> None:
        if self.worker is not None:
            stop_process_group(self.worker, kill=kill)
            self.worker = None

    def start_another(self, name: str) -> subprocess.Popen[bytes]:
        """A second worker of the same group (its own store and log): a rebalance."""
        settings = self.settings.model_copy(update={"store_dir": self.tmp / f"store-{name}"})
        log_path = self.tmp / f"worker-{name}.log"
        process = start_worker(settings, log_path)
        self.others.append(process)
        wait_ready(log_path, process, timeout_s=DEADLINE_S)
        return process

    def set_clock(self, moment: float) -> None:
        FileClock.set(self.clock_file, moment)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def logged(self, event: str) -> list[dict[str, Any]]:
        """The worker's log records of this event (structlog JSON lines)."""
        found = []
        for line in self.log().splitlines():
            if f'"{event}"' in line:
                record = orjson.loads(line)
                if record.get("event") == event:
                    found.append(record)
        return found

    def http_port(self) -> int:
        """The port of the worker's endpoints (it listens on a free one: web_port=0), as
        its last start logged it."""
        for line in reversed(self.log().splitlines()):
            if '"http_listening"' in line:
                return int(orjson.loads(line)["port"])
        raise AssertionError("the worker logged no http_listening")

    # -- input and output --------------------------------------------------------------

    def send(self, topic: str, value: dict[str, Any] | bytes, key: bytes | None = None) -> None:
        raw = value if isinstance(value, bytes) else orjson.dumps(value)
        if key is None and isinstance(value, dict):
            key = str(value["customer_id"]).encode()
        self.producer.send(topic, key=key, value=raw)

    def flush(self) -> None:
        self.producer.flush(timeout=10)

    def poll(self) -> None:
        for messages in self.reader.poll(timeout_ms=100).values():
            for message in messages:
                record = orjson.loads(message.value)
                self.records.setdefault(message.topic, []).append(record)
                if "action_id" in record:
                    self.stamps.setdefault(record["action_id"], message.timestamp)

    def actions(self) -> list[dict[str, Any]]:
        self.poll()
        topics = (self.topics.notifications, self.topics.tasks, self.topics.coupons,
                  self.topics.profile_updates)
        return [r for t in topics for r in self.records.get(t, [])]

    def of(self, topic: str) -> list[dict[str, Any]]:
        self.poll()
        return list(self.records.get(topic, []))

    def close(self) -> None:
        self.stop()
        for process in self.others:
            stop_process_group(process)
        self.producer.close(timeout=5)
        self.reader.close()


def http_get(port: int, path: str, as_: str | None = "admin", *,
             bearer: str | None = None, body: bytes | None = None) -> tuple[int, bytes]:
    """GET one of a worker's endpoints (POST `body` when given) with the token of
    TOKENS[as_] (None: no token) or the `bearer` token given: (status, body), error
    statuses included."""
    presented = bearer if bearer is not None else None if as_ is None else token(as_)
    headers = {} if presented is None else {"Authorization": f"Bearer {presented}"}
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers,
                                     data=body, method="GET" if body is None else "POST")
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def customer_history(customer: str, start: float) -> list[dict[str, Any]]:
    """A profile (with personal data), a purchase and an opened ticket from `start` on."""
    return [
        {"type": "profile", "event_id": f"{customer}-p", "customer_id": customer,
         "occurred_at": rfc3339(start), "tier": "standard", "account_manager": "am-alice",
         "birthday": "1990-04-01", "email": "someone@example.com"},
        {"type": "purchase", "event_id": f"{customer}-o1", "customer_id": customer,
         "occurred_at": rfc3339(start + 60), "order_id": "O1", "amount": "120",
         "currency": "EUR"},
        {"type": "ticket", "event_id": f"{customer}-t1", "customer_id": customer,
         "occurred_at": rfc3339(start + 120), "ticket_id": "T1", "status": "opened",
         "priority": "high"},
    ]


def customer_view(port: int, customer: str) -> tuple[int, Any]:
    """The customer's 360 view, as an admin: (status, decoded body)."""
    status, body = http_get(port, f"/customers/{customer}")
    return status, orjson.loads(body)


def customers_counted(port: int) -> int:
    """The census's customers (-1 while a partition's census is still being counted)."""
    _, body = http_get(port, "/segments")
    segments = orjson.loads(body)
    return -1 if segments["partial"] else sum(segments["bands"].values())
