"""Publishing reviewed as a hostile user and an SRE, on the embedded broker: two publishers
racing (and records of the older, one-key-per-version format), hand-written records in the
history, packs near the size limits, rollbacks to versions that no longer validate, authors
and messages with control characters, exports of versions that do not exist, a broker that
is down, and the worker's feed (a rules topic created late, a broker restart, a start whose
newest version is invalid)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import itertools
import time
from collections.abc import Iterator
from typing import Any

import pytest
import structlog.testing
import yaml
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from churnguard import cli
from churnguard.core.pack import RulePack
from churnguard.errors import UserError
from churnguard.metrics import Metrics
from churnguard.rules import commands, publishing
from churnguard.rules.loading import default_pack_text, load_pack
from connectors.admin import ensure_topics
from connectors.embedded_broker import EmbeddedBroker, free_port, start_broker
from connectors.kafka_link import TOOL_TIMEOUT_S, KafkaLink
from streams.rules_feed import PackSwitch, follow
from streams.settings import Settings, TopicNames
from streams.worker import startup_pack

pytestmark = pytest.mark.integration

_names = itertools.count()
# Apache Kafka's default message.max.bytes (the topic's max.message.bytes when not set).
KAFKA_DEFAULT_MESSAGE_MAX_BYTES = 1_048_588


@pytest.fixture
def settings(shared_broker: EmbeddedBroker) -> Settings:
    prefix = f"pr{next(_names)}-{int(time.time() * 1000) % 10**8}."
    made = Settings(broker=shared_broker.url, partitions=4,
                    topics=TopicNames().with_prefix(prefix))
    ensure_topics(made.bootstrap, [made.topics.rules], made.partitions,
                  configs={made.topics.rules: {"cleanup.policy": "compact"}})
    return made


@pytest.fixture
def quiet_cli(monkeypatch: pytest.MonkeyPatch, settings: Settings) -> list[str]:
    monkeypatch.setattr(cli, "configure_logging", lambda *args, **kwargs: None)
    monkeypatch.setenv("CHURNGUARD_TOPICS", settings.topics.model_dump_json())
    return ["--broker", settings.broker]


def _publish(settings: Settings, text: str, *, author: str = "alice",
             history: list[publishing.Published] | None = None) -> publishing.Published:
    if history is None:
        history = publishing.read_history(settings.bootstrap, settings.topics.rules)
    record = publishing.prepare(text, "test", history, author=author, message="test",
                                now=time.time())
    publishing.write(settings.bootstrap, settings.topics.rules, record)
    return record


def _raw(settings: Settings, key: bytes | None, value: bytes | None) -> None:
    producer = KafkaProducer(bootstrap_servers=settings.bootstrap, max_request_size=3_000_000)
    try:
        producer.send(settings.topics.rules, key=key, value=value).get(timeout=30)
    finally:
        producer.close()


def _template(name: str) -> str:
    return default_pack_text().replace("template: ticket_acknowledgement", f"template: {name}")


class Feed:
    """streams.rules_feed.follow in this process, as the worker runs it (an asyncio task)."""

    def __init__(self, bootstrap: str, topic: str, version: int = 0) -> None:
        self.activated: list[RulePack] = []
        self.metrics = Metrics()
        self.switch = PackSwitch(version, self.metrics, self.activated.append)
        self.bootstrap, self.topic = bootstrap, topic

    async def until(self, check, seconds: float, task: asyncio.Task[None] | None = None) -> bool:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if check() or (task is not None and task.done()):
                break
            await asyncio.sleep(0.1)
        return bool(check())


async def _stop(task: asyncio.Task[None]) -> BaseException | None:
    if task.done():
        return task.exception()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return None


# --- two publishers ---------------------------------------------------------------------------

async def test_two_publishers_racing_never_share_a_version(settings: Settings) -> None:
    stale = publishing.read_history(settings.bootstrap, settings.topics.rules)
    # Both CLIs read the (empty) history, then both write.
    assert commands._write(settings, _template("from_alice"), "alice.yaml", author="alice",
                           message="a", history=list(stale)) == 0
    written = 1
    try:
        commands._write(settings, _template("from_bob"), "bob.yaml", author="bob",
                        message="b", history=list(stale))
        written += 1
    except UserError:
        pass  # the second publisher refused (a conflict): fine
    feed = Feed(settings.bootstrap, settings.topics.rules)
    task = asyncio.create_task(follow(feed.bootstrap, feed.topic, feed.switch))
    await feed.until(lambda: len(feed.activated) >= written, 8, task)
    await asyncio.sleep(1.0)
    await _stop(task)
    history = publishing.read_history(settings.bootstrap, settings.topics.rules)
    running = [r.spec.rules[0].actions[0].template for r in feed.activated]  # type: ignore[union-attr]
    shown = [load_pack(p.pack, "p").spec.rules[0].actions[0].template  # type: ignore[union-attr]
             for p in history]
    assert len(history) == written, (
        f"{written} publishes told 'published'; history {[(p.version, p.author) for p in history]}")
    assert running[-1:] == shown[-1:], f"workers run {running}, history shows {shown}"


def _raw_records(settings: Settings) -> list[tuple[int, int, bytes | None, bytes | None]]:
    """Every record on the rules topic, as (partition, offset, key, value)."""
    consumer = KafkaConsumer(bootstrap_servers=settings.bootstrap, group_id=None,
                             enable_auto_commit=False)
    try:
        tps = [TopicPartition(settings.topics.rules, p)
               for p in sorted(consumer.partitions_for_topic(settings.topics.rules))]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        ends = consumer.end_offsets(tps)
        found: list[tuple[int, int, bytes | None, bytes | None]] = []
        deadline = time.monotonic() + 10
        while any(consumer.position(tp) < ends[tp] for tp in tps):
            assert time.monotonic() < deadline
            for batch in consumer.poll(timeout_ms=200).values():
                found.extend((r.partition, r.offset, r.key, r.value) for r in batch)
        return sorted(found)
    finally:
        consumer.close()


async def test_the_publisher_that_lost_is_told_in_one_line_and_every_reader_runs_the_winner(
    settings: Settings, quiet_cli: list[str], capsys: pytest.CaptureFixture[str],
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch,
) -> None:
    stale = publishing.read_history(settings.bootstrap, settings.topics.rules)
    assert commands._write(settings, _template("from_alice"), "alice.yaml", author="alice",
                           message="a", history=list(stale)) == 0
    bob = tmp_path / "bob.yaml"
    bob.write_text(_template("from_bob"))
    capsys.readouterr()
    with monkeypatch.context() as patched:  # bob's CLI read the history before alice wrote
        patched.setattr(publishing, "read_history", lambda *args, **kwargs: list(stale))
        code = cli.main(["rules", "publish", str(bob), "--author", "bob", *quiet_cli])
    told = capsys.readouterr()
    assert code == 2, told.err
    assert told.out == ""  # no diff, no "published"
    assert told.err.count("\n") == 1, told.err
    assert told.err.startswith("churnguard: rules publish: another publish took version 1 "
                               "a moment before yours (alice, ")
    assert "yours was withdrawn and workers run that one" in told.err
    assert "`churnguard rules export --published 1`" in told.err
    # Bob's record is on the topic, withdrawn by a tombstone of its own key.
    records = _raw_records(settings)
    assert len(records) == 3
    keys = [key for _, _, key, _ in records]
    assert len(set(keys)) == 2
    assert [value is None for *_, value in records] == [False, False, True]
    # Every reader: history, export, a starting worker, a running worker's feed.
    [only] = publishing.read_history(settings.bootstrap, settings.topics.rules)
    assert (only.version, only.author) == (1, "alice")
    assert cli.main(["rules", "history", *quiet_cli]) == 0
    rows = capsys.readouterr().out.splitlines()[1:-1]
    assert [row.split()[:3] for row in rows] == [["1*", only.published_at, "alice"]]
    assert cli.main(["rules", "export", "--published", *quiet_cli]) == 0
    assert capsys.readouterr().out == only.pack
    started = startup_pack(settings)
    assert started is not None
    assert started[0] == only
    feed = Feed(settings.bootstrap, settings.topics.rules)
    task = asyncio.create_task(follow(feed.bootstrap, feed.topic, feed.switch))
    await feed.until(lambda: len(feed.activated) >= 1, 8, task)
    await asyncio.sleep(1.0)
    await _stop(task)
    assert [r.spec.rules[0].actions[0].template for r in feed.activated] == [  # type: ignore[union-attr]
        "from_alice"]
    assert feed.metrics.rule_packs_refused == 0
    # Bob publishes again: version 2, on top of alice's.
    assert cli.main(["rules", "publish", str(bob), "--author", "bob", *quiet_cli]) == 0
    assert "published version 2" in capsys.readouterr().out


def test_two_publishes_written_before_either_reads_back_agree_on_the_first(
    settings: Settings,
) -> None:
    alice = publishing.prepare(_template("from_alice"), "a", [], author="alice", message="",
                               now=time.time())
    bob = publishing.prepare(_template("from_bob"), "b", [], author="bob", message="",
                             now=time.time())
    theirs = publishing.write(settings.bootstrap, settings.topics.rules, alice)
    mine = publishing.write(settings.bootstrap, settings.topics.rules, bob)
    assert mine.partition == theirs.partition == publishing.version_partition(1, 4)
    assert mine.offset > theirs.offset
    assert mine.key != theirs.key
    # Bob reads back first: alice's came first, so bob lost; alice then learns she won.
    with pytest.raises(UserError, match=r"another publish took version 1 .*\(alice, "):
        publishing.confirm(settings.bootstrap, settings.topics.rules, mine,
                           command="rules publish")
    publishing.confirm(settings.bootstrap, settings.topics.rules, theirs,
                       command="rules publish")
    [stored] = publishing.read_versions(settings.bootstrap, settings.topics.rules)
    assert (stored.published, stored.offset) == (alice, theirs.offset)


async def test_records_of_the_older_format_are_read_and_new_ones_go_beside_them(
    settings: Settings, quiet_cli: list[str], capsys: pytest.CaptureFixture[str],
) -> None:
    """Records keyed by the ten digits alone, as churnguard wrote them before, sent with
    the producer's default partitioner: they are in their version's partition, the last of
    a key is the version (what compaction keeps), and the next publish follows them."""
    first = publishing.prepare(_template("old_v1"), "p", [], author="old-cli", message="",
                               now=time.time())
    _raw(settings, publishing.record_key(1), first.to_value())
    second = publishing.prepare(_template("old_v2"), "p", [first], author="old-cli",
                                message="", now=time.time())
    again = dataclasses.replace(second, author="old-cli-again")
    _raw(settings, publishing.record_key(2), second.to_value())
    _raw(settings, publishing.record_key(2), again.to_value())
    placed = {(key, partition) for partition, _, key, _ in _raw_records(settings)}
    assert placed == {(publishing.record_key(v), publishing.version_partition(v, 4))
                      for v in (1, 2)}
    assert publishing.read_history(settings.bootstrap, settings.topics.rules) == [first, again]
    assert commands._write(settings, _template("new_v3"), "p", author="new-cli",
                           message="") == 0
    history = publishing.read_history(settings.bootstrap, settings.topics.rules)
    assert [(p.version, p.author) for p in history] == [
        (1, "old-cli"), (2, "old-cli-again"), (3, "new-cli")]
    started = startup_pack(settings)
    assert started is not None
    assert started[0] == history[-1]


async def test_a_record_outside_its_versions_partition_is_no_version(
    settings: Settings,
) -> None:
    stray = publishing.prepare(_template("stray"), "p", [], author="mallory", message="",
                               now=time.time())
    home = publishing.version_partition(1, 4)
    producer = KafkaProducer(bootstrap_servers=settings.bootstrap)
    try:
        producer.send(settings.topics.rules, key=publishing.publish_key(1),
                      value=stray.to_value(), partition=(home + 1) % 4).get(timeout=30)
    finally:
        producer.close()
    assert publishing.read_history(settings.bootstrap, settings.topics.rules) == []
    feed = Feed(settings.bootstrap, settings.topics.rules)
    task = asyncio.create_task(follow(feed.bootstrap, feed.topic, feed.switch))
    await feed.until(lambda: feed.metrics.rule_packs_refused >= 1, 8, task)
    await asyncio.sleep(0.5)
    await _stop(task)
    assert (feed.activated, feed.metrics.rule_packs_refused) == ([], 1)
    published = _publish(settings, _template("real_v1"))
    assert publishing.read_history(settings.bootstrap, settings.topics.rules) == [published]


# --- the history as others may have written it ------------------------------------------------

async def test_hand_written_records_are_skipped_and_the_newest_valid_one_runs(
    settings: Settings, quiet_cli: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    first = _publish(settings, _template("ack_v1"))
    for key, value in [
        (b"x", b"not json"),
        (b"y", b"[1, 2]"),
        (b"z", b'"just a string"'),
        (b"0000000005", b'{"version": 5}'),                     # missing fields
        (b"0000000006", b'{"version": "six", "author": "m", "published_at": "t", '
                        b'"sha256": "0", "pack": "x"}'),
        (b"0000000007", None),                                  # a tombstone
    ]:
        _raw(settings, key, value)
    broken = publishing.Published(version=3, author="mallory", published_at="t", message="",
                                  sha256="0" * 64, pack="rules: [{id: Bad-Id}]\n")
    publishing.write(settings.bootstrap, settings.topics.rules, broken)

    history = publishing.read_history(settings.bootstrap, settings.topics.rules)
    assert [p.version for p in history] == [1, 3]
    assert cli.main(["rules", "history", *quiet_cli]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines[1:3]] == ["3", "1*"]
    started = startup_pack(settings)
    assert started is not None
    assert started[0].version == first.version
    # The worker's feed counts what it cannot read or validate and keeps version 1.
    feed = Feed(settings.bootstrap, settings.topics.rules, version=first.version)
    task = asyncio.create_task(follow(feed.bootstrap, feed.topic, feed.switch))
    await feed.until(lambda: feed.metrics.rule_packs_refused >= 6, 20, task)
    await asyncio.sleep(0.5)
    await _stop(task)
    assert feed.activated == []
    assert feed.switch.version == 1
    assert feed.metrics.rule_packs_refused == 6  # five unreadable records and version 3
    # The next publish comes after every version seen, valid or not.
    assert _publish(settings, _template("ack_v4")).version == 4


async def test_rollback_to_a_version_that_no_longer_validates_is_refused_with_its_problems(
    settings: Settings, quiet_cli: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    _publish(settings, default_pack_text())
    broken = publishing.Published(version=2, author="mallory", published_at="t", message="",
                                  sha256="0" * 64, pack="rules: [{id: Bad-Id}]\n")
    publishing.write(settings.bootstrap, settings.topics.rules, broken)
    capsys.readouterr()
    assert cli.main(["rules", "rollback", "2", "--author", "alice", *quiet_cli]) == 1
    err = capsys.readouterr().err
    assert err.startswith("version 2:")
    assert "the rule pack is invalid" in err
    assert cli.main(["rules", "rollback", "9", "--author", "alice", *quiet_cli]) == 2
    assert "no published version 9; the versions are 1, 2" in capsys.readouterr().err
    assert [p.version for p in publishing.read_history(
        settings.bootstrap, settings.topics.rules)] == [1, 2]


# --- authors and messages ---------------------------------------------------------------------

def test_unicode_authors_and_messages_round_trip(settings: Settings) -> None:
    record = publishing.prepare(default_pack_text(), "p", [], author="Zoë 🚀 Łukasz",
                                message="réduire les relances — 減らす\n  second line",
                                now=time.time())
    publishing.write(settings.bootstrap, settings.topics.rules, record)
    [stored] = publishing.read_history(settings.bootstrap, settings.topics.rules)
    assert (stored.author, stored.message) == (
        "Zoë 🚀 Łukasz", "réduire les relances — 減らす second line")


def test_an_author_with_control_characters_is_refused_or_cleaned() -> None:
    for author in ("alice\n     9*  2030-01-01  root", "\x1b[2J\x1b[Hroot", "bob\x00"):
        try:
            record = publishing.prepare(default_pack_text(), "p", [], author=author,
                                        message="m", now=time.time())
        except Exception:
            continue
        assert record.author.isprintable(), repr(record.author)


def test_a_message_with_control_characters_is_refused_or_cleaned() -> None:
    record = publishing.prepare(default_pack_text(), "p", [], author="alice",
                                message="ok\x1b]0;pwned\x07 \x1b[31mred", now=time.time())
    assert record.message.isprintable(), repr(record.message)


# --- packs near the limits --------------------------------------------------------------------

def _backslash_pack(rules: int, chars: int) -> str:
    """A valid pack whose variables are long runs of backslashes: one byte each in YAML,
    two in the record's JSON."""
    data = yaml.safe_load(default_pack_text())
    data["rules"] = [{"id": f"r{n}", "trigger": {"on": "login"}, "actions": [
        {"type": "notification", "template": "t", "variables": {"v": "d" + "\\" * chars}}]}
        for n in range(rules)]
    return yaml.safe_dump(data, sort_keys=False, width=10**7, allow_unicode=True)


async def test_a_pack_just_under_the_record_limit_publishes_and_runs(
    settings: Settings,
) -> None:
    text = _backslash_pack(10, 49_000)
    record = _publish(settings, text)
    assert 950_000 < len(record.to_value()) <= publishing.MAX_RECORD_BYTES
    [stored] = publishing.read_history(settings.bootstrap, settings.topics.rules)
    assert stored == record
    assert startup_pack(settings) is not None
    feed = Feed(settings.bootstrap, settings.topics.rules)
    task = asyncio.create_task(follow(feed.bootstrap, feed.topic, feed.switch))
    assert await feed.until(lambda: feed.switch.version == 1, 30, task)
    await _stop(task)


def test_a_valid_pack_too_big_for_one_kafka_record_is_refused_in_one_line(
    settings: Settings, quiet_cli: list[str], capsys: pytest.CaptureFixture[str],
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """650 KB of YAML (backslashes, doubled by JSON) is a 1.3 MB record: over Apache Kafka's
    default message.max.bytes, unless the rules topic allows more — refused before sending
    (the embedded broker would take it, so nothing else here would notice), and by
    `rules validate` already, with the same problem line."""
    from streams import topology

    configs: dict[str, dict[str, str]] = {}

    def capture(bootstrap: str, topics: list[str], partitions: int, **kwargs: Any) -> None:
        configs.update(kwargs.get("configs") or {})

    with monkeypatch.context() as patched:
        patched.setattr(topology, "ensure_topics", capture)
        topology.ensure_all_topics(settings)
    allowed = int(configs.get(settings.topics.rules, {}).get(
        "max.message.bytes", KAFKA_DEFAULT_MESSAGE_MAX_BYTES))
    pack = tmp_path / "big.yaml"
    pack.write_text(_backslash_pack(6, 108_000))
    assert pack.stat().st_size < 700_000
    validated = cli.main(["rules", "validate", str(pack)])
    told = capsys.readouterr().err
    code = cli.main(["rules", "publish", str(pack), "--author", "alice", *quiet_cli])
    err = capsys.readouterr().err
    history = publishing.read_history(settings.bootstrap, settings.topics.rules)
    if code == 0:
        assert validated == 0
        size = len(history[-1].to_value()) + len(publishing.publish_key(1)) + 128
        assert size <= allowed, f"a {size:,}-byte record on a topic that allows {allowed:,}"
    else:
        # Refused by validate as by publish: the same problem, before the broker is asked.
        assert (validated, code) == (1, 1), err
        assert err == told
        problem, summary = err.splitlines()
        assert problem.startswith(f"{pack}: ")
        assert "bytes" in problem
        assert summary.startswith("churnguard: the rule pack is invalid (1 problem)")
        assert history == []


def test_rules_validate_refuses_what_publish_refuses(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(cli, "configure_logging", lambda *args, **kwargs: None)
    base = default_pack_text().split("\nrules:")[0]
    rules = "".join(
        f"  - id: r{n}\n    trigger: {{on: login}}\n    actions:\n"
        f'      - {{type: notification, template: t, variables: {{v: "d{chr(9) * 60000}"}}}}\n'
        for n in range(12))
    pack = tmp_path / "tabs.yaml"
    pack.write_text(base + "\nrules:\n" + rules)
    assert pack.stat().st_size < 1_000_000
    try:
        publishing.prepare(pack.read_text(), str(pack), [], author="a", message="m",
                           now=time.time())
        publishable = True
    except UserError:
        publishable = False
    validated = cli.main(["rules", "validate", str(pack)]) == 0
    capsys.readouterr()
    assert validated == publishable, f"validate: {validated}, publish: {publishable}"


# --- exports of versions ----------------------------------------------------------------------

def test_export_of_a_version_that_does_not_exist_is_one_line_exit_2(
    settings: Settings, quiet_cli: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["rules", "export", "--published", *quiet_cli]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "no published version" in err
    _publish(settings, default_pack_text())
    for version in ("2", "99"):
        assert cli.main(["rules", "export", "--published", version, *quiet_cli]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1
        assert f"no published version {version}" in err


def test_export_of_version_0_is_the_shipped_default_not_the_newest(
    settings: Settings, quiet_cli: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    _publish(settings, _template("ack_v1"))
    capsys.readouterr()
    code = cli.main(["rules", "export", "--published", "0", *quiet_cli])
    out = capsys.readouterr().out
    assert code == 2 or load_pack(out, "export").version == 0, out[:40]


# --- the broker is down -----------------------------------------------------------------------

SHORT_TOOL_TIMEOUT_S = 2.0  # a fifth of TOOL_TIMEOUT_S: four commands in ~10 s, not ~40 s

# kafka-python leaves the sockets of a client whose bootstrap failed unclosed (a CLI exits).
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("argv", [
    ["rules", "history"],
    ["rules", "export", "--published"],
    ["rules", "rollback", "1", "--author", "alice"],
    ["rules", "publish", "churnguard/rules/default.yaml", "--author", "alice"],
], ids=["history", "export", "rollback", "publish"])
def test_a_broker_that_is_down_is_one_line_and_exit_2(
    argv: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(cli, "configure_logging", lambda *args, **kwargs: None)
    # Every client of a command takes KafkaLink.tool_options (TOOL_TIMEOUT_S, 10 s): here
    # it gives up after SHORT_TOOL_TIMEOUT_S instead, so that a command exits within
    # SHORT_TOOL_TIMEOUT_S + 5 s only if all its clients take it (not kafka-python's 30 s,
    # nor a 10 s of their own).
    assert KafkaLink("x").tool_options()["bootstrap_timeout_ms"] == TOOL_TIMEOUT_S * 1000
    tool_options = KafkaLink.tool_options
    monkeypatch.setattr(KafkaLink, "tool_options", lambda self, timeout_s=TOOL_TIMEOUT_S:
                        tool_options(self, min(timeout_s, SHORT_TOOL_TIMEOUT_S)))
    down = f"kafka://127.0.0.1:{free_port()}"
    started = time.monotonic()
    try:
        code = cli.main([*argv, "--broker", down])
    except Exception as exc:
        raise AssertionError(f"{type(exc).__name__}: {exc}") from exc
    assert time.monotonic() - started < SHORT_TOOL_TIMEOUT_S + 5
    gc.collect()  # the failed clients' sockets, while their warning is ignored
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1, err


# --- the worker's feed ------------------------------------------------------------------------

async def test_the_feed_waits_for_a_rules_topic_created_later(
    shared_broker: EmbeddedBroker,
) -> None:
    topic = f"late{next(_names)}-{int(time.time() * 1000) % 10**8}.rules"
    feed = Feed(shared_broker.bootstrap, topic)
    task = asyncio.create_task(follow(feed.bootstrap, topic, feed.switch))
    await asyncio.sleep(3.0)
    later = Settings(broker=shared_broker.url, topics=TopicNames(rules=topic))
    await asyncio.to_thread(ensure_topics, later.bootstrap, [topic], 2)
    await asyncio.to_thread(_publish, later, _template("ack_late"), history=[])
    switched = await feed.until(lambda: feed.switch.version == 1, 20, task)
    failure = await _stop(task)
    assert switched, f"no switch; the feed task ended with {failure!r}"


def test_a_record_whose_pack_says_another_version_is_refused() -> None:
    """A hand-made record published as version 5 holding version 1's text: its actions
    would say pack_version 1 and the re-index would reuse version 1's cursor."""
    old = publishing.prepare(_template("ack_v1"), "p", [], author="a", message="m",
                             now=time.time())
    assert load_pack(old.pack, "p").version == 1
    copied = dataclasses.replace(old, version=5, author="ops-by-hand", sha256="0" * 64)
    activated: list[RulePack] = []
    switch = PackSwitch(2, Metrics(), activated.append)
    switched = switch.offer(copied)
    assert not switched or activated[-1].version == copied.version, (
        f"running pack_version {activated[-1].version} as published version {switch.version}")


@pytest.fixture
def own_broker() -> Iterator[list[EmbeddedBroker]]:
    """A broker of this test alone (it is killed and started again on the same port)."""
    brokers = [start_broker(free_port())]
    yield brokers
    brokers[-1].stop()


async def test_the_feed_survives_a_broker_restart(own_broker: list[EmbeddedBroker]) -> None:
    broker = own_broker[0]
    settings = Settings(broker=broker.url, topics=TopicNames(rules="restart.rules"))
    ensure_topics(settings.bootstrap, [settings.topics.rules], 2)
    before = _publish(settings, _template("before"))
    feed = Feed(settings.bootstrap, settings.topics.rules)
    task = asyncio.create_task(follow(feed.bootstrap, feed.topic, feed.switch))
    assert await feed.until(lambda: feed.switch.version == 1, 20, task)
    broker.kill()
    await asyncio.sleep(3.0)
    own_broker.append(await asyncio.to_thread(start_broker, broker.port))
    await asyncio.to_thread(ensure_topics, settings.bootstrap, [settings.topics.rules], 2)
    # The memory broker came back empty: version 2 as a publisher that read the history
    # before the restart writes it.
    record = publishing.prepare(_template("after"), "p", [before], author="a", message="m",
                                now=time.time())
    assert record.version == 2
    await asyncio.to_thread(publishing.write, settings.bootstrap, settings.topics.rules, record)
    switched = await feed.until(lambda: feed.switch.version == 2, 40, task)
    failure = await _stop(task)
    assert switched, f"the feed did not follow; it ended with {failure!r}"
    assert feed.activated[-1].spec.rules[0].actions[0].template == "after"  # type: ignore[union-attr]


async def test_the_feed_waits_for_a_broker_down_when_it_starts(
    own_broker: list[EmbeddedBroker],
) -> None:
    """A worker started (or restarted) during an outage: the feed's first connection
    fails, and it keeps trying instead of ending (which would crash the worker)."""
    broker = own_broker[0]
    settings = Settings(broker=broker.url, topics=TopicNames(rules="late.rules"))
    broker.kill()
    feed = Feed(settings.bootstrap, settings.topics.rules)
    with structlog.testing.capture_logs() as logs:
        task = asyncio.create_task(follow(feed.bootstrap, feed.topic, feed.switch))
        waiting = await feed.until(lambda: any(
            e["event"] == "rules_feed_waiting_for_broker" for e in logs), 30, task)
    assert waiting, f"the feed did not wait; it ended with {task.done() and task.exception()!r}"
    assert not task.done()
    own_broker.append(await asyncio.to_thread(start_broker, broker.port))
    await asyncio.to_thread(ensure_topics, settings.bootstrap, [settings.topics.rules], 2)
    await asyncio.to_thread(_publish, settings, _template("late"))
    switched = await feed.until(lambda: feed.switch.version == 1, 60, task)
    failure = await _stop(task)
    assert switched, f"the feed did not follow; it ended with {failure!r}"


def test_a_start_on_an_invalid_newest_version_runs_the_newest_valid(settings: Settings) -> None:
    first = _publish(settings, _template("ack_v1"))
    second = _publish(settings, _template("ack_v2"))
    for version in (3, 4):
        publishing.write(settings.bootstrap, settings.topics.rules, publishing.Published(
            version=version, author="newer-churnguard", published_at="t", message="",
            sha256="0" * 64, pack=default_pack_text() + "\nfuture_key: 1\n"))
    _raw(settings, b"0000000005", b"\xff\xfe garbage")
    started = startup_pack(settings)
    assert started is not None
    published, pack = started
    assert (published.version, published.sha256) == (second.version, second.sha256)
    assert pack.version == 2
    assert first.version == 1
    assert pack.spec.rules[0].actions[0].template == "ack_v2"  # type: ignore[union-attr]


def test_a_start_with_no_published_version_runs_the_shipped_pack(settings: Settings) -> None:
    assert startup_pack(settings) is None
    missing = settings.model_copy(update={"topics": TopicNames(rules="never.created.rules")})
    assert startup_pack(missing) is None
