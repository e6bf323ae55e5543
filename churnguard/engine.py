"""Builds the pure core's Engine from the settings (one place, shared by worker and replay)."""

from __future__ import annotations

from churnguard.core.default_rules import default_pack
from churnguard.core.processor import Engine
from streams.settings import Settings


def build_engine(settings: Settings) -> Engine:
    return Engine(
        scoring=settings.scoring,
        rfm=settings.rfm,
        pack=default_pack(settings.rules),
        dedup_window=settings.dedup_window,
    )
