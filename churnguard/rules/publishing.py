"""Published rule packs: a compacted topic (`churnguard.rules`) with one record per version,
keyed by the version, so compaction keeps the whole history. Workers read all of it and run
the newest version that validates; `churnguard rules publish|history|rollback` write and
read it with kafka-python.

A record's value: {version, author, published_at, message, sha256, rollback_of, pack} where
`pack` is the YAML text (churnguard.rules.export) with every rule's version set: a rule's
version goes up when its content changes against the version published before it."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError

from churnguard.core.clock import rfc3339
from churnguard.core.pack import PackSpec, RuleSpec
from churnguard.errors import UserError
from churnguard.rules.export import export_pack
from churnguard.rules.loading import PackFileInvalid, default_pack, load_pack

MAX_MESSAGE_CHARS = 500
MAX_AUTHOR_CHARS = 100
# Apache Kafka's default message.max.bytes (1,048,588) less the record's own framing.
MAX_RECORD_BYTES = 1_000_000


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


def record_key(version: int) -> bytes:
    return f"{version:010d}".encode()


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


def newest_valid(history: Iterable[Published]) -> Published | None:
    """The newest version that validates here and is what its record says (a worker
    refuses the others)."""
    for published in sorted(history, key=lambda p: p.version, reverse=True):
        try:
            pack = load_pack(published.pack, f"version {published.version}")
        except PackFileInvalid:
            continue
        if pack.version == published.version:
            return published
    return None


def _broker_error(bootstrap: str, exc: Exception) -> UserError:
    return UserError(f"rules: the broker at {bootstrap} did not answer ({type(exc).__name__}); "
                     "check that it runs and --broker / CHURNGUARD_BROKER")


def read_history(
    bootstrap: str, topic: str, *, timeout_s: float = 10.0, missing_ok: bool = False
) -> list[Published]:
    """Every version on the topic, oldest first (records that do not parse are skipped);
    `missing_ok`: no topic is no history."""
    try:
        consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                 group_id=None, consumer_timeout_ms=int(timeout_s * 1000),
                                 request_timeout_ms=int(timeout_s * 1000))
    except KafkaError as exc:
        raise _broker_error(bootstrap, exc) from None
    try:
        partitions = consumer.partitions_for_topic(topic)
        if not partitions:
            if missing_ok:
                return []
            raise UserError(f"rules: topic {topic!r} does not exist on {bootstrap}; create "
                            "the topics with `churnguard topics`")
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        # Each version is its own record batch (one send, one flush), so even the embedded
        # broker's ListOffsets (last batch's base offset + 1) gives the true end here.
        ends = consumer.end_offsets(tps)
        found: dict[int, Published] = {}
        deadline = time.monotonic() + timeout_s
        while any(consumer.position(tp) < ends[tp] for tp in tps):
            if time.monotonic() > deadline:
                raise UserError(f"rules: reading {topic!r} on {bootstrap} timed out; check "
                                "the broker (--broker / CHURNGUARD_BROKER)")
            for records in consumer.poll(timeout_ms=200).values():
                for record in records:
                    if record.value is None:
                        continue
                    try:
                        published = Published.from_value(record.value)
                    except (ValueError, KeyError, TypeError):
                        continue
                    found[published.version] = published
        return [found[v] for v in sorted(found)]
    except KafkaError as exc:
        raise _broker_error(bootstrap, exc) from None
    finally:
        consumer.close()


def write(bootstrap: str, topic: str, published: Published) -> None:
    value = published.to_value()
    if len(value) > MAX_RECORD_BYTES:
        raise UserError(f"rules publish: the published record would be {len(value):,} bytes, "
                        f"over the {MAX_RECORD_BYTES:,} a Kafka broker takes by default; "
                        "make the pack smaller (fewer or shorter rules)")
    try:
        producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all",
                                 max_request_size=MAX_RECORD_BYTES + 10_000)
    except KafkaError as exc:
        raise _broker_error(bootstrap, exc) from None
    try:
        producer.send(topic, key=record_key(published.version), value=value).get(timeout=30)
        producer.flush()
    except KafkaError as exc:
        raise _broker_error(bootstrap, exc) from None
    finally:
        producer.close()
