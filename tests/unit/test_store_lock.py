"""One worker per store directory (issue 16): a second lock on the same directory is
refused with a one-line UserError naming the holder; the lock dies with its process,
kill -9 included."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from churnguard.errors import UserError
from tables.store_lock import LOCK_FILE_NAME, StoreDirInUse, acquire_store_lock

HOLDER = """
import sys, time
from pathlib import Path
from tables.store_lock import acquire_store_lock
lock = acquire_store_lock(Path(sys.argv[1]))
print("locked", flush=True)
sys.stdin.read()  # until the test closes stdin (or kills us)
"""


def test_a_second_lock_on_the_same_directory_names_the_holder(tmp_path: Path) -> None:
    store = tmp_path / "store"
    with acquire_store_lock(store) as held:
        assert held.held
        with pytest.raises(StoreDirInUse) as refused:
            acquire_store_lock(store)
    error = refused.value
    assert isinstance(error, UserError)
    assert str(error) == (
        f"store directory {store} is in use by pid {os.getpid()} on host "
        f"{socket.gethostname()}: each worker needs its own CHURNGUARD_STORE_DIR"
    )
    assert (error.pid, error.host) == (os.getpid(), socket.gethostname())


def test_the_lock_file_records_the_holder_and_the_directory_is_created(tmp_path: Path) -> None:
    store = tmp_path / "new" / "store"
    with acquire_store_lock(store) as held:
        assert held.path == store / LOCK_FILE_NAME
        holder = orjson.loads((store / LOCK_FILE_NAME).read_bytes())
        assert holder == {"pid": os.getpid(), "host": socket.gethostname()}


def test_released_or_never_held_the_directory_is_free(tmp_path: Path) -> None:
    store = tmp_path / "store"
    first = acquire_store_lock(store)
    first.release()
    first.release()  # idempotent
    assert not first.held
    # A stale lock file of an earlier process does not block either.
    (store / LOCK_FILE_NAME).write_bytes(b'{"pid": 1, "host": "elsewhere"}\n')
    with acquire_store_lock(store):
        pass


def test_a_lock_held_by_a_killed_process_is_free_at_once(tmp_path: Path) -> None:
    store = tmp_path / "store"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(store)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == b"locked\n"  # the child holds the lock now
        with pytest.raises(StoreDirInUse, match=f"in use by pid {holder.pid} on host "):
            acquire_store_lock(store)
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=10)
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
        for stream in (holder.stdin, holder.stdout):
            if stream is not None:
                stream.close()
    assert holder.returncode == -signal.SIGKILL
    with acquire_store_lock(store) as again:
        assert again.held


def test_an_unreadable_holder_still_gives_a_clear_message(tmp_path: Path) -> None:
    store = tmp_path / "store"
    with acquire_store_lock(store):
        (store / LOCK_FILE_NAME).write_bytes(b"garbage")
        with pytest.raises(StoreDirInUse) as refused:
            acquire_store_lock(store)
    assert str(refused.value) == (
        f"store directory {store} is in use by another process: each worker needs its own "
        "CHURNGUARD_STORE_DIR"
    )
