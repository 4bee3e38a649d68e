"""Helpers for the collector tests: a flowmed daemon in a subprocess, watched through NOTIFY_SOCKET, and v9 traffic."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from bench.exporter import V9Exporter, flow_template, random_flows
from tests.fixtures.peers import free_port

START_TIMEOUT_S = 30.0


class Daemon:
    """``python -m collector.cli run`` on a free loopback port with its store in ``tmp``.

    ``NOTIFY_SOCKET`` points at an abstract unix socket this object reads, so tests see what systemd would see.
    """

    def __init__(self, tmp: Path, *sets: str, config: Path | None = None, workers: int = 1,
                 flush_interval_s: float = 600.0, env: dict[str, str] | None = None,
                 command: list[str] | None = None) -> None:
        self.tmp = tmp
        tmp.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.metrics_port = free_port(socket.SOCK_STREAM)
        self.store = tmp / "data"
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        name = f"flowmed-test-{os.getpid()}-{os.urandom(4).hex()}"
        self.notify.bind("\0" + name)
        self.notify.settimeout(0.2)
        self.messages: list[str] = []
        args = command or [sys.executable, "-m", "collector.cli", "run"]
        if config is not None:
            args += ["--config", str(config)]
        for s in (f'listen.udp=["127.0.0.1:{self.port}"]', "listen.sflow=[]", f"store.path={self.store}",
                  f"metrics.listen=127.0.0.1:{self.metrics_port}", f"store.flush_interval_s={flush_interval_s}",
                  f"service.workers={workers}", "service.shutdown_timeout_s=20", *sets):
            args += ["--set", s]
        self.log = tmp / "flowmed.log"
        env = dict(os.environ, NOTIFY_SOCKET="@" + name, **(env or {}))
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        self.proc = subprocess.Popen(args, cwd=tmp, env=env, stderr=open(self.log, "wb"))

    def wait_message(self, wanted: str, timeout: float = START_TIMEOUT_S) -> str:
        """Wait for a notify message containing the field ``wanted`` (e.g. ``READY=1``)."""
        deadline = time.monotonic() + timeout
        for msg in self.messages:
            if wanted in msg.splitlines():
                return msg
        while time.monotonic() < deadline:
            try:
                msg = self.notify.recv(4096).decode()
            except TimeoutError:
                if self.proc.poll() is not None:
                    raise AssertionError(f"flowmed exited with {self.proc.returncode}:\n{self.log_text()}") from None
                continue
            self.messages.append(msg)
            if wanted in msg.splitlines():
                return msg
        raise AssertionError(f"no {wanted} within {timeout}s; got {self.messages}\n{self.log_text()}")

    def get(self, path: str) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}{path}", timeout=10) as r:
            return r.read().decode()

    def send_signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        rc = self.proc.wait(timeout)
        self._drain_notify()
        return rc

    def _drain_notify(self) -> None:
        """Keep every message still queued (the socket is closed afterwards)."""
        if self.notify.fileno() < 0:
            return
        self.notify.setblocking(False)
        while True:
            try:
                self.messages.append(self.notify.recv(4096).decode())
            except BlockingIOError:
                break
        self.notify.close()

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._drain_notify()


class V9Traffic:
    """An exporter sending NetFlow v9 (template refreshed every 10 datagrams, 30 records each) from one socket."""

    def __init__(self, seed: int = 0, domain: int = 1) -> None:
        self.now = int(time.time() * 1000)
        self.exporter = V9Exporter(domain=domain, boot_ms=self.now - 3_600_000)
        self.template = flow_template(256)
        self.seed = seed
        self.sent_datagrams = 0
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))

    def datagrams(self, n: int) -> list[bytes]:
        flows = random_flows(30 * n, export_ms=self.now, seed=self.seed + self.sent_datagrams)
        out = []
        for i in range(n):
            sets = [self.exporter.templates(self.template)] if (self.sent_datagrams + i) % 10 == 0 else []
            out.append(self.exporter.datagram(*sets, self.exporter.flows(self.template, flows[30 * i: 30 * i + 30],
                                                                         self.now), export_ms=self.now))
        self.sent_datagrams += n
        return out

    def send(self, port: int, n: int) -> int:
        """Send ``n`` datagrams (30 flows each) to 127.0.0.1:port; returns the number of flows sent."""
        for d in self.datagrams(n):
            self.sock.sendto(d, ("127.0.0.1", port))
        return 30 * n

    def close(self) -> None:
        self.sock.close()


def stored_flows(store: Path) -> int:
    """Rows of the ``flows`` table in the embedded store, counted with ``flowmed query``'s engine (chDB)."""
    from storage.query import QueryEngine

    with QueryEngine.for_store(store) as engine:
        return int(engine.query("SELECT count() AS n FROM flows").column("n")[0].as_py())
