"""Addresses and networks as the bindings keep them: ``S16`` (IPv6, IPv4 mapped) split into two big-endian uint64
halves, and networks as (high, low, prefix length in IPv6 terms)."""

from __future__ import annotations

import ipaddress
import socket

import numpy as np

_U64 = np.uint64
ALL_ONES = 0xFFFFFFFFFFFFFFFF

def split_addresses(addresses: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``S16`` addresses as (high, low) big-endian uint64 halves."""
    words = np.ascontiguousarray(addresses, dtype="S16").view(">u8").reshape(-1, 2)
    return words[:, 0].astype(_U64), words[:, 1].astype(_U64)


def join_addresses(hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
    """Inverse of :func:`split_addresses`."""
    words = np.empty((len(hi), 2), dtype=">u8")
    words[:, 0] = hi
    words[:, 1] = lo
    return words.view("S16").reshape(len(hi))


def prefix_masks(prefix_len: int) -> tuple[int, int]:
    """The (high, low) uint64 masks of a prefix length in IPv6 terms."""
    if prefix_len <= 0:
        return 0, 0
    if prefix_len <= 64:
        return (ALL_ONES << (64 - prefix_len)) & ALL_ONES, 0
    return ALL_ONES, (ALL_ONES << (128 - prefix_len)) & ALL_ONES


def parse_network(text: str) -> tuple[int, int, int]:
    """``"192.0.2.7"``, ``"10.0.0.0/24"`` or ``"2001:db8::/56"`` -> (hi, lo, prefix length in IPv6 terms).

    IPv4 is IPv4-mapped (``/32`` becomes ``/128``); host bits are cleared.
    """
    addr, _, length = text.strip().partition("/")
    try:  # inet_pton is strict and an order of magnitude faster than ipaddress
        if ":" in addr:
            value, plen = int.from_bytes(socket.inet_pton(socket.AF_INET6, addr), "big"), 128
        else:
            value, plen = (0xFFFF << 32) | int.from_bytes(socket.inet_pton(socket.AF_INET, addr), "big"), 128
            if length:
                length = str(int(length) + 96) if length.isdigit() and int(length) <= 32 else "x"
        if length:
            if not length.isdigit() or int(length) > 128:
                raise ValueError
            plen = int(length)
    except (OSError, ValueError):
        raise ValueError(f"{text!r} is not an IP address or prefix") from None
    hi, lo = value >> 64, value & ALL_ONES
    mhi, mlo = prefix_masks(plen)
    return hi & mhi, lo & mlo, plen


def format_network(hi: int, lo: int, plen: int) -> str:
    """Inverse of :func:`parse_network` (IPv4-mapped networks are shown as IPv4)."""
    value = (int(hi) << 64) | int(lo)
    addr = ipaddress.IPv6Address(value)
    if addr.ipv4_mapped is not None and plen >= 96:
        return f"{addr.ipv4_mapped}/{plen - 96}" if plen < 128 else str(addr.ipv4_mapped)
    return f"{addr}/{plen}" if plen < 128 else str(addr)
