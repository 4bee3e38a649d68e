"""Traffic classes from configured rules (remote prefixes, remote ports, protocols), first match wins.

"Remote" is the side that is not the subscriber: the destination of upstream traffic and the source of downstream
traffic (for unattributed traffic, the destination). A zero-rated CDN, for example, is a rule with the CDN's
prefixes.

The rules are compiled into a small table (:class:`ClassTable`) that one compiled loop walks per part: the class of
a part is the first rule whose protocols, ports and prefixes all hold, i.e. the least rule index that matches. Rules
without prefixes are tried in order; the prefixes of all rules are kept per prefix length as sorted (network, rule)
entries, so each length costs one binary search per part and yields the rules holding the part's network at that
length. The Mediator classifies its usage rows in one such pass, where the rules were mask passes over the whole
batch (and a lookup per rule with prefixes).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from numba import njit

from mediation.hashing import CACHE
from mediation.settings import ClassRule
from mediation.subscribers.addresses import parse_network, prefix_masks

_U64 = np.uint64


class ClassTable(NamedTuple):
    """Class rules as arrays for :func:`_classify` (rule ``i`` is class index ``i``; ``default`` the last index)."""

    default: int
    has_protocols: np.ndarray
    """bool per rule: the rule names protocols."""
    protocols: np.ndarray
    """bool (rules x 256): the protocols of each rule."""
    port_start: np.ndarray
    """int64 (rules + 1): each rule's ports are ``ports[port_start[i]:port_start[i + 1]]`` (none: any port)."""
    ports: np.ndarray
    """uint16, sorted per rule."""
    plain: np.ndarray
    """int64: the rules without prefixes, in order."""
    masks_hi: np.ndarray
    """uint64 per prefix length present: the length's high mask..."""
    masks_lo: np.ndarray
    """... and low mask."""
    net_start: np.ndarray
    """int64 (lengths + 1): a length's entries are ``[net_start[k], net_start[k + 1])``."""
    net_hi: np.ndarray
    """uint64: the entries' networks (high half), sorted by (high, low, rule) within each length..."""
    net_lo: np.ndarray
    """... (low half) ..."""
    net_rule: np.ndarray
    """... and the rule (int64) naming the network."""


def compile_rules(rules: Sequence[ClassRule]) -> ClassTable:
    """The :class:`ClassTable` of ``rules`` (objects with ``name``, ``prefixes``, ``ports`` and ``protocols``)."""
    n = len(rules)
    has_protocols = np.zeros(n, dtype=np.bool_)
    protocols = np.zeros((n, 256), dtype=np.bool_)
    port_start = np.zeros(n + 1, dtype=np.int64)
    ports: list[int] = []
    entries: dict[int, list[tuple[int, int, int]]] = {}
    plain = []
    for i, r in enumerate(rules):
        if r.protocols:
            has_protocols[i] = True
            protocols[i, sorted(set(r.protocols))] = True
        ports += sorted(set(r.ports))
        port_start[i + 1] = len(ports)
        if not r.prefixes:
            plain.append(i)
        for p in r.prefixes:
            hi, lo, plen = parse_network(p)
            entries.setdefault(plen, []).append((hi, lo, i))
    lengths = sorted(entries, reverse=True)
    masks = [prefix_masks(plen) for plen in lengths]
    nets = [e for plen in lengths for e in sorted(set(entries[plen]))]
    return ClassTable(
        n, has_protocols, protocols, port_start, np.array(ports, dtype=np.uint16), np.array(plain, dtype=np.int64),
        np.array([m[0] for m in masks], dtype=_U64), np.array([m[1] for m in masks], dtype=_U64),
        np.cumsum([0] + [len(set(entries[plen])) for plen in lengths]).astype(np.int64),
        np.array([e[0] for e in nets], dtype=_U64), np.array([e[1] for e in nets], dtype=_U64),
        np.array([e[2] for e in nets], dtype=np.int64))


@njit(nogil=True, cache=CACHE)
def _classify(t: ClassTable, hi: np.ndarray, lo: np.ndarray, port: np.ndarray, protocol: np.ndarray,
              out: np.ndarray) -> None:
    """``out[q]``: the class of part ``q`` (remote address ``(hi, lo)``, remote ``port``, ``protocol``): the least
    rule whose protocols, ports and prefixes hold, else ``t.default``. The candidates are the rules without
    prefixes, then at each prefix length the rules naming the part's network (each run in rule order, so a run
    stops at the first that holds or at the best so far). One loop with no calls: a compiled call taking the
    table's arrays pays a reference count per array, several times the work of the rest."""
    default, has_protocols, protocols, port_start, ports, plain, masks_hi, masks_lo, net_start, net_hi, net_lo, \
        net_rule = t
    for q in range(len(hi)):
        h, low, pt, pr = hi[q], lo[q], port[q], protocol[q]
        best = default
        k = -1  # the candidates: -1 the rules without prefixes, k >= 0 those of prefix length k
        a, end = 0, len(plain)
        while True:
            if a >= end:  # the next prefix length's run of entries equal to the part's network
                k += 1
                if k >= len(masks_hi):
                    break
                mhi, mlo = h & masks_hi[k], low & masks_lo[k]
                a, b = net_start[k], net_start[k + 1]
                while a < b:  # the first entry >= (mhi, mlo)
                    m = (a + b) >> 1
                    if net_hi[m] < mhi or (net_hi[m] == mhi and net_lo[m] < mlo):
                        a = m + 1
                    else:
                        b = m
                end = a
                while end < net_start[k + 1] and net_hi[end] == mhi and net_lo[end] == mlo:
                    end += 1
                continue
            i = plain[a] if k < 0 else net_rule[a]
            a += 1
            if i >= best:
                a = end
                continue
            if has_protocols[i] and not protocols[i, pr]:
                continue
            pa, pb = port_start[i], port_start[i + 1]
            if pa < pb:
                while pa < pb:  # binary search in the rule's sorted ports
                    m = (pa + pb) >> 1
                    if ports[m] < pt:
                        pa = m + 1
                    else:
                        pb = m
                if pa == port_start[i + 1] or ports[pa] != pt:
                    continue
            best = i
            a = end
        out[q] = best


class Classifier:
    """Compiled class rules: ``classify(...)`` returns a class index per record; ``names[index]`` is the class."""

    def __init__(self, rules: Sequence[ClassRule], default_class: str = "default") -> None:
        """``rules``: objects with ``name``, ``prefixes``, ``ports`` and ``protocols`` (e.g. ``ClassRule``)."""
        self.names = np.array([r.name for r in rules] + [default_class], dtype=object)
        self.table = compile_rules(rules)

    @property
    def default_index(self) -> int:
        return len(self.names) - 1

    def classify(self, remote_hi: np.ndarray, remote_lo: np.ndarray, remote_port: np.ndarray,
                 protocol: np.ndarray) -> np.ndarray:
        """Class index (uint8) per record."""
        out = np.empty(len(remote_hi), dtype=np.uint8)
        _classify(self.table, np.ascontiguousarray(remote_hi, dtype=_U64), np.ascontiguousarray(remote_lo, dtype=_U64),
                  np.ascontiguousarray(remote_port, dtype=np.uint16), np.ascontiguousarray(protocol, dtype=np.uint8),
                  out)
        return out
