"""Bounds-checked reading of IPDR/SP message bodies (big-endian integers, ``u32 length + bytes`` strings, counted
arrays), in the manner of aioquic's ``Buffer``: reading past the end raises :class:`MalformedMessage`."""

from __future__ import annotations

import struct

from decoders.ipdr.errors import MalformedMessage


class Reader:
    """Reads big-endian fields from a message body; reading past the end raises :class:`MalformedMessage`."""

    __slots__ = ("buf", "pos", "end", "what")

    def __init__(self, buf: bytes | memoryview, pos: int = 0, end: int | None = None, what: str = "message") -> None:
        self.buf = buf
        self.pos = pos
        self.end = len(buf) if end is None else end
        self.what = what

    def _take(self, n: int) -> int:
        pos = self.pos
        if n < 0 or pos + n > self.end:
            raise MalformedMessage(f"{self.what}: needs {n} bytes at offset {pos}, has {self.end - pos}")
        self.pos = pos + n
        return pos

    def u8(self) -> int:
        return self.buf[self._take(1)]

    def u16(self) -> int:
        value: int = struct.unpack_from(">H", self.buf, self._take(2))[0]
        return value

    def u32(self) -> int:
        value: int = struct.unpack_from(">I", self.buf, self._take(4))[0]
        return value

    def u64(self) -> int:
        value: int = struct.unpack_from(">Q", self.buf, self._take(8))[0]
        return value

    def raw(self, n: int) -> bytes:
        p = self._take(n)
        return bytes(self.buf[p : p + n])

    def string(self) -> str:
        n = self.u32()
        return self.raw(n).decode("utf-8", "replace")

    def count(self, min_item_size: int) -> int:
        """An array count, refused when the remaining bytes cannot hold that many items (bounds allocation)."""
        n = self.u32()
        if n * min_item_size > self.end - self.pos:
            raise MalformedMessage(f"{self.what}: array of {n} items does not fit in {self.end - self.pos} bytes")
        return n

    @property
    def remaining(self) -> int:
        return self.end - self.pos

    def done(self) -> None:
        if self.pos != self.end:
            raise MalformedMessage(f"{self.what}: {self.end - self.pos} unexpected trailing bytes")



def pack_string(value: str) -> bytes:
    """An IPDR/SP string: ``u32 length`` and the UTF-8 bytes, no padding."""
    raw = value.encode("utf-8")
    return struct.pack(">I", len(raw)) + raw
