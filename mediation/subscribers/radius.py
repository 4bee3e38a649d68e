"""RADIUS accounting (RFC 2866), sans I/O: datagrams in, responses, binding changes and usage rows out.

* Accounting-Request Start / Interim-Update / Stop open, keep and close bindings of the session's addresses
  (Framed-IP-Address, Framed-IPv6-Address, Framed-IPv6-Prefix, Delegated-IPv6-Prefix) for the subscriber named by
  the configured attribute (User-Name by default). Accounting-On / Accounting-Off close every binding of that NAS.
* The Request Authenticator is checked with the secret of the client (by source address, longest prefix); requests
  from unknown clients or with a bad authenticator are dropped (no answer), counted and logged.
* Acct-Input/Output-Octets with their Gigawords are cumulative per session; the delta since the previous report
  (a counter that goes back is a reset, or a 32-bit wrap when no Gigawords are sent) is spread over the intervals
  since that report (largest remainder, exact) and becomes ``usage`` rows with ``source='radius'``: input octets
  (from the subscriber) are ``up``, output octets ``down``.
* :meth:`RadiusAccounting.handle` processes a batch of datagrams in one SQLite transaction and returns the
  Accounting-Responses only after it committed (fsync): a NAS gets its answer once the binding is durable. A
  retransmitted request (same client, identifier and authenticator) is answered again without being re-applied;
  the last :data:`DUPLICATE_WINDOW` answered requests are remembered in the database (in the same transaction), so
  a request captured and re-sent after a restart is not applied again either. A request whose time
  (Event-Timestamp, else the receive time minus Acct-Delay-Time) is older than ``radius.max_event_age_s`` is
  acknowledged but not applied (``too_old``).
* Late reports: an Interim-Update or Stop may extend or end its own session's binding, never past the start of a
  newer binding of that address, and never opens it again once a newer session holds the address (a Stop that
  arrives after the next session's Start only shortens the old binding). A report older than one already applied
  to its session changes neither the session's counters nor its addresses; one for a session that already ended
  (Stop, expiry, Accounting-On/Off) at or after its time makes no usage (it was counted, or is a replay).
* The usage rows are journaled in the same transaction; the listener drops them from the journal
  (:meth:`RadiusAccounting.confirm`) once the outputs have them durable, and re-emits what is left after a crash.
  So acknowledged usage is never lost; a crash between the outputs' write and the confirmation re-sends rows with
  the same ``row_id`` (collapsed by ``FINAL`` on ClickHouse).

Session identity follows FreeRADIUS' ``Acct-Unique-Session-Id``: a hash of the NAS, Acct-Session-Id, User-Name and
NAS-Port, because Acct-Session-Id values repeat after a NAS reboot.

Over 500 lines because the session rules (late reports, superseded sessions, NAS on/off) and the usage
they produce are one state machine over the bindings; the packet format is :mod:`radius_packets`.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import pyarrow as pa

from mediation import hashing
from mediation.aggregate import allocate, split_intervals
from mediation.hashing import hash_columns, string_hash
from mediation.subscribers.bindings import Bindings, join_addresses, parse_network
from mediation.subscribers.radius_packets import (
    ACCOUNTING_OFF,
    ACCOUNTING_ON,
    ACCOUNTING_REQUEST,
    ATTRIBUTES,
    INTERIM,
    START,
    STOP,
    Packet,
    RadiusError,
    accounting_request,
    accounting_response,
    attribute_text,
    ipv6_prefix,
    parse_packet,
    request_authenticator_ok,
)
from mediation.subscribers.settings import RadiusConfig
from mediation.tables import OPEN_END_MS, USAGE

__all__ = [  # the packet names are imported from here by the listener and the tests too
    "ATTRIBUTES", "RadiusAccounting", "RadiusError", "RadiusResult", "accounting_request", "parse_packet",
    "request_authenticator_ok"]

log = logging.getLogger(__name__)

RequestKey = tuple[str, int, bytes]
"""A request as the duplicate window knows it: client, identifier, authenticator."""
Address = tuple[Any, ...]
"""A datagram's source address as the socket gives it ((host, port) or the IPv6 4-tuple)."""

MAX_CLOCK_AHEAD_MS = 300_000
"""An Event-Timestamp further ahead of our clock than this is not believed (the receive time is used, counted)."""
ANSWERED_ERRORS = {"no_subscriber_id", "too_old"}
"""Refusals that are still acknowledged: retransmitting would not help, and an unanswered request can hold up the
NAS's accounting queue. Everything else is not answered (malformed, bad secret, unknown client, over a limit)."""

DUPLICATE_WINDOW = 65536
"""Answered requests remembered (in memory and in the database) to answer their retransmissions and replays
without applying them again."""

_SESSIONS_SCHEMA = """
CREATE TABLE IF NOT EXISTS radius_sessions (
    unique_id TEXT PRIMARY KEY,
    subscriber_id TEXT NOT NULL,
    nas TEXT NOT NULL,
    in_total INTEGER NOT NULL,
    out_total INTEGER NOT NULL,
    last_ms INTEGER NOT NULL,
    gigawords INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS radius_sessions_nas ON radius_sessions(nas);
CREATE TABLE IF NOT EXISTS radius_usage_journal (id INTEGER PRIMARY KEY, payload BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS radius_recent (
    n INTEGER PRIMARY KEY,
    client TEXT NOT NULL,
    identifier INTEGER NOT NULL,
    authenticator BLOB NOT NULL,
    response BLOB NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS radius_recent_key ON radius_recent(authenticator, client, identifier);
"""


@dataclass
class RadiusResult:
    responses: list[tuple[bytes, Address]] = field(default_factory=list)
    """(datagram, address) to send."""
    usage: pa.RecordBatch | None = None
    """``usage`` rows with source 'radius' (None when there are none)."""
    bindings: pa.RecordBatch | None = None
    """Changed bindings (``bindings`` table), to be written to the outputs."""
    journal_id: int = 0
    """Journal entry holding ``usage`` until :meth:`RadiusAccounting.confirm` (0: none)."""


@dataclass
class _Client:
    network: ipaddress.IPv4Network | ipaddress.IPv6Network
    secret: bytes
    name: str


class RadiusAccounting:
    """The accounting server's logic over a :class:`Bindings` store; see the module docstring."""

    def __init__(self, config: RadiusConfig, bindings: Bindings, interval_ms: int = 300_000) -> None:
        """``config``: a :class:`mediation.subscribers.settings.RadiusConfig`."""
        hashing.warm_up()  # usage row ids: compiled now, not inside the first answer (radclient waits 2-3 s)
        self.config = config
        self.bindings = bindings
        self.interval_ms = interval_ms
        self.id_attribute = ATTRIBUTES[config.subscriber_attribute]
        self.clients = sorted((_Client(ipaddress.ip_network(c.address, strict=False), c.shared_secret(),
                                       c.name or c.address) for c in config.clients),
                              key=lambda c: -c.network.prefixlen)
        bindings.conn.executescript(_SESSIONS_SCHEMA)
        # the duplicate window survives restarts: a captured request re-sent later is answered, not re-applied
        self._recent: OrderedDict[RequestKey, bytes] = OrderedDict(
            ((client, ident, bytes(auth)), bytes(resp)) for client, ident, auth, resp in bindings.conn.execute(
                "SELECT client, identifier, authenticator, response FROM radius_recent ORDER BY n").fetchall())
        self.counters: dict[tuple[str, str], int] = {}
        self.expired = 0
        self.span_clamped = 0
        """Reports whose usage spanned more than the session timeout (a NAS clock far off): spread over that much."""
        self._skewed = 0
        """Requests whose Event-Timestamp was too far ahead (the receive time was used instead)."""
        self._batch_keys: list[RequestKey] = []  # added to the duplicate window by the batch being handled
        self._new_sessions = 0

    def _count(self, client: str, result: str) -> None:
        key = (client, result)
        self.counters[key] = self.counters.get(key, 0) + 1

    def client_for(self, host: str) -> _Client | None:
        """The configured client whose prefix holds ``host`` (longest first), or None."""
        try:
            addr = ipaddress.ip_address(host)
        except ValueError:
            return None
        if addr.version == 6 and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        for c in self.clients:
            if addr.version == c.network.version and addr in c.network:
                return c
        return None

    def open_sessions(self) -> int:
        count: int = self.bindings.conn.execute("SELECT count(*) FROM radius_sessions").fetchone()[0]
        return count

    def handle(self, datagrams: Sequence[tuple[bytes, Address]], now_ms: int) -> RadiusResult:
        """Process datagrams ``(payload, (host, port, ...))`` received at ``now_ms``; commit; return the answers.

        Raises when the database fails (a full disk): then nothing of the batch is applied, remembered as answered
        or answered, and the NASes retransmit."""
        self._batch_keys = []
        try:
            return self._handle(datagrams, now_ms)
        except BaseException:
            self.bindings.rollback()
            for key in self._batch_keys:
                self._recent.pop(key, None)
            raise

    def _handle(self, datagrams: Sequence[tuple[bytes, Address]], now_ms: int) -> RadiusResult:
        result = RadiusResult()
        answers: list[tuple[bytes, Address]] = []
        usage: list[dict[str, np.ndarray]] = []
        sessions = None
        self._new_sessions = 0
        for payload, addr in datagrams:
            host = addr[0]
            client = self.client_for(host)
            if client is None:
                self._count("unknown", "unknown_client")
                log.warning("RADIUS request from an unknown client dropped", extra={"client": host})
                continue
            try:
                packet = parse_packet(payload)
            except RadiusError as exc:
                self._count(client.name, exc.reason)
                log.warning("malformed RADIUS packet dropped: %s", exc, extra={"client": host})
                continue
            if packet.code != ACCOUNTING_REQUEST:
                self._count(client.name, "not_accounting_request")
                continue
            if not request_authenticator_ok(packet, client.secret):
                self._count(client.name, "bad_authenticator")
                log.warning("RADIUS request with a bad authenticator dropped (wrong shared secret?)",
                            extra={"client": host})
                continue
            key = (host, packet.identifier, packet.authenticator)
            cached = self._recent.get(key)
            if cached is not None:  # a retransmission: answer again, apply once
                self._count(client.name, "retransmission")
                answers.append((cached, addr))
                continue
            if sessions is None:
                sessions = self.open_sessions()
            result_label = "ok"
            try:
                # sessions opened earlier in this batch count too (the limit must hold within a batch)
                rows = self._apply(packet, host, now_ms, sessions + self._new_sessions)
            except RadiusError as exc:
                self._count(client.name, exc.reason)
                log.warning("RADIUS request refused: %s", exc, extra={"client": host})
                if exc.reason not in ANSWERED_ERRORS:
                    continue
                rows, result_label = None, ""
            if rows is not None:
                usage.append(rows)
            response = accounting_response(packet, client.secret)
            self._remember(key, response)
            answers.append((response, addr))
            if result_label:
                self._count(client.name, result_label)
        if usage:
            cols = {c: np.concatenate([u[c] for u in usage]) for c in usage[0]}
            result.usage = USAGE.to_arrow(cols)
            # the usage is journaled with the counters that produced it, until the outputs have it (confirm)
            self.bindings._begin()
            cur = self.bindings.conn.execute("INSERT INTO radius_usage_journal(payload) VALUES (?)",
                                             (_ipc(result.usage),))
            result.journal_id = int(cast(int, cur.lastrowid))
        # durable first, then the answers (a NAS that gets no answer retransmits)
        changed = self.bindings.commit()
        result.responses = answers
        result.bindings = changed if changed.num_rows else None
        return result

    def _remember(self, key: RequestKey, response: bytes) -> None:
        """Add an answered request to the duplicate window, in memory and (in the batch's transaction) on disk."""
        self._recent[key] = response
        self._batch_keys.append(key)
        self.bindings._begin()
        self.bindings.conn.execute("INSERT OR REPLACE INTO radius_recent(client, identifier, authenticator, response) "
                                   "VALUES (?,?,?,?)", (*key, response))
        if len(self._recent) > DUPLICATE_WINDOW:
            self._recent.popitem(last=False)
            self.bindings.conn.execute(
                "DELETE FROM radius_recent WHERE n <= (SELECT max(n) FROM radius_recent) - ?", (DUPLICATE_WINDOW,))

    def expire(self, now_ms: int) -> pa.RecordBatch | None:
        """Close sessions silent for longer than ``radius.session_timeout_s`` (their Stop was lost) at ``now_ms``;
        returns the changed bindings (or None)."""
        timeout = self.config.session_timeout_s
        if timeout <= 0:
            return None
        stale = [r[0] for r in self.bindings.conn.execute(
            "SELECT unique_id FROM radius_sessions WHERE last_ms < ?", (now_ms - int(timeout * 1000),)).fetchall()]
        if not stale:
            return None
        try:
            for uid in stale:
                self.bindings.close_session(uid, now_ms)
                self.bindings.conn.execute("DELETE FROM radius_sessions WHERE unique_id=?", (uid,))
        except Exception:
            self.bindings.rollback()
            raise
        self.expired += len(stale)
        log.info("RADIUS sessions without news closed", extra={"sessions": len(stale)})
        changed = self.bindings.commit()
        return changed if changed.num_rows else None

    def journaled(self) -> list[tuple[int, pa.RecordBatch]]:
        """Usage still in the journal (not confirmed durable in the outputs): re-emitted after a restart."""
        out = []
        for jid, payload in self.bindings.conn.execute(
                "SELECT id, payload FROM radius_usage_journal ORDER BY id").fetchall():
            with pa.ipc.open_stream(payload) as reader:
                for batch in reader:
                    out.append((int(jid), batch))
        return out

    def confirm(self, upto_id: int) -> None:
        """The outputs hold every usage batch up to journal entry ``upto_id``: drop them from the journal."""
        self.bindings._begin()
        try:
            self.bindings.conn.execute("DELETE FROM radius_usage_journal WHERE id<=?", (upto_id,))
        except Exception:
            self.bindings.rollback()
            raise
        self.bindings.commit()

    # --- one request ---
    def _apply(self, p: Packet, nas: str, now_ms: int, sessions: int) -> dict[str, np.ndarray] | None:
        status = p.integer(ATTRIBUTES["Acct-Status-Type"])
        if status is None:
            raise RadiusError("no_status_type", "Accounting-Request without Acct-Status-Type")
        self.bindings._begin()  # everything of the batch in one transaction: atomic, and one fsync
        event = p.integer(ATTRIBUTES["Event-Timestamp"])
        delay = p.integer(ATTRIBUTES["Acct-Delay-Time"]) or 0
        t = event * 1000 if event else now_ms - delay * 1000
        if event and t > now_ms + MAX_CLOCK_AHEAD_MS:  # a NAS clock far ahead would bind the future
            self._skewed += 1
            t = now_ms - delay * 1000
        max_age_ms = int(self.config.max_event_age_s * 1000)
        if max_age_ms and t < now_ms - max_age_ms:  # a replay, or a NAS clock far behind
            raise RadiusError("too_old", f"event time {(now_ms - t) // 1000} s ago, more than radius.max_event_age_s")
        if status in (ACCOUNTING_ON, ACCOUNTING_OFF):
            # the sessions of before the NAS's restart: not those that reported after it (a late On/Off)
            n = self.bindings.close_nas(nas, t)
            self.bindings.conn.execute("DELETE FROM radius_sessions WHERE nas=? AND last_ms<=?", (nas, t))
            log.info("RADIUS Accounting-%s: bindings of the NAS closed", "On" if status == ACCOUNTING_ON else "Off",
                     extra={"nas": nas, "closed": n})
            return None
        if status not in (START, STOP, INTERIM):
            return None  # other status types (Failed, Tunnel-*) carry nothing for us; still acknowledged
        uid = self._unique_id(p, nas)
        sub = self._subscriber(p)
        if not sub:
            raise RadiusError("no_subscriber_id", f"no {self.config.subscriber_attribute} in the request")
        networks = self._networks(p)
        for giga, octets in (("Acct-Input-Gigawords", "Acct-Input-Octets"),
                             ("Acct-Output-Gigawords", "Acct-Output-Octets")):
            # 8 EiB in one session is not traffic but a broken or hostile NAS; SQLite integers stop at 2^63 - 1, and
            # an exception here would cost the whole batch its answers (found by fuzzing)
            if ((p.integer(ATTRIBUTES[giga]) or 0) << 32) + (p.integer(ATTRIBUTES[octets]) or 0) >= 1 << 63:
                raise RadiusError("bad_counters", f"{giga}/{octets} beyond 2^63 bytes")
        row = self.bindings.conn.execute(
            "SELECT in_total, out_total, last_ms, gigawords FROM radius_sessions WHERE unique_id=?", (uid,)).fetchone()
        if row is None and status != STOP and sessions >= self.config.max_sessions:
            raise RadiusError("too_many_sessions", f"{sessions} sessions open (radius.max_sessions)")
        session_time = p.integer(ATTRIBUTES["Acct-Session-Time"])
        session_start = t - session_time * 1000 if session_time is not None and status != START else t
        late = row is not None and status != START and t < row[2]  # older than a report already applied
        history = self.bindings.session_history(uid)
        stale = False
        if history:
            last_end = max(h[3] for h in history)
            # a Start of a session that held an address after it: re-sent or replayed; an Interim or Stop of a
            # session that ended (Stop, expiry, Accounting-On/Off) at or after its time: late or replayed, its usage
            # counted with the report that ended the session (or never: the counters are gone)
            stale = t < last_end if status == START else row is None and t <= last_end < OPEN_END_MS
        self._bind(status, uid, sub, nas, networks, t, session_start, late, history)
        usage = None
        gw = p.get(ATTRIBUTES["Acct-Input-Gigawords"]) is not None or p.get(ATTRIBUTES["Acct-Output-Gigawords"]) \
            is not None
        total_in = ((p.integer(ATTRIBUTES["Acct-Input-Gigawords"]) or 0) << 32) + \
            (p.integer(ATTRIBUTES["Acct-Input-Octets"]) or 0)
        total_out = ((p.integer(ATTRIBUTES["Acct-Output-Gigawords"]) or 0) << 32) + \
            (p.integer(ATTRIBUTES["Acct-Output-Octets"]) or 0)
        if late or stale:
            if status == STOP:
                self.bindings.conn.execute("DELETE FROM radius_sessions WHERE unique_id=?", (uid,))
            return None
        if status == START:
            last_in, last_out, last_ms, gw_seen = total_in, total_out, t, gw
        elif row is None:  # Interim or Stop without a Start we saw: the counters count from the session start
            last_in, last_out, last_ms, gw_seen = 0, 0, session_start, gw
        else:
            last_in, last_out, last_ms, gw_seen = row[0], row[1], row[2], bool(row[3]) or gw
        if status != START and self.config.usage:
            d_in = _delta(total_in, last_in, gw_seen)
            d_out = _delta(total_out, last_out, gw_seen)
            if d_in or d_out:
                usage = self._usage_rows(sub, uid, nas, last_ms, t, d_in, d_out, (total_in, total_out))
        if status == STOP:
            self.bindings.conn.execute("DELETE FROM radius_sessions WHERE unique_id=?", (uid,))
        else:
            if row is None:
                self._new_sessions += 1
            self.bindings.conn.execute(
                "INSERT OR REPLACE INTO radius_sessions(unique_id, subscriber_id, nas, in_total, out_total, last_ms, "
                "gigawords) VALUES (?,?,?,?,?,?,?)", (uid, sub, nas, total_in, total_out, max(t, last_ms),
                                                     int(gw_seen)))
        return usage

    def _bind(self, status: int, uid: str, sub: str, nas: str, networks: list[str], t: int, session_start: int,
              late: bool, history: list[tuple[int, tuple[int, int, int], int, int]]) -> None:
        """The binding changes of a Start, Interim-Update or Stop of session ``uid`` at ``t`` reporting
        ``networks``; ``late``: an Interim or Stop older than a report already applied; ``history``: every binding
        of the session so far (:meth:`Bindings.session_history`)."""
        latest = {net: (bid, vf, vt) for bid, net, vf, vt in history}  # (in order of start: the latest wins)
        reported = {parse_network(net): net for net in networks}
        if status == START:
            for key, net in reported.items():
                r = latest.get(key)
                # bound already (a re-sent or replayed Start): nothing; a session id used again after the session's
                # binding ended (a NAS restarted): a new binding
                if r is None or r[2] <= t:
                    self.bindings.open(sub, net, t, source="radius", session_id=uid, nas=nas)
            return
        if status == INTERIM and reported and not late:
            # the session's addresses changed (a new delegated prefix, say): end the ones no longer reported
            gone = [r[0] for key, r in latest.items() if r[2] >= OPEN_END_MS and key not in reported]
            if gone:
                self.bindings.close_ids(gone, t)
        for key, net in reported.items():
            r = latest.get(key)
            if r is None:
                # a Start we never saw: bound from the session's start (an address new to the session: from now);
                # ends at the latest where a newer binding of the address starts (Bindings.open)
                start = t if history else session_start
                end = t if status == STOP else OPEN_END_MS
                if end > start:
                    self.bindings.open(sub, net, start, end, source="radius", session_id=uid, nas=nas)
            elif r[2] >= OPEN_END_MS:
                continue  # held: an Interim keeps it, a Stop ends it below
            elif t <= r[2]:
                if status == STOP:  # a delayed Stop (the address went to a newer session meanwhile): shorten
                    self.bindings.end(r[0], t)
            elif status == STOP or late or self.bindings.next_start(key, r[1]) is not None:
                # reported held after the binding ended: extend it up to t, but never into a newer binding's time
                # (Bindings.end); a superseded session never gets its address back
                self.bindings.end(r[0], t)
            else:  # the address came back to the session (nobody held it since): bound again from now
                self.bindings.open(sub, net, t, source="radius", session_id=uid, nas=nas)
        if status == STOP:
            self.bindings.close_session(uid, t)

    def _subscriber(self, p: Packet) -> str:
        v = p.get(self.id_attribute)
        if v is None:
            return ""
        if self.id_attribute == ATTRIBUTES["Framed-IP-Address"]:
            return str(ipaddress.IPv4Address(v)) if len(v) == 4 else ""
        if self.id_attribute == ATTRIBUTES["Class"]:
            text = v.decode("utf-8", "replace")
            return text if text.isprintable() else v.hex()
        return attribute_text(v)

    @staticmethod
    def _unique_id(p: Packet, nas: str) -> str:
        parts = [nas, attribute_text(p.get(ATTRIBUTES["Acct-Session-Id"])),
                 attribute_text(p.get(ATTRIBUTES["User-Name"])), str(p.integer(ATTRIBUTES["NAS-Port"]) or "")]
        return hashlib.md5("\x1f".join(parts).encode()).hexdigest()

    @staticmethod
    def _networks(p: Packet) -> list[str]:
        nets = []
        for v in p.all(ATTRIBUTES["Framed-IP-Address"]):
            if len(v) == 4 and v not in (b"\xff\xff\xff\xff", b"\xff\xff\xff\xfe"):  # "NAS assigns" markers
                nets.append(str(ipaddress.IPv4Address(v)))
        for v in p.all(ATTRIBUTES["Framed-IPv6-Address"]):
            if len(v) == 16:
                nets.append(str(ipaddress.IPv6Address(v)))
        for attr in ("Framed-IPv6-Prefix", "Delegated-IPv6-Prefix"):
            for v in p.all(ATTRIBUTES[attr]):
                net = ipv6_prefix(v)
                if net:
                    nets.append(net)
        return nets

    def _usage_rows(self, sub: str, uid: str, nas: str, since_ms: int, until_ms: int, d_in: int, d_out: int,
                    totals: tuple[int, int] = (0, 0)) -> dict[str, np.ndarray]:
        # One row pair per interval between two reports: a NAS whose clock was wrong (a Start stamped 1970 by a
        # NAS without NTP) would otherwise make millions of rows from one request (6 GB, found by fuzzing). No real
        # gap between reports exceeds the session timeout (else the session was closed): the counters' delta is
        # spread over at most that long before this report (counted in span_clamped, logged).
        max_span = int((self.config.session_timeout_s or 7 * 86400) * 1000)
        if until_ms - since_ms > max_span:
            self.span_clamped += 1
            log.warning("RADIUS report spans %d s since the previous one (NAS clock?): its usage is put in the last "
                        "%d s", (until_ms - since_ms) // 1000, max_span // 1000, extra={"client": nas})
            since_ms = until_ms - max_span
        start = np.array([min(since_ms, until_ms)], dtype=np.int64)
        end = np.array([until_ms], dtype=np.int64)
        rec, istart, _, overlap, duration = split_intervals(start, end, self.interval_ms)
        k = len(rec)
        up = allocate(np.array([d_in], dtype=np.uint64), rec, overlap, duration)
        down = allocate(np.array([d_out], dtype=np.uint64), rec, overlap, duration)
        h, lw, _ = parse_network(nas)
        nas16 = join_addresses(np.array([h], np.uint64), np.array([lw], np.uint64))[0]
        interval = np.concatenate([istart, istart])
        direction = np.array(["up"] * k + ["down"] * k, dtype=object)
        created = np.full(2 * k, until_ms, dtype=np.int64)  # deterministic: the report's time
        # The report's time has whole seconds (Event-Timestamp): two reports of a session in one second would share
        # (session, interval, direction, created) and collapse as re-sends (FINAL, the embedded store's views). The
        # previous report's time and this report's cumulative counters (``totals``) tell them apart; a re-sent row
        # (journal replay) keeps its id.
        row_id = hash_columns(np.full(2 * k, string_hash(uid), dtype=np.uint64), interval,
                              np.array([0] * k + [1] * k), created, np.full(2 * k, since_ms, dtype=np.int64),
                              np.full(2 * k, totals[0] & 0xFFFF_FFFF_FFFF_FFFF, dtype=np.uint64),
                              np.full(2 * k, totals[1] & 0xFFFF_FFFF_FFFF_FFFF, dtype=np.uint64), seed=0x2866)
        u = {
            "interval_start": interval, "interval_end": interval + self.interval_ms,
            "subscriber_id": np.full(2 * k, sub, dtype=object), "direction": direction,
            "traffic_class": np.full(2 * k, "all", dtype=object), "bytes": np.concatenate([up, down]),
            "packets": np.zeros(2 * k, dtype=np.uint64), "flows": np.zeros(2 * k, dtype=np.uint64),
            "source": np.full(2 * k, "radius", dtype=object), "exporter": np.full(2 * k, nas16, dtype="S16"),
            "correction": np.zeros(2 * k, dtype=np.uint32), "created": created, "row_id": row_id,
        }
        keep = u["bytes"] > 0
        return {c: v[keep] for c, v in u.items()}


def _ipc(batch: pa.RecordBatch) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema) as writer:
        writer.write_batch(batch)
    return cast(bytes, sink.getvalue().to_pybytes())


def _delta(total: int, last: int, gigawords_seen: bool) -> int:
    """Usage between two cumulative reports: a counter that went back wrapped (32-bit, without Gigawords, from
    the upper half) or was reset (counted from zero)."""
    if total >= last:
        return total - last
    if not gigawords_seen and last < 1 << 32 and last - total > 1 << 31:
        return total + (1 << 32) - last
    return total
