"""``flowmed run`` with [ipdr] enabled collects from ``python -m bench.cmts`` (both real processes, loopback TCP),
through a dropped connection and a CMTS reboot: what the simulated CMTS advanced is in the store after SIGTERM."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time

import pytest

from storage.query import QueryEngine
from tests.fixtures.cli import flowmed_command
from tests.fixtures.peers import free_port

pytestmark = pytest.mark.slow  # two real processes and six simulated intervals: ~15 s


def test_flowmed_run_collects_from_the_simulated_cmts(tmp_path):
    port = free_port(socket.SOCK_STREAM)
    sim = subprocess.Popen([sys.executable, "-m", "bench.cmts", "--listen", f"127.0.0.1:{port}", "--modems", "12",
                            "--interval", "1.5", "--intervals", "6", "--reboot-every", "4", "--disconnect-every",
                            "3"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, cwd=tmp_path)
    time.sleep(0.5)
    run = subprocess.Popen([flowmed_command(), "run", "--set", f"store.path={tmp_path / 'data'}",
                            "--set", f'listen.udp=["127.0.0.1:{free_port()}"]', "--set", "listen.sflow=[]",
                            "--set", "metrics.enabled=false",
                            "--set", "ipdr.enabled=true", "--set", "ipdr.preexisting=count",
                            "--set", f'ipdr.exporters=[{{address="127.0.0.1:{port}", name="sim"}}]',
                            "--set", "ipdr.reconnect_max_s=0.5"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        out, err = sim.communicate(timeout=60)
        assert sim.returncode == 0, err
        assert "CMTS rebooted" in err and "collector connections dropped" in err
    finally:
        run.send_signal(signal.SIGTERM)
        run_err = run.communicate(timeout=60)[1]
    assert run.returncode == 0, run_err
    advanced = json.loads(out.strip().splitlines()[-1])["advanced"]
    expected = {(k.split("/")[0], int(k.split("/")[1])): v[0] for k, v in advanced.items()}
    engine = QueryEngine.for_store(tmp_path / "data")
    rows = engine.query("SELECT cm_mac, service_direction AS d, sum(delta_octets) AS o FROM ipdr_records "
                        "GROUP BY cm_mac, d").to_pylist()
    assert {(r["cm_mac"].replace(":", ""), r["d"]): r["o"] for r in rows} == expected
    usage = engine.query("SELECT sum(bytes) AS b FROM usage WHERE source = 'ipdr'").to_pylist()
    assert usage[0]["b"] == sum(expected.values())
