"""The end of a worker, bounded: a watchdog that ends the process when faust's graceful stop
is still blocked `SHUTDOWN_DEADLINE_S` after SIGTERM (e.g. a batch waiting for a broker that
is gone), with every thread's stack and every pending task in its log record."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import threading
import traceback
from collections.abc import Callable
from typing import Any

import structlog

__all__ = ["SHUTDOWN_DEADLINE_S", "WATCHDOG_EXIT_CODE", "ShutdownWatchdog"]

log = structlog.get_logger(__name__)

# From SIGTERM to exit at most (the contract: within 10 s, whatever the broker does).
SHUTDOWN_DEADLINE_S = 8.0
# Exit status when the watchdog ends a stuck shutdown (EX_SOFTWARE).
WATCHDOG_EXIT_CODE = 70


class ShutdownWatchdog:
    """Ends the process if a graceful shutdown has not finished `deadline_s` after `arm()`.

    Faust's stop path can block far longer than any orchestrator waits when the broker
    is gone: aiokafka commits and leaves the group through a coordinator it cannot find,
    the producer waits for unacknowledged batches up to its request timeout (20 min),
    and faust waits 60 s for a consumer thread that died on the way out. The watchdog is
    a daemon thread, so it fires even when the event loop itself is blocked.

    Exiting without the graceful path loses nothing: every output and changelog record
    is acknowledged before its state is written to RocksDB, and input offsets are
    committed only after that write (docs/design.md, "The hot path"). A batch cut short
    is read again after the restart and changes nothing twice (each state remembers the
    offsets applied); at worst its actions are sent again with the same action ids."""

    def __init__(
        self,
        deadline_s: float = SHUTDOWN_DEADLINE_S,
        *,
        exit_code: int = WATCHDOG_EXIT_CODE,
        exit_process: Callable[[int], object] = os._exit,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self.deadline_s = deadline_s
        # Whose pending tasks to list when the deadline passes (where the stop is stuck).
        self.loop = loop
        self.exit_code = exit_code
        self._exit_process = exit_process
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None
        self.reason: str | None = None

    @property
    def armed(self) -> bool:
        return self._timer is not None

    def arm(self, reason: str) -> None:
        """Start the countdown (idempotent: the first reason and deadline count)."""
        with self._lock:
            if self._timer is not None:
                return
            self.reason = reason
            timer = threading.Timer(self.deadline_s, self._expire)
            timer.name = "churnguard-shutdown-watchdog"
            timer.daemon = True
            self._timer = timer
            timer.start()
        log.info("shutdown_started", reason=reason, deadline_s=self.deadline_s)

    def _expire(self) -> None:
        frames = sys._current_frames()
        stacks = {
            f"{thread.name} ({thread.ident})": "".join(traceback.format_stack(frame))
            for thread in threading.enumerate()
            if thread is not threading.current_thread()
            and (frame := frames.get(thread.ident or -1)) is not None
        }
        log.error(
            "shutdown_deadline_exceeded",
            reason=self.reason,
            deadline_s=self.deadline_s,
            exit_code=self.exit_code,
            detail="graceful shutdown still blocked; exiting without it (state is safe: "
                   "changelog first, offsets committed only after writes)",
            stacks=stacks,
            tasks=self._pending_tasks(),
        )
        for stream in (sys.stderr, sys.stdout):
            with contextlib.suppress(Exception):
                stream.flush()
                stream.buffer.flush()
        self._exit_process(self.exit_code)

    def _pending_tasks(self) -> list[str]:
        """Each pending task of `loop` with its chain of awaits (best effort: read from
        this thread while the loop may run)."""
        if self.loop is None:
            return []
        try:
            return [_await_chain(task) for task in list(asyncio.all_tasks(self.loop))]
        except Exception as exc:  # a diagnostic must never stop the exit
            return [f"unavailable: {exc!r}"]


def _await_chain(task: asyncio.Task[Any]) -> str:
    """"name: outer:line > ... > innermost:line" for a task's current awaits."""
    steps: list[str] = []
    awaited: Any = task.get_coro()
    while awaited is not None and len(steps) < 40:
        frame = getattr(awaited, "cr_frame", None) or getattr(awaited, "gi_frame", None)
        if frame is None:
            break
        steps.append(f"{frame.f_code.co_qualname}:{frame.f_lineno}")
        awaited = getattr(awaited, "cr_await", None) or getattr(awaited, "gi_yieldfrom", None)
    return f"{task.get_name()}: {' > '.join(steps)}"
