"""Errors of the IPDR/SP decoder, each with a stable ``reason`` (a metric label)."""

from __future__ import annotations


class IpdrError(ValueError):
    """Bad IPDR/SP input. ``reason`` is a stable label for counters; ``session_id`` is set when only that
    session is affected (``None``: the connection as a whole)."""

    reason = "ipdr_error"

    def __init__(self, detail: str, *, session_id: int | None = None, reason: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.session_id = session_id
        if reason is not None:
            self.reason = reason


class MalformedMessage(IpdrError):
    """A message whose body does not match its layout (short, trailing bytes, bad counts)."""

    reason = "malformed_message"


class FramingError(IpdrError):
    """The byte stream cannot be framed any more (bad version, length below 8 or above the limit)."""

    reason = "framing"


class IpdrTemplateError(IpdrError):
    """A template that cannot be used (unknown enabled field type, too many fields or templates)."""

    reason = "bad_template"


class IpdrStateError(IpdrError):
    """A message that is not valid in the current connection or session state."""

    reason = "invalid_for_state"
