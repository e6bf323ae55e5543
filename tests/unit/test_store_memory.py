"""The state store's RocksDB memory is bounded by settings, not faust's defaults (three
64 MiB write buffers and a 2 GiB block cache per partition)."""

from __future__ import annotations

from pathlib import Path

from streams.app import create_app
from streams.settings import Settings

MIB = 1024 * 1024


def test_the_state_store_opens_with_the_configured_memory(tmp_path: Path) -> None:
    settings = Settings(store_dir=tmp_path, rocksdb_write_buffer_mb=4, rocksdb_block_cache_mb=8)
    options = create_app(settings).customer_to_state.data.rocksdb_options  # type: ignore[attr-defined]
    assert options.write_buffer_size == 4 * MIB
    assert options.max_write_buffer_number == 2
    assert options.block_cache_size == 8 * MIB


def test_the_defaults_are_small() -> None:
    settings = Settings()
    assert settings.rocksdb_write_buffer_mb * 2 + settings.rocksdb_block_cache_mb <= 64
