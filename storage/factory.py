"""The one factory of outputs and sinks: what the daemon, the rating job and the CLI write through.

Every writer builds its outputs here, so they agree on what the configuration asks for: the Parquet store (only one
process per store is its housekeeper: recovery, compaction, retention), the ClickHouse server with a spool
directory of its own per writing process (a spool belongs to one process), the same retention for both, and a
handoff journal when both outputs are on (a crash between the two is repaired at the next start,
:mod:`storage.handoff`). What to count goes in as callbacks (:class:`SinkHooks`); storage knows no metrics.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from decoders.schema import Table
from storage.clickhouse.output import ClickHouseOutput, InsertCallback
from storage.clickhouse.output import ErrorCallback as InsertErrorCallback
from storage.handoff import HandoffJournal
from storage.outputs import BatchIdGenerator, Output
from storage.settings import StorageSettings
from storage.sink import ErrorCallback, ReplayCallback, Sink, WriteCallback
from storage.store import RETENTION_SETTINGS, ParquetStore


@dataclass(frozen=True)
class SinkHooks:
    """What the process wants to hear from the sink and its outputs (its metrics); every hook is optional."""

    on_write: WriteCallback | None = None
    """A batch written by an output: (output, table, rows, seconds)."""
    on_error: ErrorCallback | None = None
    """A failed write attempt: (output, table, exception)."""
    on_replay: ReplayCallback | None = None
    """Rows of the handoff journal an output lacked at start: (output, table, rows)."""
    on_insert: InsertCallback | None = None
    """A ClickHouse insert: (table, rows, seconds)."""
    on_insert_error: InsertErrorCallback | None = None
    """A ClickHouse failure: (stage, error code)."""


def retention_days(config: StorageSettings) -> dict[str, int]:
    """Days kept per table as the configuration says (tables registered with :func:`storage.store.retention_setting`;
    ``flows`` from ``store.flows_retention_days``)."""
    return {name: int(get(config)) for name, get in RETENTION_SETTINGS.items()}


def _subdir(path: Path, process: str | None) -> Path:
    return path if process is None else path / process


def handoff_journal(config: StorageSettings, process: str | None = None) -> HandoffJournal | None:
    """The handoff journal of one writing process when both outputs are on (``<store.path>/handoff[/process]``)."""
    if not (config.store.enabled and config.output.clickhouse.enabled):
        return None
    return HandoffJournal(_subdir(config.data_path("handoff"), process), fsync=config.spool.fsync == "always")


def build_outputs(config: StorageSettings, *, process: str | None = None, housekeeper: bool = True,
                  tables: Iterable[Table] | None = None, journal: HandoffJournal | None = None,
                  hooks: SinkHooks = SinkHooks()) -> list[Output]:
    """The outputs the configuration enables: the Parquet store and/or the ClickHouse server.

    ``process`` names the writing process when several write at once (``worker3``, ``rating``): the ClickHouse
    spool is ``<spool.path>/<process>``. Only the ``housekeeper`` recovers, compacts and expires the store. ``tables``
    are those the ClickHouse output creates and checks (default: every registered table).
    """
    days = retention_days(config)
    outputs: list[Output] = []
    if config.store.enabled:
        outputs.append(ParquetStore.for_config(config, housekeeper=housekeeper))
    if config.output.clickhouse.enabled:
        # flows' retention is the ClickHouse section's own (output.clickhouse.flows_retention_days)
        outputs.append(ClickHouseOutput(config.output.clickhouse, config.spool,
                                        _subdir(config.data_path(config.spool.path), process), tables=tables,
                                        retention_days={n: d for n, d in days.items() if n != "flows"},
                                        journal=journal, on_insert=hooks.on_insert, on_error=hooks.on_insert_error))
    return outputs


def build_sink(config: StorageSettings, *, worker: int | None = None, host: int = 0,
               tables: Iterable[Table] | None = None, hooks: SinkHooks = SinkHooks()) -> Sink:
    """The sink of one writing process with every output the configuration enables.

    ``worker`` is the process's number (None: the only one); with several each has its own spool and handoff
    journal, and only worker 0 keeps the store's house. ``host`` (``service.host_index``) goes into every batch id.
    """
    process = None if worker is None else f"worker{worker}"
    journal = handoff_journal(config, process)
    outputs = build_outputs(config, process=process, housekeeper=worker in (None, 0), tables=tables, journal=journal,
                            hooks=hooks)
    return Sink(outputs, config.store.flush_rows, config.store.flush_interval_s, config.store.max_pending_rows,
                flush_bytes=config.store.flush_bytes, max_pending_bytes=config.store.max_pending_bytes,
                id_generator=BatchIdGenerator(worker or 0, host=host), on_write=hooks.on_write,
                on_error=hooks.on_error, journal=journal, on_replay=hooks.on_replay,
                unjournaled=() if config.output.clickhouse.flows else ("flows",))
