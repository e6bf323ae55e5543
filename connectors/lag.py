"""Consumer lag read from the broker (`churnguard lag`): per consumer group and input
topic-partition the committed offset, the high-water mark, the lag in records and in
seconds. No worker is asked, so it works while every worker is down; it only reads: an
admin client for the groups and their committed offsets, and a consumer without a group
(no join, no commits) for the high-water marks and the first unconsumed records.

- **High-water mark**: from a fetch response, never from ListOffsets alone — the embedded
  broker (Tansu) answers ListOffsets(latest) with the last batch's base offset + 1, short
  of the end whenever that batch holds several records (docs/design.md). Each partition
  is fetched once from just below the committed offset; ListOffsets is only a lower bound
  and the fallback when no fetch answered in time (`PartitionLag.exact` is then False).
- **Lag** = high-water mark − committed offset (as kafka-consumer-groups and kafka-lag-exporter
  count it: records retention deleted unread still count, noted); a partition never committed
  counts from the earliest retained offset ("no commit"), as a new consumer with
  auto.offset.reset=earliest would start there.
- **Lag seconds** (kafka-lag-exporter's `_lag_seconds`, measured instead of extrapolated):
  the age of the oldest unconsumed record, `now` − the timestamp of the first record at or
  after the committed offset (fetched anyway); 0 when the lag is 0. Record timestamps are
  the producers' (CreateTime): a producer stamping records with their event time makes a
  backfill look old.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from typing import Any

from churnguard.errors import UserError
from connectors.kafka_link import KafkaLink, link_of

# Notes on a row (what the numbers mean when they are not the plain case).
NO_COMMIT = "no commit"
PAST_END = "commit past the end"  # e.g. the topic was recreated: offsets restarted
DELETED = "unread records deleted"  # retention removed records the group never read
HWM_LOWER_BOUND = "no fetch answer"  # the end is ListOffsets': it may be higher

CLIENT_ID = "churnguard-lag"
POLL_RECORDS = 4  # records per poll (the one below the committed offset, then the next)
FAR_AHEAD = 1_000  # records between two groups' offsets on a partition worth a seek


class LagReadError(UserError):
    """The broker could not be read (unreachable, refused a request): one line for the CLI."""


class UnknownGroupError(UserError):
    """A group named with --group is not on the broker."""


@dataclass(frozen=True)
class PartitionLag:
    """One consumer group's position on one partition of an input topic."""

    group: str
    topic: str
    partition: int
    committed: int | None  # the next offset the group reads; None: it never committed here
    earliest: int  # the partition's first retained offset
    high_water: int  # the offset the next produced record gets
    lag: int  # records produced and not yet consumed (never negative)
    lag_seconds: float | None  # age of the oldest unconsumed record; None: not known
    exact: bool = True  # high_water from a fetch response (False: a ListOffsets lower bound)
    note: str = ""  # NO_COMMIT, PAST_END, DELETED, HWM_LOWER_BOUND (", "-joined)


@dataclass(frozen=True)
class LagTotal:
    """Totals of a group (topic None) or of one of its topics: Prometheus' `_sum_lag` /
    `_topic_sum_lag` and `_max_lag_seconds`."""

    group: str
    topic: str | None
    partitions: int
    lagging: int  # partitions with a lag above 0
    lag: int
    max_lag_seconds: float | None
    exact: bool


@dataclass(frozen=True)
class LagSnapshot:
    bootstrap: str
    taken_at: float  # the moment lag seconds are measured against (epoch seconds)
    read_s: float  # how long reading the broker took
    groups: tuple[str, ...]  # the groups read, sorted
    partitions: tuple[PartitionLag, ...]  # sorted by group, topic, partition
    missing_topics: tuple[str, ...] = ()  # input topics that do not exist on the broker
    unreadable_groups: tuple[str, ...] = ()  # groups whose committed offsets were refused

    @property
    def lag(self) -> int:
        return sum(row.lag for row in self.partitions)

    def rows(self, group: str, topic: str | None = None) -> list[PartitionLag]:
        return [row for row in self.partitions
                if row.group == group and (topic is None or row.topic == topic)]

    def group_totals(self) -> list[LagTotal]:
        return [_total(group, None, self.rows(group)) for group in self.groups]

    def topic_totals(self) -> list[LagTotal]:
        by_topic: dict[tuple[str, str], list[PartitionLag]] = defaultdict(list)
        for row in self.partitions:
            by_topic[row.group, row.topic].append(row)
        return [_total(group, topic, rows) for (group, topic), rows in by_topic.items()]


def _total(group: str, topic: str | None, rows: list[PartitionLag]) -> LagTotal:
    seconds = [row.lag_seconds for row in rows if row.lag_seconds is not None]
    return LagTotal(
        group=group, topic=topic, partitions=len(rows),
        lagging=sum(row.lag > 0 for row in rows), lag=sum(row.lag for row in rows),
        max_lag_seconds=max(seconds) if seconds else (0.0 if not rows else None),
        exact=all(row.exact for row in rows),
    )


def default_topics() -> Callable[[str], Collection[str]]:
    """Every group's topics are the configured input topics (CHURNGUARD_TOPICS__*)."""
    from streams.settings import Settings

    inputs = tuple(Settings().topics.inputs())
    return lambda _group: inputs


def read_lag(
    where_to: KafkaLink | str,
    *,
    groups: Iterable[str] | None = None,
    topics_of_group: Callable[[str], Collection[str]] | None = None,
    now: float | None = None,
    timeout_s: float = 10.0,
    connect_timeout_s: float = 5.0,
) -> LagSnapshot:
    """The lag of `groups` (default: every consumer group on the broker with a committed
    offset on one of its input topics) on their input topics, `topics_of_group(group)`
    (default: the configured input topics), every partition of each — committed or not.
    A group named in `groups` that the broker does not know raises UnknownGroupError;
    an unreachable broker or a failed request raises LagReadError. `now` (default: the
    clock when the read starts) is what lag seconds are measured against.

    Cost: a few admin requests, two ListOffsets and one fetch for all partitions together
    (at most 64 KiB each, decoded only up to the record needed): on loopback against the
    embedded broker ~20 ms for one topic of 4 partitions, ~35 ms for 32, ~185 ms for the
    five input topics of 32 partitions. `timeout_s` bounds the fetching: a partition
    still unanswered then keeps ListOffsets' end (`exact` False)."""
    from kafka.errors import KafkaError

    started = time.monotonic()
    taken_at = time.time() if now is None else now
    topics_of = topics_of_group or default_topics()
    link = link_of(where_to)
    bootstrap = link.bootstrap
    where = f"the broker at {bootstrap}"
    try:
        admin, consumer = _connect(link, connect_timeout_s)
    except KafkaError as exc:
        raise LagReadError(f"cannot reach {where} ({_reason(exc)}); "
                           f"{link.unreachable_hint()}") from None
    try:
        committed, unreadable = _committed_offsets(admin, groups, topics_of, where)
        wanted = {group: sorted(set(topics_of(group))) for group in committed}
        existing = set(admin.list_topics())  # (the consumer's topics() waits 100 ms)
        missing = sorted({t for ts in wanted.values() for t in ts if t not in existing})
        partitions = {
            topic: sorted(consumer.partitions_for_topic(topic) or ())
            for topic in sorted({t for ts in wanted.values() for t in ts} - set(missing))
        }
        rows = _measure(consumer, committed, wanted, partitions, taken_at,
                        deadline=started + timeout_s)
    except KafkaError as exc:
        raise LagReadError(f"reading consumer lag on {where} failed ({_reason(exc)}); check "
                           "the broker (--broker / CHURNGUARD_BROKER)") from None
    finally:
        consumer.close()
        admin.close()
    return LagSnapshot(
        bootstrap=bootstrap, taken_at=taken_at, read_s=time.monotonic() - started,
        groups=tuple(sorted(committed)), partitions=tuple(rows),
        missing_topics=tuple(missing), unreadable_groups=tuple(unreadable),
    )


def _reason(exc: Exception) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _connect(link: KafkaLink, timeout_s: float) -> tuple[Any, Any]:
    from kafka import KafkaAdminClient, KafkaConsumer

    timeout_ms = round(timeout_s * 1000)
    admin = KafkaAdminClient(**link.client_options(), client_id=CLIENT_ID,
                             bootstrap_timeout_ms=timeout_ms, request_timeout_ms=timeout_ms)
    try:
        consumer = KafkaConsumer(
            **link.client_options(), client_id=CLIENT_ID, group_id=None,
            enable_auto_commit=False, auto_offset_reset="earliest",
            bootstrap_timeout_ms=timeout_ms, request_timeout_ms=timeout_ms,
            # An empty partition's fetch (on Apache Kafka) waits this long at most.
            fetch_max_wait_ms=100,
            # Only the first record at the committed offset is needed; the broker returns
            # at least one whole batch anyway.
            max_partition_fetch_bytes=64 * 1024, fetch_max_bytes=8 * 1024 * 1024,
            # Read-only and nothing is kept: kafka-python's CRC-32C is pure Python and
            # costs more than everything else here together.
            check_crcs=False,
            allow_auto_create_topics=False,
        )
    except BaseException:
        admin.close()
        raise
    return admin, consumer


def _committed_offsets(
    admin: Any,
    groups: Iterable[str] | None,
    topics_of: Callable[[str], Collection[str]],
    where: str,
) -> tuple[dict[str, dict[tuple[str, int], int]], list[str]]:
    """group -> (topic, partition) -> committed offset, on the group's input topics only;
    and the groups found on the broker whose offsets could not be read (not asked for)."""
    from kafka.errors import KafkaError

    known = sorted({str(g["group_id"]) for g in admin.list_groups()})
    named = None if groups is None else sorted(set(groups))
    asked = known if named is None else named
    offsets, unreadable = _group_offsets(admin, asked, required=set(named or ()))
    result = {group: _inputs_only(offsets.get(group, {}), topics_of(group))
              for group in asked if group not in unreadable}
    if named is None:
        # Every group on the broker: only those that consumed an input topic.
        return {group: parts for group, parts in result.items() if parts}, unreadable
    unknown = [group for group in named if group not in known and not result[group]]
    if unknown:
        try:
            others, _ = _group_offsets(admin, known, required=set())
        except KafkaError:
            others = {}
        churnguard = [group for group in known
                      if _inputs_only(others.get(group, {}), topics_of(group))]
        raise UnknownGroupError(
            f"no consumer group {', '.join(unknown)} on {where} (groups with committed "
            f"offsets on the input topics: {', '.join(churnguard) or 'none'}); check --group")
    return result, unreadable


def _group_offsets(
    admin: Any, groups: list[str], *, required: set[str]
) -> tuple[dict[str, dict[Any, Any]], list[str]]:
    """Committed offsets of `groups` in one request per coordinator; should that fail
    (a group or topic this client may not describe, on a shared cluster), group by group,
    leaving out the groups that fail unless they are `required`."""
    from kafka.errors import KafkaError

    if not groups:
        return {}, []
    try:
        found: dict[str, dict[Any, Any]] = admin.list_group_offsets(
            dict.fromkeys(groups))
        return found, []
    except KafkaError:
        if len(groups) == 1 and groups[0] in required:
            raise
    found, unreadable = {}, []
    for group in groups:
        try:
            found[group] = admin.list_group_offsets({group: None}).get(group, {})
        except KafkaError:
            if group in required:
                raise
            unreadable.append(group)
    return found, unreadable


def _inputs_only(offsets: dict[Any, Any], topics: Collection[str]) -> dict[tuple[str, int], int]:
    wanted = set(topics)
    return {(tp.topic, tp.partition): int(meta.offset) for tp, meta in offsets.items()
            if tp.topic in wanted and meta.offset is not None and meta.offset >= 0}


@dataclass
class _Probe:
    """One partition's fetch: where it starts, and the targets (start offsets of the
    groups reading it) whose first record at or after them is still to be seen."""

    earliest: int
    lower: int  # ListOffsets' end: a lower bound of the high-water mark
    targets: set[int]
    found: dict[int, int] = field(default_factory=dict)  # target -> record timestamp (ms)
    high_water: int | None = None
    last_offset: int = -1

    def pending(self) -> list[int]:
        end = self.high_water
        return sorted(t for t in self.targets
                      if t not in self.found and (end is None or t < end))

    def seek_offset(self) -> int:
        """Just below the smallest pending target (a record is there, so the fetch answers
        at once), and below ListOffsets' end, where a record surely is."""
        pending = self.pending() or [min(self.targets)]
        return max(self.earliest, min(pending[0], self.lower) - 1)

    def done(self) -> bool:
        return self.high_water is not None and not self.pending()


def _measure(
    consumer: Any,
    committed: dict[str, dict[tuple[str, int], int]],
    wanted: dict[str, list[str]],
    partitions: dict[str, list[int]],
    now: float,
    *,
    deadline: float,
) -> list[PartitionLag]:
    from kafka.structs import TopicPartition

    tps = [TopicPartition(topic, p) for topic, ps in partitions.items() for p in ps]
    if not tps:
        return []
    earliest = {tp: int(o) for tp, o in consumer.beginning_offsets(tps).items()}
    lower = {tp: int(o) for tp, o in consumer.end_offsets(tps).items()}
    probes: dict[Any, _Probe] = {}
    for group, topics in wanted.items():
        for topic in topics:
            for p in partitions.get(topic, ()):
                tp = TopicPartition(topic, p)
                start = max(committed[group].get((topic, p), earliest[tp]), earliest[tp])
                probe = probes.setdefault(tp, _Probe(earliest[tp], lower[tp], set()))
                probe.targets.add(start)
    # An empty partition (ListOffsets' end at its start) needs no fetch: nothing to read.
    for probe in probes.values():
        if probe.lower <= probe.earliest:
            probe.high_water = probe.lower
    _fetch(consumer, probes, deadline)
    rows: list[PartitionLag] = []
    for group in sorted(wanted):
        for topic in wanted[group]:
            for p in partitions.get(topic, ()):
                tp = TopicPartition(topic, p)
                rows.append(_row(group, topic, p, committed[group].get((topic, p)),
                                 probes[tp], now))
    return rows


def _fetch(consumer: Any, probes: dict[Any, _Probe], deadline: float) -> None:
    """Fetch until every probe has its high-water mark and its targets' records (or the
    deadline passes: those keep ListOffsets' end)."""
    active = {tp for tp, probe in probes.items() if not probe.done()}
    if not active:
        return
    consumer.assign(sorted(active))
    for tp in active:
        consumer.seek(tp, probes[tp].seek_offset())
    while active and time.monotonic() < deadline:
        remaining_ms = max(1, min(500, round((deadline - time.monotonic()) * 1000)))
        # A few records a poll: kafka-python hands them out partition by partition and
        # decodes lazily, so a partition paused once resolved is never decoded further.
        batch = consumer.poll(timeout_ms=remaining_ms, max_records=POLL_RECORDS)
        for tp, records in batch.items():
            probe = probes[tp]
            pending = probe.pending()
            for record in records:
                probe.last_offset = record.offset
                # Records come in offset order from a seek below every pending target:
                # the first record at or after a target is its first unconsumed record.
                while pending and pending[0] <= record.offset:
                    probe.found[pending.pop(0)] = int(record.timestamp)
        finished = []
        # A partition whose fetch answered without records shows only in its high-water
        # mark: all are looked at once a poll brings nothing.
        for tp in [tp for tp in batch if tp in active] if batch else sorted(active):
            probe = probes[tp]
            high = consumer.highwater(tp)
            if high is not None:
                probe.high_water = max(int(high), probe.lower)
            if probe.done():
                finished.append(tp)
            elif probe.high_water is not None and probe.last_offset >= 0:
                # Another group's target far ahead of what this partition's fetch reads
                # (several groups on one topic): go there instead of reading up to it.
                target = probe.pending()[0]
                if target - probe.last_offset > FAR_AHEAD:
                    consumer.seek(tp, max(probe.earliest, target - 1))
        if finished:
            consumer.pause(*finished)
            active.difference_update(finished)


def _row(
    group: str, topic: str, partition: int, committed: int | None, probe: _Probe, now: float
) -> PartitionLag:
    exact = probe.high_water is not None
    high_water = probe.high_water if probe.high_water is not None else probe.lower
    notes = []
    if committed is None:
        notes.append(NO_COMMIT)
        start = probe.earliest
    else:
        start = max(committed, probe.earliest)
        if committed > high_water:
            notes.append(PAST_END)
        elif committed < probe.earliest:
            notes.append(DELETED)
    if not exact:
        notes.append(HWM_LOWER_BOUND)
    lag = max(0, high_water - (probe.earliest if committed is None else committed))
    seconds: float | None
    if high_water <= start:
        seconds = 0.0
    else:
        stamp = probe.found.get(start)
        seconds = None if stamp is None or stamp < 0 else max(0.0, now - stamp / 1000)
    if lag == 0:
        seconds = 0.0
    return PartitionLag(
        group=group, topic=topic, partition=partition, committed=committed,
        earliest=probe.earliest, high_water=high_water, lag=lag, lag_seconds=seconds,
        exact=exact, note=", ".join(notes),
    )
