"""Kafka over TLS end to end (issue 15 §3): the embedded broker behind stunnel, advertising
stunnel's port; a test CA and server certificate made here. `churnguard topics`, a worker,
`rules publish/history`, `audit` and `lag` all work over it with
CHURNGUARD_KAFKA__SECURITY_PROTOCOL=SSL and the CA; a plaintext client to the TLS port and a
client trusting another CA fail with one clear line, in bounded time, instead of hanging.

Nothing is given the broker's plaintext port: every client only knows the TLS port, where
only a TLS client gets through, and stunnel's log counts the connections it handed on."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson
import pytest
from kafka import KafkaConsumer, KafkaProducer

from churnguard import cli
from churnguard.clocks import FileClock
from churnguard.core.clock import rfc3339
from churnguard.processes import settings_env, start_worker, stop_process_group, wait_logged
from churnguard.rules.loading import default_pack_text
from connectors.kafka_link import KafkaLink, KafkaSecurity
from streams.settings import Settings, TopicNames
from tests.integration.pipeline_support import DEADLINE_S, wait_for
from tests.integration.tls_support import TlsBroker, require_stunnel, security_env, tls_broker

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
# A refused link must be reported within this (`topics` retries for 30 s, a command's client
# gives up after connectors.kafka_link.TOOL_TIMEOUT_S; a hang would never end). The
# subprocess is killed at HANG_S and the test fails "hung".
FAIL_WITHIN_S = 65.0
HANG_S = 150.0
_names = itertools.count()


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsBroker]:
    require_stunnel()
    with tls_broker(tmp_path_factory.mktemp("tls")) as running:
        yield running


def _settings(tls: TlsBroker, tmp: Path, now: float) -> Settings:
    name = f"tls{next(_names)}-{int(time.time() * 1000) % 10**8}"
    clock_file = tmp / "clock"
    FileClock.set(clock_file, now)
    return Settings(
        broker=tls.url,
        kafka=tls.security(),
        app_id=f"cg-{name}",
        partitions=2,
        embedded_broker=True,
        store_dir=tmp / "store",
        topics=TopicNames().with_prefix(f"{name}."),
        clock_file=clock_file,
        tick_interval_s=0.1,
        session_timeout_s=6.0,
        rebalance_timeout_s=6.0,
        web_port=0,
    )


def _ticket(n: int, now: float) -> dict[str, Any]:
    return {"type": "ticket", "event_id": f"tls-tk-{n}", "customer_id": f"c{n % 3}",
            "occurred_at": rfc3339(now + n), "ticket_id": f"T-{n}", "status": "opened"}


def _run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def _command_env(extra: dict[str, str]) -> dict[str, str]:
    """This environment without any CHURNGUARD_ setting, with `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHURNGUARD_")}
    env["PYTHONPATH"] = str(ROOT)
    return {**env, **extra}


def _refused(argv: list[str], env: dict[str, str]) -> tuple[int, str, float]:
    """A churnguard command in a child process (so a hang cannot hang the tests): its exit
    code, stderr and how long it took."""
    started = time.monotonic()
    try:
        done = subprocess.run([sys.executable, "-m", "churnguard", *argv], check=False,
                              cwd=ROOT, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                              timeout=HANG_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"`churnguard {' '.join(argv)}` hung: no answer within {HANG_S}s")
    return done.returncode, done.stderr.decode(errors="replace"), time.monotonic() - started


def _one_clear_line(stderr: str) -> str:
    """The command's error: exactly one `churnguard:` line, the last one, no traceback."""
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("churnguard:")]
    assert len(errors) == 1, stderr[-3000:]
    assert lines[-1] == errors[0], stderr[-3000:]
    return errors[0]


def test_worker_and_tools_over_tls(tls: TlsBroker, tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    now = time.time()
    settings = _settings(tls, tmp_path, now)
    # The clients are given the TLS port only, never the broker's own.
    assert settings.bootstrap == tls.bootstrap
    assert str(tls.plaintext_port) not in settings.broker
    # The worker's child gets the link's security from start_worker (settings_env).
    worker_env = settings_env(settings)
    assert any(key.startswith("CHURNGUARD_KAFKA") for key in worker_env), worker_env
    assert not any(str(tls.plaintext_port) in value for value in worker_env.values())
    # The commands read theirs from the documented variables, as in a deployment.
    command_env = {key: value for key, value in worker_env.items()
                   if not key.startswith("CHURNGUARD_KAFKA")}
    command_env.update(security_env(settings.kafka))
    assert command_env["CHURNGUARD_KAFKA__SECURITY_PROTOCOL"] == "SSL"
    for key, value in command_env.items():
        monkeypatch.setenv(key, value)
    # In-process commands must not point the session's logging at this test's captured
    # stderr (closed after it: later tests' log lines would fail).
    monkeypatch.setattr(cli, "configure_logging", lambda *args, **kwargs: None)
    link = KafkaLink(tls.bootstrap, tls.security())
    assert Settings().link == link  # what every command makes its clients from

    before = tls.tunnel.accepted()
    code, out, err = _run_cli(["topics", "--broker", tls.url], capsys)
    assert code == 0, err[-3000:]
    assert f"ready on {tls.bootstrap}" in out
    assert tls.tunnel.accepted() > before, "`churnguard topics` did not go through stunnel"

    log_path = tmp_path / "worker.log"
    before = tls.tunnel.accepted()
    with monkeypatch.context() as bare:  # nothing but start_worker gives it TLS
        for key in security_env(settings.kafka):
            bare.delenv(key)
        worker = start_worker(settings, log_path)
    producer = reader = None
    try:
        wait_logged(log_path, b"worker_ready", worker, timeout_s=DEADLINE_S,
                    what="worker not ready over TLS")
        assert tls.tunnel.accepted() > before, "the worker did not go through stunnel"

        producer = KafkaProducer(linger_ms=1, **link.client_options())
        for n in range(6):
            event = _ticket(n, now)
            producer.send(settings.topics.events, key=event["customer_id"].encode(),
                          value=orjson.dumps(event))
        producer.flush(timeout=10)
        reader = KafkaConsumer(settings.topics.notifications, auto_offset_reset="earliest",
                               enable_auto_commit=False, group_id=None,
                               **link.client_options())
        acks: dict[str, dict[str, Any]] = {}

        def all_acknowledged() -> bool:
            for records in reader.poll(timeout_ms=100).values():
                for record in records:
                    action = orjson.loads(record.value)
                    if action.get("rule_id") == "ticket_opened_ack":
                        acks[action["payload"]["variables"]["ticket_id"]] = action
            return len(acks) == 6

        wait_for("the worker's acknowledgements over TLS", all_acknowledged)
        assert set(acks) == {f"T-{n}" for n in range(6)}

        # A pack published over TLS reaches the running worker (its rules feed, aiokafka).
        pack = tmp_path / "pack.yaml"
        pack.write_text(default_pack_text().replace("template: ticket_acknowledgement",
                                                    "template: ticket_ack_tls"))
        code, out, err = _run_cli(["rules", "publish", str(pack), "--author", "tls-test",
                                   "--message", "over TLS", "--broker", tls.url], capsys)
        assert code == 0, err[-3000:]
        assert "published version 1" in out
        wait_logged(log_path, b'"rule_pack_activated"', worker, timeout_s=30,
                    what="the worker did not switch to the pack published over TLS")

        code, out, err = _run_cli(["rules", "history", "--broker", tls.url], capsys)
        assert code == 0, err[-3000:]
        assert "tls-test" in out, out
        assert "over TLS" in out, out

        code, out, err = _run_cli(["audit", "--json", "--broker", tls.url], capsys)
        assert code == 0, err[-3000:]
        entries = [orjson.loads(line) for line in out.splitlines() if line.strip()]
        assert any(e.get("action") == "rule_published" and e.get("actor") == "tls-test"
                   for e in entries), out

        code, out, err = _run_cli(["lag", "--broker", tls.url], capsys)
        assert code == 0, err[-3000:]
        assert tls.bootstrap in out
    finally:
        if producer is not None:
            producer.close(timeout=5)
        if reader is not None:
            reader.close()
        stop_process_group(worker)


def test_a_client_whose_link_does_not_match_fails_clearly(tls: TlsBroker) -> None:
    """A plaintext client to the TLS port (`topics`, `rules history`) and a client trusting
    another CA: each one line, exit code 2, in bounded time. (The three run at once: `topics`
    retries for 30 s.)"""
    offset = len(tls.tunnel.log())
    plain = {"CHURNGUARD_KAFKA__SECURITY_PROTOCOL": "PLAINTEXT",
             "CHURNGUARD_TOPICS": TopicNames().with_prefix("plain.").model_dump_json()}
    other_ca = {**security_env(KafkaSecurity(security_protocol="SSL",
                                             ssl_ca_file=tls.pki.other_ca_file)),
                "CHURNGUARD_TOPICS": TopicNames().with_prefix("otherca.").model_dump_json()}
    cases = [(["topics"], plain, "CHURNGUARD_KAFKA__SECURITY_PROTOCOL"),
             (["rules", "history"], plain, "CHURNGUARD_KAFKA__SECURITY_PROTOCOL"),
             (["topics"], other_ca, "CHURNGUARD_KAFKA__")]
    with ThreadPoolExecutor(len(cases)) as pool:
        results = list(pool.map(
            lambda case: _refused([*case[0], "--broker", tls.url], _command_env(case[1])),
            cases))
    for (argv, _, hint), (code, stderr, took) in zip(cases, results, strict=True):
        line = _one_clear_line(stderr)
        assert code == 2, (argv, stderr[-3000:])
        assert tls.bootstrap in line, line
        assert hint in line, line
        assert took < FAIL_WITHIN_S, f"{argv} took {took:.1f}s: {line}"
    # They did reach the TLS port, and stunnel refused what the plaintext ones sent.
    assert "SSL_accept" in tls.tunnel.log()[offset:], tls.tunnel.log()[offset:][-2000:]
