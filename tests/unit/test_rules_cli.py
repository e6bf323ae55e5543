"""`churnguard rules export | validate | diff` and `replay --rules`, in-process through
churnguard.cli.main (and once as the installed command), as a retention lead uses them on a
copy of the shipped pack; a worker's broken CHURNGUARD_RULES_FILE is refused before anything
starts."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

import churnguard.rules
from churnguard import cli
from churnguard.core.pack import ThresholdTrigger
from churnguard.engine import build_engine
from churnguard.rules.export import export_pack
from churnguard.rules.loading import (
    PackFileInvalid,
    default_pack,
    default_pack_text,
    load_pack,
    load_pack_file,
)
from streams.settings import Settings

DEFAULT = default_pack_text()
RULE_IDS = [rule.id for rule in default_pack().spec.rules]
SEGMENTS = len(default_pack().spec.rfm.segments)
SUMMARY = "churnguard: the rule pack is invalid ({} problem{}); fix the file"


def cannot_read(path: Path, reason: str = "No such file or directory") -> str:
    """The one line of a rule pack file that cannot be read (exit 2, not an invalid pack)."""
    return (f"churnguard: {path}: cannot read the rule pack: {reason}; give the path of a "
            "readable YAML file")


@pytest.fixture(autouse=True)
def _keep_logging(monkeypatch: pytest.MonkeyPatch) -> None:
    """The commands configure structlog onto the (captured) stderr: not in-process here."""
    monkeypatch.setattr(cli, "configure_logging", lambda *args, **kwargs: None)


@dataclass(frozen=True)
class Ran:
    code: int
    out: str
    err: str

    @property
    def err_lines(self) -> list[str]:
        return self.err.splitlines()


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str]) -> Callable[..., Ran]:
    """Run the CLI in-process; never a traceback, whatever the outcome."""

    def call(*argv: object) -> Ran:
        code = cli.main([str(arg) for arg in argv])
        captured = capsys.readouterr()
        assert "Traceback" not in captured.err
        return Ran(code, captured.out, captured.err)

    return call


@pytest.fixture
def write(tmp_path: Path) -> Callable[[str, str | bytes], Path]:
    def make(name: str, text: str | bytes) -> Path:
        path = tmp_path / name
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text, encoding="utf-8")
        return path

    return make


def edit(text: str, old: str, new: str) -> str:
    if text.count(old) != 1:
        raise LookupError(f"{old!r} occurs {text.count(old)} times in the pack")
    return text.replace(old, new)


def at(text: str, needle: str) -> tuple[int, int]:
    """(line, column), 1-based, of the only occurrence of `needle`."""
    if text.count(needle) != 1:
        raise LookupError(f"{needle!r} occurs {text.count(needle)} times in the pack")
    index = text.index(needle)
    return text.count("\n", 0, index) + 1, index - text.rfind("\n", 0, index)


def rule_blocks(text: str) -> tuple[str, list[str]]:
    """The text before the rules, and each rule's block (`  - id: ...` up to the next)."""
    head, rules = text.split("\nrules:\n")
    blocks = re.split(r"(?m)^(?=  - id: )", rules)
    assert blocks[0].strip() == ""
    return head + "\nrules:\n" + blocks[0], [b if b.endswith("\n\n") else b.rstrip("\n") + "\n\n"
                                             for b in blocks[1:]]


def with_rules(head: str, blocks: list[str]) -> str:
    return head + "".join(blocks)


def block_of(blocks: list[str], rule_id: str) -> int:
    [index] = [i for i, b in enumerate(blocks) if b.startswith(f"  - id: {rule_id}\n")]
    return index


VIP_AT_500 = edit(DEFAULT, "at_least: 10000", "at_least: 500")
NEW_RULE = """
  - id: login_bonus
    description: A small coupon for VIPs who log in.
    trigger: {on: login}
    conditions: state.tier == vip
    actions:
      - {type: coupon, value: 5, kind: percent}
"""


def summary(path: Path, *, enabled: int | None = None, total: int | None = None) -> str:
    total = len(RULE_IDS) if total is None else total
    enabled = total if enabled is None else enabled
    return (f"{path}: valid: {total} rules ({enabled} enabled), {SEGMENTS} segments, "
            "time zone UTC\n")


# --- rules validate ----------------------------------------------------------------------------


def test_validate_the_shipped_pack(run: Callable[..., Ran]) -> None:
    path = Path(churnguard.rules.__file__).parent / "default.yaml"
    ran = run("rules", "validate", path)
    assert (ran.code, ran.out, ran.err) == (0, summary(path), "")


def test_validate_a_copy_with_a_rule_disabled(run: Callable[..., Ran], write: Callable[..., Path]
                                              ) -> None:
    path = write("pack.yaml", edit(DEFAULT, "  - id: vip_upgrade\n",
                                   "  - id: vip_upgrade\n    enabled: false\n"))
    ran = run("rules", "validate", path)
    assert (ran.code, ran.out) == (0, summary(path, enabled=len(RULE_IDS) - 1))


def test_validate_an_exported_copy(run: Callable[..., Ran], write: Callable[..., Path]) -> None:
    exported = run("rules", "export")
    assert exported.code == 0
    path = write("exported.yaml", exported.out)
    ran = run("rules", "validate", path)
    assert (ran.code, ran.out, ran.err) == (0, summary(path), "")


def test_validate_a_broken_copy_lists_every_problem_and_exits_1(
    run: Callable[..., Ran], write: Callable[..., Path]
) -> None:
    text = DEFAULT
    text = edit(text, "trigger: {on: ticket_closed}", "trigger: {on: ticket_close}")
    text = edit(text, "conditions: state.tier != vip", "conditions: state.teir != vip")
    text = edit(text, "{urgent: 4, high: 24, normal: 72, low: 168}",
                "{urgent: 4, high: 24, normal: 72}")
    text = edit(text, "trigger: {on: inactivity, days: 30}\n",
                "trigger: {on: inactivity, days: 30}\n    conditions: event.channel == web\n")
    path = write("pack.yaml", text)
    ran = run("rules", "validate", path)
    assert ran.code == 1
    assert ran.out == ""
    *problems, last = ran.err_lines
    assert last == SUMMARY.format(4, "s")
    expected = {
        (at(text, "{urgent: 4, high: 24, normal: 72}"), "ticket_sla_hours"),
        (at(text, "{on: ticket_close}"), f"rules[{RULE_IDS.index('ticket_closed_survey')}]"
                                         ".trigger"),
        (at(text, "state.teir"), f"rules[{RULE_IDS.index('vip_upgrade')}].conditions"),
        (at(text, "event.channel == web"),
         f"rules[{RULE_IDS.index('inactive_30d_followup')}].conditions"),
    }
    reported = set()
    for line in problems:
        match = re.fullmatch(rf"{re.escape(str(path))}:(\d+):(\d+): (\S+): .+", line)
        assert match is not None, line
        reported.add(((int(match[1]), int(match[2])), match[3]))
    assert reported == expected


def _billion_laughs() -> str:
    lines = ['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for prev, name in zip("abcdefgh", "bcdefghi", strict=True):
        lines.append(f"{name}: &{name} [{', '.join(['*' + prev] * 9)}]")
    return "\n".join(lines) + "\n"


@pytest.mark.timeout(20)
@pytest.mark.parametrize(("content", "says"), [
    pytest.param(DEFAULT + "#" * 1_000_001 + "\n", "1,000,000 bytes", id="over-1-MB"),
    pytest.param(_billion_laughs(), "aliases (*a) are not allowed", id="billion-laughs"),
    pytest.param(DEFAULT + "deep: " + "[" * 10_000 + "]" * 10_000 + "\n",
                 "nested deeper than 32 levels", id="10k-deep"),
    pytest.param(DEFAULT.replace("timezone: UTC\n", "timezone: UTC\ntimezone: UTC\n"),
                 "duplicate key `timezone`", id="duplicate-key"),
    pytest.param("", "the file is empty", id="empty"),
    pytest.param("# nothing here yet\n", "the file is empty", id="only-comments"),
    pytest.param("- a\n- b\n", "expected a YAML mapping at the top level, found a list",
                 id="a-list"),
    pytest.param(bytes(range(256)) * 4, "", id="binary-garbage"),
])
def test_validate_a_hostile_file_is_one_line_and_exit_1(
    run: Callable[..., Ran], write: Callable[..., Path], content: str | bytes, says: str,
) -> None:
    path = write("pack.yaml", content)
    ran = run("rules", "validate", path)
    assert ran.code == 1
    assert ran.out == ""
    problem, last = ran.err_lines
    assert problem.startswith(f"{path}")
    assert says in problem
    assert last == SUMMARY.format(1, "")


def test_the_installed_command_validates_without_a_traceback(tmp_path: Path) -> None:
    text = edit(DEFAULT, "conditions: state.tier != vip", "conditions: state.tier == gold")
    text = edit(text, "value: 15\n", "value: 150\n")
    bad = tmp_path / "BAD.yaml"
    bad.write_text(text)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHURNGUARD_")}
    done = subprocess.run(
        [sys.executable, "-m", "churnguard", "rules", "validate", str(bad)],
        capture_output=True, text=True, env=env, timeout=60, check=False,
        cwd=Path(__file__).parents[2],
    )
    assert done.returncode == 1
    assert done.stdout == ""
    assert "Traceback" not in done.stderr
    gold, coupon = at(text, "gold"), at(text, "type: coupon\n        value: 150")
    vip, winback = RULE_IDS.index("vip_upgrade"), RULE_IDS.index("health_winback")
    lines = done.stderr.splitlines()
    assert lines[0] == (f"{bad}:{gold[0]}:{gold[1]}: rules[{vip}].conditions: state.tier is one "
                        "of standard, vip; got 'gold'")
    assert lines[1].startswith(f"{bad}:{coupon[0]}:{coupon[1]}: rules[{winback}].actions[2]")
    assert "at most 100" in lines[1]
    assert lines[2:] == [SUMMARY.format(2, "s")]


# --- rules export ------------------------------------------------------------------------------


def test_export_prints_the_shipped_pack_with_its_comments(run: Callable[..., Ran]) -> None:
    ran = run("rules", "export")
    assert (ran.code, ran.out, ran.err) == (0, DEFAULT, "")
    assert load_pack(ran.out, "exported.yaml").spec == default_pack().spec


def test_export_prints_the_rules_file_in_use(
    run: Callable[..., Ran], write: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    source = write("vip500.yaml", VIP_AT_500)
    monkeypatch.setenv("CHURNGUARD_RULES_FILE", str(source))
    ran = run("rules", "export")
    assert ran.code == 0
    assert ran.out == export_pack(load_pack_file(source).spec)
    copy = write("copy.yaml", ran.out)
    monkeypatch.delenv("CHURNGUARD_RULES_FILE")
    validated = run("rules", "validate", copy)
    assert (validated.code, validated.out) == (0, summary(copy))
    assert load_pack_file(copy).spec == load_pack_file(source).spec
    [vip] = [r for r in load_pack_file(copy).spec.rules if r.id == "vip_upgrade"]
    assert isinstance(vip.trigger, ThresholdTrigger)
    assert vip.trigger.at_least == 500


def test_export_of_a_broken_rules_file_lists_its_problems(
    run: Callable[..., Ran], write: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    text = edit(DEFAULT, "conditions: state.tier != vip", "conditions: state.teir != vip")
    source = write("broken.yaml", text)
    monkeypatch.setenv("CHURNGUARD_RULES_FILE", str(source))
    ran = run("rules", "export")
    assert ran.code == 1
    assert ran.out == ""
    line, col = at(text, "state.teir")
    assert ran.err_lines == [
        f"{source}:{line}:{col}: rules[{RULE_IDS.index('vip_upgrade')}].conditions: unknown "
        "field 'state.teir' (did you mean 'state.tier'?)",
        SUMMARY.format(1, ""),
    ]


# --- rules diff --------------------------------------------------------------------------------


def _diff(run: Callable[..., Ran], write: Callable[..., Path], old: str, new: str) -> list[str]:
    ran = run("rules", "diff", write("old.yaml", old), write("new.yaml", new))
    assert (ran.code, ran.err) == (0, "")
    return ran.out.splitlines()


SAME = "the packs are the same (apart from versions)"


def test_diff_of_identical_packs(run: Callable[..., Ran], write: Callable[..., Path]) -> None:
    assert _diff(run, write, DEFAULT, DEFAULT) == [SAME]
    # An export has no comments, floats for ints, every default spelled out: the same pack.
    assert _diff(run, write, DEFAULT, export_pack(default_pack().spec)) == [SAME]
    # Published versions are bookkeeping, not content.
    versioned = edit(DEFAULT, "  - id: vip_upgrade\n", "  - id: vip_upgrade\n    version: 4\n")
    assert _diff(run, write, DEFAULT, "version: 7\n" + versioned) == [SAME]


def test_diff_of_a_changed_threshold_shows_old_and_new(
    run: Callable[..., Ran], write: Callable[..., Path]
) -> None:
    lines = _diff(run, write, DEFAULT, VIP_AT_500)
    assert lines[:2] == ["rules:", "  ~ vip_upgrade:"]
    assert len(lines) == 3
    assert re.fullmatch(r" +trigger\.at_least: 10000(\.0)? → 500(\.0)?", lines[2]), lines[2]


def test_diff_of_a_disabled_rule(run: Callable[..., Ran], write: Callable[..., Path]) -> None:
    new = edit(DEFAULT, "  - id: health_winback\n", "  - id: health_winback\n    enabled: false\n")
    lines = _diff(run, write, DEFAULT, new)
    assert lines[:2] == ["rules:", "  ~ health_winback:"]
    assert len(lines) == 3
    assert re.fullmatch(r" +enabled: (?i:true) → (?i:false)", lines[2]), lines[2]


def test_diff_of_an_added_rule(run: Callable[..., Ran], write: Callable[..., Path]) -> None:
    lines = _diff(run, write, DEFAULT, DEFAULT + NEW_RULE)
    assert lines[0] == "rules:"
    [added] = lines[1:]
    assert added.startswith("  + login_bonus (new): ")
    assert "login" in added
    assert "coupon" in added


def test_diff_of_a_removed_rule(run: Callable[..., Ran], write: Callable[..., Path]) -> None:
    head, blocks = rule_blocks(DEFAULT)
    del blocks[block_of(blocks, "onboarding_tips")]
    assert _diff(run, write, DEFAULT, with_rules(head, blocks)) == [
        "rules:", "  - onboarding_tips (removed)"]


def test_diff_of_a_changed_scoring_weight(run: Callable[..., Ran], write: Callable[..., Path]
                                         ) -> None:
    new = edit(edit(DEFAULT, "recency_weight: 0.4", "recency_weight: 0.5"),
               "engagement_weight: 0.3", "engagement_weight: 0.2")
    assert _diff(run, write, DEFAULT, new) == [
        "pack settings:",
        "  scoring.recency_weight: 0.4 → 0.5",
        "  scoring.engagement_weight: 0.3 → 0.2",
    ]


def test_diff_of_a_changed_order(run: Callable[..., Ran], write: Callable[..., Path]) -> None:
    head, blocks = rule_blocks(DEFAULT)
    first, second = block_of(blocks, "vip_upgrade"), block_of(blocks, "health_winback")
    blocks[first], blocks[second] = blocks[second], blocks[first]
    new_order = list(RULE_IDS)
    new_order[first], new_order[second] = new_order[second], new_order[first]
    lines = _diff(run, write, DEFAULT, with_rules(head, blocks))
    assert lines[0] == "rules:"
    [order] = lines[1:]
    assert order.startswith("  order of rules")
    assert order.endswith(f"{', '.join(RULE_IDS)} → {', '.join(new_order)}")


def test_diff_of_several_changes_lists_each(run: Callable[..., Ran], write: Callable[..., Path]
                                           ) -> None:
    head, blocks = rule_blocks(edit(VIP_AT_500, "recency_weight: 0.4\n  engagement_weight: 0.3",
                                    "recency_weight: 0.3\n  engagement_weight: 0.4"))
    del blocks[block_of(blocks, "signup_anniversary_coupon")]
    lines = _diff(run, write, DEFAULT, with_rules(head, blocks) + NEW_RULE)
    assert lines[0] == "pack settings:"
    assert "  scoring.recency_weight: 0.4 → 0.3" in lines
    assert "  ~ vip_upgrade:" in lines
    assert any(line.startswith("  + login_bonus (new)") for line in lines)
    assert "  - signup_anniversary_coupon (removed)" in lines
    assert not any("order of rules" in line for line in lines)  # nothing moved


def test_diff_with_a_broken_pack_lists_its_problems(
    run: Callable[..., Ran], write: Callable[..., Path]
) -> None:
    broken = edit(DEFAULT, "conditions: state.tier != vip", "conditions: state.tier == gold")
    new = write("new.yaml", broken)
    ran = run("rules", "diff", write("old.yaml", DEFAULT), new)
    assert ran.code == 1
    assert ran.out == ""
    line, col = at(broken, "gold")
    assert ran.err_lines[0].startswith(f"{new}:{line}:{col}: ")
    assert ran.err_lines[1:] == [SUMMARY.format(1, "")]


# --- replay --rules -----------------------------------------------------------------------------

EVENTS = "".join(json.dumps(event) + "\n" for event in [
    {"type": "purchase", "event_id": "e1", "customer_id": "c1",
     "occurred_at": "2024-03-01T12:00:00Z", "order_id": "o1", "amount": "300", "currency": "EUR"},
    {"type": "purchase", "event_id": "e2", "customer_id": "c1",
     "occurred_at": "2024-03-02T12:00:00Z", "order_id": "o2", "amount": "300", "currency": "EUR"},
    {"type": "login", "event_id": "e3", "customer_id": "c2",
     "occurred_at": "2024-03-02T13:00:00Z", "channel": "web"},
])
UNTIL = "2024-03-03T00:00:00Z"


def _replay(run: Callable[..., Ran], write: Callable[..., Path], tmp_path: Path,
            *rules: object) -> tuple[Ran, list[dict[str, object]]]:
    out = tmp_path / "actions.jsonl"
    out.unlink(missing_ok=True)
    ran = run("replay", write("events.jsonl", EVENTS), "--until", UNTIL, "--out", out, *rules)
    actions = ([json.loads(line) for line in out.read_text().splitlines()]
               if out.exists() else [])
    return ran, actions


def test_replay_uses_the_rules_pack_given(
    run: Callable[..., Ran], write: Callable[..., Path], tmp_path: Path
) -> None:
    ran, actions = _replay(run, write, tmp_path)
    assert ran.code == 0
    assert actions == []  # 600 spent: far from the default's 10,000
    ran, actions = _replay(run, write, tmp_path, "--rules", write("vip500.yaml", VIP_AT_500))
    assert ran.code == 0
    assert [(a["rule_id"], a["type"], a["customer_id"]) for a in actions] == [
        ("vip_upgrade", "profile_update", "c1"), ("vip_upgrade", "notification", "c1")]
    assert actions[0]["payload"] == {"set": {"tier": "vip"}, "add_tags": ["vip"]}
    assert ran.err_lines == ["replay: 2 actions, 0 bad lines"]


def test_replay_uses_the_rules_file_of_the_environment_unless_rules_is_given(
    run: Callable[..., Ran], write: Callable[..., Path], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CHURNGUARD_RULES_FILE", str(write("vip500.yaml", VIP_AT_500)))
    _, actions = _replay(run, write, tmp_path)
    assert {a["rule_id"] for a in actions} == {"vip_upgrade"}
    _, actions = _replay(run, write, tmp_path, "--rules", write("default.yaml", DEFAULT))
    assert actions == []


def test_replay_with_an_invalid_rules_file_lists_its_problems_and_writes_nothing(
    run: Callable[..., Ran], write: Callable[..., Path], tmp_path: Path
) -> None:
    text = edit(VIP_AT_500, "value: 15\n", "value: 150\n")
    text = edit(text, "metric: lifetime_spend", "metric: lifetime_spent")
    pack = write("bad.yaml", text)
    ran, actions = _replay(run, write, tmp_path, "--rules", pack)
    assert ran.code == 1
    assert ran.out == ""
    assert actions == []
    assert not (tmp_path / "actions.jsonl").exists()  # refused before anything started
    *problems, last = ran.err_lines
    assert last == SUMMARY.format(2, "s")
    metric = at(text, "lifetime_spent")
    assert problems[0] == (
        f"{pack}:{metric[0]}:{metric[1]}: rules[{RULE_IDS.index('vip_upgrade')}].trigger.metric: "
        + problems[0].split(".trigger.metric: ", 1)[1])
    assert "'lifetime_spend'" in problems[0]
    assert "at most 100" in problems[1]
    assert not any(line.startswith("replay:") for line in ran.err_lines)


def test_replay_with_a_missing_rules_file_writes_nothing(
    run: Callable[..., Ran], write: Callable[..., Path], tmp_path: Path
) -> None:
    missing = tmp_path / "nope.yaml"
    ran, actions = _replay(run, write, tmp_path, "--rules", missing)
    assert (ran.code, ran.out, ran.err_lines) == (2, "", [cannot_read(missing)])
    assert actions == []
    assert not (tmp_path / "actions.jsonl").exists()  # refused before anything started


# --- a worker's CHURNGUARD_RULES_FILE ----------------------------------------------------------


def test_build_engine_refuses_a_broken_rules_file(write: Callable[..., Path]) -> None:
    text = edit(DEFAULT, "recency_weight: 0.4", "recency_weight: 0.9")
    text = edit(text, "conditions: state.tier != vip", "conditions: state.lifetime_spend >= lots")
    pack = write("broken.yaml", text)
    with pytest.raises(PackFileInvalid) as info:
        build_engine(Settings(rules_file=pack))
    weights, lots = at(text, "recency_weight: 0.9"), at(text, "lots")
    assert [line.split(": ", 2)[:2] for line in info.value.lines] == [
        [f"{pack}:{weights[0]}:{weights[1]}", "scoring"],
        [f"{pack}:{lots[0]}:{lots[1]}", f"rules[{RULE_IDS.index('vip_upgrade')}].conditions"],
    ]


@pytest.mark.parametrize("content", [
    pytest.param("", id="empty"),
    pytest.param(b"\xff\xfe\x00garbage", id="binary"),
])
def test_build_engine_refuses_a_rules_file_it_cannot_use(
    write: Callable[..., Path], monkeypatch: pytest.MonkeyPatch, content: str | bytes,
) -> None:
    pack = write("pack.yaml", content)
    monkeypatch.setenv("CHURNGUARD_RULES_FILE", str(pack))
    with pytest.raises(PackFileInvalid) as info:
        build_engine(Settings())
    [line] = info.value.lines
    assert line.startswith(str(pack))


def test_build_engine_runs_the_rules_file(write: Callable[..., Path]) -> None:
    pack = write("vip500.yaml", VIP_AT_500)
    engine = build_engine(Settings(rules_file=pack))
    assert engine.pack.spec == load_pack_file(pack).spec
    assert build_engine(Settings()).pack.spec == default_pack().spec


def test_the_worker_refuses_a_broken_rules_file_before_anything_starts(
    run: Callable[..., Ran], write: Callable[..., Path], monkeypatch: pytest.MonkeyPatch,
) -> None:
    import streams.worker

    started: list[str] = []
    monkeypatch.setattr(streams.worker, "acquire_store_lock",
                        lambda *args, **kwargs: started.append("store lock"))
    monkeypatch.setattr(streams.worker, "ensure_all_topics",
                        lambda *args, **kwargs: started.append("topics on the broker"))
    monkeypatch.setattr(streams.worker, "create_worker",
                        lambda *args, **kwargs: started.append("faust worker"))
    text = edit(DEFAULT, "conditions: state.tier != vip", "conditions: state.teir != vip")
    monkeypatch.setenv("CHURNGUARD_RULES_FILE", str(write("broken.yaml", text)))
    ran = run("worker")
    assert ran.code == 1
    assert "unknown field 'state.teir'" in ran.err
    # Locking the local store first is harmless; talking to the broker is not.
    assert "topics on the broker" not in started
    assert "faust worker" not in started


def test_diff_shows_an_added_action_and_values_as_the_pack_writes_them():
    from churnguard.rules.diff import diff_packs
    from tests.unit.packs import make_pack, pack_data

    data = pack_data()
    winback = next(r for r in data["rules"] if r["id"] == "health_winback")
    winback["actions"].append({"type": "coupon", "value": 5})
    winback["enabled"] = False
    lines = diff_packs(make_pack().spec, make_pack(
        changes={"rules.health_winback.actions": winback["actions"],
                 "rules.health_winback.enabled": False}).spec)
    assert "      enabled: true → false" in lines
    assert any(line.startswith("      actions[4]: (none) → {type: coupon, value: 5")
               for line in lines), lines


# --- a rule pack file that cannot be read: a user's mistake, one line, exit 2 -----------------


@pytest.mark.parametrize("argv", [
    pytest.param(["rules", "validate", "{missing}"], id="rules-validate"),
    pytest.param(["rules", "diff", "{missing}", "{pack}"], id="rules-diff-old"),
    pytest.param(["rules", "diff", "{pack}", "{missing}"], id="rules-diff-new"),
    pytest.param(["rules", "publish", "{missing}", "--author", "ana"], id="rules-publish"),
    pytest.param(["replay", "{events}", "--rules", "{missing}"], id="replay-rules"),
    pytest.param(["replay", "{events}", "--rules", "{pack}", "--compare", "{missing}"],
                 id="replay-compare"),
    pytest.param(["backtest", "--rules", "{missing}"], id="backtest-rules"),
])
def test_a_missing_pack_file_is_one_line_and_exit_2(
    run: Callable[..., Ran], write: Callable[..., Path], tmp_path: Path, argv: list[str],
) -> None:
    files = {"missing": tmp_path / "nope.yaml", "pack": write("pack.yaml", DEFAULT),
             "events": write("events.jsonl", EVENTS)}
    ran = run(*(arg.format(**files) for arg in argv))
    assert (ran.code, ran.out, ran.err_lines) == (2, "", [cannot_read(files["missing"])])


@pytest.mark.parametrize("argv", [
    pytest.param(["replay", "{events}"], id="replay"),
    pytest.param(["rules", "export"], id="rules-export"),
    pytest.param(["backtest"], id="backtest"),
])
def test_a_missing_rules_file_of_the_environment_is_one_line_and_exit_2(
    run: Callable[..., Ran], write: Callable[..., Path], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, argv: list[str],
) -> None:
    missing = tmp_path / "nope.yaml"
    monkeypatch.setenv("CHURNGUARD_RULES_FILE", str(missing))
    ran = run(*(arg.format(events=write("events.jsonl", EVENTS)) for arg in argv))
    assert (ran.code, ran.out, ran.err_lines) == (2, "", [cannot_read(missing)])


def test_the_worker_refuses_a_missing_rules_file_in_one_line_before_anything_starts(
    run: Callable[..., Ran], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    import streams.worker

    started: list[str] = []
    for step in ("acquire_store_lock", "ensure_all_topics", "create_worker"):
        monkeypatch.setattr(streams.worker, step,
                            lambda *args, step=step, **kwargs: started.append(step))
    missing = tmp_path / "nope.yaml"
    monkeypatch.setenv("CHURNGUARD_RULES_FILE", str(missing))
    ran = run("worker")
    assert (ran.code, ran.out, ran.err_lines) == (2, "", [cannot_read(missing)])
    assert started == []


def test_a_directory_given_as_a_pack_is_one_line_and_exit_2(run: Callable[..., Ran],
                                                            tmp_path: Path) -> None:
    ran = run("rules", "validate", tmp_path)
    assert (ran.code, ran.out, ran.err_lines) == (2, "", [cannot_read(tmp_path,
                                                                       "Is a directory")])


def test_the_installed_command_refuses_a_missing_pack_in_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHURNGUARD_")}
    done = subprocess.run(
        [sys.executable, "-m", "churnguard", "rules", "validate", str(missing)],
        capture_output=True, text=True, env=env, timeout=60, check=False,
        cwd=Path(__file__).parents[2],
    )
    assert "Traceback" not in done.stderr
    assert (done.returncode, done.stdout, done.stderr) == (2, "", cannot_read(missing) + "\n")
