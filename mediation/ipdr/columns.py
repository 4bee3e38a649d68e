"""Decoded IPDR records as Arrow columns of the ``ipdr_records`` and ``usage`` tables: the SAMIS field names, string
columns as constants or codes (no Python string per row), MACs and channel sets formatted once, and the JSON text of
records of other templates."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from decoders.ipdr.samis import format_macs, format_macs_bytes
from decoders.schema import Column, Table
from mediation.ipdr.tables import IPDR_RECORDS

SAMIS_COLUMNS = {
    "cmts_host": "CmtsHostName", "cmts_sys_up_time": "CmtsSysUpTime", "cmts_ipv4": "CmtsIpv4Addr",
    "cmts_ipv6": "CmtsIpv6Addr", "md_if_name": "CmtsMdIfName", "md_if_index": "CmtsMdIfIndex",
    "cm_ipv4": "CmIpv4Addr", "cm_ipv6": "CmIpv6Addr", "cm_ipv6_link_local": "CmIpv6LinkLocalAddr",
    "cm_qos_version": "CmQosVersion", "cm_reg_status": "CmRegStatusValue", "cm_last_reg_time": "CmLastRegTime",
    "rec_type": "RecType", "rec_creation_time": "RecCreationTime", "service_app_id": "ServiceAppId",
    "service_ds_multicast": "ServiceDsMulticast", "service_identifier": "ServiceIdentifier",
    "service_gate_id": "ServiceGateId", "service_class_name": "ServiceClassName",
    "service_direction": "ServiceDirection", "service_octets_passed": "ServiceOctetsPassed",
    "service_pkts_passed": "ServicePktsPassed", "service_sla_drop_pkts": "ServiceSlaDropPkts",
    "service_sla_delay_pkts": "ServiceSlaDelayPkts", "service_time_created": "ServiceTimeCreated",
    "service_time_active": "ServiceTimeActive",
}


@dataclass(frozen=True, slots=True)
class Const:
    """A string column with one value in every row (built as a dictionary array, not n Python strings)."""

    value: str


@dataclass(frozen=True, slots=True)
class Coded:
    """A string column as small integer codes into a vocabulary."""

    codes: np.ndarray
    vocab: list[str]


def empty_columns(table: Table, n: int) -> dict[str, Any]:
    """Zero numeric columns and empty-string constant columns for ``n`` rows."""
    return {c.name: (Const("") if c.kind == "string" else np.zeros(n, dtype=c.numpy_dtype)) for c in table.columns}


def to_column(values: Any, column: Column) -> Any:
    """A decoded column converted to the table column's representation (strings stay Arrow arrays)."""
    if column.kind == "string":
        return values if isinstance(values, pa.Array) else np.asarray(values, dtype=object)
    if isinstance(values, pa.Array):
        values = values.to_numpy(zero_copy_only=False)
    if column.kind == "ip":
        return np.asarray(values, dtype="S16")
    return np.asarray(values).astype(column.numpy_dtype, copy=False)


def string_codes(values: Any, n: int) -> tuple[np.ndarray, list[str]]:
    """(codes, distinct values) of a string column (Arrow array, constant or object array)."""
    if isinstance(values, Const):
        return np.zeros(n, dtype=np.int64), [values.value]
    if isinstance(values, pa.Array):
        enc = values.dictionary_encode()
        return enc.indices.to_numpy(zero_copy_only=False).astype(np.int64), enc.dictionary.to_pylist()
    uniq, inv = np.unique(np.asarray(values).astype(str), return_inverse=True)
    return inv.astype(np.int64), uniq.tolist()


def fill_samis(out: dict[str, Any], cols: dict[str, Any]) -> None:
    for name, field_name in SAMIS_COLUMNS.items():
        if field_name in cols:
            out[name] = to_column(cols[field_name], IPDR_RECORDS.column(name))
    if "CmMacAddr" in cols:
        out["cm_mac"] = mac_column(cols["CmMacAddr"])
    if "ServiceFlowChSet" in cols:
        out["service_flow_ch_set"] = channel_sets(cols["ServiceFlowChSet"])


def mac_column(macs: np.ndarray) -> pa.Array:
    """MACs as an Arrow string array, built from one vectorised byte buffer."""
    text = format_macs_bytes(np.asarray(macs, dtype=np.uint64))
    offsets = np.arange(0, 17 * (len(text) + 1), 17, dtype=np.int32)
    return pa.Array.from_buffers(pa.string(), len(text), [None, pa.py_buffer(offsets), pa.py_buffer(text.tobytes())])


def channel_sets(arr: pa.Array) -> Coded:
    """hexBinary channel sets (one byte per channel) as '1,2,3' text; formatted once per distinct value."""
    enc = arr.dictionary_encode()
    texts = [",".join(str(b) for b in v) if v is not None else "" for v in enc.dictionary.to_pylist()]
    return Coded(enc.indices.to_numpy(zero_copy_only=False).astype(np.int64), texts)


def fields_json(cols: dict[str, Any], n: int, types: dict[str, int]) -> np.ndarray:
    """Every field of records of a non-SAMIS template as JSON text (a Python loop per record: these templates carry
    registration and CPE events, orders of magnitude fewer records than SAMIS).

    Addresses are text, MACs ``aa:bb:...``, binary hex; a hexBinary named ``...Ipv4AddrList`` / ``...Ipv6AddrList``
    (how CMTSs send CPE address lists) becomes a list of addresses."""
    lists = {}
    for name, v in cols.items():
        t = types.get(name.lower(), 0)
        if t == 0x723:
            lists[name] = format_macs(v).tolist()
        elif isinstance(v, pa.Array):
            values = v.to_pylist()
            if name.lower().endswith(("ipv4addrlist", "ipv6addrlist")) and v.type == pa.binary():
                width = 4 if name.lower().endswith("ipv4addrlist") else 16
                lists[name] = [_addr_list(x, width) for x in values]
            else:
                lists[name] = [x.hex() if isinstance(x, bytes) else x for x in values]
        elif v.dtype.kind == "S":
            lists[name] = [_addr_text(x) if t != 0x527 else x.hex() for x in v.tolist()]
        else:
            lists[name] = v.tolist()
    out = np.empty(n, dtype=object)
    names = list(lists)
    for i in range(n):
        out[i] = json.dumps({k: lists[k][i] for k in names}, separators=(",", ":"))
    return out


def _addr_list(raw: bytes | None, width: int) -> list[str] | str:
    if raw is None:
        return []
    if len(raw) % width:
        return raw.hex()  # not packed addresses after all: keep the bytes
    return [_addr_text(raw[i:i + width]) for i in range(0, len(raw), width)]


def _addr_text(raw: bytes) -> str:
    from decoders.addresses import address_text

    return address_text(raw)


def to_arrow(values: Any, column: Column, n: int) -> pa.Array:
    if isinstance(values, Const):
        return pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, np.int32)),
                                              pa.array([values.value], pa.string())).dictionary_decode()
    if isinstance(values, Coded):
        return pa.DictionaryArray.from_arrays(pa.array(np.asarray(values.codes, np.int32)),
                                              pa.array(values.vocab, pa.string())).dictionary_decode()
    if isinstance(values, pa.Array):
        return values if values.type == column.arrow_type else values.cast(column.arrow_type)
    if column.kind == "ip":
        data = np.ascontiguousarray(values, dtype="S16")
        return pa.FixedSizeBinaryArray.from_buffers(pa.binary(16), len(data), [None, pa.py_buffer(data.tobytes())])
    if column.kind == "timestamp_ms":
        return pa.array(np.asarray(values, dtype="int64"), type=pa.int64()).cast(column.arrow_type)
    if column.kind == "string":
        return pa.array(values, type=pa.string())
    return pa.array(np.asarray(values, dtype=column.numpy_dtype), type=column.arrow_type)


def to_batch(table: Table, columns: dict[str, Any], n: int) -> pa.RecordBatch:
    """A RecordBatch of ``table`` from numpy columns, Arrow arrays, constants and coded strings."""
    arrays = [to_arrow(columns[c.name], c, n) for c in table.columns]
    return pa.RecordBatch.from_arrays(arrays, schema=table.arrow_schema)
