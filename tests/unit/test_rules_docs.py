"""docs/rules.md documents what the pack accepts: every field, trigger and action type."""

from __future__ import annotations

import typing
from pathlib import Path

from churnguard.core.conditions import FIELDS, PROPERTY_PREFIX
from churnguard.core.pack import ActionSpec, PackSpec, RuleSpec, Trigger
from churnguard.core.specs import ActionCosts, KpiSettings

DOC = (Path(__file__).parents[2] / "docs" / "rules.md").read_text()


def _tags(union: object, key: str) -> set[str]:
    members = typing.get_args(typing.get_args(union)[0])
    found: set[str] = set()
    for member in members:
        found |= set(typing.get_args(member.model_fields[key].annotation))
    return found


def test_every_condition_field_is_documented():
    fields = {name for name in FIELDS if not name.startswith(PROPERTY_PREFIX)}
    missing = {name for name in fields if f"`{name}`" not in DOC}
    assert missing == set()


def test_every_trigger_and_action_type_is_documented():
    assert {t for t in _tags(Trigger, "on") if f"`{t}`" not in DOC} == set()
    assert {t for t in _tags(ActionSpec, "type") if f"`{t}`" not in DOC} == set()


def test_every_pack_setting_and_rule_field_is_documented():
    names = (set(PackSpec.model_fields) | set(RuleSpec.model_fields)
             | set(KpiSettings.model_fields) | set(ActionCosts.model_fields))
    # Named in the text (`name`) or shown in an example (`name:` / `task_queues.default`).
    assert {name for name in names
            if f"`{name}`" not in DOC and f"{name}:" not in DOC and f"`{name}." not in DOC
            } == set()
