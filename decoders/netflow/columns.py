"""The ``flows`` columns of a ``decode`` call, allocated once for the whole batch and filled in place.

Every group of the batch (:mod:`decoders.netflow.groups`) owns a range of rows; the compiled gather
(:func:`decoders.netflow.kernel.gather`) writes the columns a template maps straight into that range, and the
datagram values of its records (receive time, exporter, domain, version, datagram identity) are written by one more
compiled pass (:func:`decoders.digest.record_context`). Columns a template does not map keep the zeros they were
allocated with: no pass per absent column, no concatenation of per-group arrays at the end.

The integer columns are the rows of one 2-D array per width (int64 columns are rows of the 8-byte array, viewed as
int64), the address columns the rows of a ``(k, n, 2)`` uint64 array (16 bytes each), all of them views of one
allocation (numpy asks for huge pages at 4 MiB or more: first writes then fault per 2 MiB, not per 4 KiB). Each
block also has *scratch* rows below the columns, for fields a template is read for that are no column (times,
sampling values): a group's plan is remapped once (:func:`fused_plan`) so that the gather writes every field of it
into a row of these blocks.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from decoders.netflow.kernel import PU_ROW, PU_WIDTH, WIDTHS, Gathered, Plan
from decoders.schema import FLOWS

_COLUMNS = [c for c in FLOWS.columns if c.name != "batch_id"]
_ADDRESSES = [c.name for c in _COLUMNS if c.numpy_dtype.kind == "S"]
_INTEGERS: dict[int, list[str]] = {w: [c.name for c in _COLUMNS if c.numpy_dtype.kind in "ui"
                                       and c.numpy_dtype.itemsize == w] for w in WIDTHS}
ROWS: dict[str, tuple[int, int]] = {name: (w, row) for w, names in _INTEGERS.items() for row, name in enumerate(names)}
"""Integer column -> (width, row of that width's block)."""
A_ROWS: dict[str, int] = {name: row for row, name in enumerate(_ADDRESSES)}
"""Address column -> row of the address block."""
WRITTEN = frozenset({"time_received", "exporter", "observation_domain", "version", "datagram", "datagram_offset",
                     "flow_start", "flow_end", "sampling_rate", "bytes", "packets"})
"""Columns every group writes (:func:`decoders.netflow.groups.finish`), whatever its template."""
_S16 = np.dtype("S16")
_DTYPES: dict[int, type[np.unsignedinteger[Any]]] = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


class FusedPlan:
    """A plan whose fields land in a batch's column blocks: columns in their rows, other fields in scratch rows."""

    __slots__ = ("plan", "scratch", "absent", "absent_a", "times", "rate_in_record")

    def __init__(self, plan: Plan, columns: list[tuple[str, str]]) -> None:
        """``columns``: (plan field name, integer column it feeds); address columns are the plan's own."""
        column_of = dict(columns)  # a field feeds one column at most (an element has one column)
        u_rows: dict[str, tuple[int, int]] = {}
        scratch = dict.fromkeys(WIDTHS, 0)
        pu = plan.PU.copy()
        for name, (width, row) in plan.u_rows.items():
            feeds = column_of.get(name)
            if feeds is not None:
                dest = ROWS[feeds][1]
            else:
                dest = len(_INTEGERS[width]) + scratch[width]
                scratch[width] += 1
            u_rows[name] = (width, dest)
            pu[np.flatnonzero((plan.PU[:, PU_WIDTH] == width) & (plan.PU[:, PU_ROW] == row)), PU_ROW] = dest
        a_rows = {column: A_ROWS[column] for column in plan.a_rows}
        self.plan = Plan(pu, plan.P4, plan.P6, u_rows, a_rows, tuple(scratch.values()))
        self.scratch = tuple(scratch.values())
        """Scratch rows of each width of :data:`WIDTHS`."""
        written = WRITTEN | set(column_of.values())
        self.absent = {w: np.array([row for row, name in enumerate(names) if name not in written], dtype=np.intp)
                       for w, names in _INTEGERS.items()}
        """Rows of the integer columns this plan leaves at zero, per width."""
        self.absent_a = np.array([row for name, row in A_ROWS.items() if name not in written and name not in a_rows],
                                 dtype=np.intp)
        """Rows of the address columns this plan leaves at zero."""
        self.times: np.ndarray | None = None
        """How the compiled pass makes the times (:func:`decoders.netflow.kernel.fill_records`); None: numpy."""
        self.rate_in_record = False
        """The records carry a sampling rate or a sampler id: rates are per record (numpy), not per set."""


class Output:
    """The ``flows`` columns of ``n`` records, with scratch rows of each width. Not initialised: each range of
    records is filled by :meth:`zero_absent` and the writes of its group (fresh zeros, from ``calloc``, would cost
    a page fault on first write or a pass of ``memset`` over every column, instead of only the absent ones)."""

    __slots__ = ("n", "U", "A", "columns")

    def __init__(self, n: int, scratch: tuple[int, ...]) -> None:
        self.n = n
        shapes: list[tuple[tuple[int, ...], type[np.unsignedinteger[Any]]]] = [
            ((len(_INTEGERS[w]) + k, n), _DTYPES[w]) for w, k in zip(WIDTHS, scratch, strict=True)]
        shapes.append(((len(_ADDRESSES), n, 2), np.uint64))
        sizes = [int(np.prod(shape)) * np.dtype(dtype).itemsize for shape, dtype in shapes]
        starts = np.cumsum([0] + [-(-size // 64) * 64 for size in sizes])
        block = np.empty(int(starts[-1]), dtype=np.uint8)
        views = [block[a:a + size].view(dtype).reshape(shape)
                 for a, size, (shape, dtype) in zip(starts[:-1].tolist(), sizes, shapes, strict=True)]
        self.U: dict[int, np.ndarray] = dict(zip(WIDTHS, views[:-1], strict=True))
        self.A: np.ndarray = views[-1]
        self.columns: dict[str, np.ndarray] = {}
        """Every ``flows`` column (but ``batch_id``), in schema order: views of the blocks."""
        for c in _COLUMNS:
            row = A_ROWS.get(c.name)
            if row is not None:
                self.columns[c.name] = self.A[row].view(_S16).reshape(n)
            else:
                width, row = ROWS[c.name]
                self.columns[c.name] = self.U[width][row].view(c.numpy_dtype)

    def column(self, name: str) -> np.ndarray:
        """A whole column, of its ``flows`` dtype (a writable view)."""
        return self.columns[name]

    def view(self, fused: FusedPlan, lo: int, hi: int) -> Gathered:
        """The fields of records ``lo:hi`` as the fused plan read them (views, as :class:`Gathered` gives them)."""
        return Gathered.of(fused.plan, {w: u[:, lo:hi] for w, u in self.U.items()}, self.A[:, lo:hi], hi - lo)

    def zero_absent(self, fused: FusedPlan, lo: int, hi: int) -> None:
        """Zeros in records ``lo:hi`` of the columns the plan's group does not write."""
        for w, rows in fused.absent.items():
            if len(rows):
                self.U[w][rows, lo:hi] = 0
        if len(fused.absent_a):
            self.A[fused.absent_a, lo:hi] = 0

    def flows(self) -> dict[str, np.ndarray]:
        """Every ``flows`` column (but ``batch_id``), in schema order."""
        return dict(self.columns)
