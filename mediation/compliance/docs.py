"""The SQL that ``docs/compliance.md`` shows, generated from the code for fixed example parameters (a test checks
the document against it, so the documented queries are always the ones flowmed runs)."""

from __future__ import annotations

import re

EXAMPLE_AT_MS = 1_772_460_202_000  # 2026-03-02T14:03:22Z
EXAMPLE_DAY = (1_772_409_600_000, 1_772_496_000_000)  # 2026-03-02


def layout(sql: str) -> str:
    """One clause per line, for reading."""
    for word in (" FROM (", " WHERE ", " CROSS JOIN ", " ANY LEFT JOIN ", " GROUP BY ", " HAVING ", " ORDER BY "):
        sql = sql.replace(word, "\n  " + word.strip() + (" " if not word.endswith("(") else ""))
    return re.sub(r"\n  FROM \(\s*", "\n  FROM (", sql)


def example_queries() -> dict[str, str]:
    """``{"address": ..., "subscriber": ..., "report": ...}`` as run on a ClickHouse server."""
    # the tables the queries read, registered
    import mediation.compliance.tables  # noqa: F401
    import mediation.tables  # noqa: F401
    from mediation.compliance.report import ReportQuery, report_sql
    from mediation.compliance.trace import AddressQuery, SubscriberQuery
    from storage.clickhouse.query import ClickHouseBackend
    from storage.query import QueryEngine
    from storage.settings import ClickHouseConfig

    # the server's FROM clauses; the backend connects only when it runs a query, which this never does
    e = QueryEngine(ClickHouseBackend(ClickHouseConfig()))
    return {
        "address": layout(AddressQuery("203.0.113.7", EXAMPLE_AT_MS, 40112).sql(e.source)),
        "subscriber": layout(SubscriberQuery("alice", *EXAMPLE_DAY).sql(e.source)),
        "report": layout(report_sql(ReportQuery(*EXAMPLE_DAY, address="203.0.113.7", port=40112), e.source)),
    }


if __name__ == "__main__":
    for name, sql in example_queries().items():
        print(f"-- {name}\n{sql}\n")
