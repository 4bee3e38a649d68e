"""The daemon's status: what it has seen per exporter, its listeners, outputs and spool.

The event loop publishes an immutable snapshot (a plain dict) once a tick; the HTTP thread serves the latest one as
JSON on ``/status`` next to ``/metrics``, so a request never touches live state. With several workers, each worker
writes its snapshot to a file and the supervisor merges them (:func:`merge`). ``flowmed status`` fetches and prints it.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import urllib.request
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from collector.config import split_endpoint


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
    """``/metrics`` (Prometheus exposition of ``registry``) and ``/status`` (JSON from ``status``), in a thread."""

    def __init__(self, listen: str, registry: CollectorRegistry, status: Callable[[], dict[str, Any]]) -> None:
        host, port = split_endpoint(listen)
        handler = _handler(registry, status)
        cls = _Server6 if ":" in host else ThreadingHTTPServer
        self.httpd = cls((host, port), handler)
        self.address = f"{listen.rpartition(':')[0]}:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="flowmed-http", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class _Server6(ThreadingHTTPServer):
    address_family = socket.AF_INET6


def _handler(registry: CollectorRegistry, status: Callable[[], dict[str, Any]]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                body, ctype = generate_latest(registry), CONTENT_TYPE_LATEST
            elif path == "/status":
                body, ctype = json.dumps(status(), default=str, indent=1).encode(), "application/json"
            elif path == "/":
                body, ctype = b"flowmed: /metrics /status\n", "text/plain"
            else:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # scrapes are not worth a log line
            pass

    return Handler


def fetch(listen: str, timeout: float = 5.0) -> dict[str, Any]:
    """GET ``/status`` from a running daemon whose metrics endpoint is ``listen`` (raises OSError if it is down)."""
    host, port = split_endpoint(listen)
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1" if host == "0.0.0.0" else "::1"
    netloc = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    with urllib.request.urlopen(f"http://{netloc}/status", timeout=timeout) as resp:
        return json.loads(resp.read())


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
             f"datagrams {status.get('datagrams', 0)}  flows {status.get('flows', 0)}", "", "listeners:"]
    for li in status.get("listeners", []):
        worker = f"worker {li['worker']:<3}" if li.get("worker") is not None else ""
        lines.append(f"  {li['address']:<24} {worker}rcvbuf {li.get('rcvbuf_bytes', 0):>10}"
                     f"  datagrams {li.get('datagrams', 0):>10}  kernel drops {li.get('kernel_drops', 0)}")
    lines += ["", "exporters:"]
    lines.append(f"  {'address':<40} {'versions':<9} {'last seen':>10} {'records':>12} {'errors':>8}"
                 f" {'seq lost':>9} {'tmpl':>5}")
    for e in status.get("exporters", []):
        versions = ",".join(str(v) for v in e["versions"])
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
