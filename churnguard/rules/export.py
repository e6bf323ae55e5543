"""A rule pack as YAML text: what `churnguard rules export` prints and publishing stores.
It reads back (churnguard.rules.loading) to the same pack."""

from __future__ import annotations

from typing import Any

import yaml

from churnguard.core.pack import PackSpec


class _Dumper(yaml.SafeDumper):
    """Block style for mappings, flow style for short lists of scalars (thresholds)."""


def _list(dumper: yaml.SafeDumper, items: list[Any]) -> yaml.Node:
    flow = all(not isinstance(item, dict | list) for item in items)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", items, flow_style=flow)


_Dumper.add_representer(list, _list)


def export_pack(spec: PackSpec) -> str:
    data = spec.model_dump(mode="json")
    text: str = yaml.dump(data, Dumper=_Dumper, sort_keys=False, allow_unicode=True,
                          default_flow_style=False, width=100)
    return text
