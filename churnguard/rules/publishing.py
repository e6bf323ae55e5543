"""Published rule packs: a compacted topic (`churnguard.rules`) with one record per publish,
so compaction keeps the whole history. Workers read all of it and run the newest version
that validates; `churnguard rules publish|history|rollback` write and read it with
kafka-python.

A record's value: {version, author, published_at, message, sha256, rollback_of, pack} where
`pack` is the YAML text (churnguard.rules.export) with every rule's version set: a rule's
version goes up when its content changes against the version published before it.

Kafka has no compare-and-set, so two publishers that read the same history both write the
same next version. Every reader settles it by one rule, which compaction cannot change:
 - each publish has its own key (the version's ten digits, `-`, 32 random hex digits), so
   compaction keeps every record (records of the older format, keyed by the ten digits
   alone, read as before: compaction keeps the last of a key, so readers do too);
 - every record of a version goes to one partition, the one Kafka's default partitioner
   puts the version's ten digits in (where the older format's records are), so the records
   of a version have one order, their offsets;
 - the first record of a version in that order is the version; a later one lost.
A publisher reads the topic back after writing: if its record is not the version, it
withdraws it (a tombstone of its own key) and says so (`confirm`)."""

from __future__ import annotations

import contextlib
import hashlib
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError
from kafka.partitioner.default import murmur2

from churnguard.core.clock import rfc3339
from churnguard.core.pack import PackSpec, RulePack, RuleSpec
from churnguard.errors import UserError
from churnguard.rules.export import export_pack
from churnguard.rules.loading import PackFileInvalid, default_pack, load_pack, load_pack_file
from connectors.kafka_link import KafkaLink, link_of

MAX_MESSAGE_CHARS = 500
MAX_AUTHOR_CHARS = 100
# Apache Kafka's default message.max.bytes (1,048,588) less the record's own framing.
MAX_RECORD_BYTES = 1_000_000
# The largest version a record key's ten digits hold: what `check_publishable` assumes every
# version of the pack and its rules may be once published.
MAX_VERSION = 9_999_999_999
# A printable character is at most 4 bytes in the record's JSON (UTF-8; `"` and `\` take 2;
# control characters are refused or dropped).
_WIDEST_CHAR = "\U0001f680"


@dataclass(frozen=True, slots=True)
class Published:
    version: int
    author: str
    published_at: str
    message: str
    sha256: str
    pack: str  # YAML text
    rollback_of: int | None = None

    def to_value(self) -> bytes:
        return orjson.dumps({
            "version": self.version, "author": self.author,
            "published_at": self.published_at, "message": self.message,
            "sha256": self.sha256, "rollback_of": self.rollback_of, "pack": self.pack,
        })

    @classmethod
    def from_value(cls, raw: bytes) -> Published:
        data: dict[str, Any] = orjson.loads(raw)
        return cls(
            version=int(data["version"]), author=str(data["author"]),
            published_at=str(data["published_at"]), message=str(data.get("message", "")),
            sha256=str(data["sha256"]), pack=str(data["pack"]),
            rollback_of=data.get("rollback_of"),
        )


@dataclass(frozen=True, slots=True)
class Stored:
    """A record on the topic: what it holds and where it is."""

    published: Published
    partition: int
    offset: int
    key: bytes | None


def record_key(version: int) -> bytes:
    """The version as ten ASCII digits: the key of the older format (one record per
    version), and what a version's partition is computed from."""
    return f"{version:010d}".encode()


def publish_key(version: int) -> bytes:
    """A key of its own for one publish of `version` (compaction keeps every publish)."""
    return record_key(version) + b"-" + uuid.uuid4().hex.encode()


def version_partition(version: int, partitions: int) -> int:
    """The partition every record of `version` goes to: where Kafka's default partitioner
    (murmur2, as kafka-python, aiokafka and the Java client compute it) puts its ten-digit
    key — where records of the older format, sent with that key, are."""
    hashed: int = murmur2(record_key(version))
    return (hashed & 0x7FFFFFFF) % partitions


def resolve(
    records: Iterable[tuple[int, int, bytes | None, bytes | None]], partitions: int
) -> dict[int, Stored]:
    """Each version's record among `records` (partition, offset, key, value; each
    partition's in offset order), by the rule every reader follows: the last record of a
    key (a tombstone: none) — what compaction keeps, so the answer is the same before and
    after it —, then, of the records of a version in its partition, the first by offset.
    Records that do not parse, or that are not in their version's partition (not written
    by publishing), are no version."""
    latest: dict[tuple[int, bytes | int], tuple[int, bytes | None, bytes | None]] = {}
    for partition, offset, key, value in records:
        # A record without a key (never publishing's) is its own.
        latest[(partition, offset if key is None else key)] = (offset, key, value)
    versions: dict[int, Stored] = {}
    for (partition, _), (offset, key, value) in latest.items():
        if value is None:
            continue
        try:
            published = Published.from_value(value)
        except (ValueError, KeyError, TypeError):
            continue
        if partition != version_partition(published.version, partitions):
            continue
        first = versions.get(published.version)
        if first is None or offset < first.offset:
            versions[published.version] = Stored(published, partition, offset, key)
    return versions


def versioned(spec: PackSpec, previous: PackSpec, version: int) -> PackSpec:
    """`spec` as pack `version`: rules unchanged since `previous` keep their version, changed
    ones get the next, new ones start at 1."""
    before = {rule.id: rule for rule in previous.rules}
    rules = []
    for rule in spec.rules:
        old = before.get(rule.id)
        if old is None:
            number = 1
        elif _content(old) == _content(rule):
            number = old.version
        else:
            number = old.version + 1
        rules.append(rule.model_copy(update={"version": number}))
    return spec.model_copy(update={"version": version, "rules": rules})


def _content(rule: RuleSpec) -> dict[str, Any]:
    return rule.model_dump(mode="json", exclude={"version"})


def check_publishable(spec: PackSpec, name: str) -> None:
    """What publishing checks beyond validation, on the pack as any publish of it could
    write it (every version ten digits long, the longest author and message): written out,
    it is a pack file (at most 1,000,000 bytes), and its record fits in one Kafka message.
    `rules validate`, `rules publish` and `rollback` run it, so that what one accepts the
    others do. Raises PackFileInvalid (one line)."""
    widest = spec.model_copy(update={
        "version": MAX_VERSION,
        "rules": [rule.model_copy(update={"version": MAX_VERSION}) for rule in spec.rules],
    })
    try:
        text = export_pack(widest)
    except PackFileInvalid:
        raise
    except UserError as exc:
        raise PackFileInvalid([f"{name}: {exc}"]) from None
    record = Published(
        version=MAX_VERSION, author=_WIDEST_CHAR * MAX_AUTHOR_CHARS,
        published_at=rfc3339(0.5), message=_WIDEST_CHAR * MAX_MESSAGE_CHARS,  # as long as any
        sha256="0" * 64, pack=text, rollback_of=MAX_VERSION)
    size = len(record.to_value())
    if size > MAX_RECORD_BYTES:
        raise PackFileInvalid([
            f"{name}: published, the pack would be a record of up to {size:,} bytes, over the "
            f"{MAX_RECORD_BYTES:,} a Kafka broker takes by default (a backslash, quote or "
            "escape counts twice there); make it smaller (fewer or shorter rules)"])


def load_publishable_file(path: Path) -> RulePack:
    """The pack file at `path`, validated (load_pack_file) and checked as publishing will
    (check_publishable): the one set of checks of `rules validate` and `rules publish`."""
    pack = load_pack_file(path)
    check_publishable(pack.spec, str(path))
    return pack


def prepare(
    text: str, name: str, history: list[Published], *, author: str, message: str,
    now: float, rollback_of: int | None = None,
) -> Published:
    """The record publishing `text` would write: validated (PackFileInvalid), versioned."""
    author = author.strip()
    # No control characters: `rules history` prints both (no forged lines, no escapes).
    message = "".join(c for c in " ".join(message.split()) if c.isprintable())
    if (not author or len(author) > MAX_AUTHOR_CHARS
            or not all(c.isprintable() for c in author)):
        raise UserError(f"rules publish: --author must be 1–{MAX_AUTHOR_CHARS} printable "
                        "characters (who publishes, e.g. --author alice)")
    if len(message) > MAX_MESSAGE_CHARS:
        raise UserError(f"rules publish: --message is {len(message)} characters; at most "
                        f"{MAX_MESSAGE_CHARS}")
    spec = load_pack(text, name).spec
    check_publishable(spec, name)
    latest = newest_valid(history)
    # Rule versions count changes against what runs now: before the first publish, the
    # shipped default.
    previous = default_pack() if latest is None else load_pack(
        latest.pack, f"version {latest.version}")
    version = max((p.version for p in history), default=0) + 1
    body = export_pack(versioned(spec, previous.spec, version))
    return Published(
        version=version, author=author, published_at=rfc3339(now), message=message,
        sha256=hashlib.sha256(body.encode()).hexdigest(), pack=body, rollback_of=rollback_of,
    )


def runs(published: Published) -> bool:
    """Whether a worker runs `published` when it is the newest version: it validates here
    and is what its record says (a worker refuses the others)."""
    try:
        pack = load_pack(published.pack, f"version {published.version}")
    except PackFileInvalid:
        return False
    return pack.version == published.version


def newest_valid(history: Iterable[Published]) -> Published | None:
    """The newest version that validates here and is what its record says (a worker
    refuses the others)."""
    for published in sorted(history, key=lambda p: p.version, reverse=True):
        if runs(published):
            return published
    return None


def _broker_error(bootstrap: KafkaLink | str, exc: Exception) -> UserError:
    link = link_of(bootstrap)
    return UserError(f"rules: the broker at {link.bootstrap} did not answer "
                     f"({type(exc).__name__}); {link.unreachable_hint()}")


def read_history(
    bootstrap: KafkaLink | str, topic: str, *, timeout_s: float = 10.0, missing_ok: bool = False
) -> list[Published]:
    """Every version on the topic, oldest first (`resolve`: one record per version);
    `missing_ok`: no topic is no history."""
    return [stored.published for stored in read_versions(
        bootstrap, topic, timeout_s=timeout_s, missing_ok=missing_ok)]


def read_versions(
    bootstrap: KafkaLink | str, topic: str, *, timeout_s: float = 10.0, missing_ok: bool = False
) -> list[Stored]:
    """read_history with where each version's record is."""
    try:
        consumer = KafkaConsumer(**link_of(bootstrap).tool_options(timeout_s),
                                 enable_auto_commit=False,
                                 group_id=None, consumer_timeout_ms=int(timeout_s * 1000),
                                 request_timeout_ms=int(timeout_s * 1000))
    except KafkaError as exc:
        raise _broker_error(bootstrap, exc) from None
    try:
        partitions = consumer.partitions_for_topic(topic)
        if not partitions:
            if missing_ok:
                return []
            raise UserError(f"rules: topic {topic!r} does not exist on "
                            f"{link_of(bootstrap).bootstrap}; create the topics with "
                            "`churnguard topics`")
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        # Each publish is its own record batch (one send, one flush), so even the embedded
        # broker's ListOffsets (last batch's base offset + 1) gives the true end here.
        ends = consumer.end_offsets(tps)
        records: list[tuple[int, int, bytes | None, bytes | None]] = []
        deadline = time.monotonic() + timeout_s
        while any(consumer.position(tp) < ends[tp] for tp in tps):
            if time.monotonic() > deadline:
                raise UserError(f"rules: reading {topic!r} on {link_of(bootstrap).bootstrap} "
                                "timed out; check "
                                "the broker (--broker / CHURNGUARD_BROKER)")
            for batch in consumer.poll(timeout_ms=200).values():
                records.extend((r.partition, r.offset, r.key, r.value) for r in batch)
        found = resolve(records, len(partitions))
        return [found[v] for v in sorted(found)]
    except KafkaError as exc:
        raise _broker_error(bootstrap, exc) from None
    finally:
        consumer.close()


def _producer(bootstrap: KafkaLink | str) -> KafkaProducer:
    try:
        return KafkaProducer(**link_of(bootstrap).tool_options(), acks="all",
                             max_request_size=MAX_RECORD_BYTES + 10_000)
    except KafkaError as exc:
        raise _broker_error(bootstrap, exc) from None


def write(bootstrap: KafkaLink | str, topic: str, published: Published) -> Stored:
    """Send `published` under a key of its own to its version's partition; where it is.
    Whether it is the version is `confirm`'s to tell."""
    value = published.to_value()
    if len(value) > MAX_RECORD_BYTES:
        raise UserError(f"rules publish: the published record would be {len(value):,} bytes, "
                        f"over the {MAX_RECORD_BYTES:,} a Kafka broker takes by default; "
                        "make the pack smaller (fewer or shorter rules)")
    producer = _producer(bootstrap)
    try:
        partitions = producer.partitions_for(topic)
        if not partitions:
            raise UserError(f"rules: topic {topic!r} does not exist on "
                            f"{link_of(bootstrap).bootstrap}; create the topics with "
                            "`churnguard topics`")
        key = publish_key(published.version)
        sent = producer.send(topic, key=key, value=value,
                             partition=version_partition(published.version, len(partitions)),
                             ).get(timeout=30)
        producer.flush()
        return Stored(published, sent.partition, sent.offset, key)
    except KafkaError as exc:
        raise _broker_error(bootstrap, exc) from None
    finally:
        producer.close()


def withdraw(bootstrap: KafkaLink | str, topic: str, stored: Stored) -> bool:
    """A tombstone of `stored`'s own key (a publish that lost its version): compaction
    removes it; readers already ignore it. Whether the broker took it."""
    if stored.key is None:
        return False
    try:
        producer = _producer(bootstrap)
    except UserError:
        return False
    try:
        producer.send(topic, key=stored.key, value=None,
                      partition=stored.partition).get(timeout=30)
        producer.flush()
        return True
    except KafkaError:
        return False
    finally:
        with contextlib.suppress(Exception):
            producer.close()


def confirm(bootstrap: KafkaLink | str, topic: str, mine: Stored, *, command: str,
            retry: str = "redo your change on it and publish again") -> None:
    """Read the topic back after `write`: returns when `mine` is its version's record (what
    every worker runs); else withdraws it and raises UserError saying whose publish took
    the version (one line: what happened, what to do)."""
    version = mine.published.version
    try:
        found = {s.published.version: s for s in read_versions(bootstrap, topic)}
    except UserError as exc:
        raise UserError(
            f"{command}: version {version} was written but could not be read back to check "
            f"that no other publish took it first ({exc}); see `churnguard rules history`: "
            "if its author is not you, publish again") from None
    winner = found.get(version)
    if winner is not None and (winner.partition, winner.offset) == (mine.partition,
                                                                    mine.offset):
        return
    withdraw(bootstrap, topic, mine)
    if winner is None:
        raise UserError(
            f"{command}: version {version} was written but is not on {topic!r} when read "
            "back (the topic was deleted or recreated?); nothing was published: see "
            "`churnguard rules history` and publish again")
    other = winner.published
    if runs(other):
        outcome = (f"workers run that one; see it with `churnguard rules export "
                   f"--published {version}`, {retry}")
    else:
        outcome = ("workers refuse that one (it does not validate) and keep the version "
                   "they run; see `churnguard rules history` and publish again")
    raise UserError(
        f"{command}: another publish took version {version} a moment before yours "
        f"({other.author}, {other.published_at}, {other.sha256[:12]}); yours was withdrawn "
        f"and {outcome}")
