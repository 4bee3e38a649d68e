"""``flowmed rate --follow`` as a service: runs on its schedule, serves Prometheus metrics, stops on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from collector.config import load
from mediation.tables import USAGE
from storage.store import ParquetStore
from tests.fixtures.peers import free_port, require_tool
from tests.rating.helpers import HOME_PLAN
from tests.rating.storeutil import usage_batch

ROOT = Path(__file__).resolve().parents[2]


def _metric(text: str, name: str) -> float:
    """The value of the sample line that starts with ``name`` (full name with labels)."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in metrics:\n{text}")


@pytest.mark.external
def test_follow_rates_on_schedule_serves_metrics_and_stops_on_sigterm(tmp_path: Path) -> None:
    promtool = require_tool("promtool")
    (tmp_path / "plans.toml").write_text(HOME_PLAN)
    (tmp_path / "assignments.csv").write_text("subscriber_id,plan_id,from\nalice,home,2026-01-01T00:00:00+01:00\n")
    cfg = tmp_path / "collector.toml"
    cfg.write_text(f'[store]\npath = "{tmp_path}"\n[rating]\nlookback_cycles = 240\n')
    store = ParquetStore.for_config(load(cfg), housekeeper=False)
    store.write(USAGE, usage_batch([
        ("alice", "2026-10-05T10:00:00+02:00", "down", "default", 2_500_000_000),
        ("alice", "2026-10-05T10:00:00+02:00", "up", "default", 1_000_000_000),
        ("ghost", "2026-10-05T10:00:00+02:00", "down", "default", 7_000),  # no assignment: unrated
    ]), 1)
    store.close()
    port = free_port(__import__("socket").SOCK_STREAM)
    proc = subprocess.Popen(
        [sys.executable, "-m", "collector.cli", "rate", "--follow", "--config", str(cfg),
         "--set", f"rating.metrics_listen=127.0.0.1:{port}", "--set", "rating.schedule_interval_s=0.2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        deadline = time.monotonic() + 120
        text = ""
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
                    text = resp.read().decode()
                if _metric(text, 'flowmed_rating_runs_total{kind="rate",outcome="ok"}') >= 2:
                    break
            except (OSError, AssertionError):
                assert proc.poll() is None, proc.communicate()[1].decode()
            time.sleep(0.2)
        ok_runs = _metric(text, 'flowmed_rating_runs_total{kind="rate",outcome="ok"}')
        assert ok_runs >= 2, text
        # the first run wrote both records, every later one found them unchanged
        assert _metric(text, 'flowmed_rating_records_total{change="new"}') == 2
        assert _metric(text, 'flowmed_rating_records_total{change="unchanged"}') == 2 * (ok_runs - 1)
        assert _metric(text, 'flowmed_rating_runs_total{kind="rate",outcome="failed"}') == 0
        assert _metric(text, "flowmed_rating_unrated_bytes_total") == 7_000 * ok_runs
        assert _metric(text, "flowmed_rating_last_success_timestamp_seconds") > time.time() - 120
        # usage of October 2026 is long closed: the closed-until point is about now
        assert _metric(text, "flowmed_rating_closed_until_timestamp_seconds") > time.time() - 3600
        check = subprocess.run([promtool, "check", "metrics"], input=text.encode(), capture_output=True)
        assert check.returncode == 0, check.stdout.decode() + check.stderr.decode()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err.decode()
        assert "new 2" in out.decode()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_metrics_listen_is_validated(tmp_path: Path) -> None:
    from collector.configtree import ConfigError

    cfg = tmp_path / "collector.toml"
    cfg.write_text('[rating]\nmetrics_listen = "nowhere"\n')
    with pytest.raises(ConfigError, match="rating.metrics_listen"):
        load(cfg)


def test_follow_on_a_taken_metrics_address_says_so_once(tmp_path: Path) -> None:
    import socket

    from click.testing import CliRunner

    from collector.cli import main

    (tmp_path / "plans.toml").write_text(HOME_PLAN)
    (tmp_path / "assignments.csv").write_text("subscriber_id,plan_id,from\n")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        r = CliRunner().invoke(main, ["rate", "--follow", "--set", f"store.path={tmp_path}",
                                      "--set", f"rating.metrics_listen={address}"])
    assert r.exit_code == 1
    assert f"cannot listen for metrics on {address}: Address already in use" in r.output
    assert r.output.count(address) == 1, r.output  # one message, not the same cause wrapped twice
