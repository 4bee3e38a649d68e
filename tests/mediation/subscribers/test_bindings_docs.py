"""The static bindings file format as docs/mediation.md shows it: its CSV and TOML examples load as described."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from mediation.subscribers.bindings import Bindings
from mediation.subscribers.static import StaticBindings, parse_static_file
from mediation.tables import OPEN_END_MS
from tests.mediation.mediation_helpers import s16

DOC = Path(__file__).resolve().parents[3] / "docs" / "mediation.md"
JAN_2026, JAN_2027 = 1_767_225_600_000, 1_798_761_600_000


def block(marker: str) -> str:
    found = re.search(rf"<!-- {re.escape(marker)} -->\s*```[a-z]*\n(.*?)```", DOC.read_text(), re.S)
    assert found, f"no block marked {marker} in {DOC}"
    return found.group(1)


def test_csv_example(tmp_path):
    path = tmp_path / "subscribers.csv"
    path.write_text(block("static-example:csv"))
    assert [(e.subscriber_id, e.network, e.valid_from, e.valid_to) for e in parse_static_file(path)] == [
        ("alice", "192.0.2.7", 0, OPEN_END_MS), ("bob", "2001:db8:100::/56", JAN_2026, OPEN_END_MS),
        ("carol", "198.51.100.0/28", JAN_2026, JAN_2027)]


def test_toml_example_loads_and_answers(tmp_path):
    path = tmp_path / "subscribers.toml"
    path.write_text(block("static-example:toml"))
    assert [(e.subscriber_id, e.network, e.valid_from, e.valid_to) for e in parse_static_file(path)] == [
        ("alice", "192.0.2.7", JAN_2026, JAN_2027), ("alice", "2001:db8:200::/56", JAN_2026, JAN_2027),
        ("dave", "203.0.113.0/24", 0, OPEN_END_MS)]
    b = Bindings()
    assert StaticBindings(path, b).reload(JAN_2026 + 1000) == (3, 0)
    sub, _ = b.lookup(s16(["2001:db8:200:ff::1", "203.0.113.9", "192.0.2.7"]),
                      np.array([JAN_2026, JAN_2026, JAN_2027], dtype=np.int64))
    assert [b.subscriber_names[i] if i >= 0 else "" for i in sub] == ["alice", "dave", ""]
