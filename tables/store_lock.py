"""One worker per RocksDB store directory, checked before the worker starts.

Two workers on one `CHURNGUARD_STORE_DIR` fight over RocksDB's own per-partition locks:
the second one retries "DB for partition N is locked!" forever at info level and never
becomes ready, and the partitions it was assigned stall. `acquire_store_lock` takes an
exclusive `flock` on `<store_dir>/churnguard.lock` for the life of the process instead, and
refuses to start with a one-line `UserError` naming the holder.

`flock` locks belong to the open file description: the kernel drops the lock when the
holding process exits in any way, `kill -9` included, so a restart after a crash is never
blocked by a stale lock file (the file stays; only the lock matters). The holder's pid and
host are written into the file for the message only. Not reliable on network file systems
(NFS emulates flock with fcntl locks or not at all): give each worker a local volume.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from pathlib import Path

import orjson

from churnguard.errors import UserError

__all__ = ["LOCK_FILE_NAME", "StoreDirInUse", "StoreLock", "acquire_store_lock"]

LOCK_FILE_NAME = "churnguard.lock"


class StoreDirInUse(UserError):
    """Another live process holds the store directory's lock."""

    def __init__(self, store_dir: Path, pid: int | None, host: str | None) -> None:
        holder = (
            f"pid {pid} on host {host}" if pid is not None and host is not None
            else "another process"
        )
        super().__init__(
            f"store directory {store_dir} is in use by {holder}: each worker needs its own "
            "CHURNGUARD_STORE_DIR"
        )
        self.store_dir = store_dir
        self.pid = pid
        self.host = host


class StoreLock:
    """An exclusive lock on a store directory, held until `release()` or process exit."""

    def __init__(self, store_dir: Path, fd: int) -> None:
        self.store_dir = store_dir
        self.path = store_dir / LOCK_FILE_NAME
        self._fd: int | None = fd

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            # Closing the last descriptor of the open file releases the flock.
            os.close(fd)

    def __enter__(self) -> StoreLock:
        return self

    def __exit__(self, *_: object) -> None:
        self.release()


def _read_holder(fd: int) -> tuple[int | None, str | None]:
    with contextlib.suppress(OSError, ValueError, TypeError, orjson.JSONDecodeError):
        holder = orjson.loads(os.pread(fd, 4096, 0))
        return int(holder["pid"]), str(holder["host"])
    return None, None


def acquire_store_lock(store_dir: Path) -> StoreLock:
    """Lock `store_dir` (created if missing) for this process or raise `StoreDirInUse`."""
    store_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(store_dir / LOCK_FILE_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pid, host = _read_holder(fd)
        os.close(fd)
        raise StoreDirInUse(store_dir, pid, host) from None
    except BaseException:
        os.close(fd)
        raise
    try:
        holder = orjson.dumps({"pid": os.getpid(), "host": socket.gethostname()})
        os.ftruncate(fd, 0)
        os.pwrite(fd, holder + b"\n", 0)
    except BaseException:
        os.close(fd)
        raise
    return StoreLock(store_dir, fd)
