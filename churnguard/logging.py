"""structlog, configured once: JSON (orjson) off a terminal, console on one. Never pass
personal data (name, email, phone) to a logger; e-mail addresses and phone numbers that slip
into a line anyway are masked (churnguard/log_masking.py).

Everything a worker writes to stderr is one JSON object per line: structlog's own lines,
the standard library loggers of faust, aiokafka and mode (`stdlib_logging_config`, with
repeated warnings rate-limited by `RepeatFilter`), and uncaught exceptions of any thread,
task or callback (`install_exception_hooks`: the whole traceback in one `exception` field).
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
import traceback
import types
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
import structlog

from churnguard.log_masking import mask_personal_data

__all__ = [
    "REPEAT_INTERVAL_S",
    "RepeatFilter",
    "configure_logging",
    "install_exception_hooks",
    "log_loop_exception",
    "stdlib_logging_config",
]

# A repeated warning or error of the same kind passes at most once per this many seconds.
REPEAT_INTERVAL_S = 10.0

_log = structlog.get_logger(__name__)


def configure_logging(level: str = "info", *, json: bool | None = None) -> None:
    json = not sys.stderr.isatty() if json is None else json
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        numeric = logging.INFO
    processors: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        mask_personal_data,
    ]
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer(serializer=orjson.dumps)
        if json
        else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        processors=[*processors, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=(
            structlog.BytesLoggerFactory(sys.stderr.buffer)
            if json
            else structlog.PrintLoggerFactory(sys.stderr)
        ),
        cache_logger_on_first_use=True,
    )


def stdlib_logging_config(
    level: str, *, repeat_interval_s: float = REPEAT_INTERVAL_S
) -> dict[str, Any]:
    """dictConfig for the standard library loggers (faust, aiokafka, mode): the same JSON
    key/value lines as structlog's, on stderr, so one log pipeline reads everything.

    A traceback (`exc_info`) is rendered into the record's `exception` field. Warnings and
    errors that repeat (same logger, same message template, e.g. aiokafka's "Unable
    connect to node with id %s: %s" ~40 times a second while the broker is down) pass once
    per `repeat_interval_s`, the next one carrying `repeats_suppressed`."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {
            "repeats": {"()": RepeatFilter, "interval_s": repeat_interval_s},
        },
        "formatters": {
            "json": {
                "()": structlog.stdlib.ProcessorFormatter,
                "processors": [
                    structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.format_exc_info,
                    mask_personal_data,
                    structlog.processors.JSONRenderer(),
                ],
                "foreign_pre_chain": [
                    structlog.stdlib.add_logger_name,
                    structlog.processors.add_log_level,
                    structlog.processors.TimeStamper(fmt="iso", utc=True),
                    structlog.stdlib.ExtraAdder(allow=RepeatFilter.FIELDS),
                ],
            }
        },
        "handlers": {
            "default": {
                "class": "logging.StreamHandler",
                "formatter": "json",
                "level": level,
                "filters": ["repeats"],
            }
        },
        "root": {"level": level, "handlers": ["default"]},
    }


@dataclass(slots=True)
class _Window:
    passed_at: float
    suppressed: int = 0


class RepeatFilter(logging.Filter):
    """Lets a warning or error of one kind — its logger and message template (`record.msg`
    before the arguments are filled in) — through at most once per `interval_s`; repeats
    in between are counted, and the next record of the kind that passes carries
    `repeats_suppressed` (how many were dropped since the previous one) and
    `repeat_interval_s`. Records below `min_level` always pass. Thread-safe (aiokafka's
    consumer logs from its own thread). A kind that stops repeating loses its last count.
    """

    FIELDS = ("repeats_suppressed", "repeat_interval_s")
    # Kinds remembered at most (message templates are few; this only bounds memory).
    MAX_KINDS = 1024

    def __init__(
        self,
        interval_s: float = REPEAT_INTERVAL_S,
        *,
        min_level: int = logging.WARNING,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.interval_s = interval_s
        self.min_level = min_level
        self._clock = clock
        self._windows: dict[tuple[str, int, str], _Window] = {}
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < self.min_level:
            return True
        kind = (record.name, record.levelno, str(record.msg))
        now = self._clock()
        with self._lock:
            window = self._windows.get(kind)
            if window is None:
                if len(self._windows) >= self.MAX_KINDS:
                    self._windows.clear()
                self._windows[kind] = _Window(now)
                return True
            if now - window.passed_at < self.interval_s:
                window.suppressed += 1
                return False
            suppressed, window.suppressed, window.passed_at = window.suppressed, 0, now
        if suppressed:
            record.repeats_suppressed = suppressed
            record.repeat_interval_s = self.interval_s
        return True


# -- uncaught exceptions: one record each, never one line per character ---------------------

def _exception_fields(
    exc_type: type[BaseException] | None,
    exc: BaseException | None,
    tb: types.TracebackType | None,
) -> dict[str, str]:
    if exc_type is None:
        return {}
    return {
        "error": f"{exc_type.__name__}: {exc}",
        "exception": "".join(traceback.format_exception(exc_type, exc, tb)),
    }


def _thread_excepthook(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    thread = args.thread
    _log.error(
        "thread_exception",
        thread=None if thread is None else thread.name,
        **_exception_fields(args.exc_type, args.exc_value, args.exc_traceback),
    )


def _sys_excepthook(
    exc_type: type[BaseException], exc: BaseException, tb: types.TracebackType | None
) -> None:
    _log.critical("uncaught_exception", **_exception_fields(exc_type, exc, tb))


def _unraisablehook(unraisable: Any) -> None:
    _log.error(
        "unraisable_exception",
        message=unraisable.err_msg or "Exception ignored in",
        object=repr(unraisable.object),
        **_exception_fields(unraisable.exc_type, unraisable.exc_value, unraisable.exc_traceback),
    )


def log_loop_exception(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """An event loop's exception handler: asyncio's context as one structured record."""
    exc = context.get("exception")
    fields: dict[str, Any] = {
        key: repr(value)
        for key, value in context.items()
        if key not in {"message", "exception"}
    }
    if isinstance(exc, BaseException):
        fields.update(_exception_fields(type(exc), exc, exc.__traceback__))
    _log.error("loop_exception", message=context.get("message"), **fields)


def install_exception_hooks(loop: asyncio.AbstractEventLoop | None = None) -> None:
    """Uncaught exceptions of threads (`threading.excepthook`), of the main thread
    (`sys.excepthook`), of `__del__`/callbacks (`sys.unraisablehook`) and of `loop`'s
    tasks and callbacks are logged as one record with the traceback in one field; Python
    warnings go through logging too. Without this a thread's traceback reached stderr as
    text, which faust's stdout redirection turned into one JSON line per character."""
    threading.excepthook = _thread_excepthook
    sys.excepthook = _sys_excepthook
    sys.unraisablehook = _unraisablehook
    logging.captureWarnings(True)
    if loop is not None:
        loop.set_exception_handler(log_loop_exception)
