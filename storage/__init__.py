"""Storage: tables to disk, ClickHouse and SQL, the floor above :mod:`decoders` (see docs/architecture.md).

Its settings (:mod:`storage.settings`), the one factory of outputs and sinks (:mod:`storage.factory`), the output
protocol and batch ids (:mod:`storage.outputs`), the batching sink and its handoff journal, durable writes
(:mod:`storage.durable`), the embedded Parquet store and its layout, the query engine with its SQL guard and errors,
and :mod:`storage.clickhouse` (output, client, columns, DDL, schema check, spool, queries, types). It imports
nothing of mediation, rating or collector (``tests/storage/test_floor.py``).
"""
