"""``flowmed trace`` and ``flowmed ipdr-report``: who held an address (and port) at an instant, a subscriber's
connections over a period; each answered by ONE SQL query that runs unchanged on the embedded store (chDB) and on a
ClickHouse server (18.16 and modern). The queries are documented in ``docs/compliance.md``.

Portability rules the SQL follows: addresses are compared with ``IPv6StringToNum('::ffff:a.b.c.d')`` and returned as
text with ``IPv6NumToString``; times are compared with ``toDateTime(seconds, 'UTC')`` (18.16 keeps seconds);
``bindings`` is read through ``argMax(..., version)`` per ``binding_id`` (its latest version, with or without
FINAL); prefixes are matched on hex digits (nibbles) plus the bits of one boundary nibble, so any prefix length works
without functions 18.16 lacks. UNION ALL parts return the same columns with the same types (:data:`COLUMNS`).

The address query, for public address A, port P, instant T:

1. *NAT holder*: among ``nat_events`` rows covering (A, P) between ``T - nat_lookback`` and T, the latest decides:
   a start (session create, port block allocation) names the private address and port; an end (delete, release)
   means nobody held it. At equal seconds a start outranks an end (release then re-allocation). Only when the device
   logged no start or end there, a translation observed in a flow record decides; it holds until the flow ended
   plus the window.
2. *Binding*: the private address (A itself when A has no NAT rows: not behind NAT, or IPv6 by prefix) is looked up
   in ``bindings`` at T: longest prefix, then latest start.
3. *Flows*: ``ip_detail_records`` of that subscriber (or unattributed when written) between T - window and
   T + window from that private address (and port) or with that public address and port.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

COLUMNS = ("evidence", "time_from", "time_to", "subscriber_id", "private_addr", "private_port", "public_addr",
           "public_port_start", "public_port_end", "protocol", "dst_addr", "dst_port", "bytes", "exporter", "detail")
"""Columns of every trace answer, in order."""

EVIDENCE = ("nat", "nat_end", "binding", "flow")
"""``evidence`` values: the NAT row that decides the holder, the end of that mapping (when it ended), the binding of
the private address at T, a matching flow record."""


def address_literal(text: str) -> str:
    """``IPv6StringToNum('...')`` of an address (IPv4 as IPv4-mapped); raises ValueError for bad input."""
    addr = ipaddress.ip_address(text.strip())
    mapped = f"::ffff:{addr}" if addr.version == 4 else str(addr)
    return f"IPv6StringToNum('{mapped}')"


def _t(ms: int) -> str:
    return f"toDateTime({int(ms) // 1000}, 'UTC')"


def prefix_match(network_hex: str, prefix_len: str, address_hex: str) -> str:
    """SQL: the address lies in ``network/prefix_len``; both given as 32-digit ``hex()`` strings of their 16 bytes,
    the prefix length in IPv6 terms (an IPv4 /32 is 128)."""
    nib = f"intDiv(toUInt16({prefix_len}), 4)"
    rem = f"(toUInt16({prefix_len}) % 4)"

    def boundary(x: str) -> str:
        return f"bitShiftRight(reinterpretAsUInt8(unhex(concat('0', substring({x}, {nib} + 1, 1)))), 4 - {rem})"

    return (f"(substring({network_hex}, 1, {nib}) = substring({address_hex}, 1, {nib}) "
            f"AND ({rem} = 0 OR {boundary(network_hex)} = {boundary(address_hex)}))")


_RANK = ("if(action = 3, toUInt64(toUInt32(time)), 17179869184 + toUInt64(toUInt32(time)) * 4 + "
         "if(action = 1, 2, 1))")
"""Which NAT row decides: any start or end row outranks an observed translation (a flow seen inside a port block
does not end the block); among start/end rows the latest second wins, a start over an end in the same second."""

def filtered(source, table: str, t0_ms: int, t1_ms: int, where: str) -> str:
    """``source(table, t0, t1)`` with ``where`` added inside it: servers without predicate push-down (18.16) then use
    the primary key and partitions for it; chDB reads only the range's hour partitions."""
    s = source(table, t0_ms, t1_ms)
    if not (s.startswith("(") and s.endswith(")") and " WHERE " in s):
        raise ValueError(f"unexpected FROM clause from the query engine: {s[:80]}")
    return f"{s[:-1]} AND ({where}))"


def _bindings_at(holder: str, t0: str, t1: str) -> str:
    """The latest version of every binding of the holder's address valid over [t0, t1), as a FROM subquery.

    ``holder`` is a one-row subquery with ``x`` (the inside address as hex) and ``xp`` (the inside port), CROSS
    JOINed with ``bindings``: a scalar subquery referenced through WITH aliases is evaluated once per reference on
    18.16 (measured 8x slower), a joined row once. Columns: the binding's, plus ``private_hex`` and ``private_port``.
    """
    return (
        "(SELECT binding_id, argMax(subscriber_id, version) AS subscriber_id, any(network) AS net, "
        "any(prefix_len) AS plen, argMax(valid_from, version) AS valid_from, argMax(valid_to, version) AS "
        "valid_to, argMax(source, version) AS source, argMax(session_id, version) AS session_id, "
        "argMax(nas, version) AS nas, any(x) AS private_hex, any(xp) AS private_port "
        f"FROM {holder} AS hx CROSS JOIN bindings WHERE {prefix_match('hex(network)', 'prefix_len', 'x')} "
        f"GROUP BY binding_id HAVING valid_from < {t1} AND valid_to > {t0})")


@dataclass(frozen=True)
class AddressQuery:
    """``flowmed trace --address A [--port P] --at T [--window S]``."""

    address: str
    at_ms: int
    port: int | None = None
    window_s: int = 60
    lookback_s: int = 86400
    flows_limit: int = 100
    protocol: int | None = None
    """Only NAT sessions of this IP protocol (port blocks, protocol 0, cover every protocol)."""
    deterministic: object | None = None
    """A :class:`mediation.deterministic.Mapping` when a deterministic NAT rule covers the address and port: the
    holder is computed, not looked up in nat_events."""

    def sql(self, source) -> str:
        """The one SQL query; ``source(table, t0_ms, t1_ms)`` is :meth:`mediation.query.QueryEngine.source`."""
        a = address_literal(self.address)
        t_end = (self.at_ms // 1000 + 1) * 1000  # the whole asked second
        w = self.window_s * 1000
        port_cond = "1" if self.port is None else \
            f"public_port_start <= {int(self.port)} AND public_port_end >= {int(self.port)}"
        mapping = f"public_addr = {a} AND {port_cond}"
        if self.protocol is not None:
            mapping += f" AND protocol IN (0, {int(self.protocol)})"
        nat_rows = filtered(source, "nat_events", self.at_ms - self.lookback_s * 1000, t_end,
                            f"{mapping} AND scope IN ('session', 'block', 'flow') AND action IN (1, 2, 3)")
        # the decisive NAT row: (hex(private_addr), private_port, action, time, time_end, rows) of the latest one
        holder = (
            f"(SELECT tuple(argMax(hex(private_addr), k), argMax(private_port, k), argMax(action, k), "
            f"argMax(time, k), argMax(time_end, k), count()) FROM (SELECT private_addr, private_port, action, time, "
            f"time_end, {_RANK} AS k FROM {nat_rows}))")
        det = self.deterministic
        if det is not None:  # the rule is the log: a block start that always holds
            holder = (f"(SELECT tuple(hex({address_literal(det.inside)}), toUInt16(0), toUInt8(1), "
                      f"toDateTime(0, 'UTC'), toDateTime(0, 'UTC'), toUInt64(1)))")
        # who is behind (hex; h is the holder tuple): the NAT row's private address, A itself without NAT rows,
        # nobody after an end or a stale observed translation
        private = _elements(f"if(h.6 = 0, hex({a}), if(h.3 = 2 OR (h.3 = 3 AND h.5 < {_t(self.at_ms - w)}), '', "
                            f"h.1))")
        private_port = _elements("if(h.6 = 0 OR h.3 = 2, toUInt16(0), h.2)")
        t0, t1 = _t(self.at_ms), _t(t_end)
        # one row: x, xp (who is behind), hp, ha (the decisive row's inside address and action)
        hx = (f"(SELECT {private} AS x, {private_port} AS xp, tupleElement(h, 1) AS hp, tupleElement(h, 3) AS ha "
              f"FROM (SELECT {holder} AS h))")
        bound = _bindings_at(hx, t0, t1)
        subscriber = (f"(SELECT any(subscriber_id) FROM (SELECT subscriber_id FROM {bound} "
                      f"ORDER BY plen DESC, valid_from DESC LIMIT 1))")
        port_flow = "" if self.port is None else f" AND nat_port = {int(self.port)}"
        # the holder's records, and unattributed ones (written before a late RADIUS Start reached flowmed): both are
        # key ranges of ip_detail_records
        flow_rows = filtered(source, "ip_detail_records", self.at_ms - w, t_end + w,
                             f"subscriber_id = {subscriber} OR subscriber_id = ''")
        nat_cols = (
            "'' AS subscriber_id, IPv6NumToString(private_addr) AS private_addr, private_port, "
            "IPv6NumToString(public_addr) AS public_addr, public_port_start, public_port_end, protocol, "
            "IPv6NumToString(dst_addr) AS dst_addr, dst_port, toUInt64(0) AS bytes, "
            "IPv6NumToString(exporter) AS exporter, concat(scope, ' ', transform(action, [1, 2, 3], ['start', 'end', "
            "'observed'], 'other'), if(firewall_event > 0, ' firewallEvent ', ' natEvent '), "
            "toString(if(firewall_event > 0, firewall_event, nat_event))) AS detail")
        end_rows = filtered(source, "nat_events", t_end, self.at_ms + self.lookback_s * 1000,
                            f"{mapping} AND action = 2")
        parts = [
            # 1. the NAT row that decides
            f"SELECT 'nat' AS evidence, toUInt32(toDateTime(time, 'UTC')) AS time_from, "
            f"toUInt32(toDateTime(time_end, 'UTC')) AS time_to, {nat_cols} "
            f"FROM (SELECT *, {_RANK} AS k FROM {nat_rows} ORDER BY k DESC LIMIT 1)",
            # 2. when that mapping ended (the first end of the same private address after T)
            f"SELECT 'nat_end' AS evidence, toUInt32(toDateTime(time, 'UTC')) AS time_from, "
            f"toUInt32(toDateTime(time, 'UTC')) AS time_to, {nat_cols} "
            f"FROM (SELECT * FROM {hx} AS hx CROSS JOIN {end_rows} AS r WHERE hex(private_addr) = hp AND ha IN (1, 3) "
            f"ORDER BY time LIMIT 1)",
            # 3. the binding of the private address at T
            f"SELECT 'binding' AS evidence, toUInt32(toDateTime(valid_from, 'UTC')) AS time_from, "
            f"toUInt32(toDateTime(valid_to, 'UTC')) AS time_to, subscriber_id, "
            f"IPv6NumToString(toFixedString(unhex(private_hex), 16)) AS private_addr, private_port, "
            f"IPv6NumToString({a}) AS public_addr, toUInt16({self.port or 0}) AS public_port_start, "
            f"toUInt16({self.port or 0}) AS public_port_end, toUInt8(0) AS protocol, '' AS dst_addr, "
            f"toUInt16(0) AS dst_port, toUInt64(0) AS bytes, IPv6NumToString(nas) AS exporter, "
            f"concat(source, ' ', IPv6NumToString(net), '/', toString(plen), ' session ', session_id) "
            f"AS detail FROM (SELECT * FROM {bound} ORDER BY plen DESC, valid_from DESC LIMIT 1)",
            # 4. the flows behind it
            f"SELECT 'flow' AS evidence, toUInt32(toDateTime(flow_start, 'UTC')) AS time_from, "
            f"toUInt32(toDateTime(flow_end, 'UTC')) AS time_to, subscriber_id, "
            f"IPv6NumToString(src_addr) AS private_addr, src_port AS private_port, "
            f"IPv6NumToString(nat_addr) AS public_addr, nat_port AS public_port_start, nat_port AS public_port_end, "
            f"protocol, IPv6NumToString(dst_addr) AS dst_addr, dst_port, bytes, "
            f"IPv6NumToString(exporter) AS exporter, status AS detail "
            f"FROM (SELECT * FROM {hx} AS hx CROSS JOIN {flow_rows} AS r "
            f"WHERE (hex(src_addr) = x AND (xp = 0 OR src_port = xp)) OR (nat_addr = {a}{port_flow}) "
            f"ORDER BY flow_start LIMIT {int(self.flows_limit)})",
        ]
        if det is not None:  # no NAT log to read: the mapping itself is the evidence, and it never ends
            parts[0] = (
                f"SELECT 'nat' AS evidence, toUInt32(0) AS time_from, toUInt32(0) AS time_to, '' AS subscriber_id, "
                f"'::ffff:{det.inside}' AS private_addr, toUInt16(0) AS private_port, '::ffff:{det.outside}' AS "
                f"public_addr, toUInt16({det.first_port}) AS public_port_start, toUInt16({det.last_port}) AS "
                f"public_port_end, toUInt8(0) AS protocol, '' AS dst_addr, toUInt16(0) AS dst_port, toUInt64(0) AS "
                f"bytes, '' AS exporter, 'block start deterministic NAT (RFC 7422)' AS detail")
            del parts[1]
        return "\nUNION ALL\n".join(parts)


def _elements(expr: str) -> str:
    """``h.N`` -> ``tupleElement(h, N)`` (18.16 has no ``.N`` on a WITH alias of a scalar subquery)."""
    return re.sub(r"\bh\.(\d)", r"tupleElement(h, \1)", expr)


@dataclass(frozen=True)
class SubscriberQuery:
    """``flowmed trace --subscriber S --from F --to T`` (and the rows of ``flowmed ipdr-report --subscriber``)."""

    subscriber_id: str
    from_ms: int
    to_ms: int
    limit: int = 100_000

    def sql(self, source) -> str:
        s = "'" + self.subscriber_id.replace("\\", "\\\\").replace("'", "\\'") + "'"
        rows = filtered(source, "ip_detail_records", self.from_ms, self.to_ms, f"subscriber_id = {s}")
        return "\nUNION ALL\n".join([
            f"SELECT 'binding' AS evidence, toUInt32(toDateTime(valid_from, 'UTC')) AS time_from, "
            f"toUInt32(toDateTime(valid_to, 'UTC')) AS time_to, sub AS subscriber_id, "
            f"IPv6NumToString(net) AS private_addr, "
            f"toUInt16(0) AS private_port, '' AS public_addr, toUInt16(0) AS public_port_start, "
            f"toUInt16(0) AS public_port_end, toUInt8(0) AS protocol, '' AS dst_addr, toUInt16(0) AS dst_port, "
            f"toUInt64(0) AS bytes, IPv6NumToString(nas) AS exporter, concat(source, ' ', "
            f"IPv6NumToString(net), '/', toString(plen), ' session ', session_id) AS detail "
            f"FROM (SELECT binding_id, any(subscriber_id) AS sub, any(network) AS net, "
            f"any(prefix_len) AS plen, argMax(valid_from, version) AS valid_from, argMax(valid_to, version) AS "
            f"valid_to, argMax(source, version) AS source, argMax(session_id, version) AS session_id, "
            f"argMax(nas, version) AS nas FROM bindings WHERE subscriber_id = {s} GROUP BY binding_id "
            f"HAVING valid_from < {_t(self.to_ms)} AND valid_to > {_t(self.from_ms)} ORDER BY valid_from)",
            f"SELECT 'flow' AS evidence, toUInt32(toDateTime(flow_start, 'UTC')) AS time_from, "
            f"toUInt32(toDateTime(flow_end, 'UTC')) AS time_to, subscriber_id, "
            f"IPv6NumToString(src_addr) AS private_addr, "
            f"src_port AS private_port, IPv6NumToString(nat_addr) AS public_addr, nat_port AS public_port_start, "
            f"nat_port AS public_port_end, protocol, IPv6NumToString(dst_addr) AS dst_addr, dst_port, bytes, "
            f"IPv6NumToString(exporter) AS exporter, concat(status, ' ', binding_source, ' ', session_id) AS detail "
            f"FROM (SELECT * FROM {rows} "
            f"ORDER BY flow_start LIMIT {int(self.limit)})",
        ])
