"""Traffic classes from configured rules (remote prefixes, remote ports, protocols), first match wins.

"Remote" is the side that is not the subscriber: the destination of upstream traffic and the source of downstream
traffic (for unattributed traffic, the destination). A zero-rated CDN, for example, is a rule with the CDN's
prefixes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mediation.settings import ClassRule
from mediation.subscribers.bindings import BindingIndex, parse_network
from mediation.tables import OPEN_END_MS


class Classifier:
    """Compiled class rules: ``classify(...)`` returns a class index per record; ``names[index]`` is the class."""

    def __init__(self, rules: Sequence[ClassRule], default_class: str = "default") -> None:
        """``rules``: objects with ``name``, ``prefixes``, ``ports`` and ``protocols`` (e.g. ``ClassRule``)."""
        self.names = np.array([r.name for r in rules] + [default_class], dtype=object)
        self._rules = []
        for r in rules:
            prefixes = None
            if r.prefixes:
                nets = [parse_network(p) for p in r.prefixes]
                n = len(nets)
                prefixes = BindingIndex(np.arange(n), np.zeros(n), np.array([x[0] for x in nets], dtype=np.uint64),
                                        np.array([x[1] for x in nets], dtype=np.uint64),
                                        np.array([x[2] for x in nets], dtype=np.int16), np.zeros(n),
                                        np.full(n, OPEN_END_MS))
            ports = np.array(sorted(set(r.ports)), dtype=np.uint16) if r.ports else None
            protocols = np.array(sorted(set(r.protocols)), dtype=np.uint8) if r.protocols else None
            self._rules.append((prefixes, ports, protocols))

    @property
    def default_index(self) -> int:
        return len(self.names) - 1

    def classify(self, remote_hi: np.ndarray, remote_lo: np.ndarray, remote_port: np.ndarray,
                 protocol: np.ndarray) -> np.ndarray:
        """Class index (uint8) per record."""
        n = len(remote_hi)
        out = np.full(n, self.default_index, dtype=np.uint8)
        if not self._rules:
            return out
        todo = np.ones(n, dtype=bool)
        zeros = np.zeros(n, dtype=np.int64)
        for i, (prefixes, ports, protocols) in enumerate(self._rules):
            match = todo.copy()
            if protocols is not None:
                match &= np.isin(protocol, protocols)
            if ports is not None:
                match &= np.isin(remote_port, ports)
            if prefixes is not None:
                _, row, _ = prefixes.lookup(remote_hi, remote_lo, zeros)
                match &= row >= 0
            out[match] = i
            todo &= ~match
        return out
