"""Fuzz: hostile input records of every kind, mixed with valid ones, on every input topic, into
one worker; then the checks below. Exits 1 if any fails.

    python -m benchmarks.fuzz --records 100000

Hostile records: malformed and truncated JSON, non-UTF-8 bytes, empty values and tombstones,
JSON that is not an object, 1 MB and 70 KB values, 10,000-deep nesting, NaN / ±Infinity /
1e400 amounts, absurd and impossible dates, epoch-integer, space-separated and offset-less
timestamps, unknown currencies ("€€€"), keys that differ from customer_id or are missing,
unknown and mismatched `type`s, missing fields, control characters and oversized ids, bad
enums, 1,000 and 51 tags, 101 and 500 items. Valid ones: the benchmark workload, with
personal data in every field that may carry it (name, email and phone of profiles, unknown
fields, nested objects, items, the login channel), values at the contract's bounds (50 tags,
100 items, a 60 KB record, amount 1,000,000,000, 4 decimals, non-UTC offsets), repeated
event ids, and customers with 200 open tickets. Every personal value is a unique marker
(`Pat Q0000123zx Doe`, `pat.q0000123zx@mail.example`, `+1-555-0000123`) traceable to its
record.

Checks: the worker stays alive; every input offset is committed before the deadline (no
stall); DLQ records + applied (`events_applied` + `duplicates` of the worker's last
worker_stats line) = produced; every DLQ record has a reason, a known kind and the topic,
partition and offset of a produced record; exactly the hostile records are dead-lettered,
each with the kind the contract gives it; no personal marker in the worker's log, on any
output topic, in the DLQ (values decoded) or in the state changelog; and the actions and last
scores equal the reference (the same core, in-process, over the valid records at the pinned
clock).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import random
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson
from kafka import KafkaAdminClient

from benchmarks.chaos import route
from benchmarks.harness import (
    ActionCheck,
    Deployment,
    Expected,
    Markers,
    Offsets,
    OutRecord,
    Produced,
    ReadRecord,
    ScoreCheck,
    WorkerSlot,
    check_actions,
    check_scores,
    decode,
    expect,
    produce,
    read_topics,
    timestamp_ms,
    wait_quiet,
    workspace,
)
from benchmarks.workload import generate
from churnguard.core.clock import DAY, HOUR, parse_rfc3339, rfc3339
from churnguard.engine import build_engine
from churnguard.processes import exit_on_sigterm
from churnguard.replay import read_events
from connectors.embedded_broker import EmbeddedBroker

KNOWN_KINDS = frozenset({
    "malformed_json", "invalid_event", "unknown_type", "absurd_timestamp", "key_mismatch",
    "processing_error", "too_large",
})
# Where a personal marker is placed (benchmarks.harness.Markers): in a name/email/phone field
# (the default), in an unknown or free-text field, in another field of the event.
U, F = "u", "f"
READY_TIMEOUT_S = 180.0
STATS_WAIT_S = 25.0  # the worker logs worker_stats every 10 s


@dataclass
class FuzzConfig:
    records: int = 100_000
    customers: int | None = None  # default: records / 40
    partitions: int = 4
    seed: int = 1
    valid_share: float = 0.5
    days: float = 14.0
    clock_hours: float = 6.0
    deadline_s: float | None = None  # default: 90 s + 3 ms per record
    broker: str | None = None
    apache_kafka: bool = False


@dataclass
class Planned:
    """One record to produce and what the contract says must become of it."""

    topic: str
    key: bytes | None
    value: bytes | None
    timestamp_ms: int
    label: str
    fate: str  # valid | duplicate | invalid
    kind: str | None = None  # the DLQ kind of an invalid record
    event: dict[str, Any] | None = None  # valid and duplicate: the event, with `type`
    serial: int = -1  # of the personal markers in it (-1: none)

    @property
    def is_json(self) -> bool:
        if self.value is None:
            return False
        try:
            orjson.loads(self.value)
        except orjson.JSONDecodeError:
            return False
        return True


@dataclass
class Check:
    name: str
    ok: bool
    details: list[str] = field(default_factory=list)


@dataclass
class FuzzReport:
    config: FuzzConfig
    pinned: float = 0.0
    produced: Produced | None = None
    planned: Counter[str] = field(default_factory=Counter)  # fate -> records
    labels: Counter[tuple[str, str]] = field(default_factory=Counter)  # (fate, label)
    expected: Expected | None = None
    committed_s: float | None = None
    stats: dict[str, Any] | None = None
    dlq_records: int = 0
    actions: ActionCheck | None = None
    scores: ScoreCheck | None = None
    checks: list[Check] = field(default_factory=list)
    elapsed_s: float = 0.0
    log_path: Path | None = None

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]

    @property
    def ok(self) -> bool:
        return bool(self.checks) and not self.failures

    def lines(self) -> list[str]:
        c = self.config
        out = [f"fuzz: {c.records} records ({dict(self.planned)}), {c.customers} customers, "
               f"{c.partitions} partitions, seed {c.seed}; pinned clock {rfc3339(self.pinned)}"]
        hostile = sorted((label, n) for (fate, label), n in self.labels.items()
                         if fate == "invalid")
        out.append("hostile: " + ", ".join(f"{label} {n}" for label, n in hostile))
        special = sorted((label, n) for (fate, label), n in self.labels.items()
                         if fate != "invalid" and label != "workload")
        out.append("valid, at the bounds: " + ", ".join(f"{label} {n}" for label, n in special))
        if self.produced is not None:
            out.append(f"produced {self.produced.total} records in "
                       f"{self.produced.seconds:.1f}s")
        if self.committed_s is not None:
            out.append(f"all input offsets committed {self.committed_s:.1f}s after the worker "
                       "was ready")
        if self.stats is not None:
            s = self.stats
            out.append(f"worker_stats: events_applied {sum(s['events_applied'].values())}, "
                       f"duplicates {s['duplicates']}, dead_letters {s['dead_letters']}")
        out.append(f"DLQ records: {self.dlq_records}")
        if self.expected is not None:
            out.append(f"reference: {len(self.expected.actions)} actions for the valid records "
                       f"(churnguard.replay: {self.expected.replay_actions}, of which "
                       f"{self.expected.expired_live} expire live)")
        if self.actions is not None:
            out.append(self.actions.summary())
        if self.scores is not None:
            out.append(self.scores.summary())
        for check in self.checks:
            out.append(f"{'ok  ' if check.ok else 'FAIL'} {check.name}")
            out += [f"       {line}" for line in check.details[:12]]
            if len(check.details) > 12:
                out.append(f"       ... {len(check.details) - 12} more")
        out.append(f"{'OK' if self.ok else 'FAILED'} in {self.elapsed_s:.1f}s")
        return out


# -- the records ------------------------------------------------------------------------------


class Plan:
    """Builds the records: the valid stream in event-time order, hostile ones mixed in."""

    def __init__(self, config: FuzzConfig, deployment: Deployment, pinned: float) -> None:
        assert config.customers is not None
        self.config = config
        self.rng = random.Random(config.seed)
        self.topics = deployment.topics
        self.by_type = {"purchase": self.topics.purchases, "login": self.topics.logins,
                        "ticket": self.topics.tickets, "profile": self.topics.profiles}
        self.inputs = list(self.topics.inputs())
        self.pinned = pinned
        self.end = pinned - config.clock_hours * HOUR
        self.start = self.end - config.days * DAY
        self.customers = [f"cust-{n:07d}" for n in range(config.customers)]
        self.serial = 0

    def next_serial(self) -> int:
        self.serial += 1
        return self.serial

    # -- valid records ----------------------------------------------------------------------

    def build(self) -> list[Planned]:
        config = self.config
        valid_budget = int(config.records * config.valid_share)
        bulk_customers = max(1, config.records // 20_000)
        bulk = [self._bulk_tickets(c) for c in self.customers[-bulk_customers:]]
        bulk_events = [e for events in bulk for e in events]
        duplicates = max(1, valid_budget // 50)
        base_count = max(1, valid_budget - len(bulk_events) - duplicates)
        base = [orjson.loads(v) for _, v in generate(
            base_count, len(self.customers), days=config.days, seed=config.seed, end=self.end)]
        events = sorted(base + bulk_events, key=lambda e: parse_rfc3339(e["occurred_at"]))
        valid: list[Planned] = []
        for event in events:
            planned = self._valid(event)
            if str(event["event_id"]).startswith("bulk-"):
                planned.label = "open_tickets_200"
            valid.append(planned)
            if len(valid) < valid_budget and self.rng.random() < duplicates / len(events):
                valid.append(Planned(planned.topic, planned.key, planned.value,
                                     planned.timestamp_ms, "repeated_event_id", "duplicate",
                                     event=planned.event, serial=planned.serial))
        hostile_count = max(0, config.records - len(valid))
        hostile = [self._hostile(n) for n in range(hostile_count)]
        # Hostile records at random places of the valid stream (its order is kept).
        slots = sorted(self.rng.randrange(len(valid) + 1) for _ in hostile)
        merged: list[Planned] = []
        position = 0
        for slot, record in zip(slots, hostile, strict=True):
            merged += valid[position:slot]
            position = slot
            # Stamped like its neighbours: a producer's record timestamps do not go back.
            if valid:
                record.timestamp_ms = valid[max(0, slot - 1)].timestamp_ms
            merged.append(record)
        merged += valid[position:]
        return merged

    def _bulk_tickets(self, customer: str) -> list[dict[str, Any]]:
        """200 tickets opened by one customer and never closed."""
        step = (self.end - self.start) / 201
        return [{"type": "ticket", "event_id": f"bulk-{customer}-{i}", "customer_id": customer,
                 "occurred_at": rfc3339(self.start + (i + 0.5) * step + 0.123),
                 "ticket_id": f"bulk-{i}", "status": "opened",
                 "priority": ("low", "normal", "high", "urgent")[i % 4]} for i in range(200)]

    def _valid(self, event: dict[str, Any]) -> Planned:
        rng = self.rng
        serial = self.next_serial()
        customer = str(event["customer_id"])
        kind = event["type"]
        decorate = {"profile": self._profile, "purchase": self._purchase,
                    "login": self._login}.get(kind)
        label = decorate(event, serial) if decorate else "workload"
        if kind != "profile" and rng.random() < 0.3:
            # Unknown fields are ignored, wherever personal data hides in them.
            event["customer_name"] = Markers.name(serial, U)
            event["contact"] = {"email": Markers.email(serial), "phone": Markers.phone(serial),
                                "notes": [Markers.name(serial, U)]}
        if rng.random() < 0.05:
            # The same instant at another offset.
            moment = datetime.fromtimestamp(parse_rfc3339(event["occurred_at"]), UTC)
            zone = timezone(timedelta(hours=rng.choice((5.5, -8, 14, -12))))
            event["occurred_at"] = moment.astimezone(zone).isoformat(timespec="milliseconds")
            label = "offset_timestamp"
        if rng.random() < 0.003:
            event["notes"] = f"{Markers.name(serial, U)} " + "x" * 60_000
            label = "value_60k"
        stamp = timestamp_ms(str(event["occurred_at"]))
        if route(customer, "both", self.config.seed) == "combined":
            return Planned(self.topics.events, customer.encode(), orjson.dumps(event), stamp,
                           label, "valid", event=event, serial=serial)
        wire = {k: v for k, v in event.items() if k != "type"}
        return Planned(self.by_type[kind], customer.encode(), orjson.dumps(wire), stamp, label,
                       "valid", event=event, serial=serial)

    def _profile(self, event: dict[str, Any], serial: int) -> str:
        rng = self.rng
        event.update(name=Markers.name(serial), email=Markers.email(serial),
                     phone=Markers.phone(serial))
        if rng.random() < 0.3:
            event["birthday"] = (f"{rng.randint(1950, 2005)}-{rng.randint(1, 12):02d}-"
                                 f"{rng.randint(1, 28):02d}")
            event["signup_date"] = rfc3339(self.start - rng.uniform(0, 900) * DAY)[:10]
        if rng.random() < 0.1:
            event["tags"] = [f"tag-{i}" for i in range(50)]
            return "tags_50"
        return "workload"

    def _purchase(self, event: dict[str, Any], serial: int) -> str:
        roll = self.rng.random()
        if roll < 0.05:
            event["items"] = [{"sku": f"sku-{i}", "qty": 1} for i in range(99)]
            event["items"].append({"sku": "gift", "gift_note": f"for {Markers.name(serial, U)}"})
            return "items_100"
        if roll < 0.2:
            event["items"] = [{"sku": "gift", "gift_note": f"for {Markers.name(serial, U)}"}]
        if roll < 0.23:
            event["amount"] = "1000000000"
            return "amount_1e9"
        if roll < 0.3:
            event["amount"] = f"{self.rng.uniform(1, 99):.4f}"
            return "amount_4_decimals"
        return "workload"

    def _login(self, event: dict[str, Any], serial: int) -> str:
        if self.rng.random() < 0.2:
            event["channel"] = f"sms {Markers.phone(serial, F)}"
        return "workload"

    # -- hostile records --------------------------------------------------------------------

    def _hostile(self, n: int) -> Planned:
        rng = self.rng
        serial = self.next_serial()
        stamp = int(self.end * 1000)  # set to its neighbours' when it is placed
        customer = self.customers[rng.randrange(len(self.customers))]
        kind = rng.choice(("purchase", "login", "ticket", "profile"))
        event = self._base(kind, customer, serial, stamp / 1000)
        generators = list(HOSTILE)
        label = generators[n % len(generators)]
        # The few heavy ones stay few: 1 MB values and deep nesting at most ~20 / ~50.
        if label == "value_1mb" and n // len(generators) >= 20:
            label = "truncated_json"
        if label == "deep_nesting" and n // len(generators) >= 50:
            label = "garbage"
        expected_kind, mutate = HOSTILE[label]
        value = mutate(self, event, rng, serial)
        key: bytes | None = customer.encode()
        if label == "key_mismatch":
            other = self.customers[(self.customers.index(customer) + 1) % len(self.customers)]
            key = (other if other != customer else customer + "-other").encode()
        elif label == "missing_key":
            key = None
        # The topic the record's (mutated) type belongs to, or the combined one; records
        # that are not an event of a type go to any input topic.
        final = event.get("type")
        if label == "unknown_type":
            topic = self.topics.events
        elif label == "wrong_type_for_topic":
            topic = self.by_type[kind]
        elif isinstance(final, str) and final in self.by_type and label not in SHAPELESS:
            topic = rng.choice((self.topics.events, self.by_type[final]))
        else:
            topic = self.inputs[rng.randrange(len(self.inputs))]
        if isinstance(value, dict):
            if topic != self.topics.events and label != "wrong_type_for_topic":
                value.pop("type", None)  # per-type topics carry no `type`
            raw: bytes | None = orjson.dumps(value)
        else:
            raw = value
        return Planned(topic, key, raw, stamp, label, "invalid", kind=expected_kind,
                       serial=serial)

    def _base(self, kind: str, customer: str, serial: int, at: float) -> dict[str, Any]:
        """A valid event of this kind, full of personal data in every field it has."""
        event: dict[str, Any] = {
            "type": kind, "event_id": f"hostile-{serial}", "customer_id": customer,
            "occurred_at": rfc3339(at),
            "name": Markers.name(serial), "email": Markers.email(serial),
            "phone": Markers.phone(serial),
            "notes": f"call {Markers.name(serial, U)} on {Markers.phone(serial, U)}",
        }
        if kind == "purchase":
            event.update(order_id=f"o-{Markers.email(serial, F)}", amount="12.50", currency="EUR")
        elif kind == "login":
            event["channel"] = Markers.phone(serial, F)
        elif kind == "ticket":
            event.update(ticket_id=f"t-{Markers.email(serial, F)}", status="opened",
                         priority="high")
        else:
            event.update(account_manager=Markers.name(serial, F),
                         tags=[Markers.email(serial, F)])
        return event


Mutator = Callable[[Plan, dict[str, Any], random.Random, int], dict[str, Any] | bytes | None]


def _truncated(plan: Plan, event: dict[str, Any], rng: random.Random, serial: int) -> bytes:
    raw = orjson.dumps(event)
    return raw[: rng.randrange(len(raw) // 2, len(raw) - 1)]


def _garbage(plan: Plan, event: dict[str, Any], rng: random.Random, serial: int) -> bytes:
    name, email = Markers.name(serial).encode(), Markers.email(serial).encode()
    return rng.choice((
        b"{'name': '" + name + b"', 'email': '" + email + b"'}",  # single quotes
        b'{"name": "' + name + b'", "email": "' + email + b'",}',  # trailing comma
        b"name=" + name + b"&email=" + email,
        b'{"name": "' + name + b'"}{"email": "' + email + b'"}',  # two documents
        b"\x00\x01\x02 " + name + b" " + email,
        b"NaN " + name,
    ))


def _non_utf8(plan: Plan, event: dict[str, Any], rng: random.Random, serial: int) -> bytes:
    raw = orjson.dumps(event)
    marker = Markers.name(serial).encode()
    return raw.replace(marker, marker + rng.choice((b"\xff\xfe", b"\xc3\x28", b"\xed\xa0\x80")))


def _empty(plan: Plan, event: dict[str, Any], rng: random.Random, serial: int) -> bytes:
    return rng.choice((b"", b" ", b"\n"))


def _tombstone(plan: Plan, event: dict[str, Any], rng: random.Random, serial: int) -> None:
    return None


def _not_object(plan: Plan, event: dict[str, Any], rng: random.Random, serial: int) -> bytes:
    return rng.choice((
        orjson.dumps([Markers.name(serial, U), Markers.email(serial, U),
                      Markers.phone(serial, U)]),
        orjson.dumps(Markers.email(serial, U)),
        b"42", b"null", b"true", orjson.dumps([event]),
    ))


def _padded(size: int) -> Mutator:
    def mutate(plan: Plan, event: dict[str, Any], rng: random.Random, serial: int) -> bytes:
        # Unknown fields are ignored: without a size limit this would be a valid event.
        filler = (Markers.name(serial, U) + " ").encode()
        event["notes"] = ""
        raw = orjson.dumps(event)
        pad = (filler * (size // len(filler) + 1))[: size - len(raw)]
        return raw[:-1] + b',"attachment":"' + pad + b'"}'
    return mutate


def _deep(plan: Plan, event: dict[str, Any], rng: random.Random, serial: int) -> bytes:
    depth = 10_000
    nested = b"[" * depth + orjson.dumps(Markers.email(serial, U)) + b"]" * depth
    return orjson.dumps(event)[:-1] + b',"extra":' + nested + b"}"


# The event type a field belongs to (a field of another type would just be ignored).
FIELD_TYPES = {
    "amount": "purchase", "currency": "purchase", "order_id": "purchase", "items": "purchase",
    "birthday": "profile", "signup_date": "profile", "tags": "profile", "tier": "profile",
    "account_manager": "profile", "status": "ticket", "priority": "ticket",
    "satisfaction": "ticket", "ticket_id": "ticket",
}


def _set(**fields: Any) -> Mutator:
    """Each call sets one of the fields to one of its values (raw JSON when bytes)."""
    def mutate(plan: Plan, event: dict[str, Any], rng: random.Random,
               serial: int) -> dict[str, Any] | bytes:
        name = rng.choice(list(fields))
        value = rng.choice(fields[name])
        if name in FIELD_TYPES:
            _become(event, FIELD_TYPES[name], serial)
        if isinstance(value, bytes):  # NaN, Infinity, 1e400 are no JSON values
            event[name] = "\x00RAW\x00"
            return orjson.dumps(event).replace(b'"\\u0000RAW\\u0000"', value)
        event[name] = value(plan) if callable(value) else value
        return event
    return mutate


def _become(event: dict[str, Any], kind: str, serial: int) -> None:
    """Make `event` a valid event of `kind` (its other fields stay, as unknown ones)."""
    event["type"] = kind
    if kind == "purchase":
        event.update(order_id=f"o-{Markers.email(serial, F)}", amount="10", currency="EUR")
    elif kind == "ticket":
        event.update(ticket_id=f"t-{Markers.email(serial, F)}", status="closed")


def _other_type(plan: Plan, event: dict[str, Any], rng: random.Random,
                serial: int) -> dict[str, Any]:
    """A `type` other than the per-type topic's."""
    event["type"] = rng.choice([k for k in (*plan.by_type, "refund") if k != event["type"]])
    return event


def _drop(plan: Plan, event: dict[str, Any], rng: random.Random, serial: int) -> dict[str, Any]:
    del event[rng.choice(("event_id", "customer_id", "occurred_at"))]
    return event


def _many(name: str, count: int) -> Mutator:
    def mutate(plan: Plan, event: dict[str, Any], rng: random.Random,
               serial: int) -> dict[str, Any]:
        if name == "tags":
            _become(event, "profile", serial)
            event["tags"] = [f"t{i}-{Markers.phone(serial, F)}" for i in range(count)]
        else:
            _become(event, "purchase", serial)
            event["items"] = [{"sku": f"s{i}", "for": Markers.name(serial, U)}
                              for i in range(count)]
        return event
    return mutate


def _key_kept(plan: Plan, event: dict[str, Any], rng: random.Random,
              serial: int) -> dict[str, Any]:
    return event  # a valid value; the key is what is wrong


def _in_the_future(plan: Plan) -> str:
    return rfc3339(plan.pinned + 3 * DAY)


HOSTILE: dict[str, tuple[str, Mutator]] = {
    "truncated_json": ("malformed_json", _truncated),
    "garbage": ("malformed_json", _garbage),
    "non_utf8": ("malformed_json", _non_utf8),
    "empty_value": ("malformed_json", _empty),
    "tombstone": ("malformed_json", _tombstone),
    "not_an_object": ("invalid_event", _not_object),
    "value_1mb": ("too_large", _padded(1024 * 1024)),
    "value_70k": ("too_large", _padded(70_000)),
    "deep_nesting": ("malformed_json", _deep),
    "nan_amount": ("invalid_event", _set(amount=[b"NaN", b"Infinity", b"-Infinity", b"1e400",
                                                 b"-1e400", "NaN", "Infinity"])),
    "bad_amount": ("invalid_event", _set(amount=[0, -5, "-0.01", 1e10, "1.23456", "abc",
                                                 [1], True, None])),
    "absurd_occurred_at": ("absurd_timestamp", _set(occurred_at=[
        "0001-01-01T00:00:00Z", "1970-01-01T00:00:00Z", "1999-12-31T23:59:59Z",
        "9999-12-31T23:59:59Z", _in_the_future])),
    "impossible_dates": ("invalid_event", _set(
        occurred_at=["2026-02-30T10:00:00Z", "2026-13-01T00:00:00Z", "yesterday",
                     "2026-01-01T25:61:00Z"],
        birthday=["0001-01-01", "9999-12-31", "2026-02-30", "1899-12-31"],
        signup_date=["2300-01-01", "0000-00-00"])),
    "epoch_timestamp": ("invalid_event", _set(occurred_at=[
        1767225600, 1767225600000, 1767225600.5, "1767225600"])),
    "space_timestamp": ("invalid_event", _set(occurred_at=[
        "2026-01-10 09:00:00Z", "2026-01-10 09:00:00+00:00", "2026-01-10 09:00:00.123Z"])),
    "naive_timestamp": ("invalid_event", _set(occurred_at=[
        "2026-01-10T09:00:00", "2026-01-10", "2026-01-10T09:00:00.5"])),
    "bad_currency": ("invalid_event", _set(currency=["€€€", "QQQ", "E", "EURO", "", "12€",
                                                     "e u"])),
    "key_mismatch": ("key_mismatch", _key_kept),
    "missing_key": ("key_mismatch", _key_kept),
    "unknown_type": ("unknown_type", _set(type=["refund", "PURCHASE", "", 42, None])),
    "wrong_type_for_topic": ("invalid_event", _other_type),
    "missing_field": ("invalid_event", _drop),
    "control_chars_in_id": ("invalid_event", _set(
        event_id=["a\x00b", "tab\tid", "line\nbreak"], customer_id=["c\x01"])),
    "oversized_id": ("invalid_event", _set(event_id=["e" * 201], order_id=["o" * 500])),
    "bad_enum": ("invalid_event", _set(status=["reopened", "OPEN"], priority=["asap"],
                                       satisfaction=[0, 6, 9.5], tier=["gold"])),
    "tags_1000": ("invalid_event", _many("tags", 1000)),
    "tags_51": ("invalid_event", _many("tags", 51)),
    "items_101": ("invalid_event", _many("items", 101)),
    "items_500": ("invalid_event", _many("items", 500)),
    "tag_too_long": ("invalid_event", _set(tags=[["x" * 101]])),
    "wrong_field_types": ("invalid_event", _set(occurred_at=[{}], tags=["a,b"],
                                                customer_id=[17], event_id=[["e"]])),
}
# Records that are no event of a type: any input topic.
SHAPELESS = frozenset({"garbage", "empty_value", "tombstone", "not_an_object"})


# -- the run ------------------------------------------------------------------------------------


def run_fuzz(
    config: FuzzConfig,
    *,
    broker: EmbeddedBroker | None = None,
    tmp: Path | None = None,
    say: Callable[[str], None] = print,
) -> FuzzReport:
    if config.customers is None:
        config.customers = max(10, config.records // 40)
    if config.deadline_s is None:
        config.deadline_s = 90 + config.records * 0.003
    report = FuzzReport(config)
    started = time.monotonic()
    with workspace("cg-fuzz-", config.broker, broker, tmp) as (url, where):
        _run(config, url, where, report, say)
    report.elapsed_s = time.monotonic() - started
    return report


def _run(
    config: FuzzConfig, url: str, tmp: Path, report: FuzzReport, say: Callable[[str], None]
) -> None:
    assert config.deadline_s is not None
    report.pinned = pinned = time.time() // 60 * 60 - HOUR
    name = f"fuzz-{config.seed}-{int(time.time() * 1000) % 10**9}"
    deployment = Deployment.create(
        broker_url=url, tmp=tmp, name=name, partitions=config.partitions, pinned=pinned,
        embedded_broker=not config.apache_kafka,
    )
    planned = Plan(config, deployment, pinned).build()
    report.planned = Counter(p.fate for p in planned)
    report.labels = Counter((p.fate, p.label) for p in planned)
    say(f"producing {len(planned)} records to {deployment.bootstrap} ({name}) ...")
    report.produced = produce(deployment.bootstrap, [
        OutRecord(p.topic, p.key, p.value, p.timestamp_ms) for p in planned])
    lines = [orjson.dumps(p.event) for p in planned if p.event is not None]
    events, bad = read_events(lines, now=pinned, max_future_hours=24)
    say(f"produced in {report.produced.seconds:.1f}s; computing the reference ...")
    report.expected = expected = expect(events, build_engine(deployment.settings),
                                        pinned=pinned)
    check = Check("the core accepts every valid record", not bad,
                  [f"{b.kind}: {b.reason}" for b in bad])
    report.checks.append(check)

    slot = WorkerSlot(deployment, 0)
    report.log_path = slot.log_path
    offsets = Offsets(deployment.bootstrap, deployment.settings.app_id, report.produced.counts)
    try:
        slot.start()
        slot.wait_ready(READY_TIMEOUT_S)
        say("worker ready; waiting for every input offset to be committed ...")
        began = time.monotonic()
        stats_before = 0
        done = 0
        while time.monotonic() - began < config.deadline_s and slot.alive():
            done = offsets.done()
            if done >= offsets.total:
                report.committed_s = time.monotonic() - began
                stats_before = len(slot.log_events("worker_stats"))
                break
            time.sleep(0.2)  # committed offsets have no change event to await
        report.checks.append(Check(
            "no stall: every input offset committed before the deadline",
            report.committed_s is not None,
            [] if report.committed_s is not None else [
                f"{max(done, 0)} of {offsets.total} committed after "
                f"{time.monotonic() - began:.0f}s (deadline {config.deadline_s:.0f}s)"]))
        outputs = [*deployment.action_topics(), deployment.topics.scores, deployment.topics.dlq]
        if slot.alive():
            wait_quiet(deployment.bootstrap, outputs, quiet_s=3.0, timeout_s=60,
                       alive=slot.alive)
            report.stats = _final_stats(slot, stats_before, report.committed_s is not None)
        alive = slot.alive()
        slot.check_crash()
        report.checks.append(Check("no crash: the worker is alive", alive and not slot.crashes,
                                   [f"exit codes {slot.crashes}; log {slot.log_path}"]
                                   if not alive else []))
        others = _other_topics(deployment)
        read = read_topics(deployment.bootstrap, [*outputs, deployment.changelog, *others])
    finally:
        offsets.close()
        slot.stop()
    _checks(report, planned, read, deployment, slot, expected, others)


def _final_stats(slot: WorkerSlot, before: int, complete: bool) -> dict[str, Any] | None:
    """The worker's counters once every record is in: the first worker_stats line logged
    after the input was committed (one comes every 10 s); without that, the last one."""
    deadline = time.monotonic() + STATS_WAIT_S
    while complete and time.monotonic() < deadline and slot.alive():
        lines = slot.log_events("worker_stats")
        if len(lines) > before:
            return lines[-1]
        time.sleep(0.5)  # the next stats line has no event to await
    lines = slot.log_events("worker_stats")
    return lines[-1] if lines and not complete else None


def _other_topics(deployment: Deployment) -> list[str]:
    """The deployment's topics besides inputs, outputs and changelog (faust's own)."""
    admin = KafkaAdminClient(bootstrap_servers=deployment.bootstrap, client_id="cg-fuzz")
    try:
        names = set(admin.list_topics())
    finally:
        admin.close()
    known = {*deployment.topics.inputs(), *deployment.topics.outputs(), deployment.changelog}
    app = deployment.settings.app_id
    return sorted(t for t in names if t.startswith(app) and t not in known)


def _checks(
    report: FuzzReport,
    planned: list[Planned],
    read: dict[str, list[ReadRecord]],
    deployment: Deployment,
    slot: WorkerSlot,
    expected: Expected,
    others: list[str],
) -> None:
    assert report.produced is not None
    by_place = dict(zip(report.produced.placements, planned, strict=True))
    sources = _check_dlq(report, read[deployment.topics.dlq], by_place)
    _check_accounting(report, len(sources))
    _check_personal_data(report, planned, read, deployment, slot, others)
    wanted = expected.records()
    received = [r for topic in deployment.action_topics()
                for r in (decode(x) for x in read[topic]) if r is not None]
    scores = [r for r in (decode(x) for x in read[deployment.topics.scores]) if r is not None]
    report.actions = check_actions(wanted, received)
    report.scores = check_scores(expected.states, scores)
    report.checks.append(Check("actions equal the reference's for the valid records",
                               not report.actions.failures(),
                               report.actions.failures() + report.actions.examples))
    report.checks.append(Check("last scores equal the reference's",
                               not report.scores.failures(),
                               report.scores.failures() + report.scores.examples))


Place = tuple[str, int, int]


def _check_dlq(
    report: FuzzReport, dlq: list[ReadRecord], by_place: dict[Place, Planned]
) -> dict[Place, str]:
    """Every DLQ record well-formed; exactly the hostile records dead-lettered, each with
    its kind. Returns the kind per dead-lettered source."""
    report.dlq_records = len(dlq)
    malformed: list[str] = []
    sources: dict[Place, str] = {}
    for record in dlq:
        value = decode(record)
        if value is None:
            malformed.append(f"dlq@{record.partition}:{record.offset}: not a JSON object")
            continue
        source = value.get("source")
        reason, kind = value.get("reason"), value.get("kind")
        problems = []
        if not isinstance(reason, str) or not reason.strip():
            problems.append("no reason")
        if kind not in KNOWN_KINDS:
            problems.append(f"unknown kind {kind!r}")
        place: Place | None = None
        if isinstance(source, dict):
            candidate = (source.get("topic"), source.get("partition"), source.get("offset"))
            place = candidate if candidate in by_place else None
        if place is None:
            problems.append(f"source {source!r} is no produced record")
        else:
            sources[place] = str(kind)
        if problems:
            malformed.append(f"dlq@{record.partition}:{record.offset}: {', '.join(problems)}")
    report.checks.append(Check(
        "every DLQ record has a reason, a known kind and its source topic/partition/offset",
        not malformed, malformed))

    missed: Counter[str] = Counter()
    wrong_kind: Counter[str] = Counter()
    rejected_valid: Counter[str] = Counter()
    for place, p in by_place.items():
        kind = sources.get(place)
        if p.fate == "invalid" and kind is None:
            missed[p.label] += 1
        elif p.fate == "invalid" and kind != p.kind:
            wrong_kind[f"{p.label}: {kind} (contract: {p.kind})"] += 1
        elif p.fate != "invalid" and kind is not None:
            rejected_valid[f"{p.label}: {kind}"] += 1
    report.checks.append(Check(
        "every hostile record is dead-lettered", not missed,
        [f"{label}: {n} applied instead" for label, n in sorted(missed.items())]))
    report.checks.append(Check(
        "each dead letter has the kind the contract gives it", not wrong_kind,
        [f"{what} x{n}" for what, n in sorted(wrong_kind.items())]))
    report.checks.append(Check(
        "no valid record is dead-lettered", not rejected_valid,
        [f"{what} x{n}" for what, n in sorted(rejected_valid.items())]))
    return sources


def _check_accounting(report: FuzzReport, dead: int) -> None:
    assert report.produced is not None
    produced = report.produced.total
    if report.stats is None:
        report.checks.append(Check("DLQ + applied = produced", False,
                                   ["no worker_stats line after the input was committed"]))
        return
    applied = sum(report.stats["events_applied"].values()) + report.stats["duplicates"]
    ok = dead + applied == produced
    report.checks.append(Check(
        "DLQ + applied = produced", ok,
        [] if ok else [f"DLQ {dead} (distinct sources) + applied {applied} "
                       f"(events_applied + duplicates) = {dead + applied}, produced {produced}"]))


PLACEMENTS = {"x": "name/email/phone fields", "u": "unknown and free-text fields",
              "f": "other event fields (ids, account_manager, tags, channel)"}


def _check_personal_data(
    report: FuzzReport,
    planned: list[Planned],
    read: dict[str, list[ReadRecord]],
    deployment: Deployment,
    slot: WorkerSlot,
    others: list[str],
) -> None:
    """No personal marker in the worker's log or on any topic but the inputs."""
    topics = deployment.topics
    labels = {p.serial: (p.label, p.fate, p.is_json) for p in planned if p.serial >= 0}
    # (location, placement) -> label -> records
    leaks: dict[tuple[str, str], Counter[str]] = defaultdict(Counter)

    def found(where: str, markers: set[tuple[int, str]]) -> None:
        for serial, placement in markers:
            label, fate, is_json = labels.get(serial, ("?", "?", True))
            what = PLACEMENTS.get(placement, placement)
            if not is_json:
                what += " in values that are no JSON (orjson)"
            leaks[(where, f"{what} of {fate} records")][label] += 1

    found("worker log", Markers.find(
        slot.log_path.read_bytes() if slot.log_path.exists() else b""))
    scanned = [*deployment.action_topics(), topics.scores, topics.dlq, deployment.changelog,
               *others]
    for topic in scanned:
        where = {topics.dlq: "DLQ", deployment.changelog: "state changelog"}.get(topic, topic)
        for record in read.get(topic, []):
            found(where, _markers_in(record, decode_b64=topic == topics.dlq))
    details = [
        f"{where}: {what}: {sum(by_label.values())} markers ("
        + ", ".join(f"{label} {n}" for label, n in by_label.most_common(6)) + ")"
        for (where, what), by_label in sorted(leaks.items())
    ]
    report.checks.append(Check(
        f"no personal marker in the worker log, outputs, DLQ or changelog ({len(scanned)} "
        "topics)", not leaks, details))


def _markers_in(record: ReadRecord, *, decode_b64: bool) -> set[tuple[int, str]]:
    found: set[tuple[int, str]] = set()
    for raw in (record.key, record.value):
        if raw:
            found |= Markers.find(raw)
    if decode_b64:
        value = decode(record)
        for name in ("key_b64", "value_b64"):
            text = value.get(name) if value else None
            if isinstance(text, str):
                with contextlib.suppress(binascii.Error, ValueError):
                    found |= Markers.find(base64.b64decode(text))
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    d = FuzzConfig()
    parser.add_argument("--records", type=int, default=d.records)
    parser.add_argument("--customers", type=int, default=None, help="default: records / 40")
    parser.add_argument("--partitions", type=int, default=d.partitions)
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--valid-share", type=float, default=d.valid_share)
    parser.add_argument("--deadline", type=float, default=None,
                        help="seconds for every offset to be committed (default: 90 + 3 ms "
                             "per record)")
    parser.add_argument("--broker", default=None,
                        help="kafka://host:port of a running broker (default: embedded)")
    parser.add_argument("--apache-kafka", action="store_true",
                        help="the --broker is Apache Kafka: no embedded-broker workarounds")
    parser.add_argument("--keep", type=Path, default=None,
                        help="keep the store and the worker log in this directory")
    args = parser.parse_args(argv)
    exit_on_sigterm()
    config = FuzzConfig(records=args.records, customers=args.customers,
                        partitions=args.partitions, seed=args.seed,
                        valid_share=args.valid_share, deadline_s=args.deadline,
                        broker=args.broker, apache_kafka=args.apache_kafka)
    report = run_fuzz(config, tmp=args.keep, say=lambda line: print(line, flush=True))
    print("\n".join(report.lines()))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
