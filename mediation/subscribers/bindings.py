"""Subscriber bindings with time validity, persisted in SQLite, looked up vectorised.

A binding says that ``subscriber_id`` held an address or prefix over the half-open UTC interval
``[valid_from, valid_to)`` (int64 ms; ``valid_to`` is :data:`OPEN_END_MS` while open). Sources are the static file
(:mod:`mediation.subscribers.static`) and RADIUS accounting (:mod:`mediation.subscribers.radius`).

Rules
-----
* Longest prefix wins; among bindings of the same network, the one that started last (at or before the time).
* The bindings of one network never overlap: opening a binding ends, at its start, every binding of that network
  that holds then (an address handed to a new subscriber ends the old holder's binding even when its Stop was lost),
  and a binding never lasts past the start of a later-starting binding of its network (a late report of an older
  session cannot take the address back from a newer one). Of two bindings starting at the same instant the one
  opened last wins (the other is left empty). So the stored intervals *are* the answers: who held an address at an
  instant is the binding whose ``[valid_from, valid_to)`` holds the instant, whether asked of this index, of the
  SQLite table or of the ``bindings`` table in the outputs (``flowmed trace``), and the answer does not depend on
  when the index was rebuilt.
* History is never deleted: a removed binding gets ``valid_to`` set, so flows are attributed to whoever held the
  address at the flow's time, also when they arrive late.

Modules
-------
:mod:`mediation.subscribers.addresses` (address parsing and the uint64 halves), :mod:`mediation.subscribers.index`
(the lookup index, probed by compiled kernels) and :mod:`mediation.subscribers.store` (the SQLite history, its
refresh and rebuild threads); this module names what their many users import.
"""

from __future__ import annotations

from mediation.subscribers.addresses import format_network, join_addresses, parse_network, split_addresses
from mediation.subscribers.index import BindingIndex, index_from_arrays
from mediation.subscribers.store import Bindings

__all__ = ["BindingIndex", "Bindings", "format_network", "index_from_arrays", "join_addresses", "parse_network",
           "split_addresses"]
