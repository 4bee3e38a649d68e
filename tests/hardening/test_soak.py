"""A 50-second soak in the suite: `python -m bench.soak`'s checks (exact totals for flows, RADIUS and IPDR; flat
memory) against a real `flowmed run`, the simulated CMTS and the flow and RADIUS senders, all on loopback. Hours by
hand: docs/hardening.md."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.soak import soak


@pytest.mark.slow
def test_short_soak(tmp_path: Path) -> None:
    report = soak(50.0, 150, tmp_path / "data", modems=30, cmts_interval_s=5.0, radius_rate=15.0, warmup_s=15.0,
                  log_path=tmp_path / "flowmed.log")
    log = (tmp_path / "flowmed.log").read_text()[-3000:]
    assert report["ok"], json.dumps(report, indent=1, default=str) + "\n" + log
    assert report["flows"]["sent"] == 50 * 150 // 3 * 3 * 30  # the senders kept the rate
    assert report["radius"]["sent"] > 400 and report["ipdr"]["octets"] > 0
