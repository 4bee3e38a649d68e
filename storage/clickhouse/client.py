"""The clickhouse-driver connection: hosts and ports, connecting with fail-over, running DDL through an
:data:`~storage.clickhouse.ddl.Executor`, the server's capabilities and driver error codes (and quieter driver logs)."""

from __future__ import annotations

import logging
from typing import Any

from clickhouse_driver.errors import Error as DriverError
from clickhouse_driver.errors import SocketTimeoutError

from storage.clickhouse.ddl import Executor, HostUnreachable, ServerCaps
from storage.settings import ClickHouseConfig


def error_code(exc: BaseException) -> str:
    """A bounded label for an error: the ClickHouse error code (server errors, and the driver's own such as 209
    socket timeout and 210 network error), else the exception's class name."""
    if isinstance(exc, DriverError) and exc.code is not None:
        return str(exc.code)
    return type(exc).__name__


class _QuietGenericColumnWarning(logging.Filter):
    """clickhouse-driver warns on every insert that IPv6 has no numpy column; we pass it bytes on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "NumPy support is not implemented" not in record.getMessage()


class _NoDriverTracebacks(logging.Filter):
    """clickhouse-driver logs every failed connect with a traceback; flowmed logs the error itself, once per try,
    so during an outage the log gets one line per retry instead of a stack trace."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.exc_info = None
        record.exc_text = None
        return record.levelno >= logging.ERROR


logging.getLogger("clickhouse_driver.columns.service").addFilter(_QuietGenericColumnWarning())
logging.getLogger("clickhouse_driver.connection").addFilter(_NoDriverTracebacks())


def host_port(entry: str, default_port: int) -> tuple[str, int]:
    """``"10.0.0.5"``, ``"10.0.0.5:9001"``, ``"[2001:db8::5]:9001"`` or ``"2001:db8::5"`` -> (host, port)."""
    if entry.startswith("["):
        host, _, rest = entry[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else default_port
    if entry.count(":") == 1:
        host, _, port = entry.partition(":")
        return host, int(port)
    return entry, default_port


def connect(config: ClickHouseConfig, *, host: str | None = None, port: int | None = None,
            timeout_s: float | None = None, settings: dict[str, Any] | None = None) -> Any:
    """A clickhouse-driver ``Client`` for ``config`` (numpy columns on; the other hosts as fail-over).

    A host entry may carry its own port (``"10.0.0.6:9001"``, ``"[2001:db8::6]:9001"``); ``port`` is the default.
    """
    from clickhouse_driver import Client

    default_port = port or config.port
    hosts = [(host, default_port)] if host else [host_port(h, default_port) for h in config.hosts]
    timeout = timeout_s if timeout_s is not None else config.insert_timeout_s
    kwargs: dict[str, Any] = dict(
        host=hosts[0][0], port=hosts[0][1], database="default", user=config.user, password=config.password(),
        secure=config.secure, connect_timeout=min(10.0, timeout), send_receive_timeout=timeout,
        sync_request_timeout=min(5.0, timeout), settings={"use_numpy": True, **(settings or {})},
        client_name="flowmed", tcp_keepalive=True,  # notice a server that vanished without closing
    )
    if config.ca_file:
        kwargs["ca_certs"] = config.ca_file
    if len(hosts) > 1:
        # IPv6 literals in brackets: the driver parses each as a URL authority.
        kwargs["alt_hosts"] = ",".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in hosts[1:])
    return Client(**kwargs)


def ddl_timeout_s(config: ClickHouseConfig) -> float:
    """How long an ON CLUSTER statement waits for every node: half the connection's timeout, so the server's answer
    ("not finished on N hosts") arrives before the client gives up on the connection."""
    return max(1.0, config.insert_timeout_s / 2)


def executor(client: Any) -> Executor:
    """An :data:`Executor` over a clickhouse-driver client (rows as plain tuples); a server that cannot be reached
    raises :class:`HostUnreachable`."""
    from clickhouse_driver.errors import NetworkError

    def run(sql: str) -> list[tuple[Any, ...]]:
        try:
            rows = client.execute(sql, settings={"use_numpy": False})
        except (NetworkError, SocketTimeoutError, EOFError, OSError) as exc:
            conn = client.connection
            raise HostUnreachable(f"{conn.hosts[0][0]}:{conn.hosts[0][1]} ({first_line(exc)})") from exc
        return [tuple(r) for r in rows] if rows else []

    return run


def server_caps(client: Any) -> ServerCaps:
    (version,), = client.execute("SELECT version()", settings={"use_numpy": False})
    return ServerCaps.from_version(str(version))


def has_zookeeper(client: Any) -> bool:
    """Whether the server reaches a ZooKeeper or ClickHouse Keeper (what replicated tables need)."""
    try:
        client.execute("SELECT count() FROM system.zookeeper WHERE path = '/'", settings={"use_numpy": False})
        return True
    except Exception:  # noqa: BLE001 - no ZooKeeper configured: distributed DDL is unavailable
        return False


def first_line(exc: BaseException) -> str:
    """The error without the server's stack trace, on one line (server errors read "Code: N. DB::Exception: ...")."""
    text = " ".join(str(exc).split("Stack trace:")[0].split())
    return text[:300] if text else exc.__class__.__name__
