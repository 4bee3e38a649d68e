"""packaging/flowmed.service: systemd-analyze verify accepts it, and it has the hardening issue 7 asks for."""

from __future__ import annotations

import configparser
import re
import subprocess
from pathlib import Path

import pytest

from tests.fixtures.cli import flowmed_command
from tests.fixtures.peers import require_tool

UNIT = Path(__file__).resolve().parents[2] / "packaging" / "flowmed.service"


def _unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(UNIT.read_text())
    return parser


@pytest.mark.external
def test_systemd_analyze_verify(tmp_path: Path) -> None:
    """Verified as shipped, except ExecStart's binary: the unit names /opt/flowmed/bin/flowmed (the production
    virtualenv), which does not exist on a test machine, so the copy verified points at this Python's flowmed."""
    analyze = require_tool("systemd-analyze")
    flowmed = flowmed_command()
    assert Path(flowmed).exists()
    text = UNIT.read_text()
    assert "ExecStart=/opt/flowmed/bin/flowmed run --config /etc/flowmed/collector.toml " \
           "--set store.path=/var/lib/flowmed" in text
    copy = tmp_path / "flowmed.service"
    copy.write_text(text.replace("/opt/flowmed/bin/flowmed", flowmed))
    result = subprocess.run([analyze, "verify", str(copy)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "flowmed.service" not in result.stderr, result.stderr  # no warning about our unit either


@pytest.mark.external
def test_systemd_security_exposure_is_low(tmp_path: Path) -> None:
    """``systemd-analyze security`` rates the unit's exposure from 0 (locked down) to 10; flowmed stays below 2."""
    analyze = require_tool("systemd-analyze")
    copy = tmp_path / "flowmed.service"
    flowmed = flowmed_command()
    copy.write_text(UNIT.read_text().replace("/opt/flowmed/bin/flowmed", flowmed))
    result = subprocess.run([analyze, "security", "--offline=yes", str(copy)], capture_output=True, text=True,
                            timeout=60)
    match = re.search(r"Overall exposure level for flowmed.service: ([0-9.]+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) < 2.0, result.stdout


def test_unit_is_notify_hardened_and_reloadable() -> None:
    service = _unit()["Service"]
    assert service["Type"] == "notify"
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert service["DynamicUser"] == "yes" and service["StateDirectory"] == "flowmed"
    assert service["ProtectSystem"] == "strict" and service["NoNewPrivileges"] == "yes"
    assert service["CapabilityBoundingSet"] == ""  # ports >= 1024 need no capability at all
    assert set(service["RestrictAddressFamilies"].split()) == {"AF_INET", "AF_INET6", "AF_UNIX"}
    assert int(service["WatchdogSec"]) > 0
    # systemd must wait longer than flowmed's own bounded flush (service.shutdown_timeout_s, 30 s by default)
    assert int(service["TimeoutStopSec"]) > 30


@pytest.mark.external
def test_rating_unit_verifies_and_shares_the_collectors_user(tmp_path: Path) -> None:
    """packaging/flowmed-rating.service (``flowmed rate --follow``): verified like the collector's unit; it runs as
    the collector's dynamic user, so both can write the one state directory."""
    analyze = require_tool("systemd-analyze")
    unit = UNIT.with_name("flowmed-rating.service")
    flowmed = flowmed_command()
    copy = tmp_path / "flowmed-rating.service"
    copy.write_text(unit.read_text().replace("/opt/flowmed/bin/flowmed", flowmed))
    result = subprocess.run([analyze, "verify", str(copy)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "flowmed-rating.service" not in result.stderr, result.stderr
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(unit.read_text())
    service = parser["Service"]
    assert service["ExecStart"].split()[1:3] == ["rate", "--follow"]
    assert "rating.metrics_listen=" in service["ExecStart"]
    assert service["DynamicUser"] == "yes" and service["User"] == "flowmed" and service["StateDirectory"] == "flowmed"
