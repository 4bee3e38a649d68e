"""De-duplication of flow records by a deterministic record key within a bounded window.

The key hashes what identifies a flow: addresses, ports, protocol, start and end time, bytes and packets, plus, for
exporters with the ``primary`` role (the default), the exporter and observation domain, so only that exporter's own
resends are duplicates. Exporters with the ``shared`` role leave the exporter out of the key: the same flow exported
by two routers of that role counts once. ``secondary`` exporters are duplicates by configuration (a router whose
traffic a primary router already reports): all their records are counted as duplicate and kept out of usage.

Keys live in two generations of an open-addressing hash table (vectorised probing): a key is remembered for at least
``window_ms`` and at most twice that of processing time, and at most ``max_keys`` keys are kept (a generation that
fills up is retired early; that is counted as ``evictions``, since it shortens the window).

Multi-worker: the kernel keeps an exporter on one worker (SO_REUSEPORT hashes the source address and port), so the
window of a ``primary`` exporter is complete in its worker. ``shared`` de-duplication across routers is exact only
when those routers' datagrams reach the same worker (always with ``workers = 1``).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

import numpy as np

from mediation.bindings import parse_network, split_addresses
from mediation.hashing import hash_columns

ROLES = ("primary", "shared", "secondary")
INITIAL_KEYS = 1 << 16
"""A generation starts this small and doubles as it fills (a big, mostly empty table costs cache misses)."""


class _Table:
    """A fixed-size open-addressing set of non-zero uint64 keys."""

    def __init__(self, capacity: int) -> None:
        size = 1 << max(int(capacity * 2 - 1).bit_length(), 10)  # load factor <= 0.5
        self.slots = np.zeros(size, dtype=np.uint64)
        self.mask = np.uint64(size - 1)
        self.count = 0
        self.capacity = capacity

    def insert(self, keys: np.ndarray) -> np.ndarray:
        """Insert distinct non-zero keys; returns True where a key was already present."""
        present = np.zeros(len(keys), dtype=bool)
        todo = np.arange(len(keys))
        pos = keys & self.mask
        while len(todo):
            k = keys[todo]
            p = pos[todo]
            cur = self.slots[p]
            hit = cur == k
            present[todo[hit]] = True
            empty = cur == 0
            # claim empty slots; when two keys race for one slot, exactly one write survives
            self.slots[p[empty]] = k[empty]
            won = empty.copy()
            won[empty] = self.slots[p[empty]] == k[empty]
            self.count += int(won.sum())
            retry = ~(hit | won)
            todo = todo[retry]
            pos[todo] = (p[retry] + np.uint64(1)) & self.mask
        return present

    def grown(self, capacity: int) -> _Table:
        """A larger table holding the same keys."""
        bigger = _Table(capacity)
        keys = self.slots[self.slots != 0]
        bigger.insert(keys)
        return bigger

    def contains(self, keys: np.ndarray) -> np.ndarray:
        found = np.zeros(len(keys), dtype=bool)
        todo = np.arange(len(keys))
        pos = keys & self.mask
        while len(todo):
            cur = self.slots[pos[todo]]
            hit = cur == keys[todo]
            found[todo[hit]] = True
            go_on = ~hit & (cur != 0)
            todo = todo[go_on]
            pos[todo] = (pos[todo] + np.uint64(1)) & self.mask
        return found


class Deduplicator:
    """Marks duplicate records (vectorised); see the module docstring."""

    def __init__(self, window_ms: int, max_keys: int, roles: Sequence = ()) -> None:
        """``roles``: objects with ``prefix`` and ``role`` (e.g. ``ExporterRole``); longest prefix wins."""
        self.configure(window_ms, max_keys, roles)
        self._current = _Table(min(self.max_keys, INITIAL_KEYS))
        self._previous: _Table | None = None
        self._started_ms: int | None = None
        self.evictions = 0

    def configure(self, window_ms: int, max_keys: int, roles: Sequence = ()) -> None:
        """(Re)configure window, size bound (from the next generation on) and exporter roles; keys are kept."""
        self.window_ms = window_ms
        self.max_keys = max(max_keys // 2, 1024)
        self._roles = sorted(((ipaddress.ip_network(r.prefix, strict=False), r.role) for r in roles),
                             key=lambda x: -x[0].prefixlen)
        self._role_cache: dict[bytes, int] = {}

    def role_of(self, exporter: bytes) -> int:
        """Role index (into ROLES) of an exporter address (16 bytes)."""
        role = self._role_cache.get(exporter)
        if role is None:
            role = 0
            if self._roles:
                hi, lo = split_addresses(np.array([exporter], dtype="S16"))
                value = (int(hi[0]) << 64) | int(lo[0])
                for net, r in self._roles:
                    h, lw, plen = parse_network(str(net))
                    shift = 128 - plen
                    if value >> shift == ((h << 64) | lw) >> shift:
                        role = ROLES.index(r)
                        break
            if len(self._role_cache) < 65536:
                self._role_cache[exporter] = role
        return role

    def keys(self, cols: dict[str, np.ndarray], exporter_role: np.ndarray) -> np.ndarray:
        """Record key per record (uint64, never 0)."""
        own = exporter_role == 0
        zero_exp = np.zeros(len(own), dtype="S16")
        exporter = np.where(own, cols["exporter"], zero_exp)
        domain = np.where(own, cols["observation_domain"], 0)
        k = hash_columns(exporter, domain, cols["src_addr"], cols["dst_addr"], cols["src_port"], cols["dst_port"],
                         cols["protocol"], cols["flow_start"], cols["flow_end"], cols["bytes"], cols["packets"])
        k[k == 0] = 1
        return k

    def duplicates(self, keys: np.ndarray, exporter_role: np.ndarray, now_ms: int) -> np.ndarray:
        """True for records that are duplicates (of an earlier record, of one in the same batch, or by role)."""
        self._rotate(now_ms, len(keys))
        dup = exporter_role == ROLES.index("secondary")
        idx = np.flatnonzero(~dup)
        k = keys[idx]
        # within the batch: keep the first occurrence of each key
        order = np.argsort(k, kind="stable")
        ks = k[order]
        repeat = np.zeros(len(ks), dtype=bool)
        repeat[1:] = ks[1:] == ks[:-1]
        in_batch = np.zeros(len(k), dtype=bool)
        in_batch[order[repeat]] = True
        first = ~in_batch
        seen = np.zeros(len(k), dtype=bool)
        if self._previous is not None:
            seen[first] = self._previous.contains(k[first])
        fresh = first & ~seen
        seen[fresh] = self._current.insert(k[fresh])
        dup[idx] = in_batch | seen
        return dup

    def _rotate(self, now_ms: int, incoming: int) -> None:
        if self._started_ms is None:
            self._started_ms = now_ms
        needed = self._current.count + incoming
        if now_ms - self._started_ms < self.window_ms and self._current.capacity < needed <= self.max_keys:
            self._current = self._current.grown(min(self.max_keys, 2 * needed))  # small and cache-friendly first
            return
        full = needed > self._current.capacity
        if now_ms - self._started_ms >= self.window_ms or full:
            if full and now_ms - self._started_ms < self.window_ms:
                self.evictions += self._previous.count if self._previous is not None else 0
            self._previous = self._current
            self._current = _Table(min(max(self.max_keys, incoming), max(INITIAL_KEYS, 2 * incoming)))
            self._started_ms = now_ms
