"""Rule packs for tests: the shipped default with some fields changed, as data."""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from functools import cache
from typing import Any

from churnguard.core.pack import RulePack, build_pack
from churnguard.core.rules import next_due, retention_due
from churnguard.core.state import CustomerState
from churnguard.rules.loading import default_pack_text
from churnguard.rules.yaml_file import read_yaml


@cache
def _default() -> dict[str, Any]:
    data: dict[str, Any] = read_yaml(default_pack_text(), "default.yaml").data
    return data


def default_data() -> dict[str, Any]:
    """A fresh, mutable copy of the default pack's data."""
    return copy.deepcopy(_default())


DEFAULT_RULES = tuple(rule["id"] for rule in _default()["rules"])


def only_retention_due(pack: RulePack, state: CustomerState) -> bool:
    """Nothing is pending for this customer but its data retention (the stored next_due
    may be a lower bound: what is really due is computed)."""
    retained = retention_due(pack, state)
    return (retained is not None and next_due(pack, state) == retained
            and state.next_due is not None and state.next_due <= retained)


def pack_data(
    *,
    only: Iterable[str] | None = None,
    disable: Iterable[str] = (),
    changes: Mapping[str, Any] | None = None,
    extra_rules: Iterable[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """The default pack's data with rules left out (`only` keeps these, `disable` drops
    these) and fields changed: `changes={"rules.vip_upgrade.trigger.at_least": 500,
    "scoring.satisfaction_sample": 2, "ticket_sla_hours.low": 4}`."""
    data = default_data()
    for path, value in (changes or {}).items():
        _set(data, path, value)
    kept = set(DEFAULT_RULES if only is None else only) - set(disable)
    unknown = kept - set(DEFAULT_RULES)
    assert not unknown, f"not default rules: {unknown}"
    data["rules"] = [rule for rule in data["rules"] if rule["id"] in kept]
    data["rules"] += [dict(rule) for rule in extra_rules]
    return data


def make_pack(**kwargs: Any) -> RulePack:
    return build_pack(pack_data(**kwargs))


def _set(data: dict[str, Any], path: str, value: Any) -> None:
    parts = path.split(".")
    node: Any = data
    if parts[0] == "rules":
        [node] = [rule for rule in data["rules"] if rule["id"] == parts[1]]
        parts = parts[2:]
    for part in parts[:-1]:
        node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
    if isinstance(node, list):
        node[int(parts[-1])] = value
    else:
        node[parts[-1]] = value


def rules_only(*rules: Mapping[str, Any]) -> RulePack:
    """A pack of just these rules, with the default pack's settings."""
    data = default_data()
    data["rules"] = [dict(rule) for rule in rules]
    return build_pack(data)
