"""RADIUS packets (RFC 2865/2866), sans I/O: parsing, the authenticators and the accounting messages.

:mod:`mediation.subscribers.radius` applies what the packets say to the bindings.
"""

from __future__ import annotations

import hashlib
import ipaddress
import struct
from collections.abc import Sequence
from dataclasses import dataclass

ACCOUNTING_REQUEST, ACCOUNTING_RESPONSE = 4, 5
START, STOP, INTERIM, ACCOUNTING_ON, ACCOUNTING_OFF = 1, 2, 3, 7, 8

ATTRIBUTES = {
    "User-Name": 1, "NAS-IP-Address": 4, "NAS-Port": 5, "Framed-IP-Address": 8, "Class": 25,
    "Called-Station-Id": 30, "Calling-Station-Id": 31, "NAS-Identifier": 32, "Acct-Status-Type": 40,
    "Acct-Delay-Time": 41, "Acct-Input-Octets": 42, "Acct-Output-Octets": 43, "Acct-Session-Id": 44,
    "Acct-Session-Time": 46, "Acct-Input-Gigawords": 52, "Acct-Output-Gigawords": 53, "Event-Timestamp": 55,
    "NAS-Port-Id": 87, "NAS-IPv6-Address": 95, "Framed-IPv6-Prefix": 97, "Delegated-IPv6-Prefix": 123,
    "Framed-IPv6-Address": 168,
}

class RadiusError(ValueError):
    """A malformed RADIUS packet; ``reason`` is a stable metric label."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass
class Packet:
    code: int
    identifier: int
    authenticator: bytes
    attributes: list[tuple[int, bytes]]
    raw: bytes

    def get(self, attr: int) -> bytes | None:
        for t, v in self.attributes:
            if t == attr:
                return v
        return None

    def all(self, attr: int) -> list[bytes]:
        return [v for t, v in self.attributes if t == attr]

    def integer(self, attr: int) -> int | None:
        v = self.get(attr)
        return int.from_bytes(v, "big") if v is not None and len(v) == 4 else None


def parse_packet(data: bytes) -> Packet:
    """Parse a RADIUS packet; raises :class:`RadiusError` for anything malformed."""
    if len(data) < 20:
        raise RadiusError("short", f"packet of {len(data)} bytes, less than the 20-byte header")
    code, identifier, length = struct.unpack_from("!BBH", data)
    if length < 20 or length > 4096 or length > len(data):
        raise RadiusError("bad_length", f"length field {length} for a datagram of {len(data)} bytes")
    attributes = []
    pos = 20
    while pos < length:
        if pos + 2 > length:
            raise RadiusError("bad_attribute", "truncated attribute header")
        t, alen = data[pos], data[pos + 1]
        if alen < 2 or pos + alen > length:
            raise RadiusError("bad_attribute", f"attribute {t} with length {alen}")
        attributes.append((t, data[pos + 2:pos + alen]))
        pos += alen
    return Packet(code, identifier, data[4:20], attributes, data[:length])


def request_authenticator_ok(packet: Packet, secret: bytes) -> bool:
    """RFC 2866 3: MD5(Code + Identifier + Length + 16 zero octets + Attributes + Secret) == Authenticator."""
    raw = packet.raw
    expected = hashlib.md5(raw[:4] + b"\0" * 16 + raw[20:] + secret).digest()
    return expected == packet.authenticator


def encode_attributes(attributes: Sequence[tuple[int, bytes]]) -> bytes:
    """Attributes as RADIUS type-length-value octets."""
    return b"".join(struct.pack("!BB", t, len(v) + 2) + v for t, v in attributes)


def accounting_response(request: Packet, secret: bytes) -> bytes:
    """Accounting-Response to ``request``: MD5(Code + Identifier + Length + RequestAuth + Attributes + Secret)."""
    header = struct.pack("!BBH", ACCOUNTING_RESPONSE, request.identifier, 20)
    auth = hashlib.md5(header + request.authenticator + secret).digest()
    return header + auth


def accounting_request(identifier: int, attributes: Sequence[tuple[int, bytes]], secret: bytes) -> bytes:
    """An Accounting-Request with a correct Request Authenticator (tests and tools)."""
    body = encode_attributes(attributes)
    header = struct.pack("!BBH", ACCOUNTING_REQUEST, identifier, 20 + len(body))
    auth = hashlib.md5(header + b"\0" * 16 + body + secret).digest()
    return header + auth + body


def ipv6_prefix(value: bytes) -> str | None:
    """Framed-IPv6-Prefix / Delegated-IPv6-Prefix value (reserved, length, prefix bytes) as text."""
    if len(value) < 2 or value[1] > 128 or len(value) - 2 > 16:
        return None
    raw = value[2:] + b"\0" * (18 - len(value))
    return f"{ipaddress.IPv6Address(raw)}/{value[1]}"


def attribute_text(value: bytes | None) -> str:
    """An attribute value as text (UTF-8, bad bytes replaced; '' when absent)."""
    return value.decode("utf-8", "replace") if value is not None else ""
