"""The durable, mutable binding history: SQLite, shared by the processes, indexed in memory by
:class:`mediation.subscribers.index.BindingIndex` (see :mod:`mediation.subscribers.bindings` for the rules).

Over 500 lines for a reason: :class:`Bindings` is one unit whose writers, refresh, background rebuild and
database fallback share the same state and locks; split, each part would reach into the others' internals.

Durability and sharing
----------------------
Every change goes to SQLite (WAL, ``synchronous=FULL``) in a transaction; :meth:`Bindings.commit` returns only
once it is on disk (the RADIUS listener answers after that). Each change carries a sequence number, so other
processes (workers) pick up changes with :meth:`Bindings.refresh`.

Memory horizon
--------------
The database keeps the whole history; the in-memory index does not have to. With :meth:`Bindings.set_memory_limits`
(the Mediator sets it from ``subscribers.memory_horizon_s`` / ``subscribers.max_memory_bindings``) and
:meth:`Bindings.maybe_prune` (the Mediator's tick), the periodic background rebuild leaves out bindings that were
closed before the *cutoff* (now minus the horizon), so the index holds the open bindings and the recent history only.
Lookups at times at or after the cutoff are answered from memory, exactly as before; lookups at older times (late
records that passed a widened ``mediation.max_lateness_s``, ``flowmed reprocess``) are answered from the database:
the bindings relevant to the older queries' time range are loaded into a temporary index (cached while the history
does not change).
"""

from __future__ import annotations

import logging
import os
import random
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, cast

import numpy as np
import pyarrow as pa

from mediation.hashing import string_hash
from mediation.subscribers.addresses import join_addresses, parse_network, split_addresses
from mediation.subscribers.index import BindingIndex
from mediation.tables import BINDINGS, OPEN_END_MS

log = logging.getLogger(__name__)

_U64 = np.uint64
Row = tuple[Any, ...]
"""A row of the bindings table as SQLite returns it (the columns of ``_ROW_SQL``)."""
DELTA_REBUILD_ROWS = 65_536
"""Bindings opened since the last full build at which the base index is rebuilt."""
PRUNE_INTERVAL_MS = 3_600_000
"""How often (by the ``now_ms`` given to :meth:`Bindings.maybe_prune`) the cutoff advances and the index is rebuilt."""
FALLBACK_BUCKET_MS = 86_400_000
"""Time ranges of database lookups are widened to whole UTC days so that one loaded range serves many batches."""
_NO_CUTOFF = -(1 << 62)

# Rows a lookup at times >= :since needs: those still valid after it (the bindings of a network never overlap, so
# the binding that decides at t is valid at t). Rows starting after :until are never needed for times <= :until.
_KEEP_SQL = "b.valid_from <= :until AND b.valid_to > :since"
_CAPPED_END = ("min(?, coalesce((SELECT min(valid_from) FROM bindings WHERE net_hi=? AND net_lo=? AND prefix_len=? "
               "AND valid_from>?), 9223372036854775807))")
"""SQL for the end of a binding being inserted: its requested end, or the start of the next binding of its network
if that is earlier (parameters: valid_to, net_hi, net_lo, prefix_len, valid_from)."""
_ROW_SQL = ("SELECT b.id, b.subscriber_id, b.net_hi, b.net_lo, b.prefix_len, b.valid_from, b.valid_to, b.source, "
            "b.session_id, b.nas, b.seq FROM bindings b")


# --- addresses -----------------------------------------------------------------------------------------------------


_SCHEMA = """
CREATE TABLE IF NOT EXISTS bindings (
    id INTEGER PRIMARY KEY,
    subscriber_id TEXT NOT NULL,
    net_hi INTEGER NOT NULL,
    net_lo INTEGER NOT NULL,
    prefix_len INTEGER NOT NULL,
    valid_from INTEGER NOT NULL,
    valid_to INTEGER NOT NULL,
    source TEXT NOT NULL,
    session_id TEXT NOT NULL DEFAULT '',
    nas TEXT NOT NULL DEFAULT '',
    seq INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS bindings_seq ON bindings(seq);
CREATE INDEX IF NOT EXISTS bindings_net ON bindings(net_hi, net_lo, prefix_len, valid_to);
CREATE INDEX IF NOT EXISTS bindings_session ON bindings(session_id, valid_to);
CREATE INDEX IF NOT EXISTS bindings_nas ON bindings(nas, valid_to);
CREATE INDEX IF NOT EXISTS bindings_from ON bindings(valid_from);
CREATE INDEX IF NOT EXISTS bindings_net_from ON bindings(net_hi, net_lo, prefix_len, valid_from);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


def _s64(u: int) -> int:
    """uint64 as the signed int64 SQLite stores."""
    return u - (1 << 64) if u >= 1 << 63 else u


def _u64(s: int) -> int:
    return s + (1 << 64) if s < 0 else s


_INIT_RETRY_S = 60.0


def _initialise(conn: sqlite3.Connection) -> None:
    """Switch the database to WAL and create the schema, retrying while another process holds the lock.

    Workers start together on a fresh file. Two connections that both read the header and then both ask for
    the exclusive lock that the switch to WAL needs deadlock, and SQLite answers one of them "database is
    locked" at once, without waiting out the busy timeout; so the whole step is retried.
    """
    deadline = time.monotonic() + _INIT_RETRY_S
    while True:
        try:
            if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA busy_timeout=10000")
            conn.executescript(_SCHEMA)
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05 + random.random() * 0.1)


HOST_SHIFT = 56
"""``binding_id`` = host << 56 | the id in the host's database (SQLite row ids stay far below 2^56)."""


class Bindings:
    """The binding history: durable in SQLite, indexed in memory for vectorised lookup.

    Writers (the RADIUS listener, the static file loader) call :meth:`open`, :meth:`close_session`,
    :meth:`close_nas`, :meth:`close_ids` and then :meth:`commit`; readers call :meth:`lookup` and, in other
    processes, :meth:`refresh`. Not thread-safe for writers; lookups may run while another thread commits.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None, host: int = 0) -> None:
        """Open (or create) the store at ``path``; ``None`` keeps it in memory (tests, benchmarks).

        ``host`` (``service.host_index``, 0-63) goes into the top bits of every ``binding_id`` written to the tables
        (:meth:`exported_ids`): each collector host numbers its bindings in its own database, and the hosts of a
        cluster write into one ``bindings`` table, where a binding is the rows of its id.
        """
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.path = str(path) if path is not None else ":memory:"
        if not 0 <= host < 64:
            raise ValueError(f"host {host} is not 0 to 63")
        self.id_base = host << HOST_SHIFT
        # The busy timeout must cover the first statement too: another worker may be loading a large static file.
        self.conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=60)
        _initialise(self.conn)
        self._lock = threading.Lock()
        self._names_lock = threading.Lock()
        self._rebuilding: threading.Thread | None = None
        self._rebuilt: tuple[BindingIndex, int, int] | None = None  # (index, complete up to seq, cutoff)
        self._names: list[str] = []
        self._name_hashes: list[int] = []
        self._name_index: dict[str, int] = {}
        self._arrays: tuple[np.ndarray, np.ndarray] = (np.array([""], dtype=object), np.zeros(1, dtype=_U64))
        self._arrays_n = 0  # names the cached subscriber_arrays() cover (none yet: just the ("", 0) entry)
        self._tx_seqs: set[int] = set()  # sequence numbers allocated in the current transaction
        self._last_seq = 0
        self._base = BindingIndex(*(np.empty(0) for _ in range(7)))
        self._delta_rows: dict[int, Row] = {}
        self._delta = self._base
        # memory horizon (see the module docstring): the index is complete for lookups at times >= _cutoff
        self._horizon_ms: int | None = None
        self._max_memory = 0
        self._cutoff = _NO_CUTOFF
        self._pending_cutoff = _NO_CUTOFF  # the cutoff the next rebuild applies
        self._next_prune_ms: int | None = None
        self._fallback_lock = threading.Lock()
        self._read_conn: sqlite3.Connection | None = None
        self._fallback: tuple[int, int, int, BindingIndex] | None = None  # (since, until, seq, index)
        self.counters: dict[str, int] = {"pruned_rebuilds": 0, "memory_bound_hits": 0, "fallback_lookups": 0,
                                         "fallback_loads": 0}
        self._separate_overlaps()
        self._load_all()

    @classmethod
    def from_index(cls, index: BindingIndex, names: list[str]) -> Bindings:
        """An in-memory, read-only view over a prebuilt index (benchmarks; ``index.sub`` indexes ``names``)."""
        b = cls(None)
        for name in names:
            b.subscriber_index(name)
        with b._lock:
            b._base = index
        return b

    # subscriber names <-> dense per-process indexes
    def subscriber_index(self, name: str) -> int:
        """Dense index of a subscriber id (stable for this process's lifetime)."""
        idx = self._name_index.get(name)
        if idx is None:
            with self._names_lock:  # the rebuild thread registers names too
                idx = self._name_index.get(name)
                if idx is None:
                    self._names.append(name)
                    self._name_hashes.append(string_hash(name))
                    idx = self._name_index[name] = len(self._names) - 1
        return idx

    @property
    def subscriber_names(self) -> np.ndarray:
        """Object array of subscriber ids by dense index."""
        return np.array(self._names, dtype=object)

    def subscriber_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(names, 64-bit hashes of the names) by dense index, each with one extra last entry ("", 0) so that
        index -1 (no subscriber) maps to the empty id."""
        if self._arrays_n != len(self._names):
            with self._names_lock:  # a consistent snapshot while the rebuild thread may add names
                known, known_hashes = list(self._names), list(self._name_hashes)
            n = len(known)
            names = np.empty(n + 1, dtype=object)
            names[:n] = known
            names[n] = ""
            hashes = np.zeros(n + 1, dtype=_U64)
            hashes[:n] = known_hashes
            self._arrays, self._arrays_n = (names, hashes), n
        return self._arrays

    def __len__(self) -> int:
        """Bindings held in the in-memory index (not the history on disk)."""
        return len(self._base) + len(self._delta_rows)

    # --- memory horizon ---
    def set_memory_limits(self, horizon_ms: int | None, max_bindings: int = 0) -> None:
        """Keep in memory only bindings open or closed less than ``horizon_ms`` before the ``now_ms`` of
        :meth:`maybe_prune` (None: everything), and at most ``max_bindings`` (0: no bound; open bindings are never
        dropped, so the bound can be exceeded by them: counted in ``counters['memory_bound_hits']``)."""
        self._horizon_ms = None if horizon_ms is None else int(horizon_ms)
        self._max_memory = int(max_bindings)

    @property
    def cutoff_ms(self) -> int:
        """Lookups at times before this are answered from the database (very negative: none are)."""
        return self._cutoff

    def maybe_prune(self, now_ms: int) -> bool:
        """Advance the cutoff to ``now_ms`` minus the horizon and start a background rebuild without the bindings
        closed before it, at most every :data:`PRUNE_INTERVAL_MS` (call from a periodic tick, not per batch).
        Returns whether a rebuild was started."""
        if self._horizon_ms is None and not self._max_memory:
            return False
        if self._next_prune_ms is not None and now_ms < self._next_prune_ms:
            return False
        self._next_prune_ms = now_ms + PRUNE_INTERVAL_MS
        return self.prune(now_ms)

    def prune(self, now_ms: int) -> bool:
        """Rebuild the index now (in the background for a file database) leaving out what :meth:`maybe_prune`
        leaves out."""
        if self.in_transaction and self.path == ":memory:":  # the rebuild would read the unfinished transaction: later
            self._next_prune_ms = None
            return False
        target = self._cutoff if self._horizon_ms is None else max(self._cutoff, int(now_ms) - self._horizon_ms)
        self._pending_cutoff = target
        self._fallback = None  # a loaded range of old history is not kept past the hour either
        self.counters["pruned_rebuilds"] += 1
        self._start_rebuild()
        return True

    # --- writing ---
    @property
    def in_transaction(self) -> bool:
        """A write transaction is open. SQLite's own state, not a flag of ours: SQLite ends a transaction by itself
        when a statement or the COMMIT fails with SQLITE_FULL or an I/O error."""
        return self.conn.in_transaction

    def _begin(self) -> None:
        if not self.conn.in_transaction:
            if self._tx_seqs:  # SQLite rolled back what these belonged to (a statement failed): they are void
                self._tx_seqs.clear()
            self.conn.execute("BEGIN IMMEDIATE")

    def _next_seq(self) -> int:
        row = self.conn.execute("SELECT value FROM meta WHERE key='seq'").fetchone()
        seq = (row[0] if row else 0) + 1
        self.conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES('seq', ?)", (seq,))
        self._tx_seqs.add(seq)
        return seq

    def open(self, subscriber_id: str, network: str | tuple[int, int, int], valid_from: int,
             valid_to: int = OPEN_END_MS, source: str = "static", session_id: str = "", nas: str = "") -> int:
        """Add a binding (in the current transaction): bindings of the same network that hold at ``valid_from``
        end there, and the new one ends at the latest at the start of the next binding of the network (see the
        module docstring). Returns the binding id. Raises ValueError when ``valid_to <= valid_from``."""
        hi, lo, plen = parse_network(network) if isinstance(network, str) else network
        if valid_to <= valid_from:
            raise ValueError(f"empty binding interval [{valid_from}, {valid_to})")
        self._begin()
        seq = self._next_seq()
        net = (_s64(hi), _s64(lo), plen)
        self.conn.execute("UPDATE bindings SET valid_to=?, seq=? WHERE net_hi=? AND net_lo=? AND prefix_len=? "
                          "AND valid_to>? AND valid_from<=?", (valid_from, seq, *net, valid_from, valid_from))
        cur = self.conn.execute(
            "INSERT INTO bindings(subscriber_id, net_hi, net_lo, prefix_len, valid_from, valid_to, source, "
            f"session_id, nas, seq) VALUES (?,?,?,?,?,{_CAPPED_END},?,?,?,?)",
            (subscriber_id, *net, valid_from, valid_to, *net, valid_from, source, session_id, nas, seq))
        return int(cast(int, cur.lastrowid))

    def open_many(self, entries: list[tuple[str, tuple[int, int, int], int, int]], source: str = "static",
                  session_ids: list[str] | None = None) -> int:
        """:meth:`open` for many ``(subscriber_id, (hi, lo, prefix_len), valid_from, valid_to)`` at once (one
        sequence number, batched statements: a static file of 100,000 lines)."""
        if not entries:
            return 0
        if any(vt <= vf for _, _, vf, vt in entries):
            raise ValueError("an entry with an empty binding interval")
        self._begin()
        seq = self._next_seq()
        self.conn.executemany(
            "UPDATE bindings SET valid_to=?, seq=? WHERE net_hi=? AND net_lo=? AND prefix_len=? AND valid_to>? "
            "AND valid_from<=?",
            [(vf, seq, _s64(n[0]), _s64(n[1]), n[2], vf, vf) for _, n, vf, _ in entries])
        sessions = session_ids or [""] * len(entries)
        self.conn.executemany(
            "INSERT INTO bindings(subscriber_id, net_hi, net_lo, prefix_len, valid_from, valid_to, source, "
            f"session_id, nas, seq) VALUES (?,?,?,?,?,{_CAPPED_END},?,?,'',?)",
            [(sub, _s64(n[0]), _s64(n[1]), n[2], vf, vt, _s64(n[0]), _s64(n[1]), n[2], vf, source, sid, seq)
             for (sub, n, vf, vt), sid in zip(entries, sessions, strict=True)])
        # entries of one network in one call did not see each other above: separate them now
        seen: set[tuple[int, int, int]] = set()
        repeated = {n for _, n, _, _ in entries if n in seen or seen.add(n)}  # type: ignore[func-returns-value]
        for hi, lo, plen in repeated:
            self._separate(f"net_hi={_s64(hi)} AND net_lo={_s64(lo)} AND prefix_len={int(plen)}", seq)
        return len(entries)

    def end(self, binding_id: int, valid_to: int) -> int:
        """Set a binding's end to ``valid_to``, earlier or later than now, but never before its start nor past the
        start of the next binding of its network (a late report may extend its session's interval, never into a
        newer session's). Returns the end now stored (-1: no such binding)."""
        self._begin()  # read and write in one transaction
        row = self.conn.execute("SELECT valid_from, valid_to, net_hi, net_lo, prefix_len FROM bindings WHERE id=?",
                                (binding_id,)).fetchone()
        if row is None:
            return -1
        vf, vt, hi, lo, plen = row
        nxt = self.conn.execute(
            "SELECT min(valid_from) FROM bindings WHERE net_hi=? AND net_lo=? AND prefix_len=? AND "
            "(valid_from>? OR (valid_from=? AND id>?))", (hi, lo, plen, vf, vf, binding_id)).fetchone()[0]
        new: int = max(vf, min(valid_to, nxt if nxt is not None else OPEN_END_MS))
        if new != vt:
            self.conn.execute("UPDATE bindings SET valid_to=?, seq=? WHERE id=?", (new, self._next_seq(), binding_id))
        return new

    def next_start(self, network: tuple[int, int, int], after: int) -> int | None:
        """The earliest start of a binding of ``network`` (hi, lo, prefix length) after ``after``, or None."""
        hi, lo, plen = network
        start: int | None = self.conn.execute(
            "SELECT min(valid_from) FROM bindings WHERE net_hi=? AND net_lo=? AND prefix_len=? AND valid_from>?",
            (_s64(hi), _s64(lo), plen, after)).fetchone()[0]
        return start

    def _separate(self, where: str, seq: int) -> int:
        """End every binding (of the networks selected by ``where``) at the start of the next binding of its
        network, where it lasted longer; returns how many changed."""
        changed = self.conn.execute(
            "SELECT id, nxt FROM (SELECT id, valid_to, lead(valid_from) OVER (PARTITION BY net_hi, net_lo, prefix_len "
            f"ORDER BY valid_from, id) AS nxt FROM bindings WHERE {where}) WHERE nxt < valid_to").fetchall()
        self.conn.executemany("UPDATE bindings SET valid_to=?, seq=? WHERE id=?", [(n, seq, i) for i, n in changed])
        return len(changed)

    def _separate_overlaps(self) -> None:
        """Once per database: end bindings written before the rule that bindings of a network never overlap at the
        next start of their network (lookups already answered so: the binding that started last decides), so that
        the stored table gives the answers the index gives."""
        if self.conn.execute("SELECT value FROM meta WHERE key='separated'").fetchone() is not None:
            return
        self._begin()
        try:
            if self.conn.execute("SELECT value FROM meta WHERE key='separated'").fetchone() is not None:
                n = 0  # another process did it meanwhile
            else:
                seq = self._next_seq()
                n = self._separate("1", seq)
                # the pass's sequence number (0: nothing changed), for separation_to_publish()
                self.conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES('separated', ?)", (seq if n else 0,))
            self.conn.execute("COMMIT")
        finally:
            self.rollback()  # (after a failed COMMIT; a no-op after a good one)
        if n:
            log.warning("bindings: %d bindings lasted past the start of a later binding of their network and were "
                        "ended there (lookups already treated them so)", n)

    def separation_to_publish(self) -> pa.RecordBatch | None:
        """The bindings that the one-time separation of an older database changed and that no writer has handed to
        the outputs yet (None: nothing to hand over), as a ``bindings`` batch; marked as handed over (the RADIUS
        listener emits them at its start, so that the outputs' table, read by ``flowmed trace``, ends them too)."""
        row = self.conn.execute("SELECT value FROM meta WHERE key='separated'").fetchone()
        if row is None or not row[0]:
            return None
        self._begin()
        try:
            rows = self._fetch("seq=?", (row[0],))
            self.conn.execute("UPDATE meta SET value=0 WHERE key='separated'")
        except Exception:
            self.rollback()
            raise
        self.commit()
        return self.to_batch(rows) if rows else None

    def _close_where(self, where: str, args: tuple[Any, ...], valid_to: int) -> int:
        self._begin()
        ids = [r[0] for r in self.conn.execute(f"SELECT id FROM bindings WHERE {where} AND valid_to>?",
                                               (*args, valid_to)).fetchall()]
        if ids:
            seq = self._next_seq()
            # never end a binding before its start: such a binding becomes empty, not negative
            self.conn.executemany("UPDATE bindings SET valid_to=max(valid_from, ?), seq=? WHERE id=?",
                                  [(valid_to, seq, i) for i in ids])
        return len(ids)

    def close_session(self, session_id: str, valid_to: int) -> int:
        """End the open bindings of a RADIUS session at ``valid_to``; returns how many."""
        return self._close_where("session_id=?", (session_id,), valid_to)

    def close_nas(self, nas: str, valid_to: int) -> int:
        """End every RADIUS binding reported by ``nas`` that started at or before ``valid_to`` and holds past it
        (Accounting-On/Off: the NAS's sessions of before its restart); returns how many."""
        return self._close_where("nas=? AND source='radius' AND valid_from<=?", (nas, valid_to), valid_to)

    def close_ids(self, ids: list[int], valid_to: int) -> int:
        """End the given bindings at ``valid_to`` (static file entries that disappeared)."""
        n = 0
        for i in ids:
            n += self._close_where("id=?", (i,), valid_to)
        return n

    def session_history(self, session_id: str) -> list[tuple[int, tuple[int, int, int], int, int]]:
        """Every binding of a session, open or ended: (id, (hi, lo, prefix length), valid_from, valid_to), in order
        of start."""
        return [(r[0], (_u64(r[1]), _u64(r[2]), r[3]), r[4], r[5]) for r in self.conn.execute(
            "SELECT id, net_hi, net_lo, prefix_len, valid_from, valid_to FROM bindings WHERE session_id=? "
            "ORDER BY valid_from, id", (session_id,)).fetchall()]

    def commit(self) -> pa.RecordBatch:
        """Make the current transaction durable (fsync), apply it to the index, return the changed bindings as a
        ``bindings`` table batch (for the outputs).

        A COMMIT that fails (disk full, I/O error) leaves no transaction open: what SQLite did not roll back by
        itself is rolled back here, then the error is raised; nothing of the transaction is applied or returned.
        """
        mine, self._tx_seqs = self._tx_seqs, set()
        if self.conn.in_transaction:
            try:
                self.conn.execute("COMMIT")
            except sqlite3.Error:
                self.rollback()
                raise
        elif mine:  # SQLite rolled the transaction back by itself (a statement failed with SQLITE_FULL)
            raise sqlite3.OperationalError("the bindings transaction was rolled back by SQLite")
        # the changes of this transaction, read by their sequence numbers (not from what the index picks up below:
        # installing a rebuilt index may already have applied them)
        batch = self.to_batch(self._fetch("seq BETWEEN ? AND ?", (min(mine), max(mine)))) if mine else \
            self.to_batch([])
        self.refresh()
        return batch

    def rollback(self) -> None:
        """Drop the current transaction (nothing to do when SQLite already rolled it back)."""
        self._tx_seqs.clear()
        if self.conn.in_transaction:
            self.conn.execute("ROLLBACK")

    # --- reading ---
    def _fetch(self, where: str, args: tuple[Any, ...]) -> list[Row]:
        return self.conn.execute(
            "SELECT id, subscriber_id, net_hi, net_lo, prefix_len, valid_from, valid_to, source, session_id, nas, "
            f"seq FROM bindings WHERE {where} ORDER BY id", args).fetchall()

    def _load_all(self) -> None:
        self._last_seq = self.conn.execute("SELECT coalesce(max(seq), 0) FROM bindings").fetchone()[0]
        rows, cutoff = self._kept_rows(self.conn, max(self._pending_cutoff, self._cutoff))
        self._rebuild(rows, cutoff)

    def _rebuild(self, rows: list[Row], cutoff: int) -> None:
        index = self._index_of(rows)
        with self._lock:
            self._base = index
            self._cutoff = cutoff
            self._delta_rows = {}
            self._delta = BindingIndex(*(np.empty(0) for _ in range(7)))

    def _kept_rows(self, conn: sqlite3.Connection, cutoff: int) -> tuple[list[Row], int]:
        """The rows the in-memory index needs for lookups at times >= ``cutoff`` (raised, when more than
        ``max_bindings`` would be kept, to drop the longest-closed bindings) and the cutoff used."""
        def fetch(since: int) -> list[Row]:
            if since <= _NO_CUTOFF:
                return conn.execute(f"{_ROW_SQL} ORDER BY b.id").fetchall()
            return conn.execute(f"{_ROW_SQL} WHERE {_KEEP_SQL} ORDER BY b.id",
                                {"since": since, "until": OPEN_END_MS}).fetchall()

        rows = fetch(cutoff)
        if self._max_memory and len(rows) > self._max_memory:
            self.counters["memory_bound_hits"] += 1
            closed = np.sort(np.fromiter((r[6] for r in rows if r[6] < OPEN_END_MS), dtype=np.int64))
            excess = len(rows) - self._max_memory
            if len(closed):
                cutoff = max(cutoff, int(closed[min(excess, len(closed)) - 1]))
                rows = fetch(cutoff)
            log.warning("bindings: %d would be kept in memory, more than subscribers.max_memory_bindings = %d; "
                        "lookups before %d ms now read the database (%d kept)", excess + self._max_memory,
                        self._max_memory, cutoff, len(rows))
        return rows, cutoff

    def _index_of(self, rows: list[Row]) -> BindingIndex:
        n = len(rows)
        ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=n)
        sub = np.fromiter((self.subscriber_index(r[1]) for r in rows), dtype=np.int32, count=n)
        hi = np.fromiter((_u64(r[2]) for r in rows), dtype=_U64, count=n)
        lo = np.fromiter((_u64(r[3]) for r in rows), dtype=_U64, count=n)
        plen = np.fromiter((r[4] for r in rows), dtype=np.int16, count=n)
        vf = np.fromiter((r[5] for r in rows), dtype=np.int64, count=n)
        vt = np.fromiter((r[6] for r in rows), dtype=np.int64, count=n)
        return BindingIndex(ids, sub, hi, lo, plen, vf, vt)

    def _start_rebuild(self) -> None:
        """Rebuild the base index from a snapshot in a thread (a million bindings take a second or two: not on the
        event loop); :meth:`_swap_rebuilt` installs it and re-applies what changed since the snapshot."""
        if self.path == ":memory:":  # no second connection can see an in-memory database
            self._load_all()
            self._fallback = None
            return
        if self._rebuilding is not None:
            return
        target = max(self._pending_cutoff, self._cutoff)  # a cutoff raised by the bound does not go back

        def work() -> None:
            try:
                conn = sqlite3.connect(self.path, isolation_level=None, timeout=60)
                try:
                    conn.execute("BEGIN")  # one snapshot: the rows and the sequence they are complete up to
                    rows, cutoff = self._kept_rows(conn, target)
                    seq = conn.execute("SELECT coalesce(max(seq), 0) FROM bindings").fetchone()[0]
                    conn.execute("COMMIT")
                finally:
                    conn.close()
                self._rebuilt = (self._index_of(rows), seq, cutoff)
            except Exception:
                log.exception("rebuilding the binding index failed; the delta index stays in use")
            finally:
                self._rebuilding = None

        self._rebuilding = threading.Thread(target=work, name="bindings-rebuild", daemon=True)
        self._rebuilding.start()

    def _swap_rebuilt(self) -> None:
        rebuilt, self._rebuilt = self._rebuilt, None
        if rebuilt is None:
            return
        index, seq, cutoff = rebuilt
        with self._lock:
            self._base = index
            self._cutoff = cutoff
            self._delta_rows = {}
            self._delta = BindingIndex(*(np.empty(0) for _ in range(7)))
        # everything newer than the snapshot again, onto the new base (applying a change twice is harmless)
        self._apply(self._fetch("seq>?", (seq,)))

    def refresh(self) -> int:
        """Pick up changes committed by other processes since the last call; returns how many rows changed."""
        if self._rebuilt is not None:
            self._swap_rebuilt()
        rows = self._fetch("seq>?", (self._last_seq,))
        if rows:
            self._apply(rows)
        return len(rows)

    def _apply(self, rows: list[Row]) -> None:
        if not rows:
            return
        self._last_seq = max(self._last_seq, max(r[10] for r in rows))
        ids = np.array([r[0] for r in rows], dtype=np.int64)
        vt = np.array([r[6] for r in rows], dtype=np.int64)
        base_rows = self._base.rows_of_ids(ids)
        with self._lock:
            in_base = base_rows >= 0
            self._base.set_valid_to(base_rows[in_base], vt[in_base])  # closing: in place, no rebuild
            new = [r for r, b in zip(rows, in_base, strict=True) if not b]
            for r in new:
                self._delta_rows[r[0]] = r
        if len(self._delta_rows) > DELTA_REBUILD_ROWS:  # (the rebuild applies the cutoff and the bound too)
            self._start_rebuild()
        if new and self._delta_rows:
            d = sorted(self._delta_rows.values())
            delta = BindingIndex(
                np.array([r[0] for r in d], dtype=np.int64),
                np.array([self.subscriber_index(r[1]) for r in d], dtype=np.int32),
                np.array([_u64(r[2]) for r in d], dtype=_U64), np.array([_u64(r[3]) for r in d], dtype=_U64),
                np.array([r[4] for r in d], dtype=np.int16), np.array([r[5] for r in d], dtype=np.int64),
                np.array([r[6] for r in d], dtype=np.int64))
            with self._lock:
                self._delta = delta

    def exported_ids(self, ids: np.ndarray) -> np.ndarray:
        """The ``binding_id`` the tables carry for local ids (``-1``, no binding, is 0)."""
        ids = np.asarray(ids, dtype=np.int64)
        return np.where(ids >= 0, ids + self.id_base, 0).astype(np.uint64)

    def to_batch(self, rows: list[Row]) -> pa.RecordBatch:
        """``rows`` of the database as a ``bindings`` table batch."""
        if not rows:
            return BINDINGS.to_arrow({})
        hi = np.array([_u64(r[2]) for r in rows], dtype=_U64)
        lo = np.array([_u64(r[3]) for r in rows], dtype=_U64)
        nas = np.zeros(len(rows), dtype="S16")
        for i, r in enumerate(rows):
            if r[9]:
                try:
                    h, lw, _ = parse_network(r[9])
                    nas[i] = join_addresses(np.array([h], _U64), np.array([lw], _U64))[0]
                except ValueError:
                    pass
        return BINDINGS.to_arrow({
            "binding_id": self.exported_ids(np.array([r[0] for r in rows], dtype=np.int64)),
            "version": np.array([r[10] for r in rows], dtype=np.uint64),
            "subscriber_id": np.array([r[1] for r in rows], dtype=object),
            "network": join_addresses(hi, lo),
            "prefix_len": np.array([r[4] for r in rows], dtype=np.uint8),
            "valid_from": np.array([r[5] for r in rows], dtype=np.int64),
            "valid_to": np.array([r[6] for r in rows], dtype=np.int64),
            "source": np.array([r[7] for r in rows], dtype=object),
            "session_id": np.array([r[8] for r in rows], dtype=object),
            "nas": nas,
        })

    def all_bindings(self) -> pa.RecordBatch:
        """Every binding as a ``bindings`` table batch (for ``flowmed bindings export``)."""
        return self.to_batch(self._fetch("1", ()))

    def lookup(self, addresses: np.ndarray, times_ms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Subscriber index (or -1) and binding id (or -1) of each ``S16`` address at each time (int64 ms)."""
        hi, lo = split_addresses(addresses)
        sub, bid = self.lookup_split(hi, lo, np.asarray(times_ms, dtype=np.int64))
        return sub, cast(np.ndarray, bid)  # asked with ids

    def subscriber_ids(self, addresses: np.ndarray, times_ms: np.ndarray) -> np.ndarray:
        """Subscriber id (object array; '' where none) of each ``S16`` address at each time: the
        ``address_lookup`` callable of :class:`mediation.ipdr.usage.IpdrUsage` and of compliance lookups."""
        sub, _ = self.lookup(addresses, times_ms) if len(addresses) else (np.zeros(0, np.int32), None)
        names, _ = self.subscriber_arrays()
        return names[np.where(sub < 0, len(names) - 1, sub)]

    def lookup_split(self, hi: np.ndarray, lo: np.ndarray, t: np.ndarray, ids: bool = True
                     ) -> tuple[np.ndarray, np.ndarray | None]:
        """:meth:`lookup` on addresses already split into uint64 halves (binding ids only with ``ids``).

        Times before :attr:`cutoff_ms` are looked up in the database (see the module docstring)."""
        with self._lock:
            base, delta, cutoff = self._base, self._delta, self._cutoff
        if cutoff > _NO_CUTOFF and len(t) and t.min() < cutoff:
            return self._lookup_with_fallback(base, delta, hi, lo, t, np.flatnonzero(t < cutoff), ids)
        return self._lookup_memory(base, delta, hi, lo, t, ids)

    def _lookup_with_fallback(self, base: BindingIndex, delta: BindingIndex, hi: np.ndarray, lo: np.ndarray,
                              t: np.ndarray, old: np.ndarray, ids: bool) -> tuple[np.ndarray, np.ndarray | None]:
        """Memory (``base`` and ``delta``, complete for the recent times) for the recent times, the database for
        the ``old`` positions."""
        sub, bid = self._lookup_memory(base, delta, hi, lo, t, True)
        self.counters["fallback_lookups"] += len(old)
        index = self._fallback_index(int(t[old].min()), int(t[old].max()))
        osub, obid = index.lookup_ids(hi[old], lo[old], t[old])
        sub = sub.copy()
        sub[old] = osub
        bid = cast(np.ndarray, bid).copy()  # asked with ids
        bid[old] = obid
        return sub, (bid if ids else None)

    def _fallback_index(self, t0: int, t1: int) -> BindingIndex:
        """An index of the database rows needed for lookups in ``[t0, t1]`` (whole days), cached until a change
        could alter its answers."""
        since = t0 - t0 % FALLBACK_BUCKET_MS
        until = t1 - t1 % FALLBACK_BUCKET_MS + FALLBACK_BUCKET_MS - 1
        with self._fallback_lock:
            conn = self._reader()
            cached = self._fallback
            if cached is not None and cached[0] <= since and cached[1] >= until:
                c_since, c_until, c_seq, c_index = cached
                changed = conn.execute("SELECT id, valid_to FROM bindings WHERE seq > ? AND valid_from <= ?",
                                       (c_seq, c_until)).fetchall()
                if changed:  # a new binding in the range, or one whose end moved within it (closed, extended): reload
                    found = c_index.rows_of_ids(np.array([r[0] for r in changed], dtype=np.int64))
                    vt = np.array([r[1] for r in changed], dtype=np.int64)
                    old = c_index.valid_to[np.maximum(found, 0)] if len(c_index) else vt
                    if (found < 0).any() or (np.minimum(old, c_until + 1) != np.minimum(vt, c_until + 1)).any():
                        cached = None
                if cached is not None:
                    return c_index
            seq = conn.execute("SELECT coalesce(max(seq), 0) FROM bindings").fetchone()[0]
            rows = conn.execute(f"{_ROW_SQL} WHERE {_KEEP_SQL} ORDER BY b.id",
                                {"since": since, "until": until}).fetchall()
            index = self._index_of(rows)
            self._fallback = (since, until, seq, index)
            self.counters["fallback_loads"] += 1
            return index

    def _reader(self) -> sqlite3.Connection:
        """A read connection of its own (the writer's connection may be inside a transaction of another thread)."""
        if self.path == ":memory:":
            return self.conn
        if self._read_conn is None:
            self._read_conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=60)
            self._read_conn.execute("PRAGMA busy_timeout=10000")
        return self._read_conn

    @staticmethod
    def _lookup_memory(base: BindingIndex, delta: BindingIndex, hi: np.ndarray, lo: np.ndarray, t: np.ndarray,
                       ids: bool) -> tuple[np.ndarray, np.ndarray | None]:
        if not len(delta):
            if not ids:  # the hot path: subscribers only
                return base.lookup(hi, lo, t, rows=False)[0], None
            return base.lookup_ids(hi, lo, t)
        # the delta (bindings opened since the last rebuild) is small and few queries hit it: base rows and prefix
        # lengths are only needed for those
        dsub, drow, dplen = delta.lookup(hi, lo, t)
        hit = np.flatnonzero(drow >= 0)
        sub, bid = base.lookup_ids(hi, lo, t) if ids else (base.lookup(hi, lo, t, rows=False)[0], None)
        _, _, bplen = base.lookup(hi[hit], lo[hit], t[hit])
        if len(hit):
            # the longer prefix decides (equal lengths would be one network with a valid binding in both, which
            # cannot be: the bindings of a network never overlap, and a row lives in one of the two)
            win = hit[dplen[hit] > bplen]
            sub[win] = dsub[win]
            if ids:
                cast(np.ndarray, bid)[win] = delta.ids[drow[win]]
        return sub, bid

    def close(self) -> None:
        """Close the database (rolls back an unfinished transaction)."""
        self.rollback()
        self.conn.close()
        if self._read_conn is not None:
            self._read_conn.close()
