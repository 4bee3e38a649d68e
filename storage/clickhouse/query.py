"""The ClickHouse server backend of :class:`storage.query.QueryEngine` (``flowmed query --target clickhouse``).

Queries run read-only against the database flowmed writes (``output.clickhouse.database``), so table names are the
same as in the embedded store. Results come back as a ``pyarrow.Table`` with the same types as the embedded backend:
addresses as ``fixed_size_binary(16)`` on both server generations (``FixedString(16)`` on 18.16, ``IPv6`` on modern
servers), which the engine shows as text; times as ``timestamp[ms, UTC]``.

On a cluster the tables read are the ``Distributed`` ones, so a query sees every shard (one replica of each). A read
that must see every insert acknowledged anywhere before it (the rating lease on a replicated cluster) passes
``sync=<table>``: the connected replica catches up first (``SYSTEM SYNC REPLICA``).

SQL that reads the same on every backend (embedded chDB, 18.16, modern): compare addresses with
``IPv6StringToNum('::ffff:192.0.2.1')`` (``toIPv6`` does not exist on 18.16), and render them in SQL with
``IPv6NumToString(addr)``. For ``clickhouse-client`` users on 18.16, ``<database>_read`` holds a view per table with
addresses already as text and ReplacingMergeTree tables read ``FINAL`` (see :mod:`storage.clickhouse.ddl`).

Read-only: every query carries ``readonly = 2`` (no writes, no DDL; settings may still be changed), or the
``readonly`` level given to the backend, unless the user's profile is read-only already (then it is left as the
server set it). ``flowmed query`` asks for ``readonly = 1`` unless run with ``--allow-external``: on 18.16 that
also refuses every table function (``url()``, ``remote()``, ``file()``, even ``numbers()``) and every setting.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

import numpy as np
import pyarrow as pa

from decoders.schema import TABLES
from storage.clickhouse.client import connect
from storage.errors import QueryError
from storage.settings import ClickHouseConfig, StorageSettings


class ClickHouseBackend:
    """Read-only SQL on a ClickHouse server; implements ``storage.query.QueryBackend``."""

    name = "clickhouse"

    def __init__(self, config: ClickHouseConfig, *, timeout_s: float = 300.0, readonly: int = 2) -> None:
        if readonly not in (1, 2):
            raise ValueError(f"readonly must be 1 or 2, not {readonly!r}")
        self.config = config
        self.timeout_s = timeout_s
        self.readonly = readonly
        self._client = None
        self._settings: dict[str, Any] | None = None

    @classmethod
    def from_config(cls, config: StorageSettings, *, readonly: int = 2) -> ClickHouseBackend:
        """The backend for a whole configuration (its ``[output.clickhouse]``; a
        :class:`~storage.settings.StorageSettings`)."""
        return cls(config.output.clickhouse, readonly=readonly)

    def _connect(self) -> Any:
        if self._client is None:
            client = connect(self.config, timeout_s=self.timeout_s)
            (value,), = client.execute("SELECT value FROM system.settings WHERE name = 'readonly'",
                                       settings={"use_numpy": False})
            self._settings = {} if str(value) not in ("0", "") else {"readonly": self.readonly}
            self._client = client
        return self._client

    @property
    def replicated(self) -> bool:
        """Whether the server is a node of a replicated cluster (``output.clickhouse.replicated``)."""
        return bool(self.config.cluster) and self.config.replicated

    def query(self, sql: str, *, sync: str | None = None) -> pa.Table:
        """Run one statement read-only in the flowmed database; raises ``QueryError`` on failure.

        ``sync`` names a replicated table that the connected replica first brings up to date (``SYSTEM SYNC
        REPLICA``: it fetches every part whose insert was acknowledged anywhere before), so the read sees every
        write acknowledged before it started, on whichever node: the rating lease needs that (read-your-writes
        across hosts). It needs a user that may run ``SYSTEM`` statements; it waits while a part it needs is only on
        a node that is down (then fails after the timeout).
        """
        from clickhouse_driver.errors import Error as DriverError

        try:
            client = self._connect()
            synced = None
            if sync is not None:
                if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", sync):
                    raise ValueError(f"not a table name: {sync!r}")
                client.execute(f"SYSTEM SYNC REPLICA `{self.config.database}`.`{sync}`",
                               settings={"use_numpy": False})
                synced = (client.connection.host, client.connection.port)
            client.execute(f"USE `{self.config.database}`", settings={"use_numpy": False})
            data, types = client.execute(sql, with_column_types=True, columnar=True,
                                         settings={**(self._settings or {}), "use_numpy": True,
                                                   "strings_as_bytes": True})  # addresses are not text
            if synced is not None and synced != (client.connection.host, client.connection.port):
                # The driver reconnected to another node between the sync and the read: that node may lag.
                raise QueryError("the connection moved to another server between SYSTEM SYNC REPLICA and the "
                                 "read; try again")
        except (DriverError, OSError, EOFError) as exc:
            self.close()
            raise QueryError(_message(exc)) from None
        return to_arrow(data, types)

    def source(self, table: str, t0_ms: int, t1_ms: int) -> str:
        """A FROM-clause subquery of ``table``'s rows with ``t0_ms <= time < t1_ms``, the bounds in whole seconds
        (floor and ceiling): servers keep ``DateTime`` (second) times, and 18.16 has no millisecond conversion."""
        col = f"`{TABLES[table].time_column}`"
        return (f"(SELECT * FROM `{table}` WHERE {col} >= toDateTime({t0_ms // 1000}, 'UTC') "
                f"AND {col} < toDateTime({-(-t1_ms // 1000)}, 'UTC'))")

    def close(self) -> None:
        if self._client is not None:
            try:
                self._client.disconnect()
            finally:
                self._client = None


def _message(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.split(". Stack trace:")[0].strip() if text else exc.__class__.__name__


def _strip(t: str) -> str:
    while t.startswith(("LowCardinality(", "Nullable(")):
        t = t[t.index("(") + 1:-1]
    return t


def to_arrow(data: list[Any], types: list[tuple[str, str]]) -> pa.Table:
    """Driver columns (numpy mode) as a pyarrow Table with the embedded backend's types."""
    arrays, names = [], []
    if not data and types:  # no rows: the driver returns no columns at all in columnar mode
        data = [[] for _ in types]
    for values, (name, ch_type) in zip(data, types, strict=True):
        names.append(name)
        arrays.append(_column(values, _strip(ch_type)))
    if not types:
        return pa.table({})
    return pa.Table.from_arrays(arrays, names=names)


_EMPTY_TYPES = {
    "UInt8": pa.uint8(), "UInt16": pa.uint16(), "UInt32": pa.uint32(), "UInt64": pa.uint64(),
    "Int8": pa.int8(), "Int16": pa.int16(), "Int32": pa.int32(), "Int64": pa.int64(),
    "Float32": pa.float32(), "Float64": pa.float64(), "String": pa.string(), "IPv6": pa.binary(16),
    "FixedString(16)": pa.binary(16), "Date": pa.timestamp("ms", tz="UTC"),
}


def _column(values: Any, ch_type: str) -> pa.Array:
    if len(values) == 0:  # an empty result keeps its column types
        arrow_type = _EMPTY_TYPES.get(ch_type) or (pa.timestamp("ms", tz="UTC") if ch_type.startswith("DateTime")
                                                   else pa.null())
        return pa.array([], type=arrow_type)
    if ch_type in ("IPv6", "FixedString(16)"):
        if isinstance(values, np.ndarray) and values.dtype == np.dtype("S16"):  # zero-copy-ish: 16 bytes each
            data = np.ascontiguousarray(values)
            return pa.FixedSizeBinaryArray.from_buffers(pa.binary(16), len(data), [None, pa.py_buffer(data)])
        return pa.array([_packed(v) for v in values], type=pa.binary(16))
    if ch_type.startswith(("DateTime", "Date")):
        arr = np.asarray(values)
        if arr.dtype.kind == "M":
            ms = arr.astype("datetime64[ms]").astype(np.int64)
            return pa.array(ms, type=pa.int64()).cast(pa.timestamp("ms", tz="UTC"))
        return pa.array(list(values))
    if ch_type == "String":
        return _text(values)
    if ch_type == "IPv4":
        return pa.array([str(v) for v in values], type=pa.string())
    if isinstance(values, np.ndarray) and values.dtype.kind in "iufb":
        return pa.array(values)
    if isinstance(values, np.ndarray) and values.dtype.kind == "U":
        return pa.array(values.astype(object), type=pa.string())
    return pa.array(list(values))


def _text(values: Any) -> pa.Array:
    """String values (read as bytes) as UTF-8 text; invalid UTF-8 is shown with replacement characters."""
    raw = pa.array(list(values), type=pa.binary())
    try:
        return raw.cast(pa.string())
    except pa.ArrowInvalid:
        return pa.array([None if v is None else bytes(v).decode("utf-8", "replace") for v in values],
                        type=pa.string())


def _packed(value: Any) -> bytes | None:
    if value is None:
        return None
    if isinstance(value, ipaddress.IPv6Address):
        return value.packed
    if isinstance(value, bytes | np.bytes_):
        return bytes(value).ljust(16, b"\0")  # numpy strips trailing NULs of S16 items
    return ipaddress.IPv6Address(str(value)).packed
