"""Versions of published packs: what publishing writes, before any broker."""

from __future__ import annotations

import pytest

from churnguard.errors import UserError
from churnguard.rules import publishing
from churnguard.rules.loading import PackFileInvalid, default_pack_text, load_pack

NOW = 1_764_000_000.0


def _prepare(text: str, history: list[publishing.Published], **kwargs):
    return publishing.prepare(text, "pack.yaml", history, author=kwargs.pop("author", "alice"),
                              message=kwargs.pop("message", "m"), now=NOW, **kwargs)


def _versions(record: publishing.Published) -> dict[str, int]:
    return {rule.id: rule.version for rule in load_pack(record.pack, "p").spec.rules}


def test_the_first_publish_counts_changes_against_the_shipped_default():
    text = default_pack_text().replace("{on: inactivity, days: 30}", "{on: inactivity, days: 21}")
    first = _prepare(text, [])
    assert first.version == 1
    assert load_pack(first.pack, "p").version == 1
    versions = _versions(first)
    assert versions.pop("inactive_30d_followup") == 2
    assert set(versions.values()) == {1}


def test_a_rule_version_goes_up_only_when_its_content_changes():
    first = _prepare(default_pack_text(), [])
    assert set(_versions(first).values()) == {1}
    changed = default_pack_text().replace("at_least: 10000", "at_least: 8000")
    second = _prepare(changed, [first])
    assert second.version == 2
    assert _versions(second)["vip_upgrade"] == 2
    third = _prepare(changed.replace("below: 60", "below: 55"), [first, second])
    assert (_versions(third)["vip_upgrade"], _versions(third)["health_winback"]) == (2, 2)
    # Back to the first content: a change again, so the versions go up, not back.
    back = _prepare(first.pack, [first, second, third], rollback_of=1)
    assert (_versions(back)["vip_upgrade"], _versions(back)["health_winback"]) == (3, 3)
    assert back.rollback_of == 1


def test_the_record_round_trips_and_its_hash_is_of_the_pack():
    import hashlib

    record = _prepare(default_pack_text(), [], message="  first\n  pack  ")
    assert record.message == "first pack"
    assert record.sha256 == hashlib.sha256(record.pack.encode()).hexdigest()
    assert publishing.Published.from_value(record.to_value()) == record
    assert publishing.record_key(12) == b"0000000012"


def test_an_invalid_pack_or_author_is_refused_before_anything_is_written():
    with pytest.raises(PackFileInvalid):
        _prepare("rules: []\n", [])
    with pytest.raises(UserError, match="--author"):
        _prepare(default_pack_text(), [], author="  ")
    with pytest.raises(UserError, match="--message"):
        _prepare(default_pack_text(), [], message="x" * 501)


def test_newest_valid_skips_versions_that_do_not_validate():
    good = _prepare(default_pack_text(), [])
    bad = publishing.Published(version=2, author="x", published_at="t", message="",
                               sha256="0", pack="rules: nope\n")
    assert publishing.newest_valid([good, bad]) == good
    assert publishing.newest_valid([bad]) is None
    assert _prepare(default_pack_text(), [good, bad]).version == 3
