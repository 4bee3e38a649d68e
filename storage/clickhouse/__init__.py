"""The ClickHouse server: the output (spool first, then inserts), its DDL per server generation, the spool and
the query backend."""
