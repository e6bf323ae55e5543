"""A semantic diff of two rule packs: per rule (added, removed, enabled/disabled, each
changed field with its old and new value) and per pack setting — what a reviewer reads
before publishing, not a text diff."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from churnguard.core.pack import PackSpec, RuleSpec

# Set by publishing: never a change of content.
_BOOKKEEPING = frozenset({"version"})


def diff_packs(old: PackSpec, new: PackSpec) -> list[str]:
    """Readable lines; an empty list when the packs do the same."""
    lines = [f"  {path}: {_show(a)} → {_show(b)}"
             for path, a, b in _changes(_settings(old), _settings(new))]
    if lines:
        lines.insert(0, "pack settings:")
    old_rules = {rule.id: rule for rule in old.rules}
    new_rules = {rule.id: rule for rule in new.rules}
    rule_lines: list[str] = []
    for rule in new.rules:
        before = old_rules.get(rule.id)
        if before is None:
            rule_lines.append(f"  + {rule.id} (new): {_summary(rule)}")
            continue
        changes = list(_changes(_content(before), _content(rule)))
        if not changes:
            continue
        rule_lines.append(f"  ~ {rule.id}:")
        rule_lines += [f"      {path}: {_show(a)} → {_show(b)}" for path, a, b in changes]
    rule_lines += [f"  - {rule.id} (removed)" for rule in old.rules if rule.id not in new_rules]
    order_old = [r.id for r in old.rules if r.id in new_rules]
    order_new = [r.id for r in new.rules if r.id in old_rules]
    if order_old != order_new:
        rule_lines.append("  order of rules (and of their actions): "
                          f"{', '.join(order_old)} → {', '.join(order_new)}")
    if rule_lines:
        lines += ["rules:", *rule_lines]
    return lines


def _settings(pack: PackSpec) -> dict[str, Any]:
    return pack.model_dump(mode="json", exclude={"rules", "version"})


def _content(rule: RuleSpec) -> dict[str, Any]:
    return rule.model_dump(mode="json", exclude=set(_BOOKKEEPING))


def _summary(rule: RuleSpec) -> str:
    trigger = rule.trigger.model_dump(mode="json", exclude_defaults=True)
    kinds = ", ".join(action.type for action in rule.actions)
    state = "" if rule.enabled else " (disabled)"
    return f"on {_show(trigger)} → {kinds}{state}"


def _changes(old: Any, new: Any, path: str = "") -> Iterator[tuple[str, Any, Any]]:
    if isinstance(old, dict) and isinstance(new, dict):
        for key in [*old, *(k for k in new if k not in old)]:
            sub = f"{path}.{key}" if path else str(key)
            if key not in new:
                yield sub, old[key], None
            elif key not in old:
                yield sub, None, new[key]
            else:
                yield from _changes(old[key], new[key], sub)
    elif (isinstance(old, list) and isinstance(new, list)
          and any(isinstance(item, dict) for item in [*old, *new])):
        for index, (a, b) in enumerate(zip(old, new, strict=False)):
            yield from _changes(a, b, f"{path}[{index}]")
        for index in range(len(new), len(old)):
            yield f"{path}[{index}]", old[index], None
        for index in range(len(old), len(new)):
            yield f"{path}[{index}]", None, new[index]
    elif old != new:
        yield path, old, new


def _show(value: Any) -> str:
    """Values as the pack writes them: true, 10000, [a, b]."""
    if value is None:
        return "(none)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_show(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    return str(value)
