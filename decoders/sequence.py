"""Sequence-number loss accounting per (exporter, version, domain), tolerant of reordering and restarts.

What a sequence number counts differs by protocol (RFC 3954 section 5.1, RFC 7011 section 3.1, v5 header):
v5 counts flow records, v9 counts export packets, IPFIX counts data records per observation domain. The caller
passes ``count`` in the same unit (records of the datagram for v5/IPFIX, 1 for v9).

* The first value seen for a key only sets the baseline (nothing is lost before we started listening).
* A jump forward opens a *gap*. Gaps are not counted as lost at once: a datagram that arrives late (reordered)
  fills its part of the gap. A gap still open after ``patience`` further datagrams of its key is counted as lost.
* A datagram behind the expected value that fills no gap is a duplicate, or the first one after an exporter
  restart: when the next datagram is behind too (or the first is beyond ``window``), it is a restart. A jump
  forward beyond ``max_jump`` is one too. The baseline is then reset and open gaps are forgotten, not counted.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

MOD = 1 << 32

SequenceKey = tuple[str | int | bytes, ...]
"""The exporter first, then what numbers a stream: NetFlow (version, domain); sFlow the sub-agent or data source."""


def _signed(v: int) -> int:
    v %= MOD
    return v - MOD if v >= MOD // 2 else v


@dataclass(slots=True)
class _State:
    expected: int | None
    gaps: list[list[int]] = field(default_factory=list)
    """Open gaps: [start, length, age in datagrams]."""
    behind: int = 0
    """Consecutive datagrams behind ``expected`` that filled no gap (duplicates, or a restart)."""


class SequenceTracker:
    """Per-key sequence tracking; :meth:`observe` returns how many units were lost (counted once, monotonic)."""

    def __init__(self, *, patience: int = 32, window: int = 65536, max_jump: int = 1 << 20,
                 max_gaps: int = 64, max_keys: int = 1 << 16) -> None:
        self.patience = patience
        self.window = window
        self.max_jump = max_jump
        self.max_gaps = max_gaps
        self.max_keys = max_keys
        self.states: dict[SequenceKey, _State] = {}
        self.resets = 0

    def observe(self, key: SequenceKey, seq: int, count: int, *, exact: bool = True) -> int:
        """Account a datagram whose first unit is ``seq`` and which carries ``count`` units; returns units lost.

        ``exact=False`` when ``count`` is unknown (IPFIX data held for a missing template): the next datagram then
        only sets a new baseline.
        """
        st = self.states.get(key)
        if st is not None and st.expected == seq and exact and not st.gaps:  # in order, nothing open: fast path
            st.expected = (seq + count) % MOD
            st.behind = 0
            return 0
        if st is None:
            if len(self.states) >= self.max_keys:
                self.states.pop(next(iter(self.states)))
            self.states[key] = _State((seq + count) % MOD if exact else None)
            return 0
        lost = self._age(st)
        if st.expected is None:
            st.expected = (seq + count) % MOD if exact else None
            return lost
        diff = _signed(seq - st.expected)
        if diff == 0:
            st.behind = 0
        elif 0 < diff <= self.max_jump:
            st.behind = 0
            st.gaps.append([st.expected, diff, 0])
            if len(st.gaps) > self.max_gaps:
                lost += st.gaps.pop(0)[1]
        elif diff < 0 and self._fill(st, seq, count):  # a late datagram filled (part of) a gap
            st.behind = 0
            return lost
        elif diff < 0 and -diff <= self.window and st.behind == 0:
            # A duplicate, or the first datagram after an exporter restart: wait for the next one to tell.
            st.behind = 1
            return lost
        else:
            self.resets += 1
            st.gaps.clear()
            st.behind = 0
        st.expected = (seq + count) % MOD if exact else None
        return lost

    def observe_many(self, key: SequenceKey, seqs: np.ndarray, counts: np.ndarray,
                     exact: np.ndarray) -> tuple[int, int]:
        """:meth:`observe` of several datagrams of one key, in order; returns (units lost, restarts detected).

        A stretch of datagrams each continuing exactly where the one before left off, met with nothing open (the
        usual case), is accounted at once; the others go through :meth:`observe` one at a time (at most about
        ``patience`` of them after a gap or restart), so the outcome is always that of calling it in order.
        """
        n = len(seqs)
        after = (seqs + counts) % MOD
        follows = np.zeros(n, dtype=bool)
        follows[1:] = (seqs[1:] == after[:-1]) & exact[1:]
        bounds = [*np.flatnonzero(~follows).tolist(), n]
        st = self.states.get(key)
        if len(bounds) == 2 and st is not None and not st.gaps and st.expected == int(seqs[0]) and bool(exact[0]):
            st.expected = int(after[-1])  # one stretch, met in order: every datagram takes observe()'s fast path
            st.behind = 0
            return 0, 0
        seq_l, count_l, exact_l = seqs.tolist(), counts.tolist(), exact.tolist()
        lost, resets = 0, self.resets
        for start, end in zip(bounds[:-1], bounds[1:], strict=True):
            for i in range(start, end):
                st = self.states.get(key)
                if st is not None and not st.gaps and st.expected == seq_l[i] and exact_l[i]:
                    st.expected = int(after[end - 1])  # i..end-1 would each take observe()'s in-order path
                    st.behind = 0
                    break
                lost += self.observe(key, seq_l[i], count_l[i], exact=exact_l[i])
        return lost, self.resets - resets

    def continue_run(self, key: SequenceKey, first: int, after: int) -> bool:
        """Account at once a run of units ``first`` .. ``after`` (exclusive) already known to follow each other
        exactly, when it continues where ``key`` left off with no gap open (what :meth:`observe` would do for each);
        returns False, changing nothing, otherwise (then use :meth:`observe_many`)."""
        st = self.states.get(key)
        if st is None or st.gaps or st.expected != first % MOD:
            return False
        st.expected = after % MOD
        st.behind = 0
        return True

    def _age(self, st: _State) -> int:
        lost = 0
        for g in st.gaps:
            g[2] += 1
        while st.gaps and st.gaps[0][2] > self.patience:
            lost += st.gaps.pop(0)[1]
        return lost

    @staticmethod
    def _fill(st: _State, seq: int, count: int) -> bool:
        """A late datagram: remove [seq, seq+count) from the gap that holds it (a duplicate matches none)."""
        for i, (start, length, age) in enumerate(st.gaps):
            off = _signed(seq - start)
            if 0 <= off < length:
                right = length - off - count
                parts = []
                if off > 0:
                    parts.append([start, off, age])
                if right > 0:
                    parts.append([(seq + count) % MOD, right, age])
                st.gaps[i:i + 1] = parts
                return True
        return False

    def forget(self, exporter: str) -> None:
        """Drop every key of an exporter (keys start with the exporter)."""
        for key in [k for k in self.states if k[0] == exporter]:
            del self.states[key]
