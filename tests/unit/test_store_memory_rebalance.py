"""The one RocksDB memory budget across a rebalance (a partition closed, then reopened, as
faust's revoke and assign do) and a restart (every partition closed, a new store opened):
the reopened partitions join the same budget, what a closed one held is released, and
nothing is used after its Python owner is gone."""

from __future__ import annotations

import gc
import os
import time
from pathlib import Path

from streams.app import create_app
from streams.settings import Settings

MIB = 1024 * 1024
PARTITIONS = 4
VALUE = os.urandom(200)


def _store(tmp_path: Path) -> object:
    settings = Settings(store_dir=tmp_path, partitions=PARTITIONS, rocksdb_write_buffer_mb=1,
                        rocksdb_memory_mb=8)
    return create_app(settings).customer_to_state.data


def _fill(store: object, partition: int, keys: range) -> None:
    db = store._db_for_partition(partition)  # type: ignore[attr-defined]
    for n in keys:
        db[b"cust-%07d" % n] = VALUE


def test_a_reopened_partition_joins_the_same_budget(tmp_path: Path) -> None:
    store = _store(tmp_path)
    options = store.rocksdb_options  # type: ignore[attr-defined]
    for p in range(PARTITIONS):
        _fill(store, p, range(p, 40_000, PARTITIONS))
    held = options.usage()
    assert held > 0
    # faust's revoke: the partition's DB dropped from the store (faust does not close it;
    # closing it here too, as the last reference going does).
    store._dbs.pop(1).close()  # type: ignore[attr-defined]
    gc.collect()
    released = options.usage()
    assert released < held  # its memtable's charge is gone with it
    reopened = store._db_for_partition(1)  # type: ignore[attr-defined]
    assert reopened[b"cust-%07d" % 1] == VALUE
    _fill(store, 1, range(40_001, 60_000, PARTITIONS))
    assert options.usage() > released  # charged to the one cache again
    # One cache, as every partition sees it: the same usage read through each, once no
    # flush on RocksDB's threads changes it between two reads (it differed once under load).
    deadline = time.monotonic() + 10.0
    while len(usages := _usages(store)) > 1 and time.monotonic() < deadline:
        time.sleep(0.01)  # RocksDB's threads signal nothing a test can await
    assert len(usages) == 1, usages


def _usages(store: object) -> set[int]:
    return {store._db_for_partition(p).property_int_value(  # type: ignore[attr-defined]
        "rocksdb.block-cache-usage") for p in range(PARTITIONS)}


def test_reopening_many_times_holds_no_more(tmp_path: Path) -> None:
    store = _store(tmp_path)
    options = store.rocksdb_options  # type: ignore[attr-defined]
    after: list[int] = []
    for cycle in range(40):
        for p in range(PARTITIONS):
            _fill(store, p, range(p, 4_000, PARTITIONS))
            store._dbs.pop(p).close()  # type: ignore[attr-defined]
        gc.collect()
        after.append(options.usage())
        assert options.usage() <= 8 * MIB
        del cycle
    # Every partition closed: nothing left charged that grows with the reopens.
    assert after[-1] <= after[0] + MIB


def test_partitions_outlive_the_python_owners_of_the_cache(tmp_path: Path) -> None:
    """The worker's stop drops the options object; open partitions keep cache and manager."""
    store = _store(tmp_path)
    dbs = [store._db_for_partition(p) for p in range(PARTITIONS)]  # type: ignore[attr-defined]
    store.rocksdb_options = None  # type: ignore[attr-defined]
    gc.collect()
    for n in range(60_000):
        dbs[n % PARTITIONS][b"cust-%07d" % n] = VALUE
    for n in range(0, 60_000, 5):
        assert dbs[n % PARTITIONS][b"cust-%07d" % n] == VALUE
    for db in dbs:
        db.close()


def test_a_restart_reads_everything_back_in_a_new_budget(tmp_path: Path) -> None:
    store = _store(tmp_path)
    for p in range(PARTITIONS):
        _fill(store, p, range(p, 20_000, PARTITIONS))
    for db in store._dbs.values():  # type: ignore[attr-defined]
        db.close()
    restarted = _store(tmp_path)
    for n in range(0, 20_000, 3):
        db = restarted._db_for_partition(n % PARTITIONS)  # type: ignore[attr-defined]
        assert db[b"cust-%07d" % n] == VALUE
    dbs = [restarted._db_for_partition(p) for p in range(PARTITIONS)]  # type: ignore[attr-defined]
    # rocksdict would give an existing partition its OPTIONS file's settings and an 8 MiB
    # cache of its own: each in the one 8 MiB budget instead, as when it was created.
    assert {db.property_int_value("rocksdb.block-cache-capacity") for db in dbs} == {8 * MIB}
    assert len({db.property_int_value("rocksdb.block-cache-usage") for db in dbs}) == 1
    assert restarted.rocksdb_options.usage() <= 8 * MIB  # type: ignore[attr-defined]
