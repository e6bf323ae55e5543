"""State tables: bulk, changelog-first access to the faust Tables' RocksDB partitions."""
