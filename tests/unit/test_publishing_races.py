"""Two publishers of one version, and what validate checks: the rule every reader of the
rules topic follows (churnguard.rules.publishing.resolve), the worker feed's side of it,
what a losing publisher is told, and validate/publish agreeing on size. No broker."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml
from aiokafka.partitioner import DefaultPartitioner as AioPartitioner
from kafka.partitioner.default import murmur2

from churnguard import cli
from churnguard.errors import UserError
from churnguard.metrics import Metrics
from churnguard.rules import publishing
from churnguard.rules.export import export_pack
from churnguard.rules.loading import PackFileInvalid, default_pack, default_pack_text, load_pack
from streams import rules_feed
from streams.rules_feed import PackSwitch

NOW = 1_764_000_000.0
PARTITIONS = 4
Raw = tuple[int, int, bytes | None, bytes | None]


def _record(template: str, version: int = 1, author: str = "alice") -> publishing.Published:
    """What publishing writes as `version` (after versions that are only numbers)."""
    text = default_pack_text().replace("template: ticket_acknowledgement",
                                       f"template: {template}")
    history = [dataclasses.replace(_first(), version=v) for v in range(1, version)]
    return publishing.prepare(text, "p", history, author=author, message="m", now=NOW)


_FIRST: list[publishing.Published] = []


def _first() -> publishing.Published:
    if not _FIRST:
        _FIRST.append(publishing.prepare(default_pack_text(), "p", [], author="a",
                                         message="m", now=NOW))
    return _FIRST[0]


class Log:
    """A rules topic as a list of records, each partition in offset order."""

    def __init__(self) -> None:
        self.records: list[Raw] = []
        self.ends = [0] * PARTITIONS

    def append(self, key: bytes | None, value: bytes | None, *,
               partition: int | None = None, version: int | None = None) -> Raw:
        if partition is None:
            assert version is not None
            partition = publishing.version_partition(version, PARTITIONS)
        raw = (partition, self.ends[partition], key, value)
        self.ends[partition] += 1
        self.records.append(raw)
        return raw

    def publish(self, published: publishing.Published) -> Raw:
        return self.append(publishing.publish_key(published.version), published.to_value(),
                           version=published.version)

    def compacted(self, *, drop_tombstones: bool) -> list[Raw]:
        """What log compaction may leave: the last record of each key (offsets kept)."""
        last = {(p, k if k is not None else o): (p, o, k, v) for p, o, k, v in self.records}
        kept = sorted(last.values(), key=lambda r: (r[0], r[1]))
        return [r for r in kept if not (drop_tombstones and r[3] is None)]


def _winners(records: list[Raw]) -> dict[int, str]:
    return {v: s.published.author for v, s in publishing.resolve(records, PARTITIONS).items()}


# --- where a version's records go -------------------------------------------------------------

@pytest.mark.parametrize("partitions", [1, 2, 3, 4, 8, 12])
def test_a_versions_partition_is_where_the_default_partitioners_put_its_ten_digits(
    partitions: int,
) -> None:
    """So records of the older format (sent with the ten digits as key, no partition) are
    in the partition new records of their version go to."""
    every = list(range(partitions))
    for version in range(200):
        key = publishing.record_key(version)
        expected = every[(murmur2(key) & 0x7FFFFFFF) % partitions]
        assert publishing.version_partition(version, partitions) == expected
        assert AioPartitioner()(key, every, every) == expected


def test_every_publish_has_a_key_of_its_own_that_starts_with_its_version() -> None:
    keys = {publishing.publish_key(7) for _ in range(1000)}
    assert len(keys) == 1000
    assert all(k.startswith(b"0000000007-") and len(k) == 43 for k in keys)


# --- which record is the version --------------------------------------------------------------

def test_the_first_record_of_a_version_is_the_version_whoever_wrote_it_later() -> None:
    log = Log()
    alice, bob = _record("from_alice", author="alice"), _record("from_bob", author="bob")
    log.publish(alice)
    log.publish(bob)
    assert _winners(log.records) == {1: "alice"}
    carol = _record("from_carol", version=2, author="carol")
    log.publish(carol)
    log.publish(dataclasses.replace(carol, author="dave"))
    assert _winners(log.records) == {1: "alice", 2: "carol"}


def test_the_answer_is_the_same_before_and_after_compaction() -> None:
    rng = random.Random(7)
    authors = ["alice", "bob", "carol", "dave"]
    for _ in range(200):
        log = Log()
        written: list[Raw] = []
        for _ in range(rng.randint(1, 12)):
            version = rng.randint(1, 4)
            published = dataclasses.replace(_first(), version=version,
                                            author=rng.choice(authors))
            roll = rng.random()
            if roll < 0.15:  # the older format: the ten digits as the key
                written.append(log.append(publishing.record_key(version),
                                          published.to_value(), version=version))
            elif roll < 0.3 and written:  # a withdrawal: a tombstone of an earlier key
                partition, _, key, _ = rng.choice(written)
                log.append(key, None, partition=partition)
            else:
                written.append(log.publish(published))
        before = _winners(log.records)
        assert _winners(log.compacted(drop_tombstones=False)) == before
        assert _winners(log.compacted(drop_tombstones=True)) == before


def test_older_format_records_read_as_before_the_last_of_a_key_is_kept() -> None:
    log = Log()
    first, second = _record("a", author="old-cli-1"), _record("b", author="old-cli-2")
    log.append(publishing.record_key(1), first.to_value(), version=1)
    log.append(publishing.record_key(1), second.to_value(), version=1)
    # Compaction keeps the second only: readers read it already.
    assert _winners(log.records) == {1: "old-cli-2"}
    log.publish(_record("c", version=2, author="new-cli"))
    assert _winners(log.records) == {1: "old-cli-2", 2: "new-cli"}


def test_a_withdrawn_publish_and_records_that_are_no_version_are_skipped() -> None:
    log = Log()
    alice, bob = _record("from_alice", author="alice"), _record("from_bob", author="bob")
    mine = log.publish(bob)
    log.publish(alice)
    log.append(mine[2], None, partition=mine[0])  # bob withdrew: alice's is version 1
    home = publishing.version_partition(1, PARTITIONS)
    log.append(b"x", b"not json", partition=home)
    log.append(None, b'{"version": 1}', partition=home)
    elsewhere = dataclasses.replace(alice, author="mallory")
    log.append(publishing.publish_key(1), elsewhere.to_value(),
               partition=(home + 1) % PARTITIONS)
    assert _winners(log.records) == {1: "alice"}


# --- the worker's feed ------------------------------------------------------------------------

def _feed(records: list[Raw], switch: PackSwitch) -> list[str]:
    seen: set[int] = set()
    firsts = []
    for partition, offset, key, value in records:
        record = SimpleNamespace(partition=partition, offset=offset, key=key, value=value)
        published = rules_feed._first_of_its_version(record, PARTITIONS, seen, switch)
        if published is not None:
            firsts.append(published)
    for published in sorted(firsts, key=lambda p: p.version):
        switch.offer(published)
    return [p.author for p in firsts]


def test_the_feed_runs_what_history_shows_and_refuses_misplaced_records() -> None:
    log = Log()
    bad = dataclasses.replace(_record("x", author="mallory"), pack="rules: [{id: Bad-Id}]\n")
    log.publish(bad)                                     # an invalid first record of 1 ...
    log.publish(_record("from_bob", author="bob"))       # ... is still version 1
    log.publish(_record("v2", version=2, author="carol"))
    log.publish(_record("v2_late", version=2, author="dave"))
    home = publishing.version_partition(3, PARTITIONS)
    log.append(publishing.publish_key(3), _record("v3", version=3).to_value(),
               partition=(home + 1) % PARTITIONS)
    activated: list[Any] = []
    switch = PackSwitch(0, Metrics(), activated.append)
    assert _feed(log.records, switch) == ["mallory", "carol"]
    assert switch.version == 2
    assert [p.spec.rules[0].actions[0].template for p in activated] == ["v2"]
    assert switch.metrics.rule_packs_refused == 2       # version 1 (invalid) and the stray 3
    assert _winners(log.records) == {1: "mallory", 2: "carol"}
    history = [s.published for s in publishing.resolve(log.records, PARTITIONS).values()]
    newest = publishing.newest_valid(history)
    assert newest is not None
    assert newest.author == "carol"


# --- what the publisher that lost is told ------------------------------------------------------

@pytest.fixture
def withdrawn(monkeypatch: pytest.MonkeyPatch) -> list[publishing.Stored]:
    made: list[publishing.Stored] = []
    monkeypatch.setattr(publishing, "withdraw", lambda b, t, stored: made.append(stored) or True)
    return made


def _read_back(monkeypatch: pytest.MonkeyPatch, stored: list[publishing.Stored] | Exception,
               ) -> None:
    def read_versions(*args: Any, **kwargs: Any) -> list[publishing.Stored]:
        if isinstance(stored, Exception):
            raise stored
        return stored
    monkeypatch.setattr(publishing, "read_versions", read_versions)


def test_the_winner_is_left_alone(monkeypatch: pytest.MonkeyPatch,
                                  withdrawn: list[publishing.Stored]) -> None:
    mine = publishing.Stored(_record("mine"), 2, 5, b"k")
    _read_back(monkeypatch, [mine])
    publishing.confirm("b", "t", mine, command="rules publish")
    assert withdrawn == []


def test_the_loser_is_withdrawn_and_told_whose_version_runs_in_one_line(
    monkeypatch: pytest.MonkeyPatch, withdrawn: list[publishing.Stored],
) -> None:
    theirs = publishing.Stored(_record("theirs", author="alice"), 2, 4, b"a")
    mine = publishing.Stored(_record("mine", author="bob"), 2, 5, b"b")
    _read_back(monkeypatch, [theirs])
    with pytest.raises(UserError) as caught:
        publishing.confirm("b", "t", mine, command="rules publish")
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("rules publish: another publish took version 1 a moment "
                              f"before yours (alice, {theirs.published.published_at}, "
                              f"{theirs.published.sha256[:12]}); yours was withdrawn and "
                              "workers run that one")
    assert "`churnguard rules export --published 1`" in message
    assert message.endswith("redo your change on it and publish again")
    assert withdrawn == [mine]


def test_a_loser_to_a_record_workers_refuse_is_told_so(
    monkeypatch: pytest.MonkeyPatch, withdrawn: list[publishing.Stored],
) -> None:
    bad = dataclasses.replace(_record("x", author="mallory"), pack="rules: nope\n")
    mine = publishing.Stored(_record("mine"), 2, 5, b"b")
    _read_back(monkeypatch, [publishing.Stored(bad, 2, 4, b"m")])
    with pytest.raises(UserError, match=r"workers refuse that one \(it does not validate\)"):
        publishing.confirm("b", "t", mine, command="rules rollback", retry="again")
    assert withdrawn == [mine]


def test_a_publish_that_cannot_be_read_back_says_what_to_check(
    monkeypatch: pytest.MonkeyPatch, withdrawn: list[publishing.Stored],
) -> None:
    mine = publishing.Stored(_record("mine"), 2, 5, b"b")
    _read_back(monkeypatch, UserError("rules: the broker at x did not answer"))
    with pytest.raises(UserError, match=r"version 1 was written but could not be read back"):
        publishing.confirm("b", "t", mine, command="rules publish")
    assert withdrawn == []  # it may well be the version: nothing is taken back
    _read_back(monkeypatch, [])
    with pytest.raises(UserError, match=r"not on 't' when read back"):
        publishing.confirm("b", "t", mine, command="rules publish")


# --- validate checks what publish checks ------------------------------------------------------

def _backslash_pack(rules: int, chars: int) -> str:
    data = yaml.safe_load(default_pack_text())
    data["rules"] = [{"id": f"r{n}", "trigger": {"on": "login"}, "actions": [
        {"type": "notification", "template": "t", "variables": {"v": "d" + "\\" * chars}}]}
        for n in range(rules)]
    return yaml.safe_dump(data, sort_keys=False, width=10**7, allow_unicode=True)


def _validates(path: Path, capsys: pytest.CaptureFixture[str]) -> bool:
    code = cli.main(["rules", "validate", str(path)])
    capsys.readouterr()
    assert code in {0, 1}
    return code == 0


def _publishes(text: str, author: str, message: str) -> bool:
    try:
        publishing.prepare(text, "p", [], author=author, message=message, now=NOW)
    except PackFileInvalid:
        return False
    return True


def test_validate_and_publish_agree_at_the_record_limit_whoever_publishes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(cli, "configure_logging", lambda *args, **kwargs: None)
    rules = 10
    near = 49_800
    spec = load_pack(_backslash_pack(rules, near), "p").spec
    widest = publishing.Published(
        version=publishing.MAX_VERSION, author="\U0001f680" * publishing.MAX_AUTHOR_CHARS,
        published_at="2026-01-01T00:00:00.000Z",
        message="\U0001f680" * publishing.MAX_MESSAGE_CHARS, sha256="0" * 64,
        pack=export_pack(spec.model_copy(update={
            "version": publishing.MAX_VERSION,
            "rules": [r.model_copy(update={"version": publishing.MAX_VERSION})
                      for r in spec.rules]})),
        rollback_of=publishing.MAX_VERSION)
    # Each backslash is 2 bytes of the record, in each rule.
    boundary = near + (publishing.MAX_RECORD_BYTES - len(widest.to_value())) // (2 * rules)
    seen = []
    for chars in (boundary, boundary + 1):
        path = tmp_path / f"p{chars}.yaml"
        path.write_text(_backslash_pack(rules, chars))
        validated = _validates(path, capsys)
        for author, message in [("a", ""), ("Zoë" * 33, "減" * 500)]:
            assert _publishes(path.read_text(), author, message) == validated, (chars, author)
        seen.append(validated)
    assert seen == [True, False]


def test_a_pack_too_long_once_written_out_is_refused_by_validate_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(cli, "configure_logging", lambda *args, **kwargs: None)
    base = default_pack_text().split("\nrules:")[0]
    rules = "".join(
        f"  - id: r{n}\n    trigger: {{on: login}}\n    actions:\n"
        f'      - {{type: notification, template: t, variables: {{v: "d{chr(9) * 60000}"}}}}\n'
        for n in range(12))
    path = tmp_path / "tabs.yaml"
    path.write_text(base + "\nrules:\n" + rules)
    assert cli.main(["rules", "validate", str(path)]) == 1
    problem, summary = capsys.readouterr().err.splitlines()
    assert problem.startswith(f"{path}: the pack is ")
    assert "bytes once written out" in problem
    assert summary == "churnguard: the rule pack is invalid (1 problem); fix the file"


def test_the_shipped_pack_is_publishable() -> None:
    publishing.check_publishable(default_pack().spec, "default.yaml")
