"""A lease held in the store (a ``rating_lease`` table), so only one rating job runs at a time across hosts.

No file lock: the store (the Parquet dataset on shared storage, or the ClickHouse server or cluster every host writes
to) is the one place all rating hosts see. The table is append-only; each row is one owner's claim, renewal or
release (``since``, ``expires``, ordered per owner by ``seq``). An owner's *state* is its newest row; it is *live*
while unexpired. The **holder** is the live owner with the oldest ``since`` (ties: the smaller owner string).

Acquire: read the states; if another owner is live, give up. Otherwise write a claim, make it durable and visible
(outputs flushed, ClickHouse spool drained), then read again: the claim is won only when no other owner is live. Of
two contenders whose claims were both acknowledged before either read back, the later reader sees the earlier claim,
so they never both win; when each sees the other, both withdraw and try again after a random pause (a few times).
That needs reads that see every acknowledged write: true of the embedded store and of one server; on a replicated
ClickHouse cluster the reads first make the replica catch up (``SYSTEM SYNC REPLICA``, see
:mod:`storage.clickhouse.query`), which ``query`` does.

A holder renews by writing a row with the same ``since`` and a later ``expires``; a crashed holder's lease lapses
after ``ttl``. A holder whose lease lapsed (a long pause) takes it again on ``renew`` only when nobody else has
claimed since, with the same double check as ``acquire``. Hosts' clocks are assumed to agree to well within the ttl
(NTP).
"""

from __future__ import annotations

import itertools
import os
import random
import secrets
import socket
import time
from collections.abc import Callable

import pyarrow as pa

from decoders.schema import Table
from rating.tables import RATING_LEASE

CONTENTION_TRIES = 4
"""Claims attempted by ``acquire`` when contenders withdrew because they saw each other."""


class LeaseHeld(RuntimeError):
    """Another rating job holds the lease."""

    def __init__(self, holder: str, expires_ms: int) -> None:
        self.holder, self.expires_ms = holder, expires_ms
        super().__init__(f"the rating lease is held by {holder} until {expires_ms} ms UTC; only one rating job runs "
                         "at a time")


def default_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


State = tuple[str, int, int]
"""(owner, since_ms, expires_ms) of an owner's newest row."""


class StoreLease:
    """The lease named ``name`` for ``owner``.

    ``query(sql) -> pa.Table`` reads the store and must see every write acknowledged before it started;
    ``write(table, pa.RecordBatch)`` appends and returns once the row is visible to ``query`` (the job flushes and
    drains its outputs). ``clock`` and ``sleep`` are injectable for tests.
    """

    def __init__(self, query: Callable[[str], pa.Table], write: Callable[[Table, pa.RecordBatch], None], *,
                 name: str = "rating", owner: str | None = None, ttl_s: float = 900.0,
                 clock: Callable[[], float] = time.time, sleep: Callable[[float], None] = time.sleep) -> None:
        self.query, self.write = query, write
        self.name = name
        self.owner = owner or default_owner()
        self.ttl_ms = int(ttl_s * 1000)
        self.clock = clock
        self.sleep = sleep
        self._since: int | None = None
        self._expires = 0
        self._seq = itertools.count(int(clock() * 1000) * 1000)

    def _now(self) -> int:
        # Whole seconds: ClickHouse 18.16 stores DateTime in seconds, so both stores compare the same values.
        return int(self.clock()) * 1000

    def states(self) -> list[State]:
        """(owner, since_ms, expires_ms) of every owner's newest row."""
        name = self.name.replace("'", "")
        try:
            t = self.query(
                "SELECT owner, argMax(since, seq) AS since, argMax(expires, seq) AS expires FROM rating_lease "
                f"WHERE name = '{name}' GROUP BY owner")
        except Exception as exc:
            # A server whose flowmed database has not been created yet has no lease rows: the first claim's write
            # creates the tables (the output creates its schema before inserting).
            if "doesn't exist" in str(exc) or "UNKNOWN_TABLE" in str(exc) or "UNKNOWN_DATABASE" in str(exc):
                return []
            raise
        if t.num_rows == 0:
            return []
        since = t.column("since").cast(pa.int64()).to_pylist()
        expires = t.column("expires").cast(pa.int64()).to_pylist()
        return list(zip(t.column("owner").to_pylist(), since, expires, strict=True))

    def holder(self) -> State | None:
        """The live owner with the oldest claim, or None."""
        now = self._now()
        live = [s for s in self.states() if s[2] > now]
        return min(live, key=lambda s: (s[1], s[0])) if live else None

    def _others_live(self, states: list[State]) -> list[State]:
        now = self._now()
        return sorted((s for s in states if s[0] != self.owner and s[2] > now), key=lambda s: (s[1], s[0]))

    def _row(self, since: int, expires: int) -> None:
        self.write(RATING_LEASE, RATING_LEASE.to_arrow({
            "name": [self.name], "owner": [self.owner], "seq": [next(self._seq)],
            "since": [since], "expires": [expires], "written": [self._now()]}))

    def _claim(self, since: int) -> State | None:
        """Write a claim and read back: None when it is won; else the other live owner (the claim is withdrawn)."""
        now = self._now()
        self._row(since, now + self.ttl_ms)
        others = self._others_live(self.states())
        if others:
            self._row(since, now - 1000)  # withdraw our claim: someone else claimed too
            return others[0]
        self._since, self._expires = since, now + self.ttl_ms
        return None

    def acquire(self) -> None:
        """Take the lease or raise :class:`LeaseHeld`."""
        for attempt in range(CONTENTION_TRIES):
            states = self.states()
            others = self._others_live(states)
            if others:
                raise LeaseHeld(others[0][0], others[0][2])
            mine = [s for s in states if s[0] == self.owner and s[2] > self._now()]
            other = self._claim(mine[0][1] if mine else self._now())
            if other is None:
                return
            if attempt + 1 < CONTENTION_TRIES:
                # Both contenders may have seen each other and withdrawn: try again after a random pause.
                self.sleep(random.uniform(0.2, 1.5) * (attempt + 1))
        assert other is not None  # CONTENTION_TRIES >= 1 and every try lost to another claim
        raise LeaseHeld(other[0], other[2])

    def renew(self) -> None:
        """Extend the lease held (call well within the ttl during long runs).

        When the lease lapsed meanwhile (a pause longer than the ttl) it is taken again, with the double check of
        :meth:`acquire`, provided nobody else claimed it since it lapsed; else :class:`LeaseHeld`.
        """
        if self._since is None:
            raise RuntimeError("renew() without acquire()")
        states = self.states()
        others = self._others_live(states)
        if others:
            raise LeaseHeld(others[0][0], others[0][2])
        now = self._now()
        mine = [s for s in states if s[0] == self.owner]
        expires = mine[0][2] if mine else self._expires
        if expires > now:
            self._row(self._since, now + self.ttl_ms)
            self._expires = now + self.ttl_ms
            return
        # Lapsed: someone who claimed after that (and may have rated and released since) makes it theirs.
        later = [s for s in states if s[0] != self.owner and s[1] >= expires]
        if later:
            raise LeaseHeld(later[0][0], later[0][2])
        other = self._claim(self._since)
        if other is not None:
            raise LeaseHeld(other[0], other[2])

    def release(self) -> None:
        if self._since is not None:
            self._row(self._since, self._now() - 1000)
            self._since = None
