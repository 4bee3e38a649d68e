"""``Received``: a batch of datagrams as the decoders take it, one buffer and per-datagram columns (sans-I/O).

A listener that receives many datagrams per system call (``collector.listener``) hands them over where they landed:
one buffer, the start and length of each datagram in it, its exporter (an index into a list of address strings) and
its receive time. No ``bytes`` object or address string is made per datagram, and the NetFlow fast path
(:mod:`decoders.netflow.fast_path`) scans the buffer as it is. Tests, pcaps and tools that have
``(payload, exporter, received_ms)`` tuples build one with :meth:`Received.of`; iterating a ``Received`` gives
such tuples back (for the paths that go datagram by datagram).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import overload

import numpy as np

__all__ = ["OVERSIZED", "Datagram", "Received"]

Datagram = tuple[bytes, str, int]
"""(payload, exporter, received_ms)."""

OVERSIZED = "datagram_too_large"
"""Error reason of a datagram larger than the listener's receive buffer: cut by the kernel, so never decoded."""

Joiner = Callable[[Sequence[bytes], int], "bytes | memoryview"]
"""Joins payloads of the given total length into one buffer (e.g. :class:`decoders.netflow.templated.Joiner`)."""


@dataclass(slots=True)
class Received(Sequence["tuple[bytes, str, int]"]):
    """Datagrams in one buffer: datagram ``i`` is ``buf[starts[i]:starts[i] + lens[i]]``, from ``names[codes[i]]``,
    received at ``received_ms[i]`` (Unix ms). The buffer may have gaps between datagrams (a listener's slots)."""

    buf: bytes | memoryview
    starts: np.ndarray
    """int64 per datagram."""
    lens: np.ndarray
    """int64 per datagram."""
    codes: np.ndarray
    """int64 per datagram: its exporter, an index into ``names``."""
    names: list[str]
    """Exporter addresses, distinct."""
    received_ms: np.ndarray
    """int64 per datagram."""
    oversized: Counter[str] = field(default_factory=Counter)
    """exporter -> datagrams dropped before this batch because they did not fit the receive buffer (not in it)."""

    @classmethod
    def of(cls, datagrams: Iterable[Datagram], join: Joiner | None = None) -> Received:
        """A batch from ``(payload, exporter, received_ms)`` tuples (the payloads joined: by ``join`` if given)."""
        items = datagrams if isinstance(datagrams, list | tuple) else list(datagrams)
        n = len(items)
        # (lists, not zip(*items): that makes an iterator object per datagram for the GC to count)
        payloads, exporters = [i[0] for i in items], [i[1] for i in items]
        lens = np.fromiter(map(len, payloads), dtype=np.int64, count=n)
        total = int(lens.sum())
        buf = join(payloads, total) if join is not None else b"".join(payloads)
        received = np.fromiter((i[2] for i in items), dtype=np.int64, count=n)
        if n and exporters.count(exporters[0]) == n:  # one exporter: no dict lookup per datagram
            return cls(buf, np.cumsum(lens) - lens, lens, np.zeros(n, dtype=np.int64), [exporters[0]], received)
        index: dict[str, int] = {}
        codes = np.fromiter((index.setdefault(e, len(index)) for e in exporters), dtype=np.int64, count=n)
        return cls(buf, np.cumsum(lens) - lens, lens, codes, list(index), received)

    @classmethod
    def concat(cls, parts: Sequence[Received]) -> Received:
        """One batch of several, in order (their datagrams copied into one buffer)."""
        if len(parts) == 1:
            return parts[0]
        compact = [p.compact() for p in parts]
        sizes = [len(p.buf) for p in compact]
        bases = np.cumsum(sizes) - sizes
        index: dict[str, int] = {}
        codes = []
        oversized: Counter[str] = Counter()
        for p in compact:
            remap = np.array([index.setdefault(name, len(index)) for name in p.names], dtype=np.int64)
            codes.append(remap[p.codes] if len(p.codes) else p.codes)
            oversized.update(p.oversized)
        return cls(b"".join([p.buf for p in compact]),
                   np.concatenate([p.starts + base for p, base in zip(compact, bases.tolist(), strict=True)]),
                   np.concatenate([p.lens for p in parts]), np.concatenate(codes), list(index),
                   np.concatenate([p.received_ms for p in parts]), oversized)

    def compact(self) -> Received:
        """The same datagrams in a ``bytes`` buffer of their own holding nothing else (itself when it already is so):
        what stays valid when the buffer it came in is reused."""
        if isinstance(self.buf, bytes) and len(self.buf) == int(self.lens.sum()) and \
                bool((self.starts[1:] == (self.starts + self.lens)[:-1]).all()):
            return self
        view = memoryview(self.buf)
        buf = b"".join([view[s:s + n] for s, n in zip(self.starts.tolist(), self.lens.tolist(), strict=True)])
        return Received(buf, np.cumsum(self.lens) - self.lens, self.lens, self.codes, self.names, self.received_ms,
                        self.oversized)

    def __len__(self) -> int:
        return len(self.lens)

    def payload(self, i: int) -> bytes:
        """Datagram ``i``'s bytes (a copy)."""
        start = int(self.starts[i])
        return bytes(self.buf[start:start + int(self.lens[i])])

    def datagram(self, i: int) -> Datagram:
        """Datagram ``i`` as ``(payload, exporter, received_ms)``."""
        return self.payload(i), self.names[int(self.codes[i])], int(self.received_ms[i])

    @overload
    def __getitem__(self, i: int) -> Datagram: ...

    @overload
    def __getitem__(self, i: slice) -> Received: ...

    def __getitem__(self, i: int | slice) -> Datagram | Received:
        """Datagram ``i`` as a tuple (as a list of tuples would give it), or a slice as a ``Received``."""
        if isinstance(i, slice):
            return self.select(np.arange(len(self.lens))[i])
        if not -len(self.lens) <= i < len(self.lens):
            raise IndexError(i)
        return self.datagram(i)

    def __iter__(self) -> Iterator[Datagram]:
        for i in range(len(self.lens)):
            yield self.datagram(i)

    def exporter_list(self) -> list[str]:
        """The exporter of each datagram."""
        names = self.names
        return [names[c] for c in self.codes.tolist()]

    def select(self, index: np.ndarray) -> Received:
        """The datagrams at ``index`` (positions or a boolean mask), in that order; the buffer is shared, not copied.
        ``oversized`` stays with the whole batch (not carried)."""
        return Received(self.buf, self.starts[index], self.lens[index], self.codes[index], self.names,
                        self.received_ms[index])

    def first_bytes(self, k: int) -> np.ndarray:
        """The first ``k`` bytes of every datagram as an (n, k) uint8 array, zero past a datagram's end."""
        b = np.frombuffer(self.buf, dtype=np.uint8)
        out = np.zeros((len(self.lens), k), dtype=np.uint8)
        for j in range(k):
            has = self.lens > j
            out[has, j] = b[self.starts[has] + j]
        return out
