"""The cross-topic merge (streams.partition_group): records of co-partitioned topics in
record-timestamp order whatever the fetch boundaries, each topic in offset order, a bounded
wait for a partition that still has records on the broker."""

from __future__ import annotations

import random
from dataclasses import dataclass

from streams.partition_group import PartitionGroups, group_order, merge


@dataclass(frozen=True)
class TP:
    topic: str
    partition: int


@dataclass(frozen=True)
class Rec:
    topic: str
    partition: int
    offset: int
    timestamp_ms: int


def recs(topic: str, partition: int, *stamps: int, first: int = 0) -> list[Rec]:
    return [Rec(topic, partition, first + i, ts) for i, ts in enumerate(stamps)]


A0, B0, A1, B1 = TP("x.logins", 0), TP("x.profiles", 0), TP("x.logins", 1), TP("x.profiles", 1)


def groups(max_idle_s: float = 1.0, max_buffered: int = 1000) -> PartitionGroups[TP, Rec]:
    return PartitionGroups(max_idle_s=max_idle_s, max_buffered=max_buffered)


def order(released: dict[TP, list[Rec]]) -> list[tuple[str, int]]:
    by_partition: dict[int, list[list[Rec]]] = {}
    for tp in sorted(released, key=group_order):
        by_partition.setdefault(tp.partition, []).append(released[tp])
    return [(r.topic, r.timestamp_ms) for p in sorted(by_partition)
            for r in merge(by_partition[p])]


def test_stops_where_a_lagging_partition_runs_out():
    g = groups()
    g.add(A0, recs(A0.topic, 0, 1, 3, 5))
    g.add(B0, recs(B0.topic, 0, 2, 4))
    out = g.release([A0, B0], caught_up=lambda tp: False, now=0.0)
    # After 4 the next profile may be older than 5: 5 waits.
    assert order(out) == [(A0.topic, 1), (B0.topic, 2), (A0.topic, 3), (B0.topic, 4)]
    assert g.buffered(A0) == 1
    assert g.buffered(B0) == 0


def test_a_caught_up_partition_never_blocks():
    g = groups()
    g.add(A0, recs(A0.topic, 0, 1, 3, 5))
    g.add(B0, recs(B0.topic, 0, 2, 4))
    out = g.release([A0, B0], caught_up=lambda tp: tp == B0, now=0.0)
    assert [ts for _, ts in order(out)] == [1, 2, 3, 4, 5]
    assert g.partitions() == []


def test_an_empty_lagging_partition_holds_only_its_own_group():
    g = groups()
    g.add(A0, recs(A0.topic, 0, 1))
    g.add(A1, recs(A1.topic, 1, 1))
    out = g.release([A0, B0, A1, B1], caught_up=lambda tp: tp != B0, now=0.0)
    assert list(out) == [A1]
    assert g.buffered(A0) == 1


def test_the_wait_is_bounded_by_max_idle_then_counted():
    g = groups(max_idle_s=1.0)
    g.add(A0, recs(A0.topic, 0, 1, 2))
    lagging = lambda tp: tp != B0  # noqa: E731 - B0 has records on the broker
    assert g.release([A0, B0], lagging, now=10.0) == {}
    assert g.next_deadline(10.0) == 11.0
    assert g.release([A0, B0], lagging, now=10.9) == {}
    out = g.release([A0, B0], lagging, now=11.0)
    assert [r.timestamp_ms for r in out[A0]] == [1, 2]
    assert g.enforced == 1
    # Past its deadline it no longer shortens fetch waits.
    assert g.next_deadline(11.0) is None


def test_records_arriving_reset_the_idle_clock():
    g = groups(max_idle_s=1.0)
    g.add(A0, recs(A0.topic, 0, 1, 5))
    lagging = lambda tp: False  # noqa: E731
    assert g.release([A0, B0], lagging, now=0.0) == {}
    g.add(B0, recs(B0.topic, 0, 2))
    out = g.release([A0, B0], lagging, now=0.9)
    assert order(out) == [(A0.topic, 1), (B0.topic, 2)]
    # B0 ran dry again at 0.9: the wait starts over from there.
    assert g.release([A0, B0], lagging, now=1.5) == {}
    assert g.release([A0, B0], lagging, now=2.0)[A0][0].timestamp_ms == 5


def test_each_topic_stays_in_offset_order_when_its_timestamps_go_back():
    g = groups()
    g.add(A0, recs(A0.topic, 0, 5, 1))
    g.add(B0, recs(B0.topic, 0, 3))
    out = g.release([A0, B0], caught_up=lambda tp: True, now=0.0)
    assert order(out) == [(B0.topic, 3), (A0.topic, 5), (A0.topic, 1)]
    assert [r.offset for r in out[A0]] == [0, 1]


def test_timestamp_ties_go_to_the_topic_first_by_name():
    g = groups()
    events = TP("x.events", 0)
    g.add(A0, recs(A0.topic, 0, 7))
    g.add(events, recs(events.topic, 0, 7))
    out = g.release([A0, events], caught_up=lambda tp: True, now=0.0)
    assert order(out) == [("x.events", 7), (A0.topic, 7)]


def test_full_buffers_and_dropping_one():
    g = groups(max_buffered=2)
    g.add(A0, recs(A0.topic, 0, 1, 2, first=40))
    g.add(B0, recs(B0.topic, 0, 1))
    assert g.full() == {A0}
    assert g.first_offset(A0) == 40
    g.drop(A0)
    assert g.first_offset(A0) is None
    assert g.full() == set()


def test_the_order_does_not_depend_on_fetch_boundaries():
    """However the fetches cut the topics and the batch limit cuts the releases, the records
    come out in the order of one merge of the whole topics (what replay and the combined
    topic give)."""
    for seed in range(200):
        rng = random.Random(seed)
        topics = [TP(f"t{i}", 0) for i in range(rng.randint(2, 4))]
        streams = {tp: recs(tp.topic, 0, *sorted(rng.sample(range(10_000), rng.randint(0, 40))))
                   for tp in topics}
        if seed % 3 == 0:  # a producer's own out-of-order sends: still offset order per topic
            for stream in streams.values():
                rng.shuffle(stream)
                stream[:] = [Rec(r.topic, 0, i, r.timestamp_ms) for i, r in enumerate(stream)]
        expected = [(r.topic, r.offset) for r in merge([streams[tp] for tp in topics])]
        g = groups(max_idle_s=1e9)
        cursor = dict.fromkeys(topics, 0)
        got: list[tuple[str, int]] = []

        def fetched_all(tp: TP, cursor: dict[TP, int] = cursor,
                        streams: dict[TP, list[Rec]] = streams) -> bool:
            return cursor[tp] == len(streams[tp])

        while len(got) < len(expected):
            tp = rng.choice(topics)
            take = rng.randint(0, 12)
            g.add(tp, streams[tp][cursor[tp]:cursor[tp] + take])
            cursor[tp] = min(len(streams[tp]), cursor[tp] + take)
            released = g.release(topics, fetched_all, now=0.0,
                                 limit=rng.choice([None, 1, 3, 7]))
            got += [(r.topic, r.offset) for r in merge(
                [released[t] for t in sorted(released, key=group_order)])]
        assert got == expected, seed
        assert g.enforced == 0


def test_a_release_takes_at_most_its_limit_and_the_groups_take_turns():
    g = groups()
    g.add(A0, recs(A0.topic, 0, 1, 2, 3))
    g.add(A1, recs(A1.topic, 1, 1, 2, 3))
    members = [A0, B0, A1, B1]
    first = g.release(members, caught_up=lambda tp: True, now=0.0, limit=2)
    assert [(tp, len(r)) for tp, r in first.items()] == [(A0, 2)]
    assert g.more
    second = g.release(members, caught_up=lambda tp: True, now=0.0, limit=2)
    assert [(tp, len(r)) for tp, r in second.items()] == [(A1, 2)]
    third = g.release(members, caught_up=lambda tp: True, now=0.0, limit=2)
    assert [(tp, [x.timestamp_ms for x in r]) for tp, r in third.items()] == [
        (A0, [3]), (A1, [3])]
    assert not g.more


def test_a_limited_release_is_a_prefix_of_the_merge():
    g = groups()
    g.add(A0, recs(A0.topic, 0, 1, 3, 5))
    g.add(B0, recs(B0.topic, 0, 2, 4, 6))
    got: list[tuple[str, int]] = []
    while g.partitions():
        got += order(g.release([A0, B0], caught_up=lambda tp: True, now=0.0, limit=2))
    assert [ts for _, ts in got] == [1, 2, 3, 4, 5, 6]


def test_records_already_fetched_for_a_waiting_partition_restart_its_wait():
    """The client holds the partition's next records behind our own backlog: that is no
    idle broker, so the group keeps waiting instead of going on out of order."""
    g = groups(max_idle_s=5.0)
    g.add(A0, recs(A0.topic, 0, 1))
    lagging = lambda tp: tp != B0  # noqa: E731
    assert g.release([A0, B0], lagging, now=0.0) == {}
    assert g.release([A0, B0], lagging, now=4.9, arriving=lambda tp: tp == B0) == {}
    assert g.release([A0, B0], lagging, now=6.0) == {}  # 5 s after 0.0, but not after 4.9
    assert g.release([A0, B0], lagging, now=9.9)[A0][0].timestamp_ms == 1
    assert g.enforced == 1


def test_dropping_or_clearing_the_buffers_forgets_that_more_was_releasable():
    g = groups()
    g.add(A0, recs(A0.topic, 0, 1, 2, 3))
    g.release([A0], caught_up=lambda tp: True, now=0.0, limit=1)
    assert g.more
    g.drop(A0)
    assert not g.more
    g.add(A0, recs(A0.topic, 0, 1, 2, 3))
    g.release([A0], caught_up=lambda tp: True, now=0.0, limit=1)
    g.clear()
    assert not g.more
