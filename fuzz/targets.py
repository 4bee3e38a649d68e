"""Fuzz targets: one function per decoder or parser, ``bytes -> None``.

Each target states the property the fuzzers check (h11 ``fuzz/``): *any input either parses or fails with the
component's own error type; nothing else escapes, nothing hangs, memory stays bounded*. A target raises
:class:`FuzzFailure` (or lets an unexpected exception through) when the property is broken; libFuzzer/atheris then
saves the input as a crash, and Hypothesis shrinks it.

The same functions are driven by:

* atheris (coverage-guided, ``python fuzz/run.py TARGET ...``), the long runs;
* ``tests/hardening/test_fuzz_short.py`` (a short atheris run of every target inside the test suite);
* ``tests/hardening/crashers/<target>/*`` (every input that ever broke a target, replayed as a regression test).

Inputs are framed so the fuzzer can reach deep states: the flow targets split the input into several datagrams from
one exporter (a template datagram, then data), RADIUS packets get a valid Request Authenticator computed over the
fuzzed bytes (otherwise nothing past the MD5 check would ever be reached), IPDR session input arrives after a
handshake and templates from the CMTS simulator.
"""

from __future__ import annotations

import struct
import tomllib
from collections.abc import Callable

__all__ = ["TARGETS", "FuzzFailure", "split_datagrams", "join_datagrams"]


class FuzzFailure(AssertionError):
    """A target's property does not hold for this input (a bug)."""


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise FuzzFailure(message)


# --- framing helpers -----------------------------------------------------------------------------------------------

def split_datagrams(data: bytes, limit: int = 16) -> list[bytes]:
    """Input as up to ``limit`` datagrams, each ``[u16 length][bytes]`` (a short last one takes the rest)."""
    out, pos = [], 0
    while pos < len(data) and len(out) < limit:
        if pos + 2 > len(data):
            out.append(data[pos:])
            break
        (n,) = struct.unpack_from(">H", data, pos)
        out.append(data[pos + 2: pos + 2 + n])
        pos += 2 + n
    return out


def join_datagrams(datagrams: list[bytes]) -> bytes:
    """Inverse of :func:`split_datagrams` (seed corpora)."""
    return b"".join(struct.pack(">H", len(d)) + d for d in datagrams)


# --- flows ---------------------------------------------------------------------------------------------------------

EXPORTER = "192.0.2.1"
T_MS = 1_700_000_000_000


def _flows(data: bytes, version: int | None) -> None:
    """Datagrams from one exporter through a fresh FlowDecoder (small limits, so the bounds are exercised too).

    ``version`` forces the version field of every datagram, so each target explores its own protocol.
    """
    from decoders.errors import REASONS
    from decoders.netflow.decoder import DecoderLimits, FlowDecoder

    datagrams = split_datagrams(data)
    if version is not None:
        datagrams = [struct.pack(">H", version) + d[2:] if len(d) >= 2 else d for d in datagrams]
    dec = FlowDecoder(DecoderLimits(max_templates_per_exporter=8, pending_max_bytes=4096, max_template_fields=64))
    batch = [(d, EXPORTER, T_MS + i) for i, d in enumerate(datagrams)]
    # Twice: the second pass decodes with the templates the first pass learned.
    for _ in range(2):
        res = dec.decode(batch)
        _check(not any(r == "internal_error" for _, r in res.errors), f"internal_error: {dict(res.errors)}")
        _check({r for _, r in res.errors} <= set(REASONS), f"unknown error reason: {dict(res.errors)}")
        _check(sum(res.datagrams.values()) == len(batch), "every datagram is counted once")
        _check(res.n_flows == sum(res.records.values()), "flows == records counted")
        _check({len(c) for c in res.flows.values()} <= {res.n_flows}, "columns of equal length")
        _check(sum(dec.templates_known().values()) <= 8, "max_templates_per_exporter holds")
        _check(dec.pending_bytes() <= 4096, "pending_max_bytes holds")
    # Template state survives a save/load round trip whatever was learned.
    again = FlowDecoder()
    again.load_state(dec.save_state())
    _check(again.templates_known() == dec.templates_known(), "state round trip keeps the templates")
    dec.expire(T_MS + 10 * 86_400_000)


def netflow_v5(data: bytes) -> None:
    """NetFlow v5 datagrams through :class:`decoders.netflow.decoder.FlowDecoder`."""
    _flows(data, 5)


def netflow_v9(data: bytes) -> None:
    """NetFlow v9 datagrams (templates, options, data) through the FlowDecoder."""
    _flows(data, 9)


def ipfix(data: bytes) -> None:
    """IPFIX messages (templates, withdrawals, options, variable-length fields) through the FlowDecoder."""
    _flows(data, 10)


def flows_any(data: bytes) -> None:
    """Datagrams of any version (mixed) through the FlowDecoder."""
    _flows(data, None)


# --- sFlow ---------------------------------------------------------------------------------------------------------

_SFLOW_WARM: list = []


def sflow(data: bytes) -> None:
    """sFlow v5 datagrams from one exporter through :class:`decoders.sflow.decoder.SflowDecoder` (small limits).

    Every datagram is counted once, errors carry documented reasons only (never ``internal_error``: the compiled
    walks must stay inside their structures), columns have equal lengths, the agent/source bounds hold.
    """
    from decoders.sflow import REASONS as SFLOW_REASONS
    from decoders.sflow.decoder import SflowDecoder, SflowLimits, warm_up_datagram

    if not _SFLOW_WARM:  # compile the kernels on the first call (run.py calls target(b"") before timing)
        SflowDecoder().decode([(warm_up_datagram(), EXPORTER, T_MS)])
        _SFLOW_WARM.append(True)
    datagrams = split_datagrams(data)
    dec = SflowDecoder(SflowLimits(max_agents_per_exporter=4, max_sources_per_exporter=16,
                                   max_samples_per_datagram=64, max_records_per_sample=16))
    batch = [(d, EXPORTER, T_MS + i) for i, d in enumerate(datagrams)]
    for _ in range(2):  # twice: the second pass meets the sequence and pool state of the first
        res = dec.decode(batch)
        _check(not any(r == "internal_error" for _, r in res.errors), f"internal_error: {dict(res.errors)}")
        _check({r for _, r in res.errors} <= set(SFLOW_REASONS), f"unknown error reason: {dict(res.errors)}")
        _check(sum(res.datagrams.values()) == len(batch), "every datagram is counted once")
        _check(res.n_flows == sum(res.records.values()), "flows == records counted")
        _check({len(c) for c in [*res.flows.values(), *res.extras.values()]} <= {res.n_flows},
               "flow columns of equal length")
        _check({len(c) for c in res.interface_counters.values()} <= {res.n_counters},
               "counter columns of equal length")
        _check(sum(dec.agents_known().values()) <= 4, "max_agents_per_exporter holds")
        _check(all(len(st.sources) <= 16 for st in dec.exporters.values()), "max_sources_per_exporter holds")
    dec.expire(T_MS + 10 * 86_400_000)
    _check(not dec.exporters, "idle exporters are forgotten")


# --- IPDR/SP -------------------------------------------------------------------------------------------------------

def ipdr_messages(data: bytes) -> None:
    """A TCP byte stream through the IPDR/SP Framer; every frame through ``messages.decode``.

    Only :class:`decoders.ipdr.errors.IpdrError` (Framing/Malformed) may come out; a decoded message re-encodes
    and decodes to an equal message (the codec is its own inverse on what it accepts).
    """
    from decoders.ipdr import framing
    from decoders.ipdr import messages as m
    from decoders.ipdr.errors import FramingError, IpdrError

    framer = framing.Framer(max_message_size=1 << 16)
    for chunk in split_datagrams(data):
        framer.feed(chunk)
        try:
            frames = framer.frames()
        except FramingError:
            return
        buf = bytes(framer.buf)
        for _msg_id, _sid, start, end in frames:
            try:
                msg = m.decode(buf, start, end)
            except IpdrError:
                continue
            if isinstance(msg, m.Unknown):
                continue
            try:
                again = m.decode(m.encode(msg))
            except IpdrError as exc:  # it decoded, so its own encoding must decode
                raise FuzzFailure(f"re-encoded {type(msg).__name__} does not decode: {exc}") from exc
            _check(type(again) is type(msg), "round trip keeps the message type")


_SIM_CACHE: list = []


def _ipdr_sim():
    if not _SIM_CACHE:
        from bench.cmts import CmtsSimulator

        _SIM_CACHE.append(CmtsSimulator(2, now=1_700_000_000.0))
    return _SIM_CACHE[0]


def ipdr_connection() -> object:
    """A collector connection past the handshake with the simulator's templates for sessions 1 and 2."""
    from decoders.ipdr import messages as m
    from decoders.ipdr.session import CollectorConnection

    sim = _ipdr_sim()
    conn = CollectorConnection(max_message_size=1 << 16, max_sessions=4, max_templates=4, max_template_fields=32)
    conn.send(m.Connect(0x7F000001, 0, m.Capability.MULTISESSION, 60, "fuzz"))
    conn.receive_data(m.encode(m.ConnectResponse(m.Capability.MULTISESSION, 30, "sim")))
    for sid in (1, 2):
        conn.send(m.FlowStart(sid))
        events = conn.receive_data(m.encode(sim.template_data(sid)))
        if events and isinstance(events[-1], m.TemplateData):
            conn.send(m.FinalTemplateDataAck(sid))
    return conn


def ipdr_session(data: bytes) -> None:
    """Bytes from a CMTS into :class:`decoders.ipdr.session.CollectorConnection` after the handshake.

    ``receive_data`` never raises for bad input (violations are events); acknowledgements stay consistent.
    """
    from decoders.ipdr.session import ConnState

    conn = ipdr_connection()
    now = 0.0
    for chunk in split_datagrams(data):
        now += 1.0
        conn.receive_data(chunk, now=now)
        if conn.state is ConnState.CLOSED:
            break
        for sid in list(conn.sessions):
            if conn.ack_due(sid, now=now):
                ack = conn.ack_for(sid)
                if ack is not None:
                    conn.send(ack)
    _check(len(conn.sessions) <= 4 + 2, "sessions bounded")


_XDR_TYPES: list[int] = []


def ipdr_xdr(data: bytes) -> None:
    """Compact XDR records against a template picked by the first bytes (field types from ``xdr.TYPES``).

    Every record decodes or is counted bad; never an exception; the bad and good records add up.
    """
    import numpy as np

    from decoders.ipdr import messages as m
    from decoders.ipdr.xdr import TYPES, compile_template, decode_records

    if not _XDR_TYPES:
        _XDR_TYPES.extend(sorted(TYPES))
    if len(data) < 2:
        return
    n_fields = 1 + data[0] % 8
    spec, rest = data[1: 1 + n_fields], data[1 + n_fields:]
    fields = tuple(m.FieldDescriptor(_XDR_TYPES[b % len(_XDR_TYPES)], i, f"f{i}", True) for i, b in enumerate(spec))
    template = compile_template(m.TemplateBlock(1, "fuzz", "t", fields), ipv6_bare=bool(data[0] & 0x80))
    blobs = split_datagrams(rest)
    if not blobs:
        return
    lengths = np.array([len(b) for b in blobs], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    res = decode_records(template, b"".join(blobs), starts, lengths)
    _check(res.bad + len(res) == len(blobs), f"bad {res.bad} + good {len(res)} != {len(blobs)} records")


# --- RADIUS --------------------------------------------------------------------------------------------------------

RADIUS_SECRET = b"fuzzsecret"
_RADIUS: list = []


_RADIUS_USES = [0]
RADIUS_RESET_EVERY = 2000
"""Inputs after which the shared accounting state starts afresh: its in-memory bindings history grows with every
binding ever opened (by design; on disk in the daemon), which over a long run would read as a leak."""


def _radius():
    _RADIUS_USES[0] += 1
    if _RADIUS_USES[0] % RADIUS_RESET_EVERY == 0:
        _RADIUS.clear()
    if not _RADIUS:
        from collector.config import load
        from mediation.subscribers.bindings import Bindings
        from mediation.subscribers.radius import RadiusAccounting

        cfg = load(None, ["radius.enabled=true",
                          f'radius.clients=[{{address="127.0.0.0/8", secret="{RADIUS_SECRET.decode()}"}}]',
                          "radius.max_sessions=64"])
        _RADIUS.append(RadiusAccounting(cfg.radius, Bindings(), 300_000))
    return _RADIUS[0]


def sign_request(data: bytes) -> bytes:
    """``data`` as an Accounting-Request whose length field and Request Authenticator are right."""
    import hashlib

    body = data[20:4096]
    header = struct.pack("!BBH", 4, data[1] if len(data) > 1 else 0, 20 + len(body))
    return header + hashlib.md5(header + b"\0" * 16 + body + RADIUS_SECRET).digest() + body


def radius(data: bytes) -> None:
    """RADIUS datagrams: ``parse_packet`` raises only RadiusError; signed copies go through RadiusAccounting.

    The accounting state (SQLite bindings, sessions) is shared across inputs like a long-running server's, so the
    fuzzer can build sessions up and tear them down; its bounds must hold.
    """
    from mediation.subscribers.radius import RadiusError, parse_packet

    datagrams = split_datagrams(data, limit=8)
    for d in datagrams:
        try:
            parse_packet(d)
        except RadiusError:
            pass
    acct = _radius()
    t = T_MS + (data[0] if data else 0) * 60_000
    acct.handle([(sign_request(d), ("127.0.0.1", 1813)) for d in datagrams], t)
    acct.handle([(d, ("127.0.0.2", 1813)) for d in datagrams], t)  # unsigned: all dropped, counted
    acct.expire(t)
    _check(acct.open_sessions() <= 64, "radius.max_sessions holds")


# --- configuration and plans ---------------------------------------------------------------------------------------

def _toml(data: bytes) -> dict | None:
    try:
        return tomllib.loads(data.decode("utf-8", errors="replace"))
    except tomllib.TOMLDecodeError:
        return None


def config(data: bytes) -> None:
    """collector.toml text: builds or raises ConfigError naming a key; a built config has only finite numbers."""
    import math

    from collector.commands.core import redact, to_toml
    from collector.config import Config
    from collector.configtree import ConfigError, build, to_dict

    tree = _toml(data)
    if tree is None:
        return
    try:
        cfg = build(Config, tree)
    except ConfigError:
        return
    plain = to_dict(cfg)

    def walk(node):
        if isinstance(node, dict):
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)
        elif isinstance(node, float):
            _check(math.isfinite(node), f"non-finite number accepted: {node}")

    walk(plain)
    to_toml(redact(plain))  # check-config output never fails on a valid config


def plans(data: bytes) -> None:
    """Tariff plans TOML: parses into a PlanBook or raises ConfigError naming a key."""
    from collector.configtree import ConfigError
    from rating.plans import parse_plans

    tree = _toml(data)
    if tree is None:
        return
    try:
        parse_plans(tree)
    except ConfigError:
        return


TARGETS: dict[str, Callable[[bytes], None]] = {
    "netflow_v5": netflow_v5,
    "netflow_v9": netflow_v9,
    "ipfix": ipfix,
    "flows_any": flows_any,
    "sflow": sflow,
    "ipdr_messages": ipdr_messages,
    "ipdr_session": ipdr_session,
    "ipdr_xdr": ipdr_xdr,
    "radius": radius,
    "config": config,
    "plans": plans,
}
