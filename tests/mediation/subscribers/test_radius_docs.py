"""The worked RADIUS example of docs/radius.md, run as written: its collector.toml, ``flowmed run``, then its
radclient and ``flowmed`` commands exactly as they stand in the document, line by line in a shell."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mediation.subscribers.bindings import Bindings
from mediation.tables import OPEN_END_MS
from tests.collector.daemon import Daemon
from tests.fixtures.peers import free_port, require_tool

DOC = Path(__file__).resolve().parents[3] / "docs" / "radius.md"


def block(marker: str) -> str:
    """The first fenced code block after ``<!-- marker -->`` in docs/radius.md."""
    text = DOC.read_text()
    found = re.search(rf"<!-- {re.escape(marker)} -->\s*```[a-z]*\n(.*?)```", text, re.S)
    assert found, f"no block marked {marker} in {DOC}"
    return found.group(1)


def port_1813_free() -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.bind(("127.0.0.1", 1813))
        except OSError:
            return False
    return True


def shell(line: str, cwd: Path) -> subprocess.CompletedProcess:
    # `flowmed` is the one installed beside this interpreter, `radclient` Debian's
    env = dict(os.environ, PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    env.pop("RADIUS_SECRET", None)  # the commands carry the secret themselves
    return subprocess.run(["bash", "-c", line], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.external
@pytest.mark.slow
def test_worked_example_runs_as_written(tmp_path):
    require_tool("radclient")
    config, start, stop = block("radius-example:config"), block("radius-example:start"), block("radius-example:stop")
    if not port_1813_free():  # (another RADIUS server on this machine): the same commands on another port
        port = str(free_port())
        config, start, stop = (x.replace("127.0.0.1:1813", f"127.0.0.1:{port}") for x in (config, start, stop))
    (tmp_path / "collector.toml").write_text(config)
    # the daemon as the example starts it, in the example's directory (its store is ./data); flows and metrics on
    # free ports, so that the test does not collide with others
    daemon = Daemon(tmp_path, config=tmp_path / "collector.toml", env={"RADIUS_SECRET": "testing123"},
                    flush_interval_s=1.0)
    try:
        daemon.wait_message("READY=1")
        out = [shell(line, tmp_path) for line in start.splitlines() if line.strip()]
        assert [p.returncode for p in out] == [0, 0, 0], [p.stdout + p.stderr for p in out]
        assert "Received Accounting-Response" in out[0].stdout
        assert ": alice (binding " in out[1].stdout and ": alice (binding " in out[2].stdout, out[1:]
        out = [shell(line, tmp_path) for line in stop.splitlines() if line.strip()]
        assert [p.returncode for p in out] == [0, 0, 1, 0], [p.stdout + p.stderr for p in out]
        assert all("Received Accounting-Response" in p.stdout for p in out[:2])
        assert "no binding" in out[2].stdout
        listed = [line.split("\t") for line in out[3].stdout.splitlines()[1:]]
        assert sorted(r[2] for r in listed) == ["100.64.0.7", "2001:db8:7::/56"] and all(r[4] != "open" for r in listed)
        query = next(line for line in DOC.read_text().splitlines() if line.startswith("flowmed query "))
        deadline = time.monotonic() + 60
        while True:  # the usage reaches the store within store.flush_interval_s
            answer = shell(query, tmp_path)
            if "1300000" in answer.stdout or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert answer.returncode == 0, answer.stderr
        assert "1300000" in answer.stdout and "9800000" in answer.stdout, answer.stdout
    finally:
        assert daemon.stop() == 0, daemon.log_text()
    b = Bindings(tmp_path / "data" / "state" / "bindings.sqlite")
    rows = b.conn.execute("SELECT subscriber_id, source, valid_to FROM bindings").fetchall()
    assert len(rows) == 2 and all(r[:2] == ("alice", "radius") and r[2] < OPEN_END_MS for r in rows)
