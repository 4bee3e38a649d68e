"""IPDR/SP stream framing: a TCP byte stream split into messages by their 8-byte headers, bounded in size.

The header layout and the message bodies are :mod:`decoders.ipdr.messages`; the session state machine that uses
the frames is :mod:`decoders.ipdr.session`.
"""

from __future__ import annotations

from decoders.ipdr.errors import FramingError
from decoders.ipdr.messages import HEADER, HEADER_SIZE, VERSION

DEFAULT_MAX_MESSAGE_SIZE = 4 * 1024 * 1024
"""Largest message accepted. DATA carries one record (well under 1 KiB for SAMIS); TEMPLATE_DATA of a whole CMTS
is a few KiB. 4 MiB leaves room for unusual templates while bounding what a peer can make us buffer."""


class Framer:
    """Splits a TCP byte stream into messages, bounded by ``max_message_size``.

    ``feed(data)`` appends bytes; ``frames()`` yields ``(msg_id, session_id, start, end)`` of every complete message
    in :attr:`buf` and then drops them from the buffer (so the offsets are valid only until the next ``feed`` or
    ``frames`` call). A bad version or a length outside ``[8, max_message_size]`` raises :class:`FramingError`:
    the stream cannot be resynchronised, so the connection must be closed.
    """

    def __init__(self, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE) -> None:
        self.max_message_size = max_message_size
        self.buf = bytearray()
        self._consumed = 0
        self.error: FramingError | None = None
        """Set when the stream broke; the messages before the break were still returned."""

    def feed(self, data: bytes) -> None:
        if self._consumed:
            del self.buf[: self._consumed]
            self._consumed = 0
        self.buf += data

    def frames(self) -> list[tuple[int, int, int, int]]:
        """Every complete message now buffered, as ``(msg_id, session_id, start, end)`` into :attr:`buf`.

        A bad version or length stops framing for good: the messages before it are returned, :attr:`error` is set,
        and every later call raises it (the stream cannot be resynchronised; close the connection).
        """
        if self.error is not None:
            raise self.error
        if self._consumed:
            del self.buf[: self._consumed]
            self._consumed = 0
        buf, n, pos, out = self.buf, len(self.buf), 0, []
        unpack, limit = HEADER.unpack_from, self.max_message_size
        while n - pos >= HEADER_SIZE:
            version, msg_id, session_id, _flags, length = unpack(buf, pos)
            if version != VERSION:
                self.error = FramingError(f"protocol version {version} at stream offset {pos}, expected {VERSION}",
                                          reason="bad_version")
                break
            if length < HEADER_SIZE or length > limit:
                self.error = FramingError(f"message length {length} outside [{HEADER_SIZE}, {limit}]",
                                          reason="bad_length")
                break
            if n - pos < length:
                break
            out.append((msg_id, session_id, pos, pos + length))
            pos += length
        self._consumed = pos
        if self.error is not None and not out:
            raise self.error
        return out

    @property
    def pending_bytes(self) -> int:
        return len(self.buf) - self._consumed
