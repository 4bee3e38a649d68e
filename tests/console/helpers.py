"""Helpers of the console tests: the console as a subprocess, an in-process ASGI request, SQL answers."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

from tests.console.dataset import Dataset
from tests.fixtures.peers import free_port

FLOWMED = Path(sys.executable).with_name("flowmed")


class ConsoleProcess:
    """``flowmed console --set store.path=... --set console.listen=127.0.0.1:PORT`` with its log in ``tmp``."""

    def __init__(self, dataset: Dataset, tmp: Path, *sets: str, cwd: Path | None = None,
                 store: str | None = None) -> None:
        self.port = free_port(socket.SOCK_STREAM)
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp / "console.log"
        args = [str(FLOWMED), "console", "--set", f"store.path={store or dataset.config.store.path}",
                "--set", f"console.listen=127.0.0.1:{self.port}"]
        for s in sets:
            args += ["--set", s]
        self.proc = subprocess.Popen(args, cwd=cwd or tmp, stdout=subprocess.DEVNULL, stderr=open(self.log, "wb"),
                                     env={k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"})

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"flowmed console exited {self.proc.returncode}: {self.log.read_text()}")
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                time.sleep(0.2)
        raise AssertionError(f"flowmed console not ready: {self.log.read_text()}")

    def get(self, path: str) -> tuple[int, dict[str, str], bytes]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=60) as r:
                return r.status, dict(r.headers), r.read()
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers), exc.read()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def asgi_get(app, url: str, *, headers: dict[str, str] | None = None, client: tuple[str, int] = ("127.0.0.1", 40000),
             host: str = "127.0.0.1:9109") -> tuple[int, dict[str, str], bytes]:
    """GET ``url`` from an ASGI ``app`` in-process: (status, headers, body)."""
    parts = urlsplit(url)
    raw = [(b"host", host.encode())] + [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
             "path": parts.path, "raw_path": parts.path.encode(), "query_string": parts.query.encode(),
             "root_path": "", "headers": raw, "client": client, "server": ("127.0.0.1", 9109)}
    messages: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        messages.append(message)

    asyncio.run(app(scope, receive, send))
    start = next(m for m in messages if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body")
    return start["status"], {k.decode(): v.decode() for k, v in start["headers"]}, body
