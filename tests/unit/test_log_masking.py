"""E-mail addresses and phone numbers are masked in every log line (churnguard/log_masking.py):
structlog's and the standard library loggers', in fields, nested values, messages and
tracebacks; what operators read (times, ids, offsets, addresses) is left alone."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from churnguard.log_masking import EMAIL_MASK, PHONE_MASK, mask, mask_text


@pytest.mark.parametrize(("text", "masked"), [
    ("from alice.smith+news@example.co.uk today", f"from {EMAIL_MASK} today"),
    ("张伟 <zhang.wei@mail.example.cn>", f"张伟 <{EMAIL_MASK}>"),
    ("call +49 30 1234567", f"call {PHONE_MASK}"),
    ("+1 (555) 123-4567", PHONE_MASK),
    ("(555) 123-4567", PHONE_MASK),
    ("555-123-4567 or 555.123.4567", f"{PHONE_MASK} or {PHONE_MASK}"),
    ("手机 13812345678", f"手机 {PHONE_MASK}"),
    ("tel:+8613812345678", f"tel:{PHONE_MASK}"),
])
def test_personal_data_is_masked(text: str, masked: str) -> None:
    assert mask_text(text) == masked


@pytest.mark.parametrize("text", [
    "2026-12-03T17:31:01.123Z", "2026-12-03 17:31:01", "+00:00", "UTC+08:00",
    "127.0.0.1:9092", "kafka://127.0.0.1:45439", "10.0.0.12", "port=45439",
    "offset 1234567890", "1764782461123", "evt-555-123-4567x", "c42", "9f0c3a1b",
    "a1b2c3d4-1234-5678-9abc-def012345678", "v1.2.3", "took 1,234 ms",
    "churnguard.actions.notifications", "cg-t0-16219475-customer_to_state-changelog",
])
def test_what_operators_read_is_left_alone(text: str) -> None:
    assert mask_text(text) == text


def test_nested_values_are_masked_and_other_types_kept() -> None:
    value = {"a": ["x@example.com", {"b": ("555-123-4567",)}], "n": 5, "f": 1.5, "none": None}
    assert mask(value) == {"a": [EMAIL_MASK, {"b": [PHONE_MASK]}], "n": 5, "f": 1.5,
                           "none": None}


SCRIPT = """
import logging, logging.config
import structlog
from churnguard.logging import configure_logging, stdlib_logging_config

configure_logging("info", json=True)
logging.config.dictConfig(stdlib_logging_config("INFO"))
log = structlog.get_logger("t")
log.info("planted", who="bob@example.org", nested={"phone": ["+44 20 7946 0958"]},
         note="ring 555-123-4567", at="2026-12-03T17:31:01Z", offset=13)
try:
    raise ValueError("record of carol@example.net, 13812345678")
except ValueError:
    log.exception("failed")
    logging.getLogger("aiokafka.x").exception("lib saw %s", "dave@example.com")
logging.getLogger("aiokafka.x").warning("phone %s", "(555) 123-4567")
"""


def test_no_log_line_of_either_logger_holds_a_planted_address_or_number() -> None:
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, timeout=60,
                          check=True)
    text = done.stderr.decode()
    lines = [json.loads(line) for line in text.splitlines()]
    assert [line["event"] for line in lines][:2] == ["planted", "failed"]
    for planted in ("bob@", "carol@", "dave@", "7946", "555", "13812345678"):
        assert planted not in text, planted
    assert lines[0]["at"] == "2026-12-03T17:31:01Z"
    assert lines[0]["offset"] == 13
    assert lines[0]["nested"] == {"phone": [PHONE_MASK]}
    assert "ValueError: record of [email], [phone]" in lines[1]["exception"]
    assert text.count(EMAIL_MASK) >= 3
