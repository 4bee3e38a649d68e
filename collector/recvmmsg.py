"""``recvmmsg(2)`` through ctypes: many UDP datagrams per system call, into one preallocated buffer.

Python's ``socket`` module has no ``recvmmsg``; libc has had it since glibc 2.12 (Linux 2.6.33). A
:class:`MessageRing` sets up, once, ``slots`` ``mmsghdr`` entries whose first ``iovec`` each points at its own
``slot_bytes`` slice of one numpy buffer (the second at an overflow area, for the rare larger datagram), and a
``sockaddr_in6``-sized name slot each. A read is then one ctypes call
(the GIL is released in it) that fills the next free slots; nothing is built per datagram. The lengths, flags
(``MSG_TRUNC``) and source addresses are read back afterwards as numpy views over the header array, for many reads at
once (:meth:`MessageRing.lengths`, :meth:`MessageRing.flags`, :meth:`MessageRing.names`).

Linux only (the product is a systemd service): :func:`libc_recvmmsg` raises :class:`RecvmmsgUnavailable` where libc
has no ``recvmmsg``, so a daemon that cannot use it says so at start instead of silently reading another way.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import mmap
import os
import socket
import sys
from functools import cache
from typing import Any

import numpy as np

MSG_TRUNC = 0x20
"""``msg_flags`` bit: the datagram was larger than its buffer and was cut (Linux value)."""
SOCKADDR_BYTES = 28
"""``sizeof(struct sockaddr_in6)``: room for an IPv4 or IPv6 source address (with scope id)."""


class RecvmmsgUnavailable(OSError):
    """This system's C library has no ``recvmmsg`` (not Linux, or a libc without it)."""


class _Iovec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class _Msghdr(ctypes.Structure):
    _fields_ = [("msg_name", ctypes.c_void_p), ("msg_namelen", ctypes.c_uint32),
                ("msg_iov", ctypes.POINTER(_Iovec)), ("msg_iovlen", ctypes.c_size_t),
                ("msg_control", ctypes.c_void_p), ("msg_controllen", ctypes.c_size_t),
                ("msg_flags", ctypes.c_int)]


class _Mmsghdr(ctypes.Structure):
    _fields_ = [("msg_hdr", _Msghdr), ("msg_len", ctypes.c_uint)]


_LEN_AT = _Mmsghdr.msg_len.offset
_FLAGS_AT = _Mmsghdr.msg_hdr.offset + _Msghdr.msg_flags.offset
_HDR = np.dtype({"names": ["msg_len", "msg_flags"], "formats": [np.uint32, np.int32],
                 "offsets": [_LEN_AT, _FLAGS_AT], "itemsize": ctypes.sizeof(_Mmsghdr)})
"""The two output fields of an ``mmsghdr``, as a numpy record over the ctypes array."""


@cache
def _libc() -> Any:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


@cache
def libc_recvmmsg() -> Any:
    """libc's ``recvmmsg`` as a ctypes function (errno kept); raises :class:`RecvmmsgUnavailable` without it."""
    try:
        fn = _libc().recvmmsg
    except (OSError, AttributeError) as exc:
        raise RecvmmsgUnavailable(errno.ENOSYS, f"recvmmsg(2) is not available in this C library: {exc} "
                                  "(flowmed receives with recvmmsg; it runs on Linux)") from None
    fn.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int, ctypes.c_void_p]
    fn.restype = ctypes.c_int
    return fn


class MessageRing:
    """``slots`` receive slots of ``slot_bytes`` each over one buffer, filled in order by :meth:`recv`.

    Slots ``0:fill`` hold datagrams, datagram ``i`` at :meth:`starts` ``[i]``; :meth:`reset` makes them free again
    (the caller must be done with them: views of :attr:`buf` see the next datagrams). Most datagrams fit a slot; a
    larger one, up to ``max_datagram`` bytes, continues in an overflow area (a second ``iovec``: one per message of
    a call, so at most ``per_call`` datagrams are received per call) and is moved, whole, into an extension area
    right after the call; :attr:`full` says when the slots or the extension cannot take another call. Pages of the
    overflow and extension areas are only touched by large datagrams. A datagram larger than ``max_datagram``
    arrives cut, with ``MSG_TRUNC`` set in its :meth:`flags`.
    """

    def __init__(self, slots: int, slot_bytes: int, max_datagram: int = 65535, per_call: int = 32) -> None:
        self._recvmmsg = libc_recvmmsg()
        self.slots, self.slot_bytes = slots, slot_bytes
        over = max(0, max_datagram - slot_bytes)
        self.per_call = min(per_call, slots) if over else slots
        self._over, self._max = over, max(max_datagram, slot_bytes)
        self._ext0 = slots * slot_bytes
        self._ext_bytes = 2 * self.per_call * self._max if over else 0
        self._over0 = self._ext0 + self._ext_bytes
        # An anonymous mapping, not np.zeros: malloc may take a block this size from its heap and zero it, making
        # every page resident at once; mapped pages only become resident when a datagram lands in them.
        self._map = mmap.mmap(-1, self._over0 + self.per_call * over)
        self.buf = np.frombuffer(self._map, dtype=np.uint8)
        """The datagrams: the slots, the extension area (large datagrams, moved whole), the overflow area."""
        self._starts = np.arange(slots, dtype=np.int64) * slot_bytes
        self._moved: list[int] = []
        """Slots whose datagram was moved into the extension area."""
        self._ext_used = 0
        self._large = self._release = False
        """Large datagrams since the last reset / pages to give back before the next call."""
        self._names = np.zeros((slots, SOCKADDR_BYTES), dtype=np.uint8)
        self._iov = (_Iovec * (2 * slots))()
        self._hdrs = (_Mmsghdr * slots)()
        base, names = self.buf.ctypes.data, self._names.ctypes.data
        for i in range(slots):  # once per ring, never per datagram
            first, second = self._iov[2 * i], self._iov[2 * i + 1]
            first.iov_base, first.iov_len = base + i * slot_bytes, slot_bytes
            second.iov_base, second.iov_len = base + self._over0 + (i % self.per_call) * over, over
            hdr = self._hdrs[i].msg_hdr
            hdr.msg_name, hdr.msg_namelen = names + i * SOCKADDR_BYTES, SOCKADDR_BYTES
            hdr.msg_iov, hdr.msg_iovlen = ctypes.pointer(first), 2 if over else 1
        self._hdr_size = ctypes.sizeof(_Mmsghdr)
        self._hdr_base = ctypes.addressof(self._hdrs)
        raw = (ctypes.c_uint8 * ctypes.sizeof(self._hdrs)).from_address(self._hdr_base)
        self._out = np.ctypeslib.as_array(raw).view(_HDR)  # (a view: what the kernel writes shows here)
        self._lens = self._out["msg_len"]
        self.fill = 0
        """Slots holding datagrams."""

    @property
    def full(self) -> bool:
        """No room for another call: every slot is taken, or the extension area might not hold its large ones."""
        return self.fill == self.slots or self._ext_used + self.per_call * self._max > self._ext_bytes > 0

    def recv(self, fd: int, limit: int) -> int:
        """Receive up to ``limit`` datagrams (no more than ``per_call`` and the free slots) without blocking;
        returns how many.

        0 when nothing is waiting or the ring is :attr:`full`; raises ``OSError`` for a pending socket error (an
        ICMP error for an earlier send)."""
        want = min(limit, self.slots - self.fill, self.per_call)
        if want <= 0 or self.full:
            return 0
        a = self.fill
        if self._release:
            self._give_back()
        n: int = self._recvmmsg(fd, self._hdr_base + a * self._hdr_size, want, socket.MSG_DONTWAIT, None)
        if n < 0:
            err = ctypes.get_errno()
            if err in (errno.EAGAIN, errno.EINTR):
                return 0
            raise OSError(err, os.strerror(err))
        self.fill += n
        if self._over and n and self._lens[a:a + n].max() > self.slot_bytes:
            self._move_large(a, n)
        return n

    def _move_large(self, a: int, n: int) -> None:
        """The datagrams of slots ``a:a+n`` that went on into the overflow area, whole into the extension area
        (the next call reuses the overflow area)."""
        buf, slot = self.buf, self.slot_bytes
        lens = self._lens[a:a + n]
        for j in np.flatnonzero(lens > slot).tolist():
            i, size = a + j, min(int(lens[j]), self._max)
            dst = self._ext0 + self._ext_used
            buf[dst:dst + slot] = buf[i * slot:(i + 1) * slot]
            over = self._over0 + (i % self.per_call) * self._over
            buf[dst + slot:dst + size] = buf[over:over + size - slot]
            self._starts[i] = dst
            self._moved.append(i)
            self._ext_used += size
        self._large = True

    def _give_back(self) -> None:
        """The pages of the overflow and extension areas back to the system (rare: after large datagrams), so that
        they do not stay resident between them."""
        self._release = False
        start = -(-self._ext0 // mmap.PAGESIZE) * mmap.PAGESIZE
        if len(self._map) > start:
            self._map.madvise(mmap.MADV_DONTNEED, start, len(self._map) - start)

    def reset(self) -> None:
        """Free every slot (their datagrams are no longer needed)."""
        self.fill = 0
        if self._moved:
            moved = np.array(self._moved, dtype=np.int64)
            self._starts[moved] = moved * self.slot_bytes
            self._moved.clear()
        self._ext_used = 0
        # (the datagrams stay readable until the next recv, which gives the pages of large ones back first)
        self._release, self._large = self._large, False

    def extent(self) -> int:
        """Bytes of :attr:`buf` that hold the datagrams of slots ``0:fill`` (what a batch of them needs to view)."""
        return self._ext0 + self._ext_used if self._moved else self.fill * self.slot_bytes

    def starts(self, a: int, b: int) -> np.ndarray:
        """Where the datagrams of slots ``a:b`` start in :attr:`buf` (int64, a copy)."""
        return self._starts[a:b].copy()

    def lengths(self, a: int, b: int) -> np.ndarray:
        """Bytes received in slots ``a:b`` (int64; for a cut datagram, what fit)."""
        return self._out["msg_len"][a:b].astype(np.int64)

    def flags(self, a: int, b: int) -> np.ndarray:
        """``msg_flags`` of slots ``a:b``."""
        return np.asarray(self._out["msg_flags"][a:b])

    def names(self, a: int, b: int) -> np.ndarray:
        """The raw ``sockaddr`` of slots ``a:b`` (``SOCKADDR_BYTES`` per row)."""
        return self._names[a:b]


def source_addresses(names: np.ndarray, family: int) -> tuple[np.ndarray, list[str]]:
    """The source of each datagram as an index into a list of address strings (what ``recvfrom`` gives as
    ``addr[0]``: ``"192.0.2.1"``, ``"2001:db8::1"``, ``"fe80::1%eth0"``); one string per distinct source only."""
    n = len(names)
    if family == socket.AF_INET:
        keys = np.ascontiguousarray(names[:, 4:8]).view(np.uint32).reshape(n)
    else:  # the address and the scope id (bytes 8:28 of sockaddr_in6)
        keys = np.ascontiguousarray(names[:, 8:28]).view("V20").reshape(n)
    if n == 0:
        return np.zeros(0, dtype=np.int64), []
    if (keys == keys[0]).all():  # one exporter: the common case of a busy socket
        return np.zeros(n, dtype=np.int64), [_address(names[0], family)]
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    order = np.argsort(first)  # codes in the order of first appearance, as a dict of the addresses would give
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return rank[inverse.reshape(n)].astype(np.int64), [_address(names[i], family) for i in first[order].tolist()]


def _address(name: np.ndarray, family: int) -> str:
    raw = name.tobytes()
    if family == socket.AF_INET:
        return socket.inet_ntop(socket.AF_INET, raw[4:8])
    text = socket.inet_ntop(socket.AF_INET6, raw[8:24])
    scope = int.from_bytes(raw[24:28], sys.byteorder)
    if scope:  # as recvfrom reports a link-local source: with its interface
        try:
            return f"{text}%{socket.if_indextoname(scope)}"
        except OSError:
            return f"{text}%{scope}"
    return text
