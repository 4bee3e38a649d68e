"""DOCSIS SAMIS service definitions (SAMIS-TYPE-1, SAMIS-TYPE-2): field names, types, and name matching.

Records are always decoded from the template the exporter sent; these lists are what the CMTS simulator sends and
what the mediation looks for, **by name** (case-insensitive, namespace prefix dropped), never by position.
SAMIS-TYPE-1's field order and types follow DOCSIS OSSI as decoded by Wireshark's SAMIS dissector; SAMIS-TYPE-2's
list is the subset working collectors read from it (its exact OSSI list was not available: see the IPDR notes).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from decoders.ipdr.xdr import CompiledTemplate, DecodedRecords

STRING, UINT, INT, ULONG, BOOL, HEX = 0x28, 0x22, 0x21, 0x24, 0x29, 0x27
DATETIME, DATETIME_MS, IPV4, IPV6, MAC = 0x122, 0x224, 0x322, 0x427, 0x723

SAMIS_TYPE_1: tuple[tuple[str, int], ...] = (
    ("CmtsHostName", STRING),
    ("CmtsSysUpTime", UINT),
    ("CmtsIpv4Addr", IPV4),
    ("CmtsIpv6Addr", IPV6),
    ("CmtsMdIfName", STRING),
    ("CmtsMdIfIndex", UINT),
    ("CmMacAddr", MAC),
    ("CmIpv4Addr", IPV4),
    ("CmIpv6Addr", IPV6),
    ("CmIpv6LinkLocalAddr", IPV6),
    ("CmQosVersion", INT),
    ("CmRegStatusValue", INT),
    ("CmLastRegTime", DATETIME),
    ("RecType", INT),
    ("RecCreationTime", DATETIME_MS),
    ("ServiceFlowChSet", HEX),
    ("ServiceAppId", UINT),
    ("ServiceDsMulticast", BOOL),
    ("ServiceIdentifier", UINT),
    ("ServiceGateId", UINT),
    ("ServiceClassName", STRING),
    ("ServiceDirection", INT),
    ("ServiceOctetsPassed", ULONG),
    ("ServicePktsPassed", ULONG),
    ("ServiceSlaDropPkts", UINT),
    ("ServiceSlaDelayPkts", UINT),
    ("ServiceTimeCreated", UINT),
    ("ServiceTimeActive", UINT),
)
_TYPE_2_NAMES = ("CmtsHostName", "CmtsSysUpTime", "CmtsMdIfName", "CmtsMdIfIndex", "CmMacAddr", "RecType",
                 "RecCreationTime", "ServiceFlowChSet", "ServiceAppId", "ServiceDsMulticast", "ServiceIdentifier",
                 "ServiceGateId", "ServiceClassName", "ServiceDirection", "ServiceOctetsPassed",
                 "ServicePktsPassed", "ServiceSlaDropPkts", "ServiceSlaDelayPkts", "ServiceTimeCreated",
                 "ServiceTimeActive")
SAMIS_TYPE_2: tuple[tuple[str, int], ...] = tuple(f for f in SAMIS_TYPE_1 if f[0] in _TYPE_2_NAMES)

CANONICAL: dict[str, str] = {name.lower(): name for name, _ in SAMIS_TYPE_1}
REQUIRED = ("CmMacAddr", "ServiceIdentifier", "ServiceDirection", "ServiceOctetsPassed")
"""Fields without which a record cannot be billed."""

REC_INTERIM, REC_STOP = 1, 2
DIR_DOWNSTREAM, DIR_UPSTREAM = 1, 2


def samis_kind(template: CompiledTemplate, session_name: str = "") -> str:
    """``"SAMIS-TYPE-1"``, ``"SAMIS-TYPE-2"``, ``"SAMIS"`` (billable fields present, type name unrecognised) or
    ``""`` (not a SAMIS template: decoded generically)."""
    for text in (template.type_name, template.schema_name, session_name):
        t = text.upper().replace("_", "-")
        if "SAMIS-TYPE-1" in t or "SAMIS-TYPE1" in t:
            return "SAMIS-TYPE-1"
        if "SAMIS-TYPE-2" in t or "SAMIS-TYPE2" in t:
            return "SAMIS-TYPE-2"
    names = {f.name.lower() for f in template.fields}
    return "SAMIS" if all(r.lower() in names for r in REQUIRED) else ""


def canonical_columns(records: DecodedRecords) -> dict[str, np.ndarray | pa.Array]:
    """The record columns keyed by canonical SAMIS names where the name matches one (case-insensitive)."""
    return {CANONICAL.get(k.lower(), k): v for k, v in records.columns.items()}


def format_macs_bytes(macs: np.ndarray) -> np.ndarray:
    """uint64 MACs (low 48 bits) as ``aa:bb:cc:dd:ee:ff`` text, vectorised: an (n, 17) uint8 array."""
    n = len(macs)
    raw = np.asarray(macs, dtype=">u8").view(np.uint8).reshape(n, 8)[:, 2:]
    hexd = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
    out = np.full((n, 17), ord(":"), dtype=np.uint8)
    out[:, 0::3] = hexd[raw >> 4]
    out[:, 1::3] = hexd[raw & 15]
    return out


def format_macs(macs: np.ndarray) -> np.ndarray:
    """uint64 MACs (low 48 bits) as ``aa:bb:cc:dd:ee:ff`` strings (object array)."""
    if len(macs) == 0:
        return np.empty(0, dtype=object)
    return format_macs_bytes(macs).view("S17").reshape(len(macs)).astype("U17").astype(object)


def parse_mac(text: str) -> int:
    """``aa:bb:cc:dd:ee:ff``, ``aa-bb-...``, ``aabb.ccdd.eeff`` or bare hex to an int."""
    digits = "".join(ch for ch in text if ch not in ":-. ")
    if len(digits) != 12:
        raise ValueError(f"not a MAC address: {text!r}")
    return int(digits, 16)
