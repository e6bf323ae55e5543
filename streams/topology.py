"""Every topic churnguard uses, named in one place (no Faust import: tools and the demo
create topics before any worker starts, because faust creates no source topics)."""

from __future__ import annotations

from streams.settings import Settings

STATE_TABLE = "customer_to_state"


def changelog_topic(settings: Settings, table: str = STATE_TABLE) -> str:
    # Faust's naming for a table's changelog: "{app id}-{table}-changelog".
    return f"{settings.app_id}-{table}-changelog"


def all_topics(settings: Settings) -> list[str]:
    return [*settings.topics.inputs(), *settings.topics.outputs(), changelog_topic(settings)]
