"""``flowmed trace`` and ``flowmed ipdr-report``: who held an address (and port) at an instant, a subscriber's
connections over a period; each answered by ONE SQL query that runs unchanged on the embedded store (chDB) and on a
ClickHouse server (18.16 and modern). The queries are documented in ``docs/compliance.md``.

Portability rules the SQL follows: addresses are compared with ``IPv6StringToNum('::ffff:a.b.c.d')`` and returned as
text with ``IPv6NumToString``; times are read as milliseconds (:func:`ms`: whole seconds plus the ``*_msec``
column, since 18.16 keeps ``DateTime`` seconds) and the hour/day partitions are chosen with ``toDateTime(seconds,
'UTC')`` bounds; ``bindings`` is read through ``argMax(..., version)`` per ``binding_id`` (its latest version, with
or without FINAL); prefixes are matched on hex digits (nibbles) plus the bits of one boundary nibble, so any prefix
length works without functions 18.16 lacks. UNION ALL parts return the same columns with the same types
(:data:`COLUMNS`).

The address query, for public address A, port P, instant T (milliseconds):

1. *NAT holder*: among ``nat_events`` rows covering (A, P) (a port block by its step) between ``T - nat_lookback``
   and T, per IP protocol (or, with ``--protocol``, that protocol and port blocks together) the latest decides: a
   start (session create, port block allocation) names the private address and port; an end (delete, release) means
   nobody held it. At the same millisecond a start outranks an end (release then re-allocation). Only when the
   device logged no start or end there, a translation observed in a flow record decides; it holds until the flow
   ended plus the window. Several protocols held by different inside addresses make the answer ambiguous.
2. *Binding*: each holder's private address (A itself when A has no NAT rows: not behind NAT, or IPv6 by prefix) is
   looked up in ``bindings`` at T: longest prefix, then latest start.
3. *Flows*: ``ip_detail_records`` of those subscribers (or unattributed when written) between T - window and
   T + window from a holder's private address (and port) or with that public address and port.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass

from mediation.compliance.deterministic import Mapping

Source = Callable[[str, int, int], str]
"""``source(table, t0_ms, t1_ms)``: the FROM clause of a table over a time range
(:meth:`storage.query.QueryEngine.source`)."""

COLUMNS = ("evidence", "time_from", "time_to", "subscriber_id", "private_addr", "private_port", "public_addr",
           "public_port_start", "public_port_end", "protocol", "dst_addr", "dst_port", "bytes", "exporter", "detail",
           "network")
"""Columns of every trace answer, in order. ``time_from``/``time_to`` are UTC milliseconds; ``network`` is the
binding's network (binding rows only)."""

EVIDENCE = ("verdict", "nat", "nat_end", "binding", "flow")
"""``evidence`` values: the verdict (added by the command for CSV and JSON answers), the NAT rows that decide the
holder, the end of each held mapping (when it ended), the binding of each holder's private address at T, a matching
flow record."""


def address_literal(text: str) -> str:
    """``IPv6StringToNum('...')`` of an address (IPv4 as IPv4-mapped); raises ValueError for bad input."""
    addr = ipaddress.ip_address(text.strip())
    mapped = f"::ffff:{addr}" if addr.version == 4 else str(addr)
    return f"IPv6StringToNum('{mapped}')"


def prefix_match(network_hex: str, prefix_len: str, address_hex: str) -> str:
    """SQL: the address lies in ``network/prefix_len``; both given as 32-digit ``hex()`` strings of their 16 bytes,
    the prefix length in IPv6 terms (an IPv4 /32 is 128)."""
    nib = f"intDiv(toUInt16({prefix_len}), 4)"
    rem = f"(toUInt16({prefix_len}) % 4)"

    def boundary(x: str) -> str:
        return f"bitShiftRight(reinterpretAsUInt8(unhex(concat('0', substring({x}, {nib} + 1, 1)))), 4 - {rem})"

    return (f"(substring({network_hex}, 1, {nib}) = substring({address_hex}, 1, {nib}) "
            f"AND ({rem} = 0 OR {boundary(network_hex)} = {boundary(address_hex)}))")


def ms(column: str) -> str:
    """SQL: UTC milliseconds (UInt64) of a time column of ``nat_events`` or ``ip_detail_records``: its whole seconds
    plus its ``<column>_msec`` companion, so the same SQL keeps the milliseconds on servers that store whole seconds
    (18.16 ``DateTime``) and on the embedded store. Rows written before the companion existed read as ``.000``."""
    return f"(toUInt64(toUInt32({column})) * 1000 + {column}_msec)"


def any_ms(column: str) -> str:
    """SQL: UTC milliseconds (UInt64) of a time column without a ``_msec`` companion (``bindings``), as precise as the
    backend keeps it: milliseconds on the embedded store and modern servers, whole seconds on 18.16."""
    return f"toUInt64(round(toFloat64({column}) * 1000))"


_STARTS_ENDS = 17_592_186_044_416  # 2**44: above every millisecond time (2**32 s * 1000 < 2**42)
_RANK = f"if(action = 3, {ms('time')}, {_STARTS_ENDS} + {ms('time')} * 4 + if(action = 1, 2, 1))"
"""Which NAT row decides: any start or end row outranks an observed translation (a flow seen inside a port block
does not end the block); among start/end rows the latest millisecond wins, a start over an end at the same
millisecond (release then re-allocation)."""


def port_covered(port: int) -> str:
    """SQL: the NAT row's port range covers ``port``, stepping by ``port_step`` (IE 363: a block of every second
    port holds 2001, 2003, ... and not 2002)."""
    p = int(port)
    return (f"public_port_start <= {p} AND public_port_end >= {p} "
            f"AND ({p} - public_port_start) % greatest(port_step, 1) = 0")


def filtered(source: Source, table: str, t0_ms: int, t1_ms: int, where: str) -> str:
    """``source(table, t0, t1)`` with ``where`` added inside it: servers without predicate push-down (18.16) then use
    the primary key and partitions for it; chDB reads only the range's hour partitions."""
    s = source(table, t0_ms, t1_ms)
    if not (s.startswith("(") and s.endswith(")") and " WHERE " in s):
        raise ValueError(f"unexpected FROM clause from the query engine: {s[:80]}")
    return f"{s[:-1]} AND ({where}))"


def _bindings_at(holders: str, at_ms: int) -> str:
    """The binding of each holder's inside address at ``at_ms`` (longest prefix, then latest start; each binding at
    its latest version), as a FROM subquery.

    ``holders`` has one row per holder with ``x`` (the inside address as hex, '' for nobody) and ``xp`` (the inside
    port), CROSS JOINed with ``bindings``: a scalar subquery referenced through WITH aliases is evaluated once per
    reference on 18.16 (measured 8x slower), a joined row once. Columns: the binding's, plus ``private_hex`` and
    ``private_port`` (the holder it belongs to).
    """
    return (
        "(SELECT binding_id, x AS private_hex, xp AS private_port, argMax(subscriber_id, version) AS subscriber_id, "
        "any(network) AS net, any(prefix_len) AS plen, argMax(valid_from, version) AS valid_from, "
        "argMax(valid_to, version) AS valid_to, argMax(source, version) AS source, argMax(session_id, version) AS "
        "session_id, argMax(nas, version) AS nas "
        f"FROM {holders} AS hx CROSS JOIN bindings WHERE x != '' AND {prefix_match('hex(network)', 'prefix_len', 'x')} "
        f"GROUP BY binding_id, x, xp HAVING {any_ms('valid_from')} <= {int(at_ms)} "
        f"AND {any_ms('valid_to')} > {int(at_ms)} ORDER BY plen DESC, valid_from DESC LIMIT 1 BY private_hex, "
        f"private_port)")


_NAT_ROW = ("action", "time", "time_msec", "time_end", "time_end_msec", "private_addr", "private_port",
            "public_addr", "public_port_start", "public_port_end", "port_step", "protocol", "dst_addr", "dst_port",
            "exporter", "scope", "firewall_event", "nat_event")
"""The ``nat_events`` columns :data:`_NAT_COLUMNS` reads (``action`` first)."""

_NAT_COLUMNS = (
    "'' AS subscriber_id, IPv6NumToString(private_addr) AS private_addr, private_port, "
    "IPv6NumToString(public_addr) AS public_addr, public_port_start, public_port_end, protocol, "
    "IPv6NumToString(dst_addr) AS dst_addr, dst_port, toUInt64(0) AS bytes, "
    "IPv6NumToString(exporter) AS exporter, concat(scope, ' ', transform(action, [1, 2, 3], ['start', 'end', "
    "'observed'], 'other'), if(firewall_event > 0, ' firewallEvent ', ' natEvent '), "
    "toString(if(firewall_event > 0, firewall_event, nat_event)), "
    "if(port_step > 1, concat(' step ', toString(port_step)), '')) AS detail, '' AS network")
"""The evidence columns of a ``nat_events`` row after ``time_from, time_to``."""


def _holder_tuple(x: str, action: int) -> str:
    """A holder entry that names no NAT row: ``(x, port 0, action, 0, 0, group 0)``."""
    return f"tuple({x}, toUInt16(0), toUInt8({action}), toUInt64(0), toUInt64(0), toUInt8(0))"


@dataclass(frozen=True)
class AddressQuery:
    """``flowmed trace --address A [--port P] [--protocol N] --at T [--window S]``."""

    address: str
    at_ms: int
    port: int | None = None
    window_s: int = 60
    lookback_s: int = 86400
    flows_limit: int = 100
    protocol: int | None = None
    """Only NAT sessions of this IP protocol (port blocks, protocol 0, cover every protocol). Without it each protocol
    is decided on its own and every protocol that holds the port is evidence (several holders: ambiguous)."""
    deterministic: Mapping | None = None
    """A :class:`mediation.compliance.deterministic.Mapping` when a deterministic NAT rule covers the address and
    port: the
    holder is computed, not looked up in nat_events."""

    def sql(self, source: Source) -> str:
        """The one SQL query; ``source(table, t0_ms, t1_ms)`` is :meth:`storage.query.QueryEngine.source`."""
        a = address_literal(self.address)
        at = int(self.at_ms)
        w = self.window_s * 1000
        mapping = f"public_addr = {a}"
        if self.port is not None:
            mapping += f" AND {port_covered(self.port)}"
        if self.protocol is not None:
            mapping += f" AND protocol IN (0, {int(self.protocol)})"
        # each protocol holds its ports on its own (TCP 40112 and UDP 40112 are two mappings); with --protocol the
        # rows of that protocol and the port blocks (protocol 0) decide together
        group = "toUInt8(0)" if self.protocol is not None else "protocol"
        nat_rows = filtered(source, "nat_events", at - self.lookback_s * 1000, (at // 1000 + 1) * 1000,
                            f"{mapping} AND scope IN ('session', 'block', 'flow') AND action IN (1, 2, 3) "
                            f"AND {ms('time')} <= {at}")
        # the decisive NAT row of each group: the latest start or end, else the latest observed translation
        decisive = f"(SELECT *, {_RANK} AS k, {group} AS g FROM {nat_rows} ORDER BY k DESC LIMIT 1 BY g)"
        not_behind_nat, nobody = _holder_tuple(f"hex({a})", 0), _holder_tuple("''", 2)
        # one row: d = the decisive rows (inside address hex, inside port, action, time ms, time_end ms, group);
        # logged = a start or end decides somewhere (then observed translations are not evidence); held = the rows
        # that hold the port at T (a start; an observed translation, only where nothing was logged, until its flow
        # ended plus the window); holders = held, else A itself (no NAT rows) or nobody
        summary = (
            f"(SELECT groupArray(tuple(hex(private_addr), private_port, action, {ms('time')}, "
            f"{ms('time_end')}, g)) AS d, "
            f"arrayExists(t -> tupleElement(t, 3) IN (1, 2), d) AS logged, "
            f"arrayFilter(t -> tupleElement(t, 3) = 1 OR (tupleElement(t, 3) = 3 AND NOT logged "
            f"AND tupleElement(t, 5) >= {at - w}), d) AS held, "
            f"if(empty(d), [{not_behind_nat}], if(empty(held), [{nobody}], held)) AS holders FROM {decisive})")
        det = self.deterministic
        if det is not None:  # the rule is the log: a block start that always holds
            summary = (f"(SELECT [{_holder_tuple(f'hex({address_literal(det.inside)})', 1)}] AS d, 1 AS logged, "
                       f"d AS held, d AS holders)")
        # who is behind (holders), one row each: x (inside address hex), xp (inside port), ha (action), hg (group);
        # A itself when it has no NAT rows (not behind NAT, or IPv6 by prefix), '' (nobody) when nothing holds
        hx = (f"(SELECT arrayJoin(holders) AS t, tupleElement(t, 1) AS x, tupleElement(t, 2) AS xp, "
              f"tupleElement(t, 3) AS ha, tupleElement(t, 6) AS hg FROM {summary})")
        # the same as one row: "<x>:<xp>" of each holder, to match flow records without a join per holder
        keys = (f"(SELECT arrayMap(t -> concat(tupleElement(t, 1), ':', toString(tupleElement(t, 2))), holders) "
                f"AS keys FROM {summary})")
        bound = _bindings_at(hx, at)
        port_flow = "" if self.port is None else f" AND nat_port = {int(self.port)}"
        # the holders' records, and unattributed ones (written before a late RADIUS Start reached flowmed): both are
        # key ranges of ip_detail_records
        flow_rows = filtered(source, "ip_detail_records", at - w, at + w + 1,
                             f"(subscriber_id IN (SELECT subscriber_id FROM {bound}) OR subscriber_id = '') "
                             f"AND {ms('flow_start')} >= {at - w} AND {ms('flow_start')} <= {at + w}")
        end_rows = filtered(source, "nat_events", at, at + self.lookback_s * 1000,
                            f"{mapping} AND action = 2 AND {ms('time')} > {at}")
        port = int(self.port or 0)
        parts = [
            # 1. the NAT rows that decide (one per protocol without --protocol; observed ones only when nothing
            # was logged)
            f"SELECT 'nat' AS evidence, {ms('time')} AS time_from, {ms('time_end')} AS time_to, {_NAT_COLUMNS} "
            f"FROM (SELECT arrayJoin(shown) AS t, "
            f"{', '.join(f'tupleElement(t, {i + 1}) AS {c}' for i, c in enumerate(_NAT_ROW))} "
            f"FROM (SELECT groupArray(tuple({', '.join(_NAT_ROW)})) AS rs, "
            f"arrayExists(u -> tupleElement(u, 1) IN (1, 2), rs) AS logged, "
            f"arrayFilter(t -> tupleElement(t, 1) IN (1, 2) OR NOT logged, rs) AS shown FROM {decisive}))",
            # 2. when each held mapping ended (the first end of the same inside address and port after T)
            f"SELECT 'nat_end' AS evidence, {ms('time')} AS time_from, {ms('time')} AS time_to, {_NAT_COLUMNS} "
            f"FROM (SELECT * FROM {hx} AS hx CROSS JOIN {end_rows} AS r WHERE hex(private_addr) = x "
            f"AND ha IN (1, 3) AND {group} = hg AND (xp = 0 OR private_port = xp) ORDER BY {ms('time')} "
            f"LIMIT 1 BY x, xp, hg)",
            # 3. the binding of each holder's inside address at T
            f"SELECT 'binding' AS evidence, {any_ms('valid_from')} AS time_from, {any_ms('valid_to')} AS time_to, "
            f"subscriber_id, IPv6NumToString(toFixedString(unhex(private_hex), 16)) AS private_addr, private_port, "
            f"IPv6NumToString({a}) AS public_addr, toUInt16({port}) AS public_port_start, "
            f"toUInt16({port}) AS public_port_end, toUInt8(0) AS protocol, '' AS dst_addr, "
            f"toUInt16(0) AS dst_port, toUInt64(0) AS bytes, IPv6NumToString(nas) AS exporter, "
            f"concat(source, ' session ', session_id) AS detail, "
            f"concat(IPv6NumToString(net), '/', toString(plen)) AS network FROM {bound}",
            # 4. the flows behind it: from a holder's inside address (and port), or with A (and P) as public side
            f"SELECT 'flow' AS evidence, {ms('flow_start')} AS time_from, {ms('flow_end')} AS time_to, "
            f"subscriber_id, IPv6NumToString(src_addr) AS private_addr, src_port AS private_port, "
            f"IPv6NumToString(nat_addr) AS public_addr, nat_port AS public_port_start, nat_port AS public_port_end, "
            f"protocol, IPv6NumToString(dst_addr) AS dst_addr, dst_port, bytes, "
            f"IPv6NumToString(exporter) AS exporter, status AS detail, '' AS network "
            f"FROM (SELECT * FROM {flow_rows} AS r CROSS JOIN {keys} AS hk "
            f"WHERE (nat_addr = {a}{port_flow}) OR has(keys, concat(hex(src_addr), ':0')) "
            f"OR has(keys, concat(hex(src_addr), ':', toString(src_port))) "
            f"ORDER BY flow_start LIMIT {int(self.flows_limit)})",
        ]
        if det is not None:  # no NAT log to read: the mapping itself is the evidence, and it never ends
            parts[0] = (
                f"SELECT 'nat' AS evidence, toUInt64(0) AS time_from, toUInt64(0) AS time_to, '' AS subscriber_id, "
                f"'::ffff:{det.inside}' AS private_addr, toUInt16(0) AS private_port, '::ffff:{det.outside}' AS "
                f"public_addr, toUInt16({det.first_port}) AS public_port_start, toUInt16({det.last_port}) AS "
                f"public_port_end, toUInt8(0) AS protocol, '' AS dst_addr, toUInt16(0) AS dst_port, toUInt64(0) AS "
                f"bytes, '' AS exporter, 'block start deterministic NAT (RFC 7422)' AS detail, '' AS network")
            del parts[1]
        return "\nUNION ALL\n".join(parts)


@dataclass(frozen=True)
class SubscriberQuery:
    """``flowmed trace --subscriber S --from F --to T`` (and the rows of ``flowmed ipdr-report --subscriber``)."""

    subscriber_id: str
    from_ms: int
    to_ms: int
    limit: int = 100_000

    def sql(self, source: Source) -> str:
        """The one SQL query; ``source(table, t0_ms, t1_ms)`` is :meth:`storage.query.QueryEngine.source`."""
        s = "'" + self.subscriber_id.replace("\\", "\\\\").replace("'", "\\'") + "'"
        f, t = int(self.from_ms), int(self.to_ms)
        rows = filtered(source, "ip_detail_records", f, t,
                        f"subscriber_id = {s} AND {ms('flow_start')} >= {f} AND {ms('flow_start')} < {t}")
        return "\nUNION ALL\n".join([
            f"SELECT 'binding' AS evidence, {any_ms('valid_from')} AS time_from, {any_ms('valid_to')} AS time_to, "
            f"sub AS subscriber_id, IPv6NumToString(net) AS private_addr, "
            f"toUInt16(0) AS private_port, '' AS public_addr, toUInt16(0) AS public_port_start, "
            f"toUInt16(0) AS public_port_end, toUInt8(0) AS protocol, '' AS dst_addr, toUInt16(0) AS dst_port, "
            f"toUInt64(0) AS bytes, IPv6NumToString(nas) AS exporter, concat(source, ' session ', session_id) AS "
            f"detail, concat(IPv6NumToString(net), '/', toString(plen)) AS network "
            f"FROM (SELECT binding_id, any(subscriber_id) AS sub, any(network) AS net, "
            f"any(prefix_len) AS plen, argMax(valid_from, version) AS valid_from, argMax(valid_to, version) AS "
            f"valid_to, argMax(source, version) AS source, argMax(session_id, version) AS session_id, "
            f"argMax(nas, version) AS nas FROM bindings WHERE subscriber_id = {s} GROUP BY binding_id "
            f"HAVING {any_ms('valid_from')} < {t} AND {any_ms('valid_to')} > {f} ORDER BY valid_from)",
            f"SELECT 'flow' AS evidence, {ms('flow_start')} AS time_from, {ms('flow_end')} AS time_to, "
            f"subscriber_id, IPv6NumToString(src_addr) AS private_addr, "
            f"src_port AS private_port, IPv6NumToString(nat_addr) AS public_addr, nat_port AS public_port_start, "
            f"nat_port AS public_port_end, protocol, IPv6NumToString(dst_addr) AS dst_addr, dst_port, bytes, "
            f"IPv6NumToString(exporter) AS exporter, concat(status, ' ', binding_source, ' ', session_id) AS detail, "
            f"'' AS network FROM (SELECT * FROM {rows} ORDER BY flow_start LIMIT {int(self.limit)})",
        ])
