"""The worker's writes to the audit topic (churnguard/audit.py), with its faust producer.

A 360 view is answered only once its entry is acknowledged (`write` raises
`AuditUnavailable`, and the view is refused 503): a read that left no trace would defeat the
trail. A refused request's entry is written in the background and throttled per client
address, so a flood of 401s neither waits on the broker nor fills the topic."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable

import structlog

from churnguard.audit import AuditEntry, RefusalThrottle
from churnguard.http_access import Refusal

log = structlog.get_logger(__name__)

Send = Callable[[bytes | None, bytes], Awaitable[object]]
AUDIT_TIMEOUT_S = 10.0


class AuditUnavailable(Exception):
    """The entry was not acknowledged: the request it records must not be answered."""


class AuditLog:
    def __init__(self, send: Send, *, clock: Callable[[], float] = time.time,
                 throttle: RefusalThrottle | None = None) -> None:
        self._send = send
        self.clock = clock
        self.throttle = throttle or RefusalThrottle()
        self.written = 0
        self.failed = 0
        self._background: set[asyncio.Task[None]] = set()

    async def write(self, entry: AuditEntry) -> None:
        try:
            async with asyncio.timeout(AUDIT_TIMEOUT_S):
                await self._send(entry.key(), entry.to_value())
        except Exception as exc:
            self.failed += 1
            log.error("audit_write_failed", action=entry.action,
                      error=str(exc) or type(exc).__name__)
            raise AuditUnavailable(str(exc) or type(exc).__name__) from exc
        self.written += 1

    def refused(self, refusal: Refusal) -> None:
        """AccessPolicy's `on_refused`: the entry, in the background."""
        suppressed = self.throttle.admit(refusal.remote, refusal.token_name)
        if suppressed is None:
            return
        entry = AuditEntry("access_refused", refusal.token_name, self.clock(),
                           status=refusal.status, method=refusal.method, path=refusal.path,
                           remote=refusal.remote, suppressed=suppressed or None)
        task = asyncio.get_running_loop().create_task(self._quietly(entry))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _quietly(self, entry: AuditEntry) -> None:
        with contextlib.suppress(AuditUnavailable):  # logged and counted by write
            await self.write(entry)

    async def close(self) -> None:
        """Wait for the background entries (at shutdown)."""
        if self._background:
            await asyncio.wait(self._background, timeout=AUDIT_TIMEOUT_S)
