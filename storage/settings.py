"""The settings of the storage floor: ``[store]``, ``[output.clickhouse]`` and ``[spool]`` of collector.toml.

Each section is a frozen dataclass whose field docstrings are its documentation (``collector.configdoc`` renders
them into collector.toml); :mod:`collector.config` reads the TOML and assembles them into its ``Config``. A bad
value raises :class:`decoders.settings.ConfigError` naming the dotted key, as every layer's settings do.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

from decoders.settings import ConfigError, check_positive


@dataclass(frozen=True)
class StoreConfig:
    enabled: bool = True
    """Write the embedded Parquet store (the default output; `flowmed query` reads it)."""
    path: str = "data"
    """Data directory: the Parquet dataset, the spool and saved state live under it."""
    flush_interval_s: float = 5.0
    """A batch is written at least this often..."""
    flush_rows: int = 500_000
    """...or as soon as it holds this many rows..."""
    flush_bytes: int = 64 * 1024**2
    """...or this many bytes of Arrow memory, whichever comes first (a flow row is about 210 bytes: 64 MiB is about
    300,000 flows). Bounds the memory a table's buffer holds whatever its row width; smaller means more files (until
    compaction merges them) for about the same CPU and disk per row."""
    compact_after_s: float = 3600.0
    """Files of a partition older than this are merged into one file (0 disables compaction)."""
    flows_retention_days: int = 0
    """Drop raw flow partitions older than this (0 keeps them forever)."""
    max_pending_rows: int = 4_000_000
    """Rows held in memory waiting for the outputs (buffered, queued, being written); beyond it new raw flow rows
    are refused and counted (flowmed_sink_dropped_rows_total), mediated tables are always accepted."""
    max_pending_bytes: int = 512 * 1024**2
    """The same bound in bytes of Arrow memory (whichever is reached first); at 900,000 flows/s 512 MiB is about
    2.5 seconds of a stalled disk."""
    compression: Literal["zstd", "lz4", "snappy", "gzip", "brotli", "none"] = "zstd"
    """Parquet codec: zstd, lz4, snappy, gzip, brotli or none (lz4 costs about a third less CPU than zstd for
    files about 15 % larger)."""
    compression_level: int = 1
    """Level of zstd (-7 fastest .. 22 smallest), gzip (1..9) or brotli (0..11); other codecs ignore it."""
    byte_stream_split: bool = True
    """Fixed-width columns BYTE_STREAM_SPLIT-encoded (about 40 % less CPU than dictionary encoding); false writes
    the layout that Parquet readers from before 2024 understand (dictionary encoding everywhere)."""

    def validate(self, key: str) -> None:
        check_positive(key, flush_interval_s=self.flush_interval_s, flush_rows=self.flush_rows,
                        max_pending_rows=self.max_pending_rows, flush_bytes=self.flush_bytes,
                        max_pending_bytes=self.max_pending_bytes)
        # the same ranges as storage.layout.LEVELS (not imported: the settings stay free of pyarrow)
        levels = {"zstd": (-7, 22), "gzip": (1, 9), "brotli": (0, 11)}.get(self.compression)
        if levels is not None and not levels[0] <= self.compression_level <= levels[1]:
            lo, hi = levels
            raise ConfigError(f"{key}.compression_level", self.compression_level,
                              f"a {self.compression} level from {lo} to {hi}")


@dataclass(frozen=True)
class ClickHouseConfig:
    enabled: bool = False
    """Write to a ClickHouse server (in addition to, or instead of, the embedded store)."""
    hosts: list[str] = field(default_factory=lambda: ["127.0.0.1"])
    """Server host names or addresses, each optionally with its own port ("10.0.0.6:9001", "[2001:db8::6]:9001");
    tried in order."""
    port: int = 9000
    """Native protocol port (9440 is usual with TLS)."""
    database: str = "flowmed"
    """Database that holds flowmed's tables (created at start)."""
    user: str = "default"
    """User name."""
    password_env: str = "FLOWMED_CLICKHOUSE_PASSWORD"
    """Environment variable that holds the password (preferred)."""
    password_file: str = ""
    """File whose first line is the password (used when the environment variable is unset)."""
    secure: bool = False
    """TLS to the server."""
    ca_file: str = ""
    """CA bundle for TLS (empty: the system's)."""
    cluster: str = ""
    """Cluster name (from the servers' remote_servers): <table>_local tables on every node plus Distributed tables
    that flowmed writes and reads through (docs/cluster.md). Empty: one server."""
    replicated: bool = False
    """With a cluster: ReplicatedMergeTree tables ({shard}/{replica} macros) created ON CLUSTER, so a lost server
    loses no data; the servers need ZooKeeper or ClickHouse Keeper."""
    zookeeper_path: str = "/clickhouse/flowmed"
    """With replicated: ZooKeeper/Keeper path prefix of the tables (<prefix>/tables/{shard}/<database>/<table>)."""
    insert_quorum: int = 0
    """With replicated: replicas that must hold a batch before it leaves the spool (0: one; 2: a server lost right
    after an insert loses nothing, but a shard with a replica down takes no inserts until it is back)."""
    flows: bool = True
    """Write raw flows (the mediated tables are always written)."""
    flows_retention_days: int = 0
    """Drop raw flows older than this (TTL where supported, else by dropping partitions); 0 keeps them."""
    batch_rows: int = 200_000
    """Insert when a batch holds this many rows..."""
    batch_interval_s: float = 5.0
    """...or when it is this old."""
    insert_timeout_s: float = 30.0
    """An insert taking longer than this is abandoned and its batch spooled."""

    def password(self) -> str:
        """The password from the environment or the password file; never from collector.toml itself."""
        if self.password_env and os.environ.get(self.password_env):
            return os.environ[self.password_env]
        if self.password_file:
            return Path(self.password_file).read_text().splitlines()[0] if Path(self.password_file).exists() else ""
        return ""

    def validate(self, key: str) -> None:
        if not self.hosts:
            raise ConfigError(f"{key}.hosts", self.hosts, "at least one host")
        if not 0 < self.port < 65536:
            raise ConfigError(f"{key}.port", self.port, "a TCP port number")
        check_positive(key, batch_rows=self.batch_rows, batch_interval_s=self.batch_interval_s,
                        insert_timeout_s=self.insert_timeout_s)
        for host in self.hosts:
            port = host.rpartition("]:")[2] if host.startswith("[") and "]:" in host else \
                host.partition(":")[2] if host.count(":") == 1 else "9000"
            if not (port.isdigit() and 0 < int(port) < 65536):
                raise ConfigError(f"{key}.hosts", host, "a host, host:port or [IPv6]:port")
        if self.replicated and not self.cluster:
            raise ConfigError(f"{key}.replicated", self.replicated, "a cluster name in cluster as well")
        if not re.fullmatch(r"(/[A-Za-z0-9_.-]+)+", self.zookeeper_path):
            raise ConfigError(f"{key}.zookeeper_path", self.zookeeper_path, "an absolute path such as /clickhouse/x")
        if not 0 <= self.insert_quorum <= 16:
            raise ConfigError(f"{key}.insert_quorum", self.insert_quorum, "0 to 16 replicas")


@dataclass(frozen=True)
class SpoolConfig:
    path: str = "spool"
    """Spool directory (relative to store.path) for batches an output could not take."""
    max_bytes: int = 10 * 1024**3
    """Spool size limit."""
    full_policy: Literal["drop_newest", "drop_oldest", "block"] = "drop_oldest"
    """What happens when the spool is full; every dropped row is counted and logged."""
    fsync: Literal["always", "never"] = "always"
    """always: a spooled batch survives power loss; never: it survives a crash of flowmed but not of the host."""

    def validate(self, key: str) -> None:
        check_positive(key, max_bytes=self.max_bytes)


@dataclass(frozen=True)
class OutputConfig:
    clickhouse: ClickHouseConfig = field(default_factory=ClickHouseConfig)
    """ClickHouse server output."""

    def validate(self, key: str) -> None:
        """Nothing to check here: the ClickHouse subsection checks itself when it is built."""


class StorageSettings(Protocol):
    """What the storage floor reads of the whole configuration (``collector.config.Config`` has it): its own
    sections and the resolution of relative paths against ``store.path``."""

    @property
    def store(self) -> StoreConfig: ...

    @property
    def output(self) -> OutputConfig: ...

    @property
    def spool(self) -> SpoolConfig: ...

    def data_path(self, relative: str) -> Path:
        """A path from the config, resolved against store.path when relative."""
        ...
