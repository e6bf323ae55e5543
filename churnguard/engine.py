"""Builds the pure core's Engine from the settings (one place, shared by worker and replay)."""

from __future__ import annotations

from churnguard.core.pack import RulePack
from churnguard.core.processor import Engine
from churnguard.rules.loading import default_pack
from churnguard.rules.publishing import load_publishable_file
from streams.settings import Settings


def configured_pack(settings: Settings) -> RulePack:
    """CHURNGUARD_RULES_FILE when set (checked as `rules validate` and `rules publish`
    check it), else the shipped default. Raises PackFileInvalid."""
    if settings.rules_file is None:
        return default_pack()
    return load_publishable_file(settings.rules_file)


def build_engine(settings: Settings, pack: RulePack | None = None) -> Engine:
    # The worker counts comments' terms for /feedback (agents/insights.py).
    return Engine(pack=pack or configured_pack(settings), dedup_window=settings.dedup_window,
                  analyse_comments=True)
