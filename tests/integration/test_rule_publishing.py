"""Publishing a rule pack to a running worker: it switches between batches, without a
restart; every event's actions come from exactly one pack, the old one before the switch
and the new one after; a pack that does not validate is refused and the running one stays;
a worker starting later runs the newest valid version from its first event."""

from __future__ import annotations

import time
from typing import Any

import pytest

from churnguard.audit import read_audit
from churnguard.core.clock import rfc3339
from churnguard.rules import publishing
from churnguard.rules.loading import default_pack_text
from tests.integration.pipeline_support import wait_for

pytestmark = pytest.mark.integration


def _ticket(n: int, now: float) -> dict[str, Any]:
    return {"type": "ticket", "event_id": f"tk-{n}", "customer_id": f"c{n % 7}",
            "occurred_at": rfc3339(now + n), "ticket_id": f"T-{n}", "status": "opened"}


def _publish(pipeline: Any, text: str, *, author: str = "alice") -> publishing.Published:
    bootstrap = pipeline.settings.bootstrap
    topic = pipeline.topics.rules
    record = publishing.prepare(text, "test", publishing.read_history(bootstrap, topic),
                                author=author, message="test", now=time.time())
    publishing.write(bootstrap, topic, record)
    return record



def _acks(pipeline: Any) -> dict[str, dict[str, Any]]:
    """Ticket acknowledgements by ticket id (the pipeline de-duplicates nothing: a second
    ack of a ticket would show as a second record)."""
    acks: dict[str, dict[str, Any]] = {}
    for action in pipeline.of(pipeline.topics.notifications):
        if action["rule_id"] == "ticket_opened_ack":
            ticket = action["payload"]["variables"]["ticket_id"]
            assert ticket not in acks, f"ticket {ticket} acknowledged twice"
            acks[ticket] = action
    return acks


def test_a_published_pack_takes_over_between_batches(pipeline_factory: Any) -> None:
    now = time.time()
    pipeline = pipeline_factory(now)
    pipeline.start()
    events = pipeline.topics.events
    for n in range(20):
        pipeline.send(events, _ticket(n, now))
    pipeline.flush()
    wait_for("the first acknowledgements", lambda: len(_acks(pipeline)) == 20)
    assert {a["pack_version"] for a in _acks(pipeline).values()} == {0}

    # The retention lead renames the acknowledgement's template and publishes.
    text = default_pack_text().replace("template: ticket_acknowledgement",
                                       "template: ticket_ack_v2")
    published = _publish(pipeline, text)
    assert published.version == 1
    wait_for("the switch", lambda: [r["version"] for r in pipeline.logged(
        "rule_pack_activated")] == [1], timeout=30)
    for n in range(20, 40):
        pipeline.send(events, _ticket(n, now))
    pipeline.flush()
    wait_for("the later acknowledgements", lambda: len(_acks(pipeline)) == 40)
    acks = _acks(pipeline)
    before = [acks[f"T-{n}"] for n in range(20)]
    after = [acks[f"T-{n}"] for n in range(20, 40)]
    assert {(a["pack_version"], a["rule_version"], a["payload"]["template"])
            for a in before} == {(0, 1, "ticket_acknowledgement")}
    assert {(a["pack_version"], a["rule_version"], a["payload"]["template"])
            for a in after} == {(1, 2, "ticket_ack_v2")}
    assert "Traceback" not in pipeline.log()


def test_an_invalid_published_pack_is_refused_and_a_new_worker_runs_the_newest_valid(
    pipeline_factory: Any,
) -> None:
    now = time.time()
    pipeline = pipeline_factory(now)
    valid = _publish(pipeline, default_pack_text().replace(
        "template: ticket_acknowledgement", "template: ticket_ack_v2"))
    pipeline.start()  # starts on version 1: no default pack ever runs
    events = pipeline.topics.events
    pipeline.send(events, _ticket(0, now))
    pipeline.flush()
    wait_for("an acknowledgement", lambda: len(_acks(pipeline)) == 1)
    assert _acks(pipeline)["T-0"]["pack_version"] == valid.version

    # A version 2 that this worker cannot validate (written by hand, not by publish).
    broken = publishing.Published(
        version=2, author="mallory", published_at=rfc3339(now), message="broken",
        sha256="0" * 64, pack="rules: [{id: Bad-Id}]\n")
    publishing.write(pipeline.settings.bootstrap, pipeline.topics.rules, broken)
    wait_for("the refusal", lambda: [r["version"] for r in pipeline.logged(
        "rule_pack_refused")] == [2], timeout=30)
    pipeline.send(events, _ticket(1, now))
    pipeline.flush()
    wait_for("a second acknowledgement", lambda: len(_acks(pipeline)) == 2)
    assert _acks(pipeline)["T-1"]["pack_version"] == valid.version
    wait_for("the refusal counted", lambda: any(
        r["rule_packs_refused"] == 1 and r["pack_version"] == 1
        for r in pipeline.logged("worker_stats")))
    # It started on version 1, read before its first event: never on the default.
    assert [r["version"] for r in pipeline.logged("rule_pack_activated")] == [1]


def test_publish_history_rollback_and_export_from_the_command_line(
    pipeline_factory: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    tmp_path: Any,
) -> None:
    from churnguard import cli

    pipeline = pipeline_factory()
    monkeypatch.setattr(cli, "configure_logging", lambda *args, **kwargs: None)
    monkeypatch.setenv("CHURNGUARD_TOPICS", pipeline.topics.model_dump_json())
    broker = ["--broker", pipeline.settings.broker]
    first, second = tmp_path / "first.yaml", tmp_path / "second.yaml"
    first.write_text(default_pack_text())
    second.write_text(default_pack_text().replace("below: 60", "below: 55"))

    assert cli.main(["rules", "history", *broker]) == 0
    assert "no pack published yet" in capsys.readouterr().out
    assert cli.main(["rules", "publish", str(first), "--author", "alice", *broker]) == 0
    assert "published version 1" in capsys.readouterr().out
    assert cli.main(["rules", "publish", str(second), "--author", "bob",
                     "--message", "softer win-back", *broker]) == 0
    out = capsys.readouterr().out
    assert "health_winback:" in out
    assert "trigger.below: 60 → 55" in out
    assert "published version 2" in out
    assert cli.main(["rules", "rollback", "1", "--author", "alice", *broker]) == 0
    assert "published version 3" in capsys.readouterr().out

    assert cli.main(["rules", "history", *broker]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines[1:4]] == ["3*", "2", "1"]
    assert "rollback to version 1 (rollback of 1)" in lines[1]
    assert "softer win-back" in lines[2]

    assert cli.main(["rules", "export", "--published", *broker]) == 0
    exported = capsys.readouterr().out
    assert "below: 60" in exported
    assert exported.startswith("version: 3")
    assert cli.main(["rules", "export", "--published", "2", *broker]) == 0
    assert "below: 55" in capsys.readouterr().out

    # A broken file is refused before the broker is asked: nothing published.
    broken = tmp_path / "broken.yaml"
    broken.write_text(default_pack_text().replace("state.tier != vip", "state.teir != vip"))
    assert cli.main(["rules", "publish", str(broken), "--author", "eve", *broker]) == 1
    assert "state.teir" in capsys.readouterr().err
    history = publishing.read_history(pipeline.settings.bootstrap, pipeline.topics.rules)
    assert len(history) == 3

    # Each publish and rollback is on the audit trail: who, version, hash, message.
    entries, unreadable = read_audit(pipeline.settings.bootstrap, pipeline.topics.audit,
                                     since=0)
    assert unreadable == 0
    assert [(e.action, e.actor, e.version, e.sha256, e.message) for e in entries] == [
        ("rule_published", "alice", 1, history[0].sha256, ""),
        ("rule_published", "bob", 2, history[1].sha256, "softer win-back"),
        ("rule_rolled_back", "alice", 3, history[2].sha256, "rollback to version 1")]
    assert cli.main(["audit", "--since", "1h", "--actor", "alice", *broker]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["at", "action", "actor", "customer", "detail"]
    assert [line.split()[1] for line in table[1:]] == ["rule_published", "rule_rolled_back"]
    assert f"version 3 ({history[2].sha256[:12]}) rollback to version 1" in table[2]


def test_a_changed_timer_moves_every_customers_due_time(pipeline_factory: Any) -> None:
    """Inactivity 30 → 2 days for customers already in flight: the re-index moves their due
    entries, so the follow-up comes 2 days after their last login, not 30; it never fires
    under the old terms (each entry is evaluated with the running pack)."""
    t0 = time.time()
    pipeline = pipeline_factory(t0)
    pipeline.start()
    events = pipeline.topics.events
    customers = [f"r{n}" for n in range(30)]
    for n, customer in enumerate(customers):
        pipeline.send(events, {"type": "login", "event_id": f"l{n}", "customer_id": customer,
                               "occurred_at": rfc3339(t0 - n * 60)})
    pipeline.flush()
    wait_for("every customer scored", lambda: {r["customer_id"] for r in pipeline.of(
        pipeline.topics.scores)} >= set(customers))
    record = _publish(pipeline, default_pack_text().replace(
        "{on: inactivity, days: 30}", "{on: inactivity, days: 2}"))
    wait_for("the re-index of every partition", lambda: len({
        r["partition"] for r in pipeline.logged("due_index_reindexed")
        if r["pack_version"] == record.version}) == pipeline.settings.partitions)
    moved = sum(r["moved"] for r in pipeline.logged("due_index_reindexed"))
    assert moved == len(customers)
    pipeline.set_clock(t0 + 2 * 86_400 + 60)
    wait_for("the follow-ups", lambda: len([a for a in pipeline.actions()
                                            if a["rule_id"] == "inactive_30d_followup"]) == 30)
    follow_ups = [a for a in pipeline.actions() if a["rule_id"] == "inactive_30d_followup"]
    assert sorted(a["created_at"] for a in follow_ups) == sorted(
        rfc3339(t0 - n * 60 + 2 * 86_400) for n in range(30))
    assert {(a["pack_version"], a["rule_version"]) for a in follow_ups} == {(1, 2)}
    assert {a["payload"]["details"]["silent_days"] for a in follow_ups} == {2.0}
