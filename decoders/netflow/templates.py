"""Templates (RFC 3954 section 5.2, RFC 7011 section 3.4) and their compiled form.

A template is compiled once (and shared by every exporter that sends the same field list) into a *field plan*
for the compiled gather (:mod:`decoders.netflow.kernel`): where each field read lies in a record (a fixed-length
template) or in a fixed segment of it (a template with variable-length fields, length 65535; the segments of
all records of a batch are found together by :func:`walk_sets`: numpy over record positions, the k-th records
of every set at once), and which output row it fills. Columns, times and sampling are then computed from the
gathered rows, the same way for both kinds of template.
"""

from __future__ import annotations

import struct
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from decoders.errors import BadRecord
from decoders.netflow import fields as ies
from decoders.netflow.kernel import Plan, make_plan
from decoders.schema import FLOWS

V9_SCOPE = -1
"""``Field.enterprise`` of a v9 options scope field: its id is a scope type (RFC 3954 section 6.1), not an IE."""


@dataclass(frozen=True, slots=True)
class Field:
    """One template field: element id, length (65535 = variable) and enterprise number (0 = IANA)."""

    ie: int
    length: int
    enterprise: int = 0

    @property
    def variable(self) -> bool:
        return self.length == ies.VARIABLE_LENGTH


@dataclass(frozen=True, slots=True)
class Template:
    """A template or options template record as received."""

    template_id: int
    fields: tuple[Field, ...]
    scope_count: int = 0
    options: bool = False

    def to_json(self) -> list[object]:
        """The template as JSON values (the state format of flowmed before :mod:`decoders.netflow.saved_state`)."""
        return [self.template_id, [[f.ie, f.length, f.enterprise] for f in self.fields], self.scope_count,
                self.options]

    @classmethod
    def from_json(cls, data: Sequence[Any]) -> Template:
        """A template from :meth:`to_json` (parsed JSON: its values are checked by conversion)."""
        tid, flds, scope, options = data
        return cls(int(tid), tuple(Field(int(i), int(n), int(e)) for i, n, e in flds), int(scope), bool(options))


@dataclass(frozen=True, slots=True)
class FieldRef:
    """Where a field lives in a record: its name in the plan, fixed segment (0 for fixed-length records), offset in
    the segment, and length."""

    name: str
    seg: int
    offset: int
    length: int


@dataclass(eq=False)
class Compiled:
    """A template compiled for columnar decoding. Identity matters: data sets are grouped by compiled template.

    It keeps no field list: only what decoding reads (field plan, segment lengths, the fields of columns), so that its
    memory does not grow with the fields a template carries but flowmed ignores (see :func:`template_cost`).
    """

    options: bool
    fixed: bool
    reclen: int
    """Record length (fixed), or the shortest possible record (variable: fixed bytes + one length byte per field)."""
    segments: tuple[int, ...]
    """Variable templates: fixed bytes before each variable field, and after the last one."""
    columns: dict[str, tuple[FieldRef, str]] = field(default_factory=dict)
    """``flows`` column -> (field, kind) for the winning element of each column."""
    refs: dict[int, FieldRef] = field(default_factory=dict)
    """First occurrence of each IANA element (times, sampling, options values)."""
    fast: bool = False
    """A fixed-length flow (not options) template: its data sets take the decoder's fast path."""
    alternates: dict[str, FieldRef] = field(default_factory=dict)
    """IPv4 address columns that also have an IPv6 element, used where the IPv4 value is 0.0.0.0."""
    plan: Plan | None = None
    """The fields the kernels read from its records (:mod:`decoders.netflow.kernel`)."""

    @property
    def start_ie(self) -> int | None:
        return next((i for i in ies.START_TIME_IES if i in self.refs), None)

    @property
    def end_ie(self) -> int | None:
        return next((i for i in ies.END_TIME_IES if i in self.refs), None)


def compile_template(template: Template) -> Compiled:
    """Compile (cached while in use: identical field lists share one :class:`Compiled`)."""
    v9_scope = sum(1 for f in template.fields if f.enterprise == V9_SCOPE)
    ipfix = any(f.enterprise > 0 for f in template.fields)  # else v9-style: element ids may use all 16 bits
    return compile_spec(spec_of(template.fields, ipfix=ipfix), ipfix=ipfix, options=template.options,
                        v9_scope=v9_scope)


_SPEC = struct.Struct(">HH")
_PEN = struct.Struct(">I")
_CACHE: weakref.WeakValueDictionary[tuple[bytes, bool, bool, int], Compiled] = weakref.WeakValueDictionary()
"""Compiled templates in use, by (field specifiers, IPFIX, options, v9 scope fields). Weak: a compiled form lives
exactly as long as a template of some exporter (or a batch) uses it, so nothing outside the template budget keeps
compiled templates alive (a bounded LRU cache of them was up to 4,096 templates no exporter had any more)."""


def spec_of(fields: tuple[Field, ...], *, ipfix: bool) -> bytes:
    """The field specifiers of a template as on the wire (IPFIX: enterprise fields with their PEN)."""
    out = []
    for f in fields:
        if ipfix and f.enterprise > 0:
            out.append(_SPEC.pack(f.ie | 0x8000, f.length) + _PEN.pack(f.enterprise))
        else:
            out.append(_SPEC.pack(f.ie, f.length))
    return b"".join(out)


def fields_of(spec: bytes, *, ipfix: bool, v9_scope: int = 0) -> tuple[Field, ...]:
    """The fields of wire field specifiers (the inverse of :func:`spec_of`); v9 options scope fields are marked
    with enterprise :data:`V9_SCOPE`. ``spec`` was checked when the template was parsed."""
    out: list[Field] = []
    pos, end = 0, len(spec)
    while pos + 4 <= end:
        ie, length = _SPEC.unpack_from(spec, pos)
        pos += 4
        if ipfix and ie & 0x8000:
            out.append(Field(ie & 0x7FFF, length, _PEN.unpack_from(spec, pos)[0]))
            pos += 4
        else:
            out.append(Field(ie, length, V9_SCOPE if len(out) < v9_scope else 0))
    return tuple(out)


def compile_spec(spec: bytes, *, ipfix: bool, options: bool, v9_scope: int = 0) -> Compiled:
    """Compile a template from its wire field specifiers; identical templates in use share one :class:`Compiled`."""
    key = (spec, ipfix, options, v9_scope)
    compiled = _CACHE.get(key)
    if compiled is None:
        compiled = _CACHE[key] = _compile(fields_of(spec, ipfix=ipfix, v9_scope=v9_scope), options)
    return compiled


# What a template costs in memory, from what its header and field specifiers say (before anything is compiled).
# Measured with tracemalloc (tests/decoders/test_budget.py checks that the estimate covers what is really kept, for
# the shapes that cost most per field); the parts:
ENTRY_BYTES = 1024
"""The decoder's entry for a template, its key, the saved-state writer's record header and dictionary slots."""
SPEC_COPIES = 2
"""Copies of the field specifiers kept: the decoder's entry and the template state writer's record."""
COMPILED_BYTES = 2048
"""A compiled template reading nothing: the object, its segment plan and empty dictionaries."""
READ_FIELD_BYTES = 512
"""Per field read (its plan row and name, column and element references): at most :data:`MAX_READ_FIELDS`."""
SEGMENT_BYTES = 32
"""Per variable-length field: its segment's offset and dtype slot."""
SEGMENT_DTYPE_BYTES = 256
"""Per variable-length field, up to :data:`MAX_READ_FIELDS`: what reading the segment after it costs (a margin since
the per-segment structured dtypes gave way to the kernel's plan)."""


def _max_read_fields() -> int:
    columns = {ie.column for ie in ies.REGISTRY.values() if ie.column}
    ipv6 = {ie.column for ie in ies.REGISTRY.values() if ie.column and ie.kind == "ipv6"}
    return len(columns) + len(ipv6) + len(ies.OPTIONS_IES | set(ies.START_TIME_IES) | set(ies.END_TIME_IES))


MAX_READ_FIELDS = _max_read_fields()
"""The most fields :func:`_compile` can read from one template: a winner per column, an IPv6 alternate per address
column, and the options and time elements."""


def template_cost(count: int, variable: int, spec_len: int) -> int:
    """Bytes of memory a template of ``count`` fields (``variable`` of them variable-length, ``spec_len`` bytes of
    field specifiers) costs once learned and compiled: an upper bound, known before any field is parsed further.

    Fields flowmed does not read cost only their specifier bytes, so a 512-field template of unknown elements is
    about as cheap as its 2 KiB on the wire; the fields read are bounded by the column plan.
    """
    return (ENTRY_BYTES + SPEC_COPIES * (33 + spec_len) + COMPILED_BYTES
            + READ_FIELD_BYTES * min(count, MAX_READ_FIELDS)
            + SEGMENT_BYTES * variable + SEGMENT_DTYPE_BYTES * min(variable, MAX_READ_FIELDS))


def _compile(fields: tuple[Field, ...], options: bool) -> Compiled:
    fixed = not any(f.variable for f in fields)
    winners: dict[str, tuple[int, int, str]] = {}  # column -> (rank, index, kind)
    v6: dict[str, tuple[int, int, str]] = {}  # column -> best IPv6 element
    wanted: dict[int, str] = {}  # field index -> kind, for every field we read
    first: dict[int, int] = {}  # ie -> field index
    for i, f in enumerate(fields):
        if f.enterprise != 0 or f.variable:
            continue
        first.setdefault(f.ie, i)
        hit = ies.column_of(f.ie, 0, f.length)
        if hit is not None:
            column, rank, kind = hit
            if column not in winners or rank < winners[column][0]:
                winners[column] = (rank, i, kind)
            if kind == "ipv6" and (column not in v6 or rank < v6[column][0]):
                v6[column] = (rank, i, kind)
    # A template with both an IPv4 and an IPv6 element for one column (nProbe-style dual-stack templates): the
    # IPv6 one is read too, and used in the records where the IPv4 one is 0.0.0.0.
    alternates = {col: v6[col] for col, (_, _, kind) in winners.items() if kind == "ipv4" and col in v6}
    for ie_id, i in first.items():
        known = ies.REGISTRY.get(ie_id)
        if ie_id in ies.OPTIONS_IES or ie_id in ies.START_TIME_IES or ie_id in ies.END_TIME_IES:
            if 1 <= fields[i].length <= 8:
                wanted[i] = known.kind if known else "unsigned"
    for _, i, kind in [*winners.values(), *alternates.values()]:
        wanted[i] = kind

    refs_by_index: dict[int, FieldRef] = {}
    seg, off = 0, 0
    segments: list[int] = []
    for i, f in enumerate(fields):
        if f.variable:
            segments.append(off)
            seg, off = seg + 1, 0
            continue
        if i in wanted:
            refs_by_index[i] = FieldRef(f"f{i}", seg, off, f.length)
        off += f.length
    segments.append(off)
    nvar = len(segments) - 1
    reclen = sum(segments) + nvar
    compiled = Compiled(options, fixed, reclen, tuple(segments), fast=fixed and not options)
    compiled.columns = {col: (refs_by_index[i], kind) for col, (_, i, kind) in winners.items()}
    compiled.alternates = {col: refs_by_index[i] for col, (_, i, _) in alternates.items()}
    compiled.refs = {ie_id: refs_by_index[i] for ie_id, i in first.items() if i in refs_by_index}
    compiled.plan = _plan(compiled)
    return compiled


_UINT_IES = ies.OPTIONS_IES | set(ies.START_TIME_IES) | set(ies.END_TIME_IES)
"""Elements read as integers besides integer columns: sampling and options values, times."""


def _plan(compiled: Compiled) -> Plan:
    """The kernel's field plan: integer columns (read into their column's width) and elements (times: 32 bits
    when they fit, else 64; sampling and options values: 64), and address columns (with their IPv6 alternates)."""
    uints = [(ref.name, ref.seg, ref.offset, ref.length, 4 if ref.length <= 4 and ie not in ies.OPTIONS_IES else 8)
             for ie, ref in compiled.refs.items() if ie in _UINT_IES]
    addresses: list[tuple[str, int, int, str, tuple[int, int] | None]] = []
    for column, (ref, kind) in compiled.columns.items():
        if kind in ("ipv4", "ipv6"):
            alt = compiled.alternates.get(column)
            addresses.append((column, ref.seg, ref.offset, kind, None if alt is None else (alt.seg, alt.offset)))
        else:
            uints.append((ref.name, ref.seg, ref.offset, ref.length, _WIDTH[column]))
    return make_plan(uints, addresses)


_WIDTH = {c.name: c.numpy_dtype.itemsize for c in FLOWS.columns if c.numpy_dtype.kind == "u"}
"""Integer ``flows`` columns: their width in bytes (a field is read straight into its column's type)."""


def walk_variable(compiled: Compiled, body: bytes | memoryview, start: int, end: int,
                  out: list[int]) -> tuple[int, bool]:
    """Find the records of a variable-length data set in ``body[start:end]`` (RFC 7011 section 7).

    Appends, per record, the offset of each fixed segment (``len(compiled.segments)`` values) to ``out``. Returns
    (records found, whether the set ended inside a record). Trailing bytes shorter than the shortest record are
    padding. This is the one per-record Python loop of the decoder; fixed-length templates never use it.
    """
    *before, last = compiled.segments
    minlen = compiled.reclen
    append = out.append
    pos, n = start, 0
    while end - pos >= minlen:
        mark = len(out)
        append(pos)
        p = pos
        for fixed in before:
            p += fixed
            if p >= end:
                del out[mark:]
                return n, True
            length = body[p]
            if length == 255:
                if p + 3 > end:
                    del out[mark:]
                    return n, True
                length = ((body[p + 1] << 8) | body[p + 2]) + 2
            p += length + 1
            append(p)
        p += last
        if p > end:
            del out[mark:]
            return n, True
        n += 1
        pos = p
    return n, False


VECTOR_MIN_SETS = 8
"""Below this many sets still being walked, :func:`walk_sets` finishes them with :func:`walk_variable`."""


def walk_sets(compiled: Compiled, buf: bytes, set_start: np.ndarray,
              set_end: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Find the records of many variable-length data sets at once (all in ``buf``).

    Records within a set are found one after the other, but the k-th records of all sets are found together with
    numpy: the loop runs over record *positions* (about 30 in a typical datagram), not over records. When fewer
    than ``VECTOR_MIN_SETS`` sets are left (one set of thousands of tiny records, say), the rest is walked by
    :func:`walk_variable`.

    Returns (records per set, segment offsets per record in set order with shape (records, segments), and whether
    each set ended inside a record).
    """
    *before, last = compiled.segments
    nseg = len(compiled.segments)
    minlen = compiled.reclen
    data = np.frombuffer(buf + b"\0\0\0", dtype=np.uint8)  # +3: reading a long length at the end stays in range
    top = len(buf) - 1
    pos = np.asarray(set_start, dtype=np.int64).copy()
    end = np.asarray(set_end, dtype=np.int64)
    counts = np.zeros(len(pos), dtype=np.int64)
    broken = np.zeros(len(pos), dtype=bool)
    blocks: list[tuple[np.ndarray, np.ndarray]] = []
    active = np.nonzero(end - pos >= minlen)[0]
    while len(active) >= VECTOR_MIN_SETS:
        p, e = pos[active], end[active]
        ok = np.ones(len(active), dtype=bool)
        segs = [p]
        for fixed in before:
            p = p + fixed
            ok &= p < e
            at = np.minimum(p, top)
            length = data[at].astype(np.int64)
            long = length == 255
            if long.any():
                ok &= ~long | (p + 3 <= e)
                length = np.where(long, ((data[at + 1].astype(np.int64) << 8) | data[at + 2]) + 2, length)
            p = p + length + 1
            segs.append(p)
        p = p + last
        ok &= p <= e
        broken[active[~ok]] = True
        good = active[ok]
        blocks.append((good, np.stack(segs, axis=1)[ok]))
        counts[good] += 1
        pos[good] = p[ok]
        active = good[end[good] - pos[good] >= minlen]
    for i in active.tolist():  # the long tail, if any
        offsets: list[int] = []
        n, bad = walk_variable(compiled, buf, int(pos[i]), int(end[i]), offsets)
        counts[i] += n
        broken[i] |= bad
        if n:
            blocks.append((np.full(n, i, dtype=np.int64), np.asarray(offsets, dtype=np.int64).reshape(n, nseg)))
    if not blocks:
        return counts, np.zeros((0, nseg), dtype=np.int64), broken
    owner = np.concatenate([b[0] for b in blocks])
    starts = np.concatenate([b[1] for b in blocks])
    return counts, starts[np.argsort(owner, kind="stable")], broken


__all__ = ["BadRecord", "Compiled", "Field", "FieldRef", "Template",
           "compile_spec", "compile_template", "fields_of", "spec_of", "template_cost", "walk_variable", "V9_SCOPE"]
