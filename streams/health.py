"""The worker's view of its broker connection, for logs now and a `/ready` endpoint later.

`BrokerHealth` is one small object per worker (`Topology.health`, built by
`streams.app.create_app`); the worker's probe (`probe_broker`, every
`BROKER_PROBE_INTERVAL_S`) asks the producer's client for fresh cluster metadata and
reports the outcome here. A future readiness endpoint reads `health.reachable` (and
`health.since`, `health.reason`) — cheap attribute reads, no I/O.

Transitions are logged once each: `broker_unreachable` (with the reason) when a probe
fails after the broker was reachable (or on the first probe), `broker_reachable` when one
succeeds again; a probe that agrees with the current state logs nothing.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

import faust
import structlog

__all__ = ["BROKER_PROBE_INTERVAL_S", "BrokerHealth", "probe_broker"]

log = structlog.get_logger(__name__)

BROKER_PROBE_INTERVAL_S = 2.0
BROKER_PROBE_TIMEOUT_S = 5.0


class BrokerHealth:
    """Whether the Kafka cluster answered this worker's last probe.

    `reachable` is None until the first probe, then True or False; `since` is the
    wall-clock time of the last transition and `reason` why the last probe failed."""

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._reachable: bool | None = None
        self._since = clock()
        self._reason: str | None = None
        self._transitions = 0

    @property
    def reachable(self) -> bool | None:
        return self._reachable

    @property
    def since(self) -> float:
        return self._since

    @property
    def reason(self) -> str | None:
        return self._reason

    @property
    def transitions(self) -> int:
        """How many times `reachable` changed (the first probe counts when it fails)."""
        return self._transitions

    def report(self, reachable: bool, *, reason: str | None = None) -> bool:
        """Record a probe's outcome; return whether that changed the state (and logged)."""
        with self._lock:
            before = self._reachable
            self._reason = None if reachable else reason
            if before is reachable:
                return False
            now = self._clock()
            down_s = now - self._since
            self._reachable, self._since = reachable, now
            # The first successful probe is the normal start: no transition to report.
            if before is None and reachable:
                return False
            self._transitions += 1
        if reachable:
            log.info("broker_reachable", unreachable_for_s=round(down_s, 1))
        else:
            log.warning("broker_unreachable", reason=reason)
        return True


async def probe_broker(
    app: faust.App, health: BrokerHealth, *, timeout_s: float = BROKER_PROBE_TIMEOUT_S
) -> None:
    """Ask the producer's client for fresh cluster metadata and report to `health`."""
    producer = getattr(app.producer, "_producer", None)
    if producer is None:
        return  # not started yet (or stopped)
    try:
        # A shielded future of the client's metadata synchronizer: a timeout here leaves
        # the update itself running.
        updated = await asyncio.wait_for(producer.client.force_metadata_update(), timeout_s)
    except TimeoutError:
        health.report(False, reason=f"no metadata answer within {timeout_s:g}s")
        return
    health.report(
        bool(updated),
        reason=None if updated else "metadata request failed on every known broker",
    )
