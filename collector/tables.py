"""The composition root of the tables: every module that declares tables, imported plainly, so all are registered.

Each floor declares its tables in its own module (:func:`decoders.schema.table` registers them in
:data:`decoders.schema.TABLES` when the module is imported); storage writes and reads whatever is registered and
names no module above it. The process imports this module before it builds outputs or a query engine, so the sink,
the store, ClickHouse and ``flowmed schema`` know every table. A new table module is added here as an import: a
misspelled one fails at import instead of being skipped.
"""

from __future__ import annotations

# imported for their registrations (and the retention settings of mediation.compliance and mediation.exporter_stats)
import decoders.schema
import decoders.sflow.tables
import mediation.compliance.tables
import mediation.exporter_stats
import mediation.ipdr.tables
import mediation.tables
import rating.tables
from decoders.schema import Table

MODULES = (decoders.schema, decoders.sflow.tables, mediation.tables, mediation.ipdr.tables,
           mediation.compliance.tables, mediation.exporter_stats, rating.tables)
"""The modules that declare tables (as modules, not names)."""


def load_tables() -> dict[str, Table]:
    """Every table flowmed has: the registry, filled by the imports of this module."""
    return decoders.schema.TABLES
