"""The console's one door to the data: the query engine of ``flowmed query`` and the rating job's plans.

This is the only module of the console that imports the query engine (``QueryEngine`` moves with the storage code
one day: then only this import changes). Everything the pages read goes through :class:`ConsoleStore`: a source of
a table over a time range (only that range's partitions are read) and one templated query at a time.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

import pyarrow as pa

import collector.tables  # noqa: F401  (the pages read every table: the composition root registers them)
from collector.config import Config
from storage.errors import QueryError
from storage.query import ChdbBackend, QueryEngine

if TYPE_CHECKING:  # imported when a page first needs it
    from rating.job import RatingJob

StoreError = QueryError
"""A query failed (the backend's message); pages show it instead of a chart."""


class ConsoleStore:
    """The engine the console reads through (embedded store or ClickHouse server), read-only."""

    def __init__(self, engine: QueryEngine, config: Config) -> None:
        self.engine = engine
        self.config = config
        self._job: RatingJob | None = None
        self._job_lock = threading.Lock()

    @classmethod
    def open(cls, config: Config) -> ConsoleStore:
        """The engine for ``console.target``; on a server every query runs with ``readonly = 1``."""
        engine = QueryEngine.for_config(config, config.console.target, server_readonly=1)
        return cls(engine, config)

    def seal(self) -> bool:
        """Make the embedded chDB session read-only for good (the console's process runs nothing else)."""
        if not isinstance(self.engine.backend, ChdbBackend):
            return False
        from storage.sql_guard import seal_chdb_session

        return seal_chdb_session()

    @property
    def target(self) -> str:
        return self.engine.target

    def describe(self) -> str:
        """Where the data comes from, for the page footer."""
        backend = self.engine.backend
        if isinstance(backend, ChdbBackend):
            return f"embedded store {self.config.store.path}"  # as configured (the resolved path may be long)
        return f"ClickHouse server ({self.config.output.clickhouse.database})"

    def holds_data(self) -> bool:
        """False for an embedded store without a single data file (most often a wrong ``store.path``)."""
        backend = self.engine.backend
        return backend.holds_data() if isinstance(backend, ChdbBackend) else True

    def source(self, table: str, t0_ms: int, t1_ms: int) -> str:
        """FROM-clause subquery of ``table``'s rows in ``[t0_ms, t1_ms)``, reading only those partitions."""
        return self.engine.source(table, t0_ms, t1_ms)

    def query(self, sql: str) -> pa.Table:
        """Run one statement the console templated (never text a user typed); addresses come back as text."""
        return self.engine.query(sql)

    def rating_job(self) -> RatingJob:
        """The rating job over this engine (plans, assignments, ``explain``), never writing anything."""
        with self._job_lock:
            if self._job is None:
                from rating.job import RatingJob

                self._job = RatingJob(self.config, engine=self.engine, outputs=[])
            return self._job

    def close(self) -> None:
        self.engine.close()
