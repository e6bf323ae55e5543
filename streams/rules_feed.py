"""The worker's side of publishing: follow the rules topic and switch the engine to each
newer pack that validates, between batches, without a restart.

Every worker reads every partition of the topic (no consumer group: whatever partitions of
the inputs it owns). A version that fails validation here (a pack written by a newer
churnguard, a hand-made record) is refused, logged and counted; the running pack stays.

Of several records of one version (publishers that raced), the first in its partition's
offset order is the version, as for every reader (churnguard.rules.publishing.resolve); the
others lost, and their publishers were told so."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from churnguard.core.pack import RulePack
from churnguard.metrics import Metrics
from churnguard.rules.loading import PackFileInvalid, load_pack
from churnguard.rules.publishing import Published, version_partition
from connectors.kafka_link import KafkaLink, link_of

log = structlog.get_logger(__name__)

# Waits between attempts to start the feed while the brokers do not answer.
START_RETRY_INITIAL_S = 1.0
START_RETRY_MAX_S = 30.0


class PackSwitch:
    """Which published version runs; `offer` each version read, oldest first."""

    def __init__(self, version: int, metrics: Metrics,
                 activate: Callable[[RulePack], None]) -> None:
        self.version = version
        self.metrics = metrics
        self._activate = activate
        metrics.pack_version = version

    def offer(self, published: Published) -> bool:
        """Switch to `published` if it is newer and valid; whether it switched."""
        if published.version <= self.version:
            return False
        try:
            pack = load_pack(published.pack, f"published version {published.version}")
        except PackFileInvalid as exc:
            self.metrics.rule_packs_refused += 1
            log.error("rule_pack_refused", version=published.version, running=self.version,
                      problems=len(exc.lines), first_problem=exc.lines[0])
            return False
        if pack.version != published.version:
            # Not written by `rules publish` (a copied record): its actions would carry
            # another pack_version than the one running.
            self.metrics.rule_packs_refused += 1
            log.error("rule_pack_refused", version=published.version, running=self.version,
                      problems=1, first_problem=f"the pack says version {pack.version}")
            return False
        previous, self.version = self.version, published.version
        self._activate(pack)
        self.metrics.pack_version = published.version
        log.info("rule_pack_activated", version=published.version, previous=previous,
                 sha256=published.sha256, author=published.author,
                 rules=len(pack.rules), rollback_of=published.rollback_of)
        return True


async def _started(link: KafkaLink) -> AIOKafkaConsumer:
    """A started consumer, however long the brokers take to answer: a broker down when the
    feed starts (a worker started, or restarted, during an outage) must not end the task,
    which would crash the worker; once started, aiokafka reconnects by itself."""
    delay = START_RETRY_INITIAL_S
    while True:
        consumer = AIOKafkaConsumer(**link.client_options(), enable_auto_commit=False,
                                    group_id=None, auto_offset_reset="earliest")
        try:
            await consumer.start()
            return consumer
        except KafkaError as exc:
            await consumer.stop()
            # One line per attempt, at most one every START_RETRY_MAX_S.
            log.warning("rules_feed_waiting_for_broker", error=type(exc).__name__,
                        retry_in_s=delay)
        await asyncio.sleep(delay)
        delay = min(delay * 2, START_RETRY_MAX_S)


async def follow(link: KafkaLink | str, topic: str, switch: PackSwitch, *,
                 poll_timeout_ms: int = 500) -> None:
    """Read the topic from its start for as long as the worker runs (a cancelled task)."""
    # An out-of-range position (a topic recreated, a broker that lost its log) reads from the
    # start again: versions already seen are ignored.
    consumer = await _started(link_of(link))
    try:
        partitions: set[int] | None = None
        while not partitions:
            partitions = consumer.partitions_for_topic(topic)
            if not partitions:
                # Created later (or not yet in the metadata): ask the cluster again.
                await consumer._client.force_metadata_update()
                await asyncio.sleep(1.0)
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        seen: set[int] = set()  # versions whose first record was read
        while True:
            batches = await consumer.getmany(timeout_ms=poll_timeout_ms)
            found = []
            for records in batches.values():
                for record in records:  # in offset order
                    published = _first_of_its_version(record, len(partitions), seen,
                                                      switch)
                    if published is not None:
                        found.append(published)
            for published in sorted(found, key=lambda p: p.version):
                switch.offer(published)
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(consumer.stop(), timeout=3.0)


def _first_of_its_version(record: Any, partitions: int, seen: set[int],
                          switch: PackSwitch) -> Published | None:
    """`record`'s pack when it is the first record of its version in the version's
    partition; None for a tombstone, a later record of a version (a publish that lost),
    and a record that does not parse or is elsewhere (counted as refused)."""
    if record.value is None:
        return None
    try:
        published = Published.from_value(record.value)
    except (ValueError, KeyError, TypeError):
        switch.metrics.rule_packs_refused += 1
        log.error("rule_pack_unreadable", partition=record.partition, offset=record.offset)
        return None
    home = version_partition(published.version, partitions)
    if record.partition != home:
        switch.metrics.rule_packs_refused += 1
        log.error("rule_pack_refused", version=published.version, running=switch.version,
                  problems=1, first_problem=f"in partition {record.partition}, not {home}: "
                  "not written by `churnguard rules publish`")
        return None
    if published.version in seen:
        return None
    seen.add(published.version)
    return published
