"""packaging/flowmed.service bounds memory and tasks consistently with the documented budgets (issue 14 item 8)."""

from __future__ import annotations

import configparser
import re
import subprocess
import sys
from pathlib import Path

import pytest

from collector.config import load
from collector.systemd import memory_budget, tasks_budget
from tests.fixtures.peers import require_tool

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "packaging" / "flowmed.service"
SIZES = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def _service() -> configparser.SectionProxy:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(UNIT.read_text())
    return parser["Service"]


def _bytes(value: str) -> int:
    match = re.fullmatch(r"(\d+)([KMGT]?)", value)
    assert match, value
    return int(match.group(1)) * SIZES.get(match.group(2), 1)


def test_memory_max_covers_the_budgets_of_the_default_configuration_with_a_bounded_margin() -> None:
    budget = memory_budget(load(None, []))
    assert set(budget) == {"templates", "pending", "sink_rows", "dedup", "bindings", "receive_buffers", "baseline",
                           "total"}
    limit = _bytes(_service()["MemoryMax"])
    assert budget["total"] <= limit <= 1.5 * budget["total"], (limit, budget)
    # the arithmetic written in the unit and the docs is the one computed here
    mib = {k: round(v / (1 << 20)) for k, v in budget.items()}
    text = UNIT.read_text() + (ROOT / "docs" / "hardening.md").read_text()
    for part in ("templates", "sink_rows", "dedup", "bindings", "total"):
        assert f"{mib[part]:,} MiB" in text, (part, mib[part])


def test_tasks_max_covers_one_process_on_a_large_host() -> None:
    limit = int(_service()["TasksMax"])
    assert tasks_budget(1, 64) <= limit < 4 * tasks_budget(1, 64)
    assert tasks_budget(2, 64) <= limit


@pytest.mark.external
def test_the_bounded_unit_verifies(tmp_path: Path) -> None:
    analyze = require_tool("systemd-analyze")
    flowmed = Path(sys.executable).with_name("flowmed")
    copy = tmp_path / "flowmed.service"
    copy.write_text(UNIT.read_text().replace("/opt/flowmed/bin/flowmed", str(flowmed)))
    result = subprocess.run([analyze, "verify", str(copy)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "flowmed.service" not in result.stderr, result.stderr
    assert "MemoryMax" in copy.read_text() and "TasksMax" in copy.read_text()


def test_the_sink_part_is_the_smaller_of_its_row_and_byte_bounds() -> None:
    row = memory_budget(load(None, ["store.max_pending_rows=1000"]))["sink_rows"]
    assert 200_000 <= row <= 300_000  # 1,000 flows rows of their numpy width
    assert memory_budget(load(None, ["store.max_pending_rows=1000", "store.max_pending_bytes=1000"]))[
        "sink_rows"] == 1000
    assert memory_budget(load(None, ["store.max_pending_bytes=1000000000"]))["sink_rows"] == 4_000_000 * row // 1000


def test_the_dedup_part_is_the_worst_case_of_its_tables_and_only_with_mediation() -> None:
    from mediation.dedup import worst_case_bytes

    budget = memory_budget(load(None, ["mediation.dedup_max_keys=1000000"]))
    assert budget["dedup"] == worst_case_bytes(1_000_000)
    off = memory_budget(load(None, ["mediation.enabled=false"]))
    assert off["dedup"] == off["bindings"] == 0
