"""A rule pack as YAML text: what `churnguard rules export` prints and publishing stores.
It reads back (churnguard.rules.loading) to the same pack — checked on every export."""

from __future__ import annotations

import re
from typing import Any

import yaml

from churnguard.core.pack import PackSpec
from churnguard.errors import UserError
from churnguard.rules.yaml_file import MAX_BYTES

# Plain scalars that YAML 1.2's core schema (the pack reader's) resolves to something other
# than a string; PyYAML's dumper follows YAML 1.1 and would leave e.g. "08002" or "1e3" plain.
_NOT_A_STRING = re.compile(
    r"~|null|Null|NULL|true|True|TRUE|false|False|FALSE"
    r"|[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+"
    r"|[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?"
    r"|[-+]?\.(inf|Inf|INF)|\.(nan|NaN|NAN)"
)
# Characters PyYAML writes raw but treats as line breaks when reading (the reader refuses
# them raw): double quotes escape them.
_BREAKS = re.compile("[\x85\u2028\u2029\ufeff]")


class _Dumper(yaml.SafeDumper):
    """Block style for mappings, flow style for short lists of scalars (thresholds)."""


def _list(dumper: yaml.SafeDumper, items: list[Any]) -> yaml.Node:
    flow = all(not isinstance(item, dict | list) for item in items)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", items, flow_style=flow)


def _str(dumper: yaml.SafeDumper, text: str) -> yaml.Node:
    style = '"' if _NOT_A_STRING.fullmatch(text) or _BREAKS.search(text) else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style=style)


_Dumper.add_representer(list, _list)
_Dumper.add_representer(str, _str)


def export_pack(spec: PackSpec) -> str:
    from churnguard.rules.loading import load_pack

    data = spec.model_dump(mode="json")
    text: str = yaml.dump(data, Dumper=_Dumper, sort_keys=False, allow_unicode=True,
                          default_flow_style=False, width=100)
    size = len(text.encode())
    if size > MAX_BYTES:
        raise UserError(f"the pack is {size:,} bytes once written out (escapes, defaults), "
                        f"over the {MAX_BYTES:,} a pack may have; make it smaller")
    if load_pack(text, "the export").spec != spec:  # a bug of this module, never the user's
        raise RuntimeError("the exported rule pack does not read back to the same pack")
    return text
