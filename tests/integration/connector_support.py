"""Running the connectors' processes in the integration tests: a misbehaving webhook
receiver (tests/integration/webhook_receiver.py), `churnguard gateway` and `churnguard
deliver`, each its own process so that a test can kill it; reading a topic whole."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import orjson
from kafka import KafkaConsumer

from churnguard.processes import stop_process_group, wait_logged
from connectors.embedded_broker import EmbeddedBroker
from streams.settings import TopicNames
from tests.integration.pipeline_support import Pipeline, wait_for

SECRET = "a-test-secret-of-enough-length"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Receiver:
    def __init__(self, tmp: Path) -> None:
        self.port = free_port()
        self.log = tmp / "received.log"
        self.log.touch()
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.integration.webhook_receiver", str(self.port),
             str(self.log), SECRET], start_new_session=True, stdin=subprocess.DEVNULL)
        wait_for("the receiver listening", self._listening, timeout=20)

    def kill(self) -> None:
        if self.process is not None:
            stop_process_group(self.process, kill=True)

    def keys(self) -> list[str]:
        return [line.split()[0] for line in self.log.read_text().splitlines() if line]

    def _listening(self) -> bool:
        with socket.socket() as probe:
            return probe.connect_ex(("127.0.0.1", self.port)) == 0


class Deliver:
    def __init__(self, broker: EmbeddedBroker, topics: TopicNames, url: str, tmp: Path) -> None:
        self.log = tmp / "deliver.log"
        self.env = {
            **os.environ,
            "CHURNGUARD_BROKER": broker.url,
            "CHURNGUARD_PARTITIONS": "4",
            "CHURNGUARD_TOPICS": topics.model_dump_json(),
            "CHURNGUARD_SESSION_TIMEOUT_S": "6",
            "CHURNGUARD_REBALANCE_TIMEOUT_S": "6",
            "CHURNGUARD_DELIVERY__SECRET": SECRET,
            "CHURNGUARD_DELIVERY__GROUP_ID": f"deliver-{topics.notifications}",
            "CHURNGUARD_DELIVERY__TIMEOUT_S": "0.5",
            "CHURNGUARD_DELIVERY__BACKOFF_INITIAL_S": "0.02",
            "CHURNGUARD_DELIVERY__BACKOFF_MAX_S": "0.2",
            "CHURNGUARD_DELIVERY__MAX_ATTEMPTS": "1000",
            "CHURNGUARD_DELIVERY__COMMIT_INTERVAL_S": "0.2",
            "CHURNGUARD_DELIVERY__WEB_PORT": "0",
        }
        self.url = url
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        after = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "churnguard", "deliver", "--url", self.url],
                env=self.env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True)
        wait_logged(self.log, b"delivery_partitions_assigned", self.process, timeout_s=60,
                    after=after)

    def stop(self, *, kill: bool = False) -> int | None:
        if self.process is None:
            return None
        stop_process_group(self.process, kill=kill)
        return self.process.returncode

    def web_port(self) -> int:
        """The port of the running process's endpoints (the last one started)."""
        for line in reversed(self.log.read_text().splitlines()):
            if '"deliver_started"' in line:
                return int(orjson.loads(line)["web_port"])
        raise AssertionError("deliver logged no deliver_started")


class Gateway:
    """`churnguard gateway --port 0` with one stored token (`token_line`), on a pipeline's
    broker, partitions and topics, or, without a pipeline, on `broker` with `topics`."""

    def __init__(self, pipeline: Pipeline | None, token_line: str, tmp: Path, *,
                 broker: EmbeddedBroker | None = None, topics: TopicNames | None = None,
                 partitions: int = 4) -> None:
        if pipeline is not None:
            url, partitions, topics = (pipeline.settings.broker, pipeline.settings.partitions,
                                       pipeline.topics)
        else:
            assert broker is not None
            assert topics is not None
            url = broker.url
        self.log = tmp / "gateway.log"
        env = {**os.environ, "CHURNGUARD_BROKER": url,
               "CHURNGUARD_PARTITIONS": str(partitions),
               "CHURNGUARD_TOPICS": topics.model_dump_json(),
               "CHURNGUARD_GATEWAY__TOKENS": f"[{token_line}]"}
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "churnguard", "gateway", "--port", "0"], env=env,
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True)
        wait_logged(self.log, b"gateway_ready", self.process, timeout_s=60)
        for line in self.log.read_text().splitlines():
            if '"gateway_listening"' in line:
                self.port = int(orjson.loads(line)["port"])

    def post(self, events: list[dict[str, Any]], token: str) -> tuple[int, dict[str, Any]]:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/v1/events", data=orjson.dumps(events),
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, orjson.loads(answer.read())

    def stop(self) -> int | None:
        stop_process_group(self.process)
        return self.process.returncode


def read_all(broker: EmbeddedBroker, topic: str) -> list[dict[str, Any]]:
    reader = KafkaConsumer(topic, bootstrap_servers=broker.bootstrap, group_id=None,
                           auto_offset_reset="earliest", enable_auto_commit=False,
                           consumer_timeout_ms=3000)
    try:
        return [orjson.loads(message.value) for message in reader]
    finally:
        reader.close()
