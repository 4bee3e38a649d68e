"""The embedded store's on-disk layout: hour partitions, file names (batch ids), temporary and bookkeeping names,
the check of a Parquet file's frame, and the Parquet write options (codec, level, column encodings) that writes
and compaction share. :mod:`storage.store` describes the layout; this module names it."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from typing import Any

import pyarrow.parquet as pq

from decoders.schema import Table

HOUR_MS = 3_600_000


JOURNAL = "_compaction.json"


SOURCES_KEY = "flowmed.batch_ids"  # footer metadata of a merged file: the batch ids it holds


QUARANTINE = "quarantine"


CHECKPOINT = ".checkpoint"


CHECKPOINT_MARGIN_S = 600.0  # longer than any single write or compaction step takes


TRASH = ".trash"


_PARQUET_MAGIC = b"PAR1"


def partition_of(hour: int) -> str:
    """``date=YYYY-MM-DD/hour=HH`` for an hour number (UTC hours since the epoch)."""
    dt = datetime.fromtimestamp(hour * 3600, tz=UTC)
    return f"date={dt:%Y-%m-%d}/hour={dt:%H}"


def hour_of_partition(date_dir: str, hour_dir: str) -> int | None:
    """Inverse of :func:`partition_of` for directory names; None when they are not partition names."""
    try:
        day = datetime.strptime(date_dir.removeprefix("date="), "%Y-%m-%d").replace(tzinfo=UTC)
        hour = int(hour_dir.removeprefix("hour="))
    except ValueError:
        return None
    if not (date_dir.startswith("date=") and hour_dir.startswith("hour=") and 0 <= hour < 24):
        return None
    return int(day.timestamp()) // 3600 + hour


def file_name(batch_id: int) -> str:
    return f"{batch_id:020d}.parquet"


def id_range(name: str) -> tuple[int, int]:
    """(first, last) batch id held by a data file, from its name; (0, 0) for a foreign name."""
    stem = name.removesuffix(".parquet").split(".")[0]
    parts = stem.split("-")
    try:
        return int(parts[0]), int(parts[-1])
    except ValueError:
        return 0, 0


def tmp_name(final: str) -> str:
    """Temporary name of ``final`` while this process writes it: ``<final>.<pid>.tmp``."""
    return f"{final}.{os.getpid()}.tmp"


def writer_alive(tmp: str) -> bool:
    """Whether the process that named temporary file ``tmp`` (see :func:`tmp_name`) is still running."""
    try:
        pid = int(tmp.rsplit(".", 2)[-2])
    except (ValueError, IndexError):
        return False
    if pid == os.getpid():
        return False  # ours from before a fork/restart cannot be in progress during recovery
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def check_parquet(path: str | os.PathLike[str]) -> str | None:
    """Why ``path`` is not a complete Parquet file, or None when its magic and footer are sound."""
    try:
        size = os.path.getsize(path)
        if size < 12:
            return f"truncated ({size} bytes)"
        with open(path, "rb") as f:
            head = f.read(4)
            f.seek(-8, os.SEEK_END)
            tail = f.read(8)
        if head != _PARQUET_MAGIC or tail[4:] != _PARQUET_MAGIC:
            return "not a Parquet file or truncated (magic bytes missing)"
        footer = int.from_bytes(tail[:4], "little")
        if footer <= 0 or footer > size - 12:
            return f"corrupt footer length {footer}"
        pq.read_metadata(path)
    except OSError as exc:
        return f"unreadable: {exc}"
    except Exception as exc:  # pyarrow raises ArrowInvalid / OSError subclasses for bad metadata
        return f"corrupt metadata: {exc}"
    return None


CODECS = ("zstd", "lz4", "snappy", "gzip", "brotli", "none")
"""Parquet compression codecs the store writes (``store.compression``)."""


LEVELS: dict[str, tuple[int, int]] = {"zstd": (-7, 22), "gzip": (1, 9), "brotli": (0, 11)}
"""Codecs that take ``store.compression_level``, and its range; the other codecs ignore the level."""


_STATS_KINDS = frozenset({"timestamp_ms", "ip", "string"})


def check_compression(compression: str, level: int) -> str | None:
    """Why ``compression`` at ``level`` cannot be written, or None when it can."""
    if compression not in CODECS:
        return f"one of {', '.join(CODECS)}"
    lo, hi = LEVELS.get(compression, (level, level))
    if not lo <= level <= hi:
        return f"a {compression} level from {lo} to {hi}"
    return None


def parquet_options(table: Table, compression: str = "zstd", compression_level: int = 1, *,
                    byte_stream_split: bool = True) -> dict[str, Any]:
    """Keyword arguments of :class:`pyarrow.parquet.ParquetWriter` (and ``write_table``) for ``table``'s files.

    Measured on 500,000-row flow batches (``bench/test_store_bench.py``): Arrow's defaults (dictionary encoding and
    statistics on every column) spend most of their time hashing nearly unique values (addresses, ports, times,
    counters) into dictionaries that save little (and fall back to plain pages past 1 MiB of distinct values, 65,536
    addresses). BYTE_STREAM_SPLIT (one byte plane
    per byte position, so zstd sees the constant high bytes and the IPv4-mapped prefix as long runs) encodes those
    columns in about a third of the time at about the same size. Strings keep their dictionary (no split encoding
    exists for them; their values repeat). Statistics (min/max per row group and page) are what chDB prunes row
    groups with, so they are kept for times, addresses and strings and skipped for counters.
    ``byte_stream_split=False``: dictionary encoding everywhere, as Arrow's defaults, for readers that lack
    BYTE_STREAM_SPLIT on integer and fixed-size binary columns (Parquet format 2.11, 2024).
    """
    reason = check_compression(compression, compression_level)
    if reason:
        raise ValueError(f"store compression {compression!r} level {compression_level}: expected {reason}")
    options: dict[str, Any] = {
        "compression": compression,
        "write_statistics": [c.name for c in table.columns if c.kind in _STATS_KINDS],
    }
    if compression in LEVELS:
        options["compression_level"] = compression_level
    if byte_stream_split:
        options["use_dictionary"] = [c.name for c in table.columns if c.kind == "string"]
        options["column_encoding"] = {c.name: "BYTE_STREAM_SPLIT" for c in table.columns if c.kind != "string"}
    return options
