"""The bindings database of this host, opened the one way every part of the process and the CLI needs it."""

from __future__ import annotations

from collector.config import Config
from mediation.subscribers.bindings import Bindings


def open_bindings(config: Config) -> Bindings:
    """``subscribers.bindings_db`` with this host's ``service.host_index`` in the binding ids it writes."""
    return Bindings(config.data_path(config.subscribers.bindings_db), host=config.service.host_index)
