"""Addresses as text, the one way flowmed prints them (every command, every report, every query result).

flowmed stores every address as 16 bytes, IPv4 as IPv4-mapped (``::ffff:a.b.c.d``, see
:func:`decoders.schema.ipv4_mapped`). People read them the way they were configured and exported:

* an IPv4-mapped address prints as IPv4 (``10.1.0.7``), never as ``::ffff:10.1.0.7``;
* other addresses print as compressed IPv6 (``2001:db8::1``);
* a network prints as ``address/length`` with the length of its own family (``10.1.0.0/24``, ``2001:db8::/56``);
  a single host (IPv4 /32 = stored /128, IPv6 /128) prints as the bare address;
* where the all-zero address means "none" (the NAT address of a record that was not translated, an unset field),
  :func:`optional_address_text` prints it as an empty string, not ``::``.
"""

from __future__ import annotations

import ipaddress

__all__ = ["address_text", "network_text", "optional_address_text"]

_ZERO = bytes(16)


def _v6(value: bytes | str | int | ipaddress.IPv4Address | ipaddress.IPv6Address) -> ipaddress.IPv6Address:
    """``value`` as an IPv6 address (IPv4 as IPv4-mapped): 16 stored bytes (shorter ones are NUL-padded, as numpy
    strips trailing NULs of ``S16`` items), 4 IPv4 bytes, a 128-bit integer or any text form."""
    if isinstance(value, ipaddress.IPv6Address):
        return value
    if isinstance(value, ipaddress.IPv4Address):
        return ipaddress.IPv6Address(b"\0" * 10 + b"\xff\xff" + value.packed)
    if isinstance(value, bytes | bytearray | memoryview):
        raw = bytes(value)
        if len(raw) == 4:
            raw = b"\0" * 10 + b"\xff\xff" + raw
        return ipaddress.IPv6Address(raw.ljust(16, b"\0"))
    if isinstance(value, int):
        return ipaddress.IPv6Address(value)
    return _v6(ipaddress.ip_address(str(value).strip()))


def address_text(value: bytes | str | int | ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """One address as text: IPv4-mapped as IPv4 (``10.1.0.7``), other addresses as compressed IPv6.

    Raises ValueError for text that is not an address."""
    addr = _v6(value)
    return str(addr.ipv4_mapped) if addr.ipv4_mapped is not None else str(addr)


def optional_address_text(value: bytes | str | int | None) -> str:
    """Like :func:`address_text`, but the all-zero address (``::``, "no address") and None print as ``""``."""
    if value is None or value == "" or value == b"":
        return ""
    addr = _v6(value)
    return "" if addr.packed == _ZERO else address_text(addr)


def network_text(value: bytes | str | int | ipaddress.IPv6Address, prefix_len: int) -> str:
    """A network as text; ``prefix_len`` is in stored (IPv6) terms, so an IPv4 /24 is 120.

    IPv4-mapped networks of at least /96 print as IPv4 (``10.1.0.0/24``); a full-length prefix prints as the bare
    address (``10.1.0.7``, ``2001:db8::1``), as a single host is shown everywhere else."""
    addr = _v6(value)
    plen = int(prefix_len)
    if addr.ipv4_mapped is not None and plen >= 96:
        return str(addr.ipv4_mapped) if plen >= 128 else f"{addr.ipv4_mapped}/{plen - 96}"
    return str(addr) if plen >= 128 else f"{addr}/{plen}"
