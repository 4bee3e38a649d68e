"""A real Prometheus (Debian's package) scrapes a running flowmed and can query its metrics."""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from tests.collector.daemon import Daemon, V9Traffic
from tests.fixtures.peers import free_port, require_tool


def _api(port: int, path: str, **params: str) -> dict:
    url = f"http://127.0.0.1:{port}/api/v1/{path}"
    if params:
        url += "?" + urllib.parse.urlencode(params)
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


@pytest.mark.slow
@pytest.mark.external
def test_prometheus_scrapes_flowmed(tmp_path: Path) -> None:
    prometheus = require_tool("prometheus")
    d = Daemon(tmp_path / "flowmed")
    traffic = V9Traffic()
    prom_port = free_port(socket.SOCK_STREAM)
    (tmp_path / "prometheus.yml").write_text(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
        "scrape_configs:\n  - job_name: flowmed\n    static_configs:\n"
        f"      - targets: ['127.0.0.1:{d.metrics_port}']\n")
    prom = subprocess.Popen([prometheus, f"--config.file={tmp_path / 'prometheus.yml'}",
                             f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{prom_port}"],
                            stdout=subprocess.DEVNULL, stderr=open(tmp_path / "prometheus.log", "wb"))
    try:
        d.wait_message("READY=1")
        sent = traffic.send(d.port, 10)
        deadline = time.monotonic() + 60
        value = None
        while time.monotonic() < deadline:
            try:
                result = _api(prom_port, "query", query='sum(flowmed_records_received_total{version="9"})')["data"][
                    "result"]
            except OSError:
                result = []
            if result and float(result[0]["value"][1]) == sent:
                value = float(result[0]["value"][1])
                break
            time.sleep(0.5)
        assert value == sent, (tmp_path / "prometheus.log").read_text()[-2000:]
        (target,) = _api(prom_port, "targets")["data"]["activeTargets"]
        assert target["health"] == "up" and not target["lastError"]
        assert _api(prom_port, "query", query="flowmed_build_info")["data"]["result"]
        assert d.stop() == 0
    finally:
        traffic.close()
        prom.terminate()
        prom.wait(30)
        d.kill()
