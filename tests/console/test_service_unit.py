"""packaging/flowmed-console.service: systemd-analyze verify accepts it, its exposure is low, and it reads the
collector's store as the collector's user without being able to write it."""

from __future__ import annotations

import configparser
import re
import subprocess
from pathlib import Path

import pytest

from tests.fixtures.cli import flowmed_command
from tests.fixtures.peers import require_tool

UNIT = Path(__file__).resolve().parents[2] / "packaging" / "flowmed-console.service"


def _copy(tmp_path: Path) -> Path:
    """The unit as shipped, pointing at this Python's flowmed instead of the production /opt/flowmed."""
    flowmed = flowmed_command()
    assert Path(flowmed).exists()
    copy = tmp_path / "flowmed-console.service"
    copy.write_text(UNIT.read_text().replace("/opt/flowmed/bin/flowmed", flowmed))
    return copy


@pytest.mark.external
def test_console_unit_verifies(tmp_path: Path) -> None:
    analyze = require_tool("systemd-analyze")
    result = subprocess.run([analyze, "verify", str(_copy(tmp_path))], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "flowmed-console.service" not in result.stderr, result.stderr


@pytest.mark.external
def test_console_unit_exposure_is_low(tmp_path: Path) -> None:
    analyze = require_tool("systemd-analyze")
    result = subprocess.run([analyze, "security", "--offline=yes", str(_copy(tmp_path))], capture_output=True,
                            text=True, timeout=60)
    match = re.search(r"Overall exposure level for flowmed-console.service: ([0-9.]+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) < 2.0, result.stdout


def test_console_unit_runs_the_console_read_only_as_the_collectors_user() -> None:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(UNIT.read_text())
    service = parser["Service"]
    assert service["ExecStart"].startswith("/opt/flowmed/bin/flowmed console --config /etc/flowmed/collector.toml")
    assert service["DynamicUser"] == "yes" and service["User"] == "flowmed"
    assert service["ReadOnlyPaths"] == "/var/lib/flowmed" and service["ProtectSystem"] == "strict"
    assert service["CapabilityBoundingSet"] == "" and service["NoNewPrivileges"] == "yes"
    assert set(service["RestrictAddressFamilies"].split()) == {"AF_INET", "AF_INET6", "AF_UNIX"}
