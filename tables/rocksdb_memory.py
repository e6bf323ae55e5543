"""One RocksDB memory budget for all the partitions of a table a worker opens.

faust opens every partition of a table as its own RocksDB, each with its own block cache and
memtables, so the process held (write buffers x their number + block cache) per partition
it owned: 4 x (2 x 16 + 32) MiB = 256 MiB at the former defaults on the soak's 4 partitions,
twice that with 8, filled slowly as the customers stored grew (the soak's RSS slope). Here
the partitions share one LRU cache of `memory_bytes`, and a write buffer manager charges
their memtables to that same cache (RocksDB's "cost memtable memory to block cache", as
Kafka Streams' BoundedMemoryRocksDBConfig does): data blocks, index and filter blocks and
memtables of every partition together stay within the one budget whatever the number of
partitions; the memtables together get at most half of it (past that the manager has one
flushed), blocks the rest (least recently used evicted).

The cache and the manager are owned by reference count on the native side: each partition's
options keep them alive, so a partition closed on a rebalance releases only its own share
(its memtables, its pinned blocks) and a reopened one joins the same budget. Reopening needs
`open` below: rocksdict (0.3.29) opens an existing DB's column families with the options of
its OPTIONS file and a new 8 MiB cache of their own unless it is given them, so faust's
`open` put every partition reopened (after a restart or a rebalance) outside the budget.

Relies on faust's `RocksDBOptions` (faust-streaming 0.15.3: `open` builds a partition's
options with `as_options`) and on faust's rocksdb `Store.rocksdb_options` / `._dbs`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import rocksdict
from faust.stores import rocksdb as faust_rocksdb

__all__ = ["SharedMemoryOptions", "share_memory"]

DEFAULT_COLUMN_FAMILY = "default"  # the only one faust uses


class SharedMemoryOptions(faust_rocksdb.RocksDBOptions):
    """faust's RocksDB options, every partition opened with them in one memory budget."""

    def __init__(self, *, memory_bytes: int, write_buffer_bytes: int, **kwargs: Any) -> None:
        super().__init__(
            write_buffer_size=write_buffer_bytes,
            max_write_buffer_number=2,
            block_cache_size=memory_bytes,  # informative: the one cache below is used
            use_rocksdict=True,
            **kwargs,
        )
        self.cache = rocksdict.Cache(memory_bytes)
        # allow_stall=False: over budget, flush (never block the worker's writes).
        self.write_buffers = rocksdict.WriteBufferManager.new_write_buffer_manager_with_cache(
            memory_bytes // 2, False, self.cache
        )

    def open(self, path: Path, *, read_only: bool = False) -> rocksdict.Rdict:
        """faust's `open` (read-write, or with TTL; `read_only` unused as there), the default
        column family given its options so that an existing partition gets them too."""
        access = (rocksdict.AccessType.read_write() if self.ttl is None
                  else rocksdict.AccessType.with_ttl(self.ttl))
        db = rocksdict.Rdict(str(path), options=self.as_options(),
                             column_families={DEFAULT_COLUMN_FAMILY: self.as_options()},
                             access_type=access)
        db.set_read_options(rocksdict.ReadOptions())
        return db

    def as_options(self) -> rocksdict.Options:
        options = rocksdict.Options(raw_mode=True)
        options.create_if_missing(True)
        # None: faust found no limit on the platform; -1 is RocksDB's "no limit".
        options.set_max_open_files(-1 if self.max_open_files is None else self.max_open_files)
        options.set_write_buffer_size(self.write_buffer_size)
        options.set_target_file_size_base(self.target_file_size_base)
        options.set_max_write_buffer_number(self.max_write_buffer_number)
        options.set_write_buffer_manager(self.write_buffers)
        table = rocksdict.BlockBasedOptions()
        table.set_bloom_filter(self.bloom_filter_size, True)
        table.set_block_cache(self.cache)
        table.set_index_type(rocksdict.BlockBasedIndexType.binary_search())
        # Index and filter blocks grow with the data: in the budget too (outside it they
        # are held per open file, unbounded), level 0's pinned as they are read most.
        table.set_cache_index_and_filter_blocks(True)
        table.set_pin_l0_filter_and_index_blocks_in_cache(True)
        options.set_block_based_table_factory(table)
        return options

    def usage(self) -> int:
        """Bytes held in the budget now: cached blocks and the memtables charged to it."""
        return int(self.cache.get_usage())


def share_memory(store: object, *, memory_bytes: int, write_buffer_bytes: int) -> None:
    """Give a table's RocksDB store one budget for all its partitions; before any partition
    is opened (one already open would keep its own cache)."""
    if not isinstance(store, faust_rocksdb.Store):
        raise TypeError(f"expected faust's RocksDB store, got {type(store).__name__}")
    if store._dbs:
        raise RuntimeError("partitions already open with their own memory")
    store.rocksdb_options = SharedMemoryOptions(
        memory_bytes=memory_bytes,
        write_buffer_bytes=write_buffer_bytes,
        max_open_files=store.rocksdb_options.max_open_files,
    )
