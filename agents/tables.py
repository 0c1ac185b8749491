"""Table settings shared by the agents."""

from __future__ import annotations

from typing import Any

import faust

from kagoflow.settings import Settings


def rocksdb_options(settings: Settings) -> dict[str, Any]:
    """Explicit RocksDB memory: Faust's default block cache is 2 GiB per partition database."""
    return {
        "block_cache_size": settings.rocksdb_block_cache_mb * 1024 * 1024,
        "write_buffer_size": settings.rocksdb_write_buffer_mb * 1024 * 1024,
        "max_write_buffer_number": 2,
        "max_open_files": 256,
    }


def bytes_table(app: faust.App, name: str, settings: Settings) -> Any:
    """A RocksDB table of raw bytes (values are the core's own encodings), co-partitioned with the inputs."""
    return app.Table(name, partitions=settings.partitions, key_type=bytes, value_type=bytes,
                     options=rocksdb_options(settings))
