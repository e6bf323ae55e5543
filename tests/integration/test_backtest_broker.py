"""`churnguard backtest` on the embedded broker: the input topics' retained history since a
moment (per-type and combined topics, record timestamps = event times, some records older)
gives the same report as a replay of those events from a file, and reading it writes
nothing, creates no topic and no consumer group."""

from __future__ import annotations

import time
from typing import Any

import orjson
import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.structs import OffsetAndMetadata, TopicPartition

from benchmarks.harness import read_topics
from churnguard.backtest import compare, parse_since, read_history, report
from churnguard.core.clock import DAY, HOUR, parse_rfc3339, rfc3339
from churnguard.core.processor import Engine
from churnguard.engine import build_engine
from churnguard.replay import read_events
from connectors.embedded_broker import EmbeddedBroker
from streams.settings import Settings, TopicNames
from streams.topology import all_topics, ensure_all_topics
from tests.unit.packs import make_pack

pytestmark = pytest.mark.integration

CUSTOMERS = 12
# Days before now of each customer's events; the history starts 10 days ago.
SCHEDULE = (
    (19.5, "profile"), (18.0, "purchase"), (15.0, "login"), (12.0, "ticket_opened"),
    (11.0, "ticket_closed"), (9.8, "purchase"), (8.0, "login"), (7.5, "custom"),
    (6.0, "ticket_opened"), (5.0, "purchase"), (4.0, "login"), (2.5, "ticket_closed"),
    (1.5, "big_purchase"), (0.8, "ticket_opened"), (0.3, "login"),
)


def history(now: float) -> list[dict[str, Any]]:
    """Combined-topic events (with `type`), in event-time order; no two at the same time."""
    events: list[dict[str, Any]] = []
    for c in range(CUSTOMERS):
        customer = f"c{c:02d}"
        tickets = 0
        for n, (days_ago, kind) in enumerate(SCHEDULE):
            at = now - days_ago * DAY + c * 61.0
            base = {"event_id": f"{customer}-{n}", "customer_id": customer,
                    "occurred_at": rfc3339(at)}
            if kind in ("purchase", "big_purchase"):
                amount = str(2_000 + 1_500 * c) if kind == "big_purchase" else "120"
                events.append({"type": "purchase", **base, "order_id": f"{customer}-o{n}",
                               "amount": amount, "currency": "EUR"})
            elif kind == "login":
                events.append({"type": "login", **base, "channel": "app"})
            elif kind == "ticket_opened":
                tickets += 1
                events.append({"type": "ticket", **base, "ticket_id": f"{customer}-t{tickets}",
                               "status": "opened", "priority": ("high", "low", "urgent")[c % 3]})
            elif kind == "ticket_closed":
                events.append({"type": "ticket", **base, "ticket_id": f"{customer}-t{tickets}",
                               "status": "closed", "satisfaction": 1 + c % 5})
            elif kind == "custom":
                events.append({"type": "custom", **base, "name": "app_review",
                               "properties": {"stars": c % 5}})
            else:
                events.append({"type": "profile", **base, "tier": "standard",
                               "email": f"{customer}@mail.example",
                               "signup_date": "2020-01-01"})
    events.sort(key=lambda e: e["occurred_at"])
    return events


def at_ms(event: dict[str, Any]) -> int:
    """The record timestamp of an event: its event time."""
    return round(parse_rfc3339(event["occurred_at"]) * 1000)


def produce(settings: Settings, events: list[dict[str, Any]], since: float) -> list[bytes]:
    """Every other per-type-able event on its per-type topic (without `type`), the rest on
    the combined topic; one event twice more (per-type and combined: duplicates that both
    a replay and the worker ignore); records that are not valid events before and after
    `since`. Returns the valid events sent, as combined-topic JSON lines."""
    topics = settings.topics
    per_type = {kind: topic for topic, kind in topics.inputs().items() if kind}
    sent = list(events)
    # Batches of many records: the embedded broker's ListOffsets then reports each
    # partition's end as its last batch's base offset + 1, far below the true end.
    producer = KafkaProducer(bootstrap_servers=settings.bootstrap, linger_ms=20)

    def send(topic: str, event: dict[str, Any], key: bytes | None = None) -> None:
        fields = event if topic == topics.events else {
            k: v for k, v in event.items() if k != "type"}
        producer.send(topic, key=key or event["customer_id"].encode(),
                      value=orjson.dumps(fields), timestamp_ms=at_ms(event))

    try:
        for n, event in enumerate(events):
            kind = event["type"]
            send(per_type[kind] if kind in per_type and n % 2 == 0 else topics.events, event)
        newer = [e for e in events if parse_rfc3339(e["occurred_at"]) >= since
                 and e["type"] == "purchase"]
        send(per_type["purchase"], newer[0])
        send(topics.events, newer[0])
        sent += [newer[0], newer[0]]
        after = round((since + HOUR) * 1000)
        before = round((since - HOUR) * 1000)
        producer.send(topics.events, key=b"c01", value=b"{not json", timestamp_ms=after)
        producer.send(topics.events, key=b"c01", value=b"{old garbage", timestamp_ms=before)
        # Valid, but keyed by someone else: the worker dead-letters it (key_mismatch).
        send(per_type["purchase"], {**newer[1], "event_id": "wrong-key"}, b"somebody-else")
        producer.flush(timeout=30)
    finally:
        producer.close(timeout=10)
    return [orjson.dumps(event) for event in sent]


def groups(admin: KafkaAdminClient) -> list[str]:
    return sorted(group["group_id"] for group in admin.list_groups())


def commit_probe_group(settings: Settings, group: str) -> None:
    """A group that commits an offset (without joining): the broker lists it, so a group the
    backtest created would show too."""
    consumer = KafkaConsumer(bootstrap_servers=settings.bootstrap, group_id=group,
                             enable_auto_commit=False)
    try:
        tp = TopicPartition(settings.topics.events, 0)
        consumer.assign([tp])
        consumer.commit({tp: OffsetAndMetadata(0, "", -1)})
    finally:
        consumer.close()


@pytest.mark.timeout(120)
def test_backtest_history_equals_a_replay_of_the_same_events_and_writes_nothing(
    shared_broker: EmbeddedBroker,
) -> None:
    now = float(int(time.time()))
    name = f"bt{int(time.time() * 1000) % 10**8}"
    settings = Settings(broker=shared_broker.url, app_id=f"cg-{name}", partitions=3,
                        embedded_broker=True, topics=TopicNames().with_prefix(f"{name}."))
    ensure_all_topics(settings)
    since = parse_since("10d", now)
    events = history(now)
    lines = produce(settings, events, since)

    topics = all_topics(settings)
    admin = KafkaAdminClient(bootstrap_servers=settings.bootstrap, client_id="bt-test")
    try:
        commit_probe_group(settings, f"{name}-probe")
        before_topics = sorted(admin.list_topics())
        before_groups = groups(admin)
        before = {t: len(r) for t, r in read_topics(settings.bootstrap, topics).items()}

        got, bad = read_history(settings, since, now=now)
        again = read_history(settings, since, now=now)

        after = {t: len(r) for t, r in read_topics(settings.bootstrap, topics).items()}
        after_topics = sorted(admin.list_topics())
        after_groups = groups(admin)
    finally:
        admin.close()

    # The reference: the same events from a file, only those since `since`.
    parsed, rejected = read_events(lines, now=now, max_future_hours=24)
    assert rejected == []
    wanted = [e for e in parsed if e.occurred_at.timestamp() >= since]
    assert 0 < len(wanted) < len(parsed) - 1  # much of the history is older than --since

    assert bad == 2  # the malformed one and the wrongly keyed one; the old one is not read
    assert sorted((e.occurred_at, e.event_id) for e in got) == sorted(
        (e.occurred_at, e.event_id) for e in wanted)
    assert [e.occurred_at for e in got] == sorted(e.occurred_at for e in got)
    assert got == sorted(wanted, key=lambda e: e.occurred_at)
    assert again == (got, bad)

    engine = build_engine(settings)
    from_broker, broker_actions = report(got, engine, until=now, bad_lines=bad)
    from_file, file_actions = report(wanted, engine, until=now, bad_lines=bad)
    assert from_broker == from_file
    assert broker_actions == file_actions
    assert from_broker.events == len(wanted)
    assert from_broker.customers == CUSTOMERS
    assert from_broker.actions > 0
    # Lifetime spend since `since`: two purchases of 120 and the big one.
    spends = [2 * 120 + 2_000 + 1_500 * c for c in range(CUSTOMERS)]
    assert from_broker.rules["vip_upgrade"].customers == sum(s >= 10_000 for s in spends)

    other = Engine(pack=make_pack(changes={"rules.vip_upgrade.trigger.at_least": 2_240}))
    comparison = compare(got, engine, other, until=now)
    assert comparison == compare(wanted, engine, other, until=now)
    assert comparison.differing_count == sum(2_240 <= s < 10_000 for s in spends) == 6

    # Read-only: no record on any topic, no new topic, no consumer group.
    assert after == before
    assert sum(before.values()) > 0
    assert after_topics == before_topics
    assert f"{name}-probe" in before_groups
    assert after_groups == before_groups
    assert not any("backtest" in group for group in after_groups)

