"""Every topic churnguard uses, named in one place (no Faust import: tools and the demo
create topics before any worker starts, because faust creates no source topics)."""

from __future__ import annotations

from churnguard.audit import TOPIC_CONFIG
from connectors.admin import ensure_topics
from streams.settings import Settings

STATE_TABLE = "customer_to_state"


def changelog_topic(settings: Settings, table: str = STATE_TABLE) -> str:
    # Faust's naming for a table's changelog: "{app id}-{table}-changelog".
    return f"{settings.app_id}-{table}-changelog"


def all_topics(settings: Settings) -> list[str]:
    return [*settings.topics.inputs(), *settings.topics.outputs(), settings.topics.rules,
            settings.topics.audit, changelog_topic(settings)]


def ensure_all_topics(settings: Settings) -> None:
    """Every topic with the configured partition count. The changelog is compacted (the
    latest state per key is kept forever; deletes are tombstones): created with the broker's
    default delete policy, restores would lose every customer idle past the retention. So is
    the rules topic: one key per publish, so compaction keeps the whole history. The audit
    topic is never compacted (an entry is never replaced by a later one of its key) and
    keeps its entries for RETENTION_DAYS."""
    ensure_topics(
        settings.link,
        all_topics(settings),
        settings.partitions,
        replication_factor=settings.replication_factor,
        configs={changelog_topic(settings): {"cleanup.policy": "compact"},
                 settings.topics.rules: {"cleanup.policy": "compact"},
                 settings.topics.audit: TOPIC_CONFIG},
    )
