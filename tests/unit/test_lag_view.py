"""`churnguard lag` without a broker: the snapshot's totals, its rows' arithmetic, the rich
and plain renderings, the --watch loop and the command's arguments (issue: lag)."""

from __future__ import annotations

import argparse
import io
import logging
from collections.abc import Callable, Iterator

import pytest
from rich.console import Console

from churnguard import lag_view
from churnguard.errors import UserError
from connectors.kafka_link import KafkaLink
from connectors.lag import (
    DELETED,
    HWM_LOWER_BOUND,
    NO_COMMIT,
    PAST_END,
    LagReadError,
    LagSnapshot,
    PartitionLag,
    _Probe,
    _row,
)

NOW = 1_796_189_544.0
EVENTS, PURCHASES = "churnguard.events", "churnguard.purchases"


def row(group: str, topic: str, partition: int, committed: int | None, high_water: int,
        seconds: float | None = None, *, exact: bool = True, note: str = "") -> PartitionLag:
    lag = high_water - (committed or 0)
    return PartitionLag(group, topic, partition, committed, 0, high_water, lag,
                        (0.0 if lag == 0 else seconds), exact=exact, note=note)


def snapshot(*rows: PartitionLag, read_s: float = 0.02, **extra: object) -> LagSnapshot:
    groups = tuple(sorted({r.group for r in rows}))
    return LagSnapshot("127.0.0.1:9092", NOW, read_s, groups, tuple(rows), **extra)  # type: ignore[arg-type]


@pytest.fixture
def two_groups() -> LagSnapshot:
    return snapshot(
        row("churnguard", EVENTS, 0, 120, 120),
        row("churnguard", EVENTS, 1, 95, 100, 12.5),
        row("churnguard", PURCHASES, 0, None, 7, 3_725.0, note=NO_COMMIT),
        row("churnguard", PURCHASES, 1, 40, 40),
        row("shadow", EVENTS, 0, 100, 120, 30.0),
        row("shadow", EVENTS, 1, 100, 100, exact=False, note=HWM_LOWER_BOUND),
    )


# -- the snapshot's totals --------------------------------------------------------------


def test_totals_per_group_and_per_topic(two_groups: LagSnapshot) -> None:
    assert two_groups.lag == 5 + 7 + 20
    groups = {t.group: t for t in two_groups.group_totals()}
    ours = groups["churnguard"]
    assert (ours.lag, ours.partitions, ours.lagging, ours.max_lag_seconds) == (12, 4, 2, 3_725.0)
    assert groups["churnguard"].topic is None
    assert groups["churnguard"].exact
    assert (groups["shadow"].lag, groups["shadow"].max_lag_seconds) == (20, 30.0)
    assert not groups["shadow"].exact  # one of its high-water marks is only a lower bound
    topics = {(t.group, t.topic): (t.lag, t.lagging, t.max_lag_seconds)
              for t in two_groups.topic_totals()}
    assert topics == {
        ("churnguard", EVENTS): (5, 1, 12.5),
        ("churnguard", PURCHASES): (7, 1, 3_725.0),
        ("shadow", EVENTS): (20, 1, 30.0),
    }
    assert [r.partition for r in two_groups.rows("churnguard", PURCHASES)] == [0, 1]


def test_a_caught_up_group_totals_zero_seconds() -> None:
    caught_up = snapshot(row("g", EVENTS, 0, 5, 5), row("g", EVENTS, 1, 9, 9))
    (total,) = caught_up.group_totals()
    assert (total.lag, total.lagging, total.max_lag_seconds) == (0, 0, 0.0)


# -- one row's arithmetic (connectors.lag._row) ------------------------------------------


def probe(earliest: int, high_water: int | None, found: dict[int, int] | None = None,
          lower: int = 0) -> _Probe:
    return _Probe(earliest=earliest, lower=lower, targets=set(found or {}),
                  found=dict(found or {}), high_water=high_water)


def test_lag_is_high_water_minus_committed_and_seconds_the_first_unconsumed_records_age(
) -> None:
    got = _row("g", EVENTS, 0, 10, probe(0, 25, {10: int((NOW - 42.5) * 1000)}), NOW)
    assert (got.lag, got.lag_seconds, got.exact, got.note) == (15, 42.5, True, "")


def test_caught_up_is_zero_records_and_zero_seconds() -> None:
    got = _row("g", EVENTS, 0, 25, probe(0, 25), NOW)
    assert (got.lag, got.lag_seconds, got.note) == (0, 0.0, "")


def test_no_commit_counts_from_the_earliest_retained_record() -> None:
    got = _row("g", EVENTS, 3, None, probe(4, 10, {4: int((NOW - 5) * 1000)}), NOW)
    assert (got.committed, got.lag, got.lag_seconds, got.note) == (None, 6, 5.0, NO_COMMIT)


def test_odd_commits_are_named() -> None:
    past = _row("g", EVENTS, 0, 50, probe(0, 20), NOW)  # topic recreated: offsets restarted
    assert (past.lag, past.lag_seconds, past.note) == (0, 0.0, PAST_END)
    deleted = _row("g", EVENTS, 0, 2, probe(5, 9, {5: int((NOW - 1) * 1000)}), NOW)
    assert (deleted.lag, deleted.lag_seconds, deleted.note) == (7, 1.0, DELETED)


def test_without_a_fetch_answer_the_end_is_a_lower_bound_and_seconds_unknown() -> None:
    got = _row("g", EVENTS, 0, 3, probe(0, None, lower=8), NOW)
    assert (got.high_water, got.lag, got.lag_seconds, got.exact) == (8, 5, None, False)
    assert got.note == HWM_LOWER_BOUND


def test_a_record_stamped_ahead_of_the_clock_is_zero_seconds_old() -> None:
    got = _row("g", EVENTS, 0, 0, probe(0, 1, {0: int((NOW + 60) * 1000)}), NOW)
    assert (got.lag, got.lag_seconds) == (1, 0.0)


# -- rendering ---------------------------------------------------------------------------


def rich_text(renderable: object, width: int = 80) -> str:
    console = Console(record=True, width=width, force_terminal=True, color_system=None,
                      file=io.StringIO())
    console.print(renderable)
    return console.export_text()


def test_the_rich_view_has_header_totals_and_every_partition(two_groups: LagSnapshot) -> None:
    text = rich_text(lag_view.render(two_groups, status="every 2 s, Ctrl-C to stop"))
    lines = text.splitlines()
    assert lines[0].startswith("churnguard lag  broker 127.0.0.1:9092  at 2026-12-02T")
    assert "2 groups, 6 partitions, total lag 32" in text
    assert "oldest unconsumed record 1h02m old (churnguard)" in " ".join(text.split())
    assert "every 2 s, Ctrl-C to stop" in text
    assert "ListOffsets' answer, a lower bound" in text  # the shadow row without a fetch
    assert "group churnguard" in text
    assert "group shadow" in text
    # Totals: the group's line (topic *), then its topics'.
    total = next(line for line in lines if line.split()[:2] == ["churnguard", "*"])
    assert total.split()[2:] == ["4", "2", "12", "3,725.0"]
    assert any(line.split() == ["shadow", "*", "2", "1", "≥20", "30.0"] for line in lines)
    # Every number of every partition, none cut at 80 columns.
    assert any(line.split() == [PURCHASES, "0", "—", "7", "7", "3,725.0", "no", "commit"]
               for line in lines)
    assert any(line.split() == ["1", "95", "100", "5", "12.5"] for line in lines)
    assert any(line.split()[:5] == ["1", "100", "≥100", "≥0", "0.0"] for line in lines)
    assert all(len(line) <= 80 for line in lines)


def test_the_plain_text_is_for_scripts(two_groups: LagSnapshot) -> None:
    text = lag_view.render_plain(two_groups)
    assert "\x1b" not in text
    assert "—" not in text
    assert "≥" not in text
    header, *rest = text.splitlines()
    assert header.startswith("# churnguard lag: broker 127.0.0.1:9092 at 2026-12-02T")
    assert header.endswith("2 groups, 6 partitions, total lag 32, read in 0.02 s")
    blank = rest.index("")
    partitions = [line.split() for line in rest[:blank] if not line.startswith("#")]
    totals = [line.split() for line in rest[blank + 1:]]
    assert partitions[0] == ["GROUP", "TOPIC", "PARTITION", "COMMITTED", "HIGH_WATER", "LAG",
                             "LAG_S", "NOTE"]
    assert partitions[1:] == [
        ["churnguard", EVENTS, "0", "120", "120", "0", "0.0"],
        ["churnguard", EVENTS, "1", "95", "100", "5", "12.5"],
        ["churnguard", PURCHASES, "0", "-", "7", "7", "3725.0", "no", "commit"],
        ["churnguard", PURCHASES, "1", "40", "40", "0", "0.0"],
        ["shadow", EVENTS, "0", "100", "120", "20", "30.0"],
        ["shadow", EVENTS, "1", "100", ">=100", ">=0", "0.0", "no", "fetch", "answer"],
    ]
    assert totals == [
        ["GROUP", "TOPIC", "PARTITIONS", "LAGGING", "LAG", "MAX_LAG_S"],
        ["churnguard", "*", "4", "2", "12", "3725.0"],
        ["churnguard", EVENTS, "2", "1", "5", "12.5"],
        ["churnguard", PURCHASES, "2", "1", "7", "3725.0"],
        ["shadow", "*", "2", "1", ">=20", "30.0"],
        ["shadow", EVENTS, "2", "1", ">=20", "30.0"],
    ]


def test_nothing_to_show_says_why() -> None:
    empty = snapshot(missing_topics=("churnguard.logins",))
    text = lag_view.render_plain(empty)
    assert "0 groups, 0 partitions" in text
    assert "# input topics not on the broker: churnguard.logins" in text
    assert "no consumer group has committed offsets on the input topics yet" in text
    assert "no consumer group has committed offsets" in rich_text(lag_view.render(empty))


def test_human_ages() -> None:
    assert [lag_view._human(s) for s in (4.25, 75, 3_725, 2 * 86_400 + 3_600)] == [
        "4.2 s", "1m15s", "1h02m", "2d01h"]


# -- --watch -----------------------------------------------------------------------------


def reads(*results: LagSnapshot | Exception) -> Callable[[], LagSnapshot]:
    queue: Iterator[LagSnapshot | Exception] = iter(results)

    def read() -> LagSnapshot:
        result = next(queue)
        if isinstance(result, Exception):
            raise result
        return result

    return read


def sleeper(times: int, slept: list[float]) -> Callable[[float], None]:
    """Sleeps `times` times, then is interrupted (Ctrl-C)."""

    def sleep(seconds: float) -> None:
        if len(slept) == times:
            raise KeyboardInterrupt
        slept.append(seconds)

    return sleep


def test_watch_refreshes_in_place_keeps_going_after_a_failed_refresh_and_ctrl_c_is_0(
    two_groups: LagSnapshot,
) -> None:
    later = snapshot(row("churnguard", EVENTS, 0, 130, 130), read_s=0.5)
    console = Console(record=True, width=100, force_terminal=True, color_system=None,
                      file=io.StringIO())
    slept: list[float] = []
    failure = LagReadError("cannot reach the broker at 127.0.0.1:9092 (gone)")
    code = lag_view.watch(reads(two_groups, failure, later), 2.0, console,
                          sleep=sleeper(2, slept))
    assert code == 0
    # A refresh starts every 2 s: the read's own time is part of it.
    assert slept == [pytest.approx(1.98), pytest.approx(1.98)]
    text = console.export_text()
    assert "refresh failed at" in text
    assert "cannot reach the broker at 127.0.0.1:9092" in text
    assert "every 2 s, Ctrl-C to stop" in text
    assert "1 group, 1 partition, total lag 0" in text  # the last refresh is shown


def test_watch_without_a_terminal_prints_plain_snapshots_one_after_another(
    two_groups: LagSnapshot,
) -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=False)
    failure = LagReadError("cannot reach the broker at 127.0.0.1:9092 (gone)")
    assert lag_view.watch(reads(two_groups, failure, two_groups), 1.0, console,
                          sleep=sleeper(2, [])) == 0
    text = out.getvalue()
    assert text.startswith(lag_view.render_plain(two_groups))
    assert "\x1b" not in text
    assert text.count("# churnguard lag: broker") == 2
    assert "\n# refresh failed at " in text


def test_watch_fails_as_the_command_when_the_first_read_fails() -> None:
    console = Console(file=io.StringIO(), force_terminal=True)
    with pytest.raises(LagReadError, match="cannot reach"):
        lag_view.watch(reads(LagReadError("cannot reach the broker at x:1 (no)")), 2.0,
                       console, sleep=sleeper(5, []))


# -- the command -------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _kafka_logging_back() -> Iterator[None]:
    """The command quiets kafka-python's loggers (refused connections): for itself only."""
    logger = logging.getLogger("kafka")
    level = logger.level
    yield
    logger.setLevel(level)


def args(**given: object) -> argparse.Namespace:
    return argparse.Namespace(**{"broker": None, "group": None, "watch": None, **given})


@pytest.mark.parametrize("seconds", [0.0, -1.0, float("nan"), float("inf")])
def test_watch_needs_a_positive_interval(seconds: float) -> None:
    with pytest.raises(UserError, match=r"lag: --watch .*: give the seconds between "
                       r"refreshes, above 0, e\.g\. --watch 2"):
        lag_view.run_lag_command(args(watch=seconds))


def test_the_command_reads_the_broker_and_groups_given_and_prints_plain_text_to_a_pipe(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    two_groups: LagSnapshot,
) -> None:
    monkeypatch.setenv("CHURNGUARD_TOPICS__EVENTS", "shop.events")
    calls: list[tuple[str, list[str] | None, list[str]]] = []

    def fake_read_lag(link: KafkaLink, *, groups: list[str] | None,
                      topics_of_group: Callable[[str], list[str]]) -> LagSnapshot:
        calls.append((link.bootstrap, groups, sorted(topics_of_group("any"))))
        return two_groups

    monkeypatch.setattr(lag_view, "read_lag", fake_read_lag)
    assert lag_view.run_lag_command(args(broker="kafka://b1:9092;kafka://b2:9092",
                                         group=["churnguard", "shadow"])) == 0
    assert calls == [("b1:9092,b2:9092", ["churnguard", "shadow"], sorted([
        "churnguard.purchases", "churnguard.logins", "churnguard.tickets",
        "churnguard.profiles", "churnguard.feedback", "shop.events"]))]
    out = capsys.readouterr().out
    assert out == lag_view.render_plain(two_groups)
