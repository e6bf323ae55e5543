"""Builds the pure core's Engine from the settings (one place, shared by worker and replay)."""

from __future__ import annotations

from pydantic import ValidationError

from churnguard.core.default_rules import default_pack
from churnguard.core.processor import Engine
from churnguard.errors import UserError
from streams.settings import Settings


def build_engine(settings: Settings) -> Engine:
    """Raises UserError when the rule settings make an invalid pack (the settings check
    what they can; this is the net for the rest)."""
    try:
        pack = default_pack(settings.rules)
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        where = ".".join(str(part) for part in first["loc"])
        raise UserError(
            f"CHURNGUARD_RULES__*: the built-in rule pack is invalid with these settings "
            f"({where}: {first['msg']}); fix the environment variables"
        ) from exc
    return Engine(
        scoring=settings.scoring,
        rfm=settings.rfm,
        pack=pack,
        dedup_window=settings.dedup_window,
    )
