"""faust's aiokafka consumer stopping in bounded time, whatever the broker does (faust-streaming
0.15.3, aiokafka 0.14.0). Installed by the batch path's consumer (`streams.batch_path`):

- `BoundedStopConsumerThread`, faust's consumer thread whose stop cannot die half-way or
  hang (see `stop_aiokafka_consumer`), and which logs a crash as one record;
- `ShutdownCommits`, the budget the offset commits of a shutdown share: with the broker gone
  aiokafka retries a commit until it finds the group coordinator, forever.

Giving a commit up loses nothing: the records since the last commit are read again after
the restart and change nothing (each state remembers the offsets applied).
"""

from __future__ import annotations

import asyncio
import time
import traceback
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from faust.transport.drivers import aiokafka as faust_aiokafka

__all__ = [
    "CONSUMER_STOP_TIMEOUT_S",
    "SHUTDOWN_COMMIT_BUDGET_S",
    "BoundedStopConsumerThread",
    "ShutdownCommits",
    "stop_aiokafka_consumer",
]

log = structlog.get_logger(__name__)

# aiokafka's consumer stop (leave group, close fetcher and connections) at most.
CONSUMER_STOP_TIMEOUT_S = 3.0
# The offset commits of a shutdown together at most.
SHUTDOWN_COMMIT_BUDGET_S = 2.0


class BoundedStopConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """faust's consumer thread with `on_thread_stop` bounded and crashes logged as one
    record (mode's `ServiceThread.on_crash` prints the traceback to stderr line by line)."""

    stop_timeout_s = CONSUMER_STOP_TIMEOUT_S

    async def on_thread_stop(self) -> None:
        # The thread's method queue first, as faust does, then the consumer's stop bounded.
        await super(faust_aiokafka.AIOKafkaConsumerThread, self).on_thread_stop()
        if self._consumer is not None:
            await stop_aiokafka_consumer(self._consumer, self.stop_timeout_s)

    def on_crash(self, msg: str, *fmt: Any, **_: Any) -> None:
        log.error("consumer_thread_crashed", message=msg.format(*fmt),
                  exception=traceback.format_exc())


async def stop_aiokafka_consumer(consumer: Any, timeout_s: float) -> None:
    """`AIOKafkaConsumer.stop()` (aiokafka 0.14.0), bounded and never raising but for a
    cancellation of the caller.

    With the broker gone, aiokafka's `Fetcher.close()` cancels its pending fetch task while
    that task sleeps in the retry backoff of a failed request (`_proc_fetch_request`'s
    `except KafkaError:` handler, outside the `except CancelledError` that covers the
    request) and then awaits it unguarded, so `CancelledError` escapes `stop()`. In the
    consumer thread it unwound mode's `ServiceThread._shutdown_thread` before
    `set_shutdown()`, the thread died, and faust's parent waited `shutdown_timeout` (60 s)
    for a shutdown event nobody would set. Here that error is logged and swallowed, the
    stop is bounded, and the client that `stop()` closes last is closed anyway."""
    try:
        await asyncio.wait_for(consumer.stop(), timeout_s)
        return
    except asyncio.CancelledError:
        if _cancelling():
            raise
        log.warning("consumer_stop_interrupted", error="CancelledError",
                    detail="aiokafka's fetcher close re-raised a cancelled fetch")
    except TimeoutError:
        log.warning("consumer_stop_timeout", timeout_s=timeout_s)
    except Exception as exc:
        log.warning("consumer_stop_failed", error=repr(exc))
    try:
        await asyncio.wait_for(consumer._client.close(), timeout_s)
    except asyncio.CancelledError:
        if _cancelling():
            raise
        log.warning("consumer_client_close_failed", error="CancelledError")
    except Exception as exc:  # TimeoutError included
        log.warning("consumer_client_close_failed", error=repr(exc))


def _cancelling() -> bool:
    """Whether the current task itself is being cancelled (not a CancelledError that
    escaped from a task it awaited)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


class _Budget:
    """Seconds shared by several waits: only the time spent waiting counts."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.spent = 0.0

    def remaining(self) -> float:
        return max(0.0, self.seconds - self.spent)


class ShutdownCommits:
    """The offset commits of one shutdown (faust commits twice: `App._stop_consumer` and the
    consumer's `on_stop`, both through `wait_empty`) share `budget_s`; one that does not
    finish in time is given up and logged."""

    def __init__(
        self,
        budget_s: float = SHUTDOWN_COMMIT_BUDGET_S,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.budget_s = budget_s
        self._budget = _Budget(budget_s)
        self._clock = clock

    async def run(self, commit: Callable[[], Awaitable[bool]]) -> bool:
        timeout_s = self._budget.remaining()
        if timeout_s > 0:
            started = self._clock()
            task = asyncio.ensure_future(commit())
            # Not wait_for, which waits for the cancelled commit to unwind: a commit
            # waiting for another one to finish (the commit timer's, stuck the same way)
            # swallows its own cancellation in faust's
            # `Consumer.maybe_wait_for_commit_to_finish` and starts a new commit, which
            # then never returns. The task is cancelled and left to the loop's shutdown.
            finished, _ = await asyncio.wait({task}, timeout=timeout_s)
            self._budget.spent += self._clock() - started
            if finished:
                return bool(task.result())
            task.cancel()
        log.warning("shutdown_commit_skipped", budget_s=self.budget_s,
                    detail="offsets since the last commit are read again on restart")
        return False
