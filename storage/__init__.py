"""Storage: tables to disk, ClickHouse and SQL (see docs/architecture.md).

The output protocol and the one factory of outputs, the batching sink and its handoff journal, batch ids, the embedded
Parquet store, the query engine with its SQL guard, and :mod:`storage.clickhouse` (output, DDL, spool, queries).
"""
