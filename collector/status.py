"""The daemon's status: what it has seen per exporter, its listeners, outputs and spool.

The event loop publishes an immutable snapshot (a plain dict) once a tick; the HTTP thread serves the latest one as
JSON on ``/status`` next to ``/metrics``, so a request never touches live state. With several workers, each worker
writes its snapshot to a file and the supervisor merges them (:func:`merge`). ``flowmed status`` fetches and prints it.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import selectors
import socket
import threading
import time
import urllib.request
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from collector.config import split_endpoint
from collector.logging import log
from decoders.sflow import SFLOW_VERSION

MAX_CONNECTIONS = 64
"""Connections the metrics endpoint holds at most (Prometheus needs one per scrape, ``flowmed status`` one)."""
REQUEST_TIMEOUT_S = 10.0
"""A client must send its whole request within this after connecting."""
RESPONSE_TIMEOUT_S = 10.0
"""A client must read its whole answer within this."""
MAX_REQUEST_BYTES = 8192
"""Request line and headers at most (a scrape sends a few hundred bytes)."""
RESPONDERS = 2
"""Threads that build and write answers (a /status answer may wait up to 2 s for the event loop)."""


@dataclass
class ExporterStatus:
    """What one exporter has sent so far."""

    address: str
    versions: set[int] = field(default_factory=set)
    first_seen_ms: int = 0
    last_seen_ms: int = 0
    datagrams: int = 0
    records: int = 0
    errors: int = 0
    sequence_lost: int = 0
    templates: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"address": self.address, "versions": sorted(self.versions), "first_seen_ms": self.first_seen_ms,
                "last_seen_ms": self.last_seen_ms, "datagrams": self.datagrams, "records": self.records,
                "errors": self.errors, "sequence_lost": self.sequence_lost, "templates": self.templates}


class StatusBoard:
    """Per-exporter totals, bounded: beyond ``limit`` exporters the least recently seen is forgotten."""

    def __init__(self, limit: int = 4096) -> None:
        self.limit = limit
        self.exporters: OrderedDict[str, ExporterStatus] = OrderedDict()

    def exporter(self, address: str, now_ms: int) -> ExporterStatus:
        """The entry for ``address`` (created on first sight), marked as seen at ``now_ms``."""
        entry = self.exporters.get(address)
        if entry is None:
            entry = self.exporters[address] = ExporterStatus(address, first_seen_ms=now_ms)
            if len(self.exporters) > self.limit:
                self.exporters.popitem(last=False)
        else:
            self.exporters.move_to_end(address)
        entry.last_seen_ms = max(entry.last_seen_ms, now_ms)
        return entry

    def to_list(self) -> list[dict[str, Any]]:
        return [e.to_dict() for e in self.exporters.values()]


VERSION_NAMES = {5: "v5", 9: "v9", 10: "ipfix", SFLOW_VERSION: "sflow"}
"""How ``flowmed status`` names the protocol of a ``version`` value (sFlow's 105 is the flows table's code for it)."""


def merge(snapshots: list[dict[str, Any]]) -> dict[str, Any]:
    """One status from several workers' snapshots: exporters summed by address, listeners and outputs listed."""
    if not snapshots:
        return {}
    out = dict(snapshots[0])
    exporters: dict[str, dict[str, Any]] = {}
    for snap in snapshots:
        for e in snap.get("exporters", []):
            cur = exporters.get(e["address"])
            if cur is None:
                exporters[e["address"]] = dict(e)
                continue
            cur["versions"] = sorted(set(cur["versions"]) | set(e["versions"]))
            cur["first_seen_ms"] = min(cur["first_seen_ms"], e["first_seen_ms"])
            cur["last_seen_ms"] = max(cur["last_seen_ms"], e["last_seen_ms"])
            for k in ("datagrams", "records", "errors", "sequence_lost", "templates"):
                cur[k] += e[k]
    out["exporters"] = sorted(exporters.values(), key=lambda e: e["address"])
    out["listeners"] = [li for s in snapshots for li in s.get("listeners", [])]
    out["outputs"] = [o for s in snapshots for o in s.get("outputs", [])]
    out["workers"] = [s.get("worker") for s in snapshots]
    for k in ("datagrams", "flows", "rows_flushed"):
        out[k] = sum(s.get(k, 0) for s in snapshots)
    rejects: dict[str, int] = {}
    for snap in snapshots:
        for reason, count in (snap.get("rejects") or {}).items():
            rejects[reason] = rejects.get(reason, 0) + count
    out["rejects"] = rejects
    spools = [s.get("spool") or {} for s in snapshots]
    out["spool"] = {k: sum(sp.get(k, 0) for sp in spools) for k in ("bytes", "batches", "rows", "dropped_rows")}
    out["spool"]["oldest_age_s"] = max((sp.get("oldest_age_s", 0.0) for sp in spools), default=0.0)
    return out


def write_snapshot(path: Path, snapshot: dict[str, Any]) -> None:
    """Write a snapshot atomically (the supervisor may read it at any moment)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(snapshot, default=str))
    os.replace(tmp, path)


def read_snapshots(directory: Path) -> list[dict[str, Any]]:
    """Every worker snapshot in ``directory`` (unreadable ones are skipped: a worker may be restarting)."""
    snaps = []
    for p in sorted(directory.glob("status-*.json")):
        try:
            snaps.append(json.loads(p.read_text()))
        except (OSError, ValueError):
            continue
    return snaps


class HttpServer:
    """``/metrics`` (Prometheus exposition of ``registry``) and ``/status`` (JSON from ``status``), off the event loop.

    Bounded whatever clients do: one selector thread accepts connections and reads requests, each of which must
    arrive within ``request_timeout_s`` and fit ``MAX_REQUEST_BYTES``; at most ``max_connections`` are open (a new one
    beyond that displaces the oldest still sending its request); complete requests are answered by ``responders``
    threads, each write bounded by ``response_timeout_s``. A thread per connection (http.server's way) let 1,000 idle
    half-requests hold 1,000 threads. A client that goes away early costs nothing and logs nothing.
    """

    def __init__(self, listen: str, registry: CollectorRegistry, status: Callable[[], dict[str, Any]], *,
                 max_connections: int = MAX_CONNECTIONS, request_timeout_s: float = REQUEST_TIMEOUT_S,
                 response_timeout_s: float = RESPONSE_TIMEOUT_S, responders: int = RESPONDERS) -> None:
        from collector.listener import ListenError

        host, port = split_endpoint(listen)
        self.registry, self.status = registry, status
        self.max_connections = max_connections
        self.request_timeout_s, self.response_timeout_s = request_timeout_s, response_timeout_s
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restart binds despite TIME_WAIT
            sock.bind((host, port))
            sock.listen(128)
        except OSError as exc:
            sock.close()
            raise ListenError("metrics", listen, exc) from None
        sock.setblocking(False)
        self.sock = sock
        self.address = f"{listen.rpartition(':')[0]}:{sock.getsockname()[1]}"
        self._selector = selectors.DefaultSelector()
        self._selector.register(sock, selectors.EVENT_READ)
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        self._reading: OrderedDict[socket.socket, _Request] = OrderedDict()  # oldest first
        self._answering: set[socket.socket] = set()  # handed to the responders, not yet closed
        self._lock = threading.Lock()
        self._closing = False
        self._pool = concurrent.futures.ThreadPoolExecutor(responders, thread_name_prefix="flowmed-http-respond")
        self.thread = threading.Thread(target=self._serve, name="flowmed-http", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def close(self) -> None:
        """Stop accepting and drop every connection (answers in progress are cut: the process is stopping)."""
        self._closing = True
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        if self.thread.is_alive():
            self.thread.join(5.0)
        self._pool.shutdown(wait=False)  # answers still queued see _closing and just close their connection
        with self._lock:
            answering = list(self._answering)
        for conn in answering:  # a client reading slowly must not hold the process's exit for response_timeout_s
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        for conn in list(self._reading):
            conn.close()
        self._reading.clear()
        self._selector.close()
        for s in (self.sock, self._wake_r, self._wake_w):
            s.close()

    @property
    def open_connections(self) -> int:
        """Connections held now: reading their request or being answered."""
        with self._lock:
            return len(self._reading) + len(self._answering)

    # --- the selector thread ---------------------------------------------------------------------------------------

    def _serve(self) -> None:
        while not self._closing:
            try:
                self._serve_once()
            except Exception as exc:  # a bug: keep the endpoint up (slowly: this must not spin)
                log("error", "metrics endpoint failed", error=repr(exc))
                time.sleep(1.0)

    def _serve_once(self) -> None:
        """Wait for sockets (at most a second, or until the next request deadline) and handle them."""
        now = time.monotonic()
        oldest = next(iter(self._reading.values()), None)
        timeout = 1.0 if oldest is None else min(1.0, max(0.0, oldest.deadline - now))
        for key, _ in self._selector.select(timeout):
            if key.fileobj is self.sock:
                self._accept()
            elif key.fileobj is self._wake_r:
                with contextlib.suppress(OSError):
                    self._wake_r.recv(64)
            elif isinstance(key.fileobj, socket.socket):  # an accepted connection (only sockets are registered)
                self._read(key.fileobj)
        self._expire(time.monotonic())

    def _accept(self) -> None:
        for _ in range(64):  # a burst is taken in slices: expiry and reads go on meanwhile
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # out of descriptors, or a connection reset before it was accepted
                return
            if self.open_connections >= self.max_connections:
                if not self._reading:  # every slot is answering: refuse this one
                    conn.close()
                    continue
                self._drop(next(iter(self._reading)))  # the oldest still sending: most likely an idle one
            conn.setblocking(False)
            self._reading[conn] = _Request(time.monotonic() + self.request_timeout_s)
            self._selector.register(conn, selectors.EVENT_READ)

    def _read(self, conn: socket.socket) -> None:
        req = self._reading.get(conn)
        if req is None:
            return
        try:
            data = conn.recv(MAX_REQUEST_BYTES + 1 - len(req.data))
        except (BlockingIOError, InterruptedError):
            return
        except OSError:  # reset by the client
            self._drop(conn)
            return
        if not data:  # the client went away before finishing its request
            self._drop(conn)
            return
        req.data += data
        end = req.data.find(b"\r\n\r\n")
        if end < 0:
            end = req.data.find(b"\n\n")
        if end < 0 and len(req.data) <= MAX_REQUEST_BYTES:
            return
        self._selector.unregister(conn)
        del self._reading[conn]
        with self._lock:
            self._answering.add(conn)
        try:
            self._pool.submit(self._answer, conn, req.data if end >= 0 else b"")
        except RuntimeError:  # closing
            self._answered(conn)

    def _expire(self, now: float) -> None:
        while self._reading:
            conn, req = next(iter(self._reading.items()))
            if req.deadline > now:
                return
            with contextlib.suppress(OSError):  # best effort: the client may read why, or not
                conn.send(b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            self._drop(conn)

    def _drop(self, conn: socket.socket) -> None:
        self._reading.pop(conn, None)
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(conn)
        conn.close()

    # --- the responders --------------------------------------------------------------------------------------------

    def _answer(self, conn: socket.socket, request: bytes) -> None:
        try:
            if self._closing:
                return
            code, ctype, body, head_only = self._route(request)
            head = (f"HTTP/1.1 {code} {_REASONS[code]}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                    "Connection: close\r\n\r\n").encode()
            self._send(conn, head if head_only else head + body)
        except OSError:  # the client went away or stopped reading: nothing to report
            pass
        finally:
            self._answered(conn)

    def _answered(self, conn: socket.socket) -> None:
        with self._lock:
            self._answering.discard(conn)
        conn.close()

    def _send(self, conn: socket.socket, data: bytes) -> None:
        """Write ``data`` within response_timeout_s in all (a client reading a byte at a time is dropped)."""
        deadline = time.monotonic() + self.response_timeout_s
        view = memoryview(data)
        while view:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("response not read in time")
            conn.settimeout(remaining)
            view = view[conn.send(view):]

    def _route(self, request: bytes) -> tuple[int, str, bytes, bool]:
        """(status, content type, body, HEAD) for a request's bytes (b"" when it was too large)."""
        if not request:
            return 431, "text/plain", b"request too large\n", False
        parts = request.split(b"\n", 1)[0].split()
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/"):
            return 400, "text/plain", b"bad request\n", False
        method, target = parts[0], parts[1].split(b"?", 1)[0]
        if method not in (b"GET", b"HEAD"):
            return 405, "text/plain", b"only GET\n", False
        head = method == b"HEAD"
        try:
            if target == b"/metrics":
                return 200, CONTENT_TYPE_LATEST, generate_latest(self.registry), head
            if target == b"/status":
                return 200, "application/json", json.dumps(self.status(), default=str, indent=1).encode(), head
        except Exception as exc:  # a bug in a collector or the snapshot: the endpoint stays up
            log("error", "metrics endpoint failed to answer", path=target.decode(errors="replace"), error=repr(exc))
            return 500, "text/plain", b"internal error\n", head
        if target == b"/":
            return 200, "text/plain", b"flowmed: /metrics /status\n", head
        return 404, "text/plain", b"not found\n", head


@dataclass(slots=True)
class _Request:
    """A connection still sending its request."""

    deadline: float
    data: bytes = b""


_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 408: "Request Timeout",
            431: "Request Header Fields Too Large", 500: "Internal Server Error"}


def fetch(listen: str, timeout: float = 5.0) -> dict[str, Any]:
    """GET ``/status`` from a running daemon whose metrics endpoint is ``listen`` (raises OSError if it is down)."""
    host, port = split_endpoint(listen)
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1" if host == "0.0.0.0" else "::1"
    netloc = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    with urllib.request.urlopen(f"http://{netloc}/status", timeout=timeout) as resp:
        status: dict[str, Any] = json.loads(resp.read())
    return status


def _ago(ms: int, now_ms: int) -> str:
    if not ms:
        return "-"
    s = max(0, (now_ms - ms) // 1000)
    return f"{s}s ago" if s < 120 else f"{s // 60}m ago" if s < 7200 else f"{s // 3600}h ago"


def render(status: dict[str, Any]) -> str:
    """Human-readable status, as ``flowmed status`` prints it."""
    now = int(time.time() * 1000)
    lines = [f"flowmed {status.get('version', '?')}  pid {status.get('pid', '?')}  up {status.get('uptime_s', 0):.0f}s"
             f"  workers {status.get('worker_count', 1)}",
             f"datagrams {status.get('datagrams', 0)}  flows {status.get('flows', 0)}"
             f"  rejected by mediation {sum((status.get('rejects') or {}).values())}"]
    rejects = status.get("rejects") or {}
    if rejects:  # a record rejected is usage not billed: say why, loudly
        lines.append("rejected: " + ", ".join(f"{reason} {count}" for reason, count in
                                              sorted(rejects.items(), key=lambda kv: -kv[1]))
                     + "  (rows in the rejects table; flowmed_rejects_total)")
    lines += ["", "listeners:"]
    for li in status.get("listeners", []):
        worker = f"worker {li['worker']:<3}" if li.get("worker") is not None else ""
        lines.append(f"  {li['address']:<24} {worker}rcvbuf {li.get('rcvbuf_bytes', 0):>10}"
                     f"  datagrams {li.get('datagrams', 0):>10}  kernel drops {li.get('kernel_drops', 0)}")
    lines += ["", "exporters:"]
    lines.append(f"  {'address':<40} {'versions':<9} {'last seen':>10} {'records':>12} {'errors':>8}"
                 f" {'seq lost':>9} {'tmpl':>5}")
    for e in status.get("exporters", []):
        versions = ",".join(VERSION_NAMES.get(v, str(v)) for v in e["versions"])
        lines.append(f"  {e['address']:<40} {versions:<9} {_ago(e['last_seen_ms'], now):>10} {e['records']:>12}"
                     f" {e['errors']:>8} {e['sequence_lost']:>9} {e['templates']:>5}")
    if not status.get("exporters"):
        lines.append("  (none yet)")
    lines += ["", f"outputs: (rows flushed to the store {status.get('rows_flushed', 0)})"]
    for o in status.get("outputs", []):
        extra = f"  replayed {o['replayed_rows']} rows after a crash" if o.get("replayed_rows") else ""
        what = "spooled" if "rows_inserted" in o else "rows"  # ClickHouse: rows handed to its spool
        lines.append(f"  {o['name']:<12} {o.get('state', '?'):<12} {what} {o.get('rows', 0):>12}"
                     f"  batches {o.get('batches', 0):>8}  errors {o.get('errors', 0)}{extra}")
        if "rows_inserted" in o:  # the ClickHouse output: the server's side
            codes = ", ".join(f"{k} x{n}" for k, n in o.get("errors_by_code", {}).items()) or "none"
            down = f", disconnected for {o['disconnected_for_s']:.0f}s" if o.get("disconnected_for_s") else ""
            retry = f", next try in {o['retry_in_s']:.1f}s" if o.get("retry_in_s") else ""
            lines.append(f"  {'':<12} inserted {o['rows_inserted']} rows (last {_ago(o.get('last_insert_ms', 0), now)}"
                         f", {o.get('last_insert_seconds', 0.0):.3f}s); backlog {o.get('backlog_rows', 0)} rows in "
                         f"{o.get('backlog_batches', 0)} batches, oldest {o.get('backlog_age_s', 0.0):.0f}s{down}"
                         f"{retry}")
            lines.append(f"  {'':<12} errors by stage:code: {codes}")
        if o.get("last_error"):
            lines.append(f"  {'':<12} last error: {o['last_error']}")
    spool = status.get("spool") or {}
    lines += ["", f"spool: {spool.get('bytes', 0)} bytes, {spool.get('batches', 0)} batches, oldest "
                  f"{spool.get('oldest_age_s', 0):.0f}s"]
    return "\n".join(lines)
