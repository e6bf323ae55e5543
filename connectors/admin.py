"""Topic administration with kafka-python: faust does not create source topics, and a
producer's first send would auto-create one with the broker's default partition count
(tables then fail with PartitionsMismatch), so every topic is created up front."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Mapping

import structlog
from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from churnguard.errors import UserError
from connectors.kafka_link import KafkaLink, link_of

log = structlog.get_logger(__name__)


class TopicSetupError(UserError, RuntimeError):
    """Topics could not be created or have the wrong partition count: the deployment's to
    fix (the CLI prints the message as one line and exits 2)."""


def ensure_topics(
    where: KafkaLink | str,
    topics: Iterable[str],
    partitions: int,
    *,
    replication_factor: int = 1,
    configs: Mapping[str, Mapping[str, str]] | None = None,
    timeout_s: float = 30.0,
) -> None:
    """Create the missing topics (with their `configs`, e.g. compaction for a changelog) and
    check that existing ones have `partitions` partitions."""
    link = link_of(where)
    wanted = sorted(set(topics))
    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            _ensure(link, wanted, partitions, replication_factor, configs or {})
            return
        except TopicSetupError:
            raise
        except KafkaError as exc:  # broker still starting: retry until the deadline
            last_error = exc
            time.sleep(0.2)
    raise TopicSetupError(
        f"could not create topics on {link.bootstrap} within {timeout_s}s: {last_error!r}; "
        f"{link.unreachable_hint()}"
    )


def _ensure(
    link: KafkaLink,
    wanted: list[str],
    partitions: int,
    replication_factor: int,
    configs: Mapping[str, Mapping[str, str]],
) -> None:
    admin = KafkaAdminClient(**link.tool_options(), client_id="churnguard-admin")
    try:
        existing = set(admin.list_topics())
        missing = [t for t in wanted if t not in existing]
        if missing:
            # Another process may create one between list and create.
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics(
                    [
                        NewTopic(t, partitions, replication_factor, topic_configs=dict(
                            configs.get(t, {})))
                        for t in missing
                    ]
                )
            log.info("topics_created", topics=missing, partitions=partitions)
        described = admin.describe_topics(wanted)
        wrong = {
            d["name"]: len(d["partitions"])
            for d in described
            if d["name"] in existing and len(d["partitions"]) != partitions
        }
        if wrong:
            raise TopicSetupError(
                f"topics exist with a partition count other than {partitions}: {wrong}; "
                "inputs, outputs and tables must be co-partitioned — set "
                "CHURNGUARD_PARTITIONS to match or recreate the topics"
            )
    finally:
        admin.close()
