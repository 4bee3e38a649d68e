"""docs/compliance.md shows exactly the SQL flowmed runs (regenerate the blocks with
``python -m mediation.compliance.docs`` when the queries change)."""

from __future__ import annotations

from pathlib import Path

from mediation.compliance.docs import example_queries

DOC = Path(__file__).resolve().parents[3] / "docs" / "compliance.md"


def test_documented_queries_are_the_ones_run():
    text = DOC.read_text()
    for name, sql in example_queries().items():
        assert f"```sql\n{sql}\n```" in text, f"docs/compliance.md: the {name} query is stale"
