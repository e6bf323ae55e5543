"""The gateway as a process (what `churnguard gateway` runs): it refuses to start without a
usable token in one line, and stops on SIGTERM with everything it accepted on the broker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
import requests

from churnguard.processes import settings_env, wait_logged
from connectors.embedded_broker import EmbeddedBroker
from tests.integration.test_gateway_api import (
    INGEST,
    INGEST_TOKEN,
    event,
    gateway_settings,
    records,
)

pytestmark = pytest.mark.integration


def _gateway(env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    with log_path.open("ab") as log_file:
        return subprocess.Popen(
            [sys.executable, "-m", "connectors.gateway", "--port", "0"],
            env={**os.environ, **env}, stdout=log_file, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL)


def _lines(log_path: Path) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in log_path.read_bytes().splitlines()]


def test_sigterm_stops_it_cleanly_after_what_it_accepted(
    shared_broker: EmbeddedBroker, tmp_path: Path,
) -> None:
    settings = gateway_settings(shared_broker, tokens=())
    token_file = tmp_path / "tokens.jsonl"
    token_file.write_text(INGEST.line() + "\n", encoding="utf-8")
    log_path = tmp_path / "gateway.log"
    process = _gateway({**settings_env(settings),
                        "CHURNGUARD_GATEWAY__TOKEN_FILE": str(token_file)}, log_path)
    try:
        wait_logged(log_path, b"gateway_ready", process, timeout_s=30)
        [port] = [line["port"] for line in _lines(log_path)
                  if line["event"] == "gateway_listening"]
        answer = requests.post(
            f"http://127.0.0.1:{port}/v1/events", timeout=30,
            data=orjson.dumps([event("login", f"e{i}", f"c{i}") for i in range(50)]),
            headers={"Authorization": f"Bearer {INGEST_TOKEN}"})
        assert answer.status_code == 202
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    stopped = _lines(log_path)[-1]
    assert stopped["event"] == "gateway_stopped"
    assert stopped["events"] == {"accepted": 50}
    assert len(records(settings, settings.topics.events, 50)) == 50


@pytest.mark.parametrize(("env", "message"), [
    ({}, "churnguard: gateway: no access token is configured, so no client could send "
         "events; make one with `churnguard token new shop --role ingest --file "
         "tokens.jsonl`"),
    ({"CHURNGUARD_GATEWAY__TOKEN_FILE": "{tmp}/tokens.jsonl"},
     "churnguard: {tmp}/tokens.jsonl:1: line: Invalid JSON"),
])
def test_no_usable_token_is_one_line_and_exit_2(tmp_path: Path, env: dict[str, str],
                                                 message: str) -> None:
    (tmp_path / "tokens.jsonl").write_text("cg_pasted-the-token-itself\n", encoding="utf-8")
    environment = {key: value.format(tmp=tmp_path) for key, value in env.items()}
    # No broker anywhere: the tokens are checked before anything connects.
    environment["CHURNGUARD_BROKER"] = "kafka://127.0.0.1:9"
    result = subprocess.run(
        [sys.executable, "-m", "connectors.gateway", "--port", "0"], capture_output=True,
        env={**{k: v for k, v in os.environ.items() if not k.startswith("CHURNGUARD_")},
             **environment}, timeout=60, check=False)
    assert result.returncode == 2
    [line] = result.stderr.decode().splitlines()
    assert line.startswith(message.format(tmp=tmp_path))
    assert "pasted-the-token-itself" not in line
