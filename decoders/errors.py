"""Decode errors: each carries a stable ``reason`` (a metric label) and, where known, the byte offset.

The decoders raise these internally; :class:`decoders.netflow.decoder.FlowDecoder` catches them per set or per
datagram and
counts them as ``errors[(exporter, reason)]``, so a malformed set costs only itself. A data set whose template is not
known yet is *not* an error: it is held (see :mod:`decoders.netflow.pending`).
"""

from __future__ import annotations


class DecodeError(Exception):
    """Base of every decode error. ``reason`` is short, stable snake_case, safe as a metric label."""

    reason = "decode_error"

    def __init__(self, message: str, *, offset: int | None = None) -> None:
        super().__init__(message if offset is None else f"{message} (at byte {offset})")
        self.offset = offset


class Truncated(DecodeError):
    """The datagram or a structure inside it ends before its declared length."""

    reason = "truncated"


class LengthMismatch(DecodeError):
    """A length field disagrees with the datagram (IPFIX message length, v5 record count)."""

    reason = "length_mismatch"


class UnsupportedVersion(DecodeError):
    """The version field is not 5, 9 or 10."""

    reason = "unknown_version"

    def __init__(self, version: int) -> None:
        super().__init__(f"unsupported export version {version}", offset=0)
        self.version = version


class BadSetLength(DecodeError):
    """A set (flowset) length below its header size or beyond the datagram: the rest is unparseable."""

    reason = "bad_set_length"


class EmptySet(DecodeError):
    """A set with no record in it (zero-length body, or padding only)."""

    reason = "empty_set"


class ReservedSetId(DecodeError):
    """A set id reserved by RFC 3954 / RFC 7011 (v9: 2-255, IPFIX: 0, 1, 4-255)."""

    reason = "reserved_set_id"


class BadTemplate(DecodeError):
    """A template or options template record that cannot be used (bad id, no fields, truncated, no length)."""

    reason = "bad_template"


class TooManyFields(BadTemplate):
    """A template with more fields than ``DecoderLimits.max_template_fields``."""

    reason = "template_too_many_fields"


class BadRecord(DecodeError):
    """A data record that overruns its set (variable-length fields)."""

    reason = "bad_record"


class SavedStateError(DecodeError):
    """Saved NetFlow/IPFIX decoder state (``load_state``) that cannot be read (not the IPDR session state:
    :class:`decoders.ipdr.errors.IpdrStateError`)."""

    reason = "bad_state"


REASONS: dict[str, str] = {
    **{cls.reason: (cls.__doc__ or "").strip() for cls in (
        Truncated, LengthMismatch, UnsupportedVersion, BadSetLength, EmptySet, ReservedSetId, BadTemplate,
        TooManyFields, BadRecord)},
    "pending_expired": "Data held for a missing template was dropped: the template did not come in time.",
    "pending_overflow": "Data held for a missing template was dropped to stay within the pending byte bound.",
    "missing_init_time": "IPFIX records with sysUptime times (IEs 21/22) but no systemInitTimeMilliseconds (IE 160) "
                         "from options data: decoded, with the export time as their times.",
    "zero_length_field": "A template (counted each time it is received) with a field of length 0: legal on the wire "
                         "and kept, but such a field carries no value (a broken exporter, or a crafted template).",
    "record_count_mismatch": "A NetFlow v9 datagram whose header record count is neither the number of records it "
                             "holds (templates, options and data: RFC 3954) nor that of its flow records (what "
                             "softflowd counts); checked when every set in it was readable, and its records are "
                             "decoded all the same.",
    "internal_error": "A decoder bug (never expected; the datagram or group is lost, the decoder goes on).",
}
"""Every ``reason`` label :class:`decoders.netflow.decoder.FlowDecoder` counts in ``DecodeResult.errors``,
documented."""
