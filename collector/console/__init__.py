"""``flowmed console``: a read-only web console over flowmed's tables (docs/console.md).

It runs in its own process (never the collector's event loop), reads through the same query engine as
``flowmed query`` (:mod:`collector.console.data`, the one module that opens it), and runs only SQL it templates itself
from validated parameters, each query bounded by a time window (:mod:`collector.console.window`) and reading only
that window's partitions (:mod:`collector.console.queries`). Pages: exporters, traffic, a subscriber's cycle,
compliance lookup, reconciliation (:mod:`collector.console.pages`); access control in :mod:`collector.console.auth`;
the ASGI application in :mod:`collector.console.app`.
"""
