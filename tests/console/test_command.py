"""``flowmed console`` as a command: one command over the embedded store (even an empty one), clear refusals, a
password hash for console.users, a clean stop on SIGTERM."""

from __future__ import annotations

import signal
import socket
import subprocess
import urllib.request

from collector.console.auth import verify_password
from tests.console.dataset import Dataset, config_for
from tests.console.helpers import FLOWMED, ConsoleProcess


def test_hash_password_prints_a_hash_for_the_config():
    result = subprocess.run([str(FLOWMED), "console", "--hash-password"], input="sesame-open\nsesame-open\n",
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    encoded = result.stdout.strip().splitlines()[-1]
    assert encoded.startswith("scrypt$") and verify_password("sesame-open", encoded)
    short = subprocess.run([str(FLOWMED), "console", "--hash-password"], input="abc\nabc\n", capture_output=True,
                           text=True, timeout=60)
    assert short.returncode == 1 and "at least 8 characters" in short.stderr


def test_refuses_a_non_loopback_address_without_authentication(tmp_path):
    result = subprocess.run([str(FLOWMED), "console", "--set", f"store.path={tmp_path}", "--set",
                             "console.listen=0.0.0.0:9109"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "console.auth" in result.stderr and "not a loopback address" in result.stderr


def test_says_which_address_it_cannot_listen_on(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run([str(FLOWMED), "console", "--set", f"store.path={tmp_path}", "--set",
                                 f"console.listen=127.0.0.1:{port}"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr


def test_one_command_on_an_empty_store_serves_and_stops_cleanly(tmp_path):
    """What a fresh clone runs: the pages answer (saying the store is empty), and SIGTERM ends it with status 0."""
    config = config_for(tmp_path)
    proc = ConsoleProcess(Dataset(config, tmp_path, 0, 0, (0, 0)), tmp_path)
    try:
        proc.wait_ready()
        for page in ("/exporters", "/traffic", "/subscriber", "/compliance", "/reconciliation"):
            status, headers, body = proc.get(page)
            assert status == 200, page
            assert b"The store holds no data yet" in body
        status, headers, body = proc.get("/static/plotly.min.js")
        assert status == 200 and len(body) > 1_000_000 and headers["content-type"].startswith("text/javascript")
        with urllib.request.urlopen(proc.url + "/static/console.js", timeout=10) as r:
            assert b"Plotly.newPlot" in r.read()
    finally:
        proc.proc.send_signal(signal.SIGTERM)
        assert proc.proc.wait(30) == 0, proc.log.read_text()
