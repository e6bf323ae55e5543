"""A second line of defence for personal data in logs: e-mail addresses and phone numbers in
any string of a log line (nested values and rendered tracebacks included) are replaced
before the line is written. The first line is never passing them to a logger at all
(schemas/events.PERSONAL_FIELDS are dropped at validation); this catches what slips through,
e.g. a third-party library quoting a record in an exception message.

The patterns are deliberately narrow so that what operators need stays readable:
timestamps (2026-12-03T17:31:01Z), ids, offsets, hashes, IP addresses and ports do not
match."""

from __future__ import annotations

import re
from collections.abc import Mapping, MutableMapping
from typing import Any

EMAIL_MASK = "[email]"
PHONE_MASK = "[phone]"

_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)*\.[A-Za-z]{2,}")
_PHONE = re.compile(
    r"\+\d{1,3}[\s.-]?(?:\(\d{1,4}\)[\s.-]?)?\d{1,4}(?:[\s.-]?\d{2,4}){1,4}(?!\d)"  # +49 30 1234567
    r"|(?<![\w.:-])\(\d{3}\)\s?\d{3}[\s.-]\d{4}(?!\d)"                   # (555) 123-4567
    r"|(?<![\w.:-])\d{3}[\s.-]\d{3}[\s.-]\d{4}(?![\w.:-])"                 # 555-123-4567
    r"|(?<![\w.:+-])1[3-9]\d{9}(?![\w.:-])"                                 # 13812345678
)
# Nesting followed at most this deep (log values are flat; a bound all the same).
_MAX_DEPTH = 8


def mask_text(text: str) -> str:
    if "@" in text:
        text = _EMAIL.sub(EMAIL_MASK, text)
    return _PHONE.sub(PHONE_MASK, text)


def mask(value: Any, depth: int = 0) -> Any:
    if isinstance(value, str):
        return mask_text(value)
    if depth >= _MAX_DEPTH:
        return value
    if isinstance(value, dict):
        return {key: mask(item, depth + 1) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [mask(item, depth + 1) for item in value]
    return value


def mask_personal_data(_: Any, __: str, event_dict: MutableMapping[str, Any]
                       ) -> Mapping[str, Any]:
    """A structlog processor: place it after the exception is rendered, before the renderer."""
    return {key: mask(value) for key, value in event_dict.items()}
