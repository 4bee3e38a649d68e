"""IPDR compact XDR: field types and a columnar decoder for the records of one template.

IPDR's XDR is not RFC 4506: nothing is padded to 4 bytes. Fixed types are 1, 2, 4 or 8 bytes big-endian; string,
hexBinary and the types derived from hexBinary (ipV6Addr, uuid, ipAddr) are ``u32 length + bytes``. A typeId's low
byte is the base type and the byte above it the derived-type index; a derived type is encoded as its base.

Records of one template are decoded **column by column**: for every enabled field in template order, the values
of all records are gathered at once with numpy fancy indexing from per-record offsets, and the offsets advance by
the field's size (fixed) or by ``4 + length`` (variable). The only Python loop is over the template's fields, so the
cost per record is a few numpy element operations per field. Records whose fields run past their declared length,
or that do not consume it exactly, are flagged bad and dropped (counted), without disturbing their neighbours.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import cast

import numpy as np
import pyarrow as pa

from decoders.ipdr.errors import IpdrTemplateError
from decoders.ipdr.messages import TemplateBlock

# typeId -> (name, fixed size in bytes or 0 for length-prefixed, numpy big-endian dtype for fixed types)
TYPES: dict[int, tuple[str, int, str | None]] = {
    0x21: ("int", 4, ">i4"),
    0x22: ("unsignedInt", 4, ">u4"),
    0x23: ("long", 8, ">i8"),
    0x24: ("unsignedLong", 8, ">u8"),
    0x25: ("float", 4, ">f4"),
    0x26: ("double", 8, ">f8"),
    0x27: ("hexBinary", 0, None),
    0x28: ("string", 0, None),
    0x29: ("boolean", 1, "u1"),
    0x2A: ("byte", 1, "i1"),
    0x2B: ("unsignedByte", 1, "u1"),
    0x2C: ("short", 2, ">i2"),
    0x2D: ("unsignedShort", 2, ">u2"),
    0x122: ("dateTime", 4, ">u4"),
    0x224: ("dateTimeMsec", 8, ">u8"),
    0x322: ("ipV4Addr", 4, ">u4"),
    0x427: ("ipV6Addr", 0, None),
    0x527: ("uuid", 0, None),
    0x623: ("dateTimeUsec", 8, ">i8"),
    0x723: ("macAddress", 8, ">u8"),
    0x827: ("ipAddr", 0, None),
}
TYPE_MASK = 0x0FFF
"""The reference exporter sets an internal 0x4000 'variable length' bit on some typeIds; mask it off."""
IPV6_BARE = 0x10000
"""Pseudo type for exporters configured as sending ipV6Addr as a bare 16 bytes (2005 reference code)."""
MAC_MASK = np.uint64(0xFFFFFFFFFFFF)
_PAD = 16  # zero bytes appended to the buffer so clamped gathers of bad records stay in bounds


def normalise_name(name: str) -> str:
    """Field names may be qualified (``DOCSIS-CMTS:CmtsHostName``, ``urn:...:CmMacAddr``): keep the last part."""
    for sep in (":", "/", "#"):
        name = name.rpartition(sep)[2]
    return name


@dataclass(frozen=True, slots=True)
class CompiledField:
    name: str
    """Normalised name (namespace prefix dropped)."""
    type_id: int
    """Masked typeId (or IPV6_BARE)."""
    type_name: str
    size: int
    dtype: str | None


@dataclass(frozen=True, slots=True)
class CompiledTemplate:
    """The enabled fields of a template, in wire order, ready for :func:`decode_records`."""

    template_id: int
    type_name: str
    schema_name: str
    fields: tuple[CompiledField, ...]
    all_names: tuple[str, ...]
    """Every field name of the template, including disabled ones (which are absent from DATA)."""
    segments: tuple[tuple[CompiledField, ...], ...] = ()
    """The fields grouped into runs of fixed-size fields (decoded with one gather and a structured view) and
    single variable-length fields."""


def compile_template(block: TemplateBlock, *, max_fields: int = 512, ipv6_bare: bool = False) -> CompiledTemplate:
    """Check a template block and prepare it for decoding.

    Raises :class:`IpdrTemplateError` when it has more than ``max_fields`` fields or an *enabled* field of an unknown
    type (its size is unknown, so no record of the template could be decoded). Disabled fields are not on the
    wire, so their type does not matter.
    """
    if len(block.fields) > max_fields:
        raise IpdrTemplateError(f"template {block.template_id}: {len(block.fields)} fields, limit {max_fields}")
    fields = []
    seen: set[str] = set()
    for f in block.fields:
        name = normalise_name(f.name)
        if not f.enabled:
            continue
        type_id = f.type_id & TYPE_MASK
        if type_id not in TYPES:
            raise IpdrTemplateError(f"template {block.template_id} ({block.type_name}): field {f.name!r} has unknown "
                                f"type 0x{f.type_id:x}", reason="unknown_field_type")
        if name in seen:
            raise IpdrTemplateError(f"template {block.template_id}: field {name!r} twice")
        seen.add(name)
        tname, size, dtype = TYPES[type_id]
        if type_id == 0x427 and ipv6_bare:
            type_id, size = IPV6_BARE, 16
        fields.append(CompiledField(name, type_id, tname, size, dtype))
    segments: list[tuple[CompiledField, ...]] = []
    run: list[CompiledField] = []
    for cf in fields:
        if cf.size:
            run.append(cf)
            continue
        if run:
            segments.append(tuple(run))
            run = []
        segments.append((cf,))
    if run:
        segments.append(tuple(run))
    return CompiledTemplate(block.template_id, block.type_name, block.schema_name, tuple(fields),
                            tuple(normalise_name(f.name) for f in block.fields), tuple(segments))


def _segment_dtype(fields: tuple[CompiledField, ...]) -> np.dtype:
    return np.dtype([(f"f{i}", "S16" if f.type_id == IPV6_BARE else f.dtype) for i, f in enumerate(fields)])


@dataclass(slots=True)
class DecodedRecords:
    """Columns of the good records of one template: numpy arrays for numbers, pyarrow arrays for text/bytes.

    Conversions: dateTime and dateTimeUsec become int64 UTC ms (``ms``), dateTimeMsec stays ms; ipV4Addr, ipV6Addr
    and ipAddr become ``S16`` (IPv4 mapped); macAddress becomes uint64 (low 48 bits); uuid ``S16``; string a pyarrow
    ``string`` array; hexBinary a pyarrow ``binary`` array. ``index`` maps each row back to its input record.
    """

    template: CompiledTemplate
    columns: dict[str, np.ndarray | pa.Array]
    index: np.ndarray
    bad: int
    """Records dropped because their fields did not fit their length."""

    def __len__(self) -> int:
        return len(self.index)


def _gather(u8: np.ndarray, off: np.ndarray, size: int) -> np.ndarray:
    """``size`` bytes at each offset, as a contiguous (n, size) uint8 array."""
    out: np.ndarray = u8[off].reshape(-1, 1) if size == 1 else u8[off[:, None] + np.arange(size, dtype=np.int64)]
    return out


def _fixed(u8: np.ndarray, off: np.ndarray, size: int, dtype: str) -> np.ndarray:
    raw = np.ascontiguousarray(_gather(u8, off, size))
    return raw.view(dtype).reshape(-1).astype(np.dtype(dtype).newbyteorder("="), copy=False)


def _var_bytes(u8: np.ndarray, start: np.ndarray, length: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Arrow-style (offsets int32, data uint8) of the slices ``u8[start:start+length]``, vectorised."""
    offsets = np.zeros(len(start) + 1, dtype=np.int64)
    np.cumsum(length, out=offsets[1:])
    total = int(offsets[-1])
    if total == 0:
        return offsets.astype(np.int32), np.zeros(0, dtype=np.uint8)
    # index of every byte: start of its slice + position within the slice
    idx = np.repeat(start - offsets[:-1], length) + np.arange(total, dtype=np.int64)
    return offsets.astype(np.int32), u8[idx]


def _ip_from_var(u8: np.ndarray, start: np.ndarray, length: np.ndarray) -> np.ndarray:
    """Length-prefixed address values (ipV6Addr, ipAddr) as S16: 16 bytes as is, 4 bytes IPv4-mapped, 0 bytes
    zero; other lengths are parsed as address text (some CMTSs send IPv6 as a string), zero if that fails."""
    n = len(start)
    out = np.zeros((n, 16), dtype=np.uint8)
    is16, is4 = length == 16, length == 4
    if is16.any():
        out[is16] = _gather(u8, start[is16], 16)
    if is4.any():
        out[is4, 10:12] = 0xFF
        out[is4, 12:] = _gather(u8, start[is4], 4)
    odd = np.flatnonzero(~(is16 | is4) & (length > 0) & (length <= 64))
    for i in odd:  # rare: text encodings only
        text = u8[start[i] : start[i] + length[i]].tobytes().decode("ascii", "replace").strip("\x00 ")
        try:
            out[i] = np.frombuffer(ipaddress.ip_address(text).packed.rjust(16, b"\0"), np.uint8)
            if len(ipaddress.ip_address(text).packed) == 4:
                out[i, 10:12] = 0xFF
        except ValueError:
            pass
    return out.view("S16").reshape(n)


def decode_records(template: CompiledTemplate, buf: bytes, starts: np.ndarray, lengths: np.ndarray) -> DecodedRecords:
    """Decode the records ``buf[starts[i] : starts[i] + lengths[i]]``, all of ``template``, into columns.

    ``starts``/``lengths`` must lie within ``buf`` (the caller framed them). A record whose fields overrun its
    length or leave bytes over is dropped and counted in ``bad``; the others decode normally.
    """
    n = len(starts)
    # a bad record's gathers are clamped to its end, so they may read one segment beyond the buffer: pad by the
    # widest fixed segment (found by fuzzing: a 24-byte segment overran the 16-byte pad)
    pad = max([_PAD] + [_segment_dtype(seg).itemsize for seg in template.segments if seg[0].size])
    u8 = np.frombuffer(bytes(buf) + bytes(pad), dtype=np.uint8)
    off = np.asarray(starts, dtype=np.int64).copy()
    ends = off + np.asarray(lengths, dtype=np.int64)
    bad = np.zeros(n, dtype=bool)
    cols: dict[str, np.ndarray | pa.Array] = {}
    for seg in template.segments:
        if seg[0].size:  # a run of fixed-size fields: one gather, one structured view
            dtype = _segment_dtype(seg)
            over = off + dtype.itemsize > ends
            if over.any():
                bad |= over
                off = np.minimum(off, ends)
            block = np.ascontiguousarray(_gather(u8, off, dtype.itemsize)).view(dtype).reshape(n)
            for i, f in enumerate(seg):
                cols[f.name] = _convert_fixed(f, block[f"f{i}"])
            off = off + dtype.itemsize
            continue
        (f,) = seg
        over = off + 4 > ends
        if over.any():
            bad |= over
            off = np.minimum(off, ends)
        length = _fixed(u8, off, 4, ">u4").astype(np.int64)
        length[bad] = 0
        value_at = off + 4
        over = value_at + length > ends
        if over.any():
            bad |= over
            length[over] = 0
        off = value_at + length
        cols[f.name] = _convert_var(f, u8, value_at, length)
    bad |= off != ends
    keep = np.flatnonzero(~bad)
    if len(keep) != n:
        cols = {k: (v.take(pa.array(keep)) if isinstance(v, pa.Array) else v[keep]) for k, v in cols.items()}
    return DecodedRecords(template, cols, keep, int(n - len(keep)))


def _convert_fixed(f: CompiledField, raw: np.ndarray) -> np.ndarray:
    """A fixed-size field's values (a big-endian view) in the column representation."""
    t = f.type_id
    if t == IPV6_BARE:
        return np.ascontiguousarray(raw)
    values: np.ndarray = raw.astype(np.dtype(f.dtype).newbyteorder("="))
    if t == 0x122:  # dateTime: seconds -> ms
        return values.astype(np.int64) * 1000
    if t == 0x224:  # dateTimeMsec
        return values.astype(np.int64)
    if t == 0x623:  # dateTimeUsec -> ms
        return values // 1000
    if t == 0x723:  # macAddress: 2 pad bytes + 6 MAC bytes
        return values & MAC_MASK
    if t == 0x322:  # ipV4Addr -> IPv4-mapped S16
        from decoders.schema import ipv4_mapped

        return ipv4_mapped(values)
    if t == 0x29:
        flags: np.ndarray = values != 0
        return flags
    return values


def _convert_var(f: CompiledField, u8: np.ndarray, at: np.ndarray, length: np.ndarray) -> np.ndarray | pa.Array:
    t = f.type_id
    if t in (0x427, 0x827):
        return _ip_from_var(u8, at, length)
    if t == 0x527:  # uuid: 16 bytes expected; anything else is zero-filled into S16
        out = np.zeros((len(at), 16), dtype=np.uint8)
        ok = length == 16
        if ok.any():
            out[ok] = _gather(u8, at[ok], 16)
        return out.view("S16").reshape(-1)
    offsets, data = _var_bytes(u8, at, length)
    typ = pa.string() if t == 0x28 else pa.binary()
    arr = pa.Array.from_buffers(typ, len(at), [None, pa.py_buffer(offsets), pa.py_buffer(data)])
    if t == 0x28:
        try:
            arr.validate(full=True)  # invalid UTF-8 would poison every consumer of the column
        except pa.ArrowInvalid:
            arr = pa.array([bytes(b).decode("utf-8", "replace") for b in arr.cast(pa.binary()).to_pylist()],
                           pa.string())
    return arr


def encode_value(type_id: int, value: object) -> bytes:
    """Encode one field value (test exporters and the simulator): ints, str, bytes, MAC as int, IPs as text."""
    import struct

    t = type_id & TYPE_MASK
    name, size, dtype = TYPES[t]
    if t == 0x28:
        raw = str(value).encode()
        return struct.pack(">I", len(raw)) + raw
    if t in (0x27, 0x527):
        # bytes, or a list of ints from a test exporter (bytes() raises for anything else)
        raw = bytes(value) if isinstance(value, bytes | bytearray | memoryview) else bytes(cast(list[int], value))
        return struct.pack(">I", len(raw)) + raw
    if t in (0x427, 0x827):
        if value in (None, b"", ""):
            return struct.pack(">I", 0)
        raw = value if isinstance(value, bytes) else ipaddress.ip_address(value).packed  # type: ignore[arg-type]
        return struct.pack(">I", len(raw)) + raw
    if t == 0x322 and isinstance(value, str):
        return ipaddress.IPv4Address(value).packed
    return np.array([value], dtype=dtype).tobytes()
