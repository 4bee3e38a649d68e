"""What one ``decode`` call accumulates before its groups are decoded: groups of data sets, datagram contexts,
(exporter, version, domain) slots, sequence observations and the result's counters.

A *group* gathers the data sets of a batch that share a compiled template (identical templates of different
exporters share one compiled template, so they share a group): the per-datagram parser
(:mod:`decoders.netflow.datagram`) and the fast path (:mod:`decoders.netflow.fast_path`) append to groups, and
:mod:`decoders.netflow.groups` decodes each group at once. A *context* is one datagram's values that its records
share: (domain slot, received_ms, export_ms, uptime_ms, v5 sampling rate, digest). The digest is the datagram's
identity (:mod:`decoders.digest`; a held data set replayed on its own has its own), and each data set remembers
where its records start in its datagram, so every record gets ``datagram`` and ``datagram_offset``.
"""

from __future__ import annotations

import numpy as np

from decoders.netflow.state import ExporterState
from decoders.netflow.templates import Compiled
from decoders.result import DecodeResult
from decoders.sequence import SequenceTracker

DomainKey = tuple[str, int, int]
"""(exporter, version, domain)."""
Context = tuple[int, int, int, int, int, int]
"""(domain slot, received_ms, export_ms, uptime_ms, v5 sampling rate, datagram digest)."""
NCTX = 6
CTX_DIGEST = 5


class Block:
    """Data sets of plain data datagrams decoded without a Python step each: where their records are in the batch
    buffer (:attr:`decoders.netflow.fast_path.Scanned.buf`), how many records each holds, their contexts and where
their records start in their datagrams."""

    __slots__ = ("offsets", "counts", "ctx", "where")

    def __init__(self, offsets: np.ndarray, counts: np.ndarray, ctx: np.ndarray, where: np.ndarray) -> None:
        self.offsets = offsets
        self.counts = counts
        self.ctx = ctx
        self.where = where


Chunk = bytes | memoryview | Block
"""A data set's record bytes, or a :class:`Block` of many (fixed-length templates only)."""


class Group:
    """Data sets of one batch that share a compiled template (None: NetFlow v5 records)."""

    __slots__ = ("compiled", "chunks", "counts", "ctx", "where", "starts", "blocks")

    def __init__(self, compiled: Compiled | None) -> None:
        self.compiled = compiled
        self.chunks: list[Chunk] = []
        self.counts: list[int] = []  # per chunk; variable-length templates: 0 until walk_sets() has run
        self.ctx: list[int] = []  # per chunk (a Block: its first datagram's)
        self.where: list[int] = []  # per chunk: where its first record starts in its datagram (a Block: 0)
        self.starts: np.ndarray | None = None  # variable-length templates: segment offsets per record
        self.blocks = False


VarSets = list[tuple[Group, int]]
"""Variable-length data sets of a datagram, as (group, set index): their records are counted at the end."""
SingleObservation = tuple[SequenceTracker, DomainKey, int, int, bool, VarSets | None]
"""A datagram's sequence number: (tracker, key, seq, records known, exact, variable-length sets or None)."""
BlockObservation = tuple[None, list[DomainKey], np.ndarray, np.ndarray, np.ndarray]
"""The sequence numbers of a block of datagrams: (None, keys, key index per datagram, seqs, counts)."""


class Batch:
    """Per-call accumulation: groups, datagram contexts, (exporter, version, domain) slots and counters."""

    def __init__(self) -> None:
        self.result = DecodeResult(flows={})
        self.groups: dict[Compiled, Group] = {}  # compiled templates hash by identity
        self.v5 = Group(None)
        # One context per datagram (or replayed held set). Contexts made one at a time are in ``contexts``; a block
        # of datagrams adds an array to ``ctx_parts`` (after the contexts made before it), and ``ctx_base`` counts
        # the contexts in ``ctx_parts``.
        self.contexts: list[Context] = []
        self.ctx_parts: list[np.ndarray] = []
        self.ctx_base = 0
        self.domains: dict[DomainKey, int] = {}  # -> slot
        self.domain_info: list[tuple[ExporterState, int, int]] = []
        # Sequence observations, in datagram order, made once variable-length sets are counted.
        self.sequence: list[SingleObservation | BlockObservation] = []
        self.var_sets: VarSets = []  # variable-length sets of the datagram being parsed
        self.other_records = 0  # template records in the v9 datagram being parsed (negative: not checkable)
        self.options_records = 0  # options data records in the v9 datagram being parsed
        # v9 datagrams whose header record count is checked once variable-length sets are counted: (exporter,
        # header count, every record known, flow records known, variable-length sets)
        self.v9_counts: list[tuple[str, int, int, int, VarSets]] = []
        self.buf: bytes | memoryview = b""  # the batch's datagrams joined, when blocks refer to it

    def context(self, st: ExporterState, version: int, domain: int, received_ms: int, export_ms: int,
                uptime_ms: int, v5_rate: int = 0, digest: int = 0) -> int:
        """Add a datagram's context; returns its index."""
        self.contexts.append((self.slot(st, version, domain), received_ms, export_ms, uptime_ms, v5_rate, digest))
        return self.ctx_base + len(self.contexts) - 1

    def slot(self, st: ExporterState, version: int, domain: int) -> int:
        """The slot of (exporter, version, domain) in this batch, made when new."""
        key = (st.name, version, domain)
        slot = self.domains.get(key)
        if slot is None:
            slot = self.domains[key] = len(self.domain_info)
            self.domain_info.append((st, version, domain))
        return slot

    def context_row(self, ctx: int) -> Context:
        """A context made by :meth:`context` (the datagram being parsed)."""
        return self.contexts[ctx - self.ctx_base]

    def context_block(self, rows: np.ndarray) -> int:
        """Add the contexts of a block of datagrams, shape (k, NCTX); returns the index of the first."""
        if self.contexts:
            self.ctx_parts.append(np.asarray(self.contexts, dtype=np.int64).reshape(len(self.contexts), NCTX))
            self.ctx_base += len(self.contexts)
            self.contexts = []
        first = self.ctx_base
        self.ctx_parts.append(rows)
        self.ctx_base += len(rows)
        return first

    def context_array(self) -> np.ndarray:
        """Every context of the batch, shape (n, NCTX)."""
        parts = [*self.ctx_parts, np.asarray(self.contexts, dtype=np.int64).reshape(len(self.contexts), NCTX)]
        return parts[-1] if len(parts) == 1 else np.concatenate(parts)

    def group(self, compiled: Compiled) -> Group:
        """The group of ``compiled``, made when new."""
        g = self.groups.get(compiled)
        if g is None:
            g = self.groups[compiled] = Group(compiled)
        return g
