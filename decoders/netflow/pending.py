"""Data sets that arrived before their template (RFC 3954 section 9 recommends keeping them).

Each held set is keyed by its template key (exporter, version, domain, template id) and replayed, in arrival order,
when that template arrives. The store is bounded in bytes (oldest sets are dropped first) and in age
(:meth:`PendingStore.expire`); both drops are reported to the caller for counting.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

OVERHEAD = 96
"""Bytes accounted per held set on top of its payload (bookkeeping), so tiny sets cannot evade the bound."""

TemplateKey = tuple[str, int, int, int]
"""(exporter, version, domain, template id)."""


@dataclass(frozen=True, slots=True)
class HeldSet:
    """A data set body waiting for its template, with what is needed to decode it later."""

    key: TemplateKey
    body: bytes
    received_ms: int
    export_ms: int
    uptime_ms: int
    """v9 header sysUptime (ms); -1 for IPFIX."""

    @property
    def size(self) -> int:
        return len(self.body) + OVERHEAD


class PendingStore:
    """Held data sets, bounded by total bytes; oldest first out."""

    def __init__(self, max_bytes: int, max_age_ms: int) -> None:
        self.max_bytes = max_bytes
        self.max_age_ms = max_age_ms
        self._items: OrderedDict[int, HeldSet] = OrderedDict()
        self._by_key: dict[TemplateKey, list[int]] = {}
        self._next = 0
        self.bytes = 0
        self.version = 0
        """Changes with every set held, taken or dropped (the state writer saves held data when it changed)."""

    def __len__(self) -> int:
        return len(self._items)

    def held(self) -> list[HeldSet]:
        """Every held set, oldest first (for saving state)."""
        return list(self._items.values())

    def add(self, held: HeldSet) -> list[HeldSet]:
        """Hold a set; returns the sets dropped to stay within ``max_bytes`` (possibly ``held`` itself)."""
        if held.size > self.max_bytes:
            return [held]
        self._next += 1
        self.version += 1
        self._items[self._next] = held
        self._by_key.setdefault(held.key, []).append(self._next)
        self.bytes += held.size
        dropped = []
        while self.bytes > self.max_bytes:
            dropped.append(self._pop_oldest())
        return dropped

    def take(self, key: TemplateKey) -> list[HeldSet]:
        """Remove and return the sets waiting for ``key``, oldest first."""
        ids = self._by_key.pop(key, None)
        if not ids:
            return []
        out = [self._items.pop(i) for i in ids]
        self.bytes -= sum(h.size for h in out)
        self.version += 1
        return out

    def has(self, key: TemplateKey) -> bool:
        return key in self._by_key

    def expire(self, now_ms: int) -> list[HeldSet]:
        """Drop and return the sets held longer than ``max_age_ms``."""
        dropped = []
        limit = now_ms - self.max_age_ms
        while self._items:
            first = next(iter(self._items.values()))
            if first.received_ms >= limit:
                break
            dropped.append(self._pop_oldest())
        return dropped

    def forget(self, exporter: str) -> list[HeldSet]:
        """Drop every set of an exporter."""
        out = []
        for key in [k for k in self._by_key if k[0] == exporter]:
            out.extend(self.take(key))
        return out

    def _pop_oldest(self) -> HeldSet:
        i, held = self._items.popitem(last=False)
        self.version += 1
        ids = self._by_key[held.key]
        ids.remove(i)
        if not ids:
            del self._by_key[held.key]
        self.bytes -= held.size
        return held
