"""Every binding answer is a function of the binding history alone (issue 13 item 7).

Random histories of opens, closes and end moves, with the in-memory index rebuilt (in the background, installed at
the next commit or refresh), pruned to a memory horizon and re-read by a second process at random points; after
every step, every lookup of the writer and of the reader, and the ``bindings`` table assembled from the batches that
``commit()`` returned (what the outputs hold and ``flowmed trace`` reads), are compared with a brute-force search of
a plain model of the history.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mediation.subscribers.store as store_mod
from mediation.subscribers.bindings import Bindings, parse_network
from mediation.tables import OPEN_END_MS
from tests.mediation.mediation_helpers import s16

NETS = ["10.0.0.1", "10.0.0.2", "10.0.0.0/30", "10.0.0.0/24", "2001:db8::/56", "2001:db8::/64", "2001:db8::5"]
QUERIES = ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.77", "10.0.1.1", "2001:db8::5", "2001:db8::1:0:0:7",
           "2001:db8:0:ff::1"]
TIMES = list(range(-1, 130, 3))


@dataclass
class Model:
    """The history as a list of intervals, with the documented rules applied literally (no index, no SQL)."""

    rows: dict[int, list] = field(default_factory=dict)  # id -> [subscriber, (hi, lo, plen), vf, vt, session]

    def _net(self, net):
        return [(i, r) for i, r in self.rows.items() if r[1] == net]

    def open(self, bid: int, sub: str, net, vf: int, vt: int, session: str) -> None:
        for _, r in self._net(net):
            if r[2] <= vf < r[3]:
                r[3] = vf  # held at the new start: ends there
        later = [r[2] for _, r in self._net(net) if r[2] > vf]
        self.rows[bid] = [sub, net, vf, min([vt, *later]), session]

    def close_session(self, session: str, t: int) -> None:
        self.close([i for i, r in self.rows.items() if r[4] == session], t)

    def close(self, ids, t: int) -> None:
        for i in ids:
            r = self.rows[i]
            if r[3] > t:
                r[3] = max(r[2], t)

    def end(self, bid: int, t: int) -> None:
        r = self.rows[bid]
        later = [o[2] for i, o in self._net(r[1]) if (o[2], i) > (r[2], bid)]
        r[3] = max(r[2], min([t, *later]))

    def who(self, addr: str, t: int) -> tuple[str, int]:
        hi, lo, _ = parse_network(addr)
        value = hi << 64 | lo
        best = None
        for i, (sub, (nhi, nlo, plen), vf, vt, _) in self.rows.items():
            shift = 128 - plen
            if vf <= t < vt and value >> shift == (nhi << 64 | nlo) >> shift and (best is None or plen > best[0]):
                assert best is None or plen != best[0], "two bindings of one network hold at one instant"
                best = (plen, sub, i)
        return (best[1], best[2]) if best else ("", -1)


def trace_like(table: dict[int, dict], addr: str, t: int) -> str:
    """What ``flowmed trace`` reads from the stored ``bindings`` table: among the bindings of the address valid at
    t, the longest prefix, then the latest start (mediation/compliance/trace.py, ``_bindings_at``)."""
    hi, lo, _ = parse_network(addr)
    value = int.from_bytes(s16([addr])[0], "big")
    assert value == hi << 64 | lo
    valid = []
    for row in table.values():
        net = int.from_bytes(row["network"], "big")
        shift = 128 - row["prefix_len"]
        if row["valid_from"] <= t < row["valid_to"] and value >> shift == net >> shift:
            valid.append((row["prefix_len"], row["valid_from"], row["subscriber_id"]))
    return max(valid)[2] if valid else ""


ops = st.one_of(
    st.tuples(st.just("open"), st.sampled_from(NETS), st.integers(0, 100), st.one_of(st.none(), st.integers(1, 40))),
    st.tuples(st.just("open_many"), st.lists(st.tuples(st.sampled_from(NETS), st.integers(0, 100),
                                                       st.one_of(st.none(), st.integers(1, 40))),
                                             min_size=1, max_size=4)),
    st.tuples(st.just("close_session"), st.integers(0, 30), st.integers(0, 120)),
    st.tuples(st.just("close_ids"), st.integers(0, 30), st.integers(0, 120)),
    st.tuples(st.just("end"), st.integers(0, 30), st.integers(0, 130)),
    st.tuples(st.just("commit")),
    st.tuples(st.just("rebuild")),  # a background rebuild, finished, installed at the next commit or refresh
    st.tuples(st.just("prune"), st.integers(0, 120)),  # the hourly rebuild with a memory horizon
    st.tuples(st.just("refresh_reader")),
)


def _settle(b: Bindings) -> None:
    thread = b._rebuilding
    if thread is not None:
        thread.join(60)


def run_history(steps: list[tuple], with_end: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bindings.sqlite"
        writer, reader = Bindings(path), Bindings(path)
        writer.set_memory_limits(40, 0)  # lookups older than the pruning time minus 40 read the database
        reader.set_memory_limits(40, 0)
        model = Model()
        stored: dict[int, dict] = {}  # the outputs' bindings table: the latest version of each binding
        pending: list[tuple] = []  # model changes of the open transaction, applied at commit
        sessions = 0

        def check() -> None:
            reader.refresh()
            _settle(reader)
            for b in (writer, reader):
                addrs = s16([a for a in QUERIES for _ in TIMES])
                times = np.array([t for _ in QUERIES for t in TIMES], dtype=np.int64)
                sub, bid = b.lookup(addrs, times)
                names = b.subscriber_names
                got = [(names[s] if s >= 0 else "", int(i)) for s, i in zip(sub, bid, strict=True)]
                want = [model.who(a, t) for a in QUERIES for t in TIMES]
                assert got == want, [(a, t, g, w) for (a, t), g, w in
                                     zip([(a, t) for a in QUERIES for t in TIMES], got, want, strict=True) if g != w]
            for a in QUERIES:
                assert [trace_like(stored, a, t) for t in TIMES] == [model.who(a, t)[0] for t in TIMES], a

        def commit() -> None:
            batch = writer.commit()
            for name in ("valid_from", "valid_to"):  # (timestamps in the table: compared as int64 ms here)
                i = batch.schema.get_field_index(name)
                batch = batch.set_column(i, name, batch.column(name).cast(pa.int64()))
            for row in batch.to_pylist():
                old = stored.get(row["binding_id"])
                assert old is None or old["version"] <= row["version"]
                stored[row["binding_id"]] = row
            for change in pending:
                getattr(model, change[0])(*change[1:])
            pending.clear()
            # the stored table holds exactly the committed history
            db = {r[0]: (r[1], r[5], r[6]) for r in writer.conn.execute(
                "SELECT id, subscriber_id, net_hi, net_lo, prefix_len, valid_from, valid_to FROM bindings")}
            assert {i: (r["subscriber_id"], r["valid_from"], r["valid_to"]) for i, r in stored.items()} == db
            assert {i: (r[0], r[2], r[3]) for i, r in model.rows.items()} == db

        for step in steps:
            kind = step[0]
            if kind == "open":
                _, net, vf, length = step
                sessions += 1
                vt = OPEN_END_MS if length is None else vf + length
                bid = writer.open(f"sub{sessions % 5}", net, vf, vt, source="radius", session_id=f"s{sessions}")
                pending.append(("open", bid, f"sub{sessions % 5}", parse_network(net), vf, vt, f"s{sessions}"))
            elif kind == "open_many":
                entries = []
                for net, vf, length in step[1]:
                    sessions += 1
                    vt = OPEN_END_MS if length is None else vf + length
                    entries.append((f"sub{sessions % 5}", parse_network(net), vf, vt, f"s{sessions}"))
                first = writer.conn.execute("SELECT coalesce(max(id), 0) + 1 FROM bindings").fetchone()[0]
                writer.open_many([e[:4] for e in entries], session_ids=[e[4] for e in entries])
                for k, e in enumerate(entries):
                    pending.append(("open", first + k, *e))
            elif kind == "close_session":
                _, s, t = step
                writer.close_session(f"s{s}", t)
                pending.append(("close_session", f"s{s}", t))
            elif kind == "close_ids":
                _, i, t = step
                if i in model.rows:  # (committed bindings only)
                    writer.close_ids([i], t)
                    pending.append(("close", [i], t))
            elif kind == "end":
                _, i, t = step
                if with_end and i in model.rows:
                    writer.end(i, t)
                    pending.append(("end", i, t))
            elif kind == "commit":
                commit()
                check()
            elif kind == "rebuild":
                writer._start_rebuild()
                _settle(writer)
            elif kind == "prune":
                writer.prune(step[1])
                _settle(writer)
            elif kind == "refresh_reader":
                reader.refresh()
            _settle(writer)
        commit()
        check()
        writer.close()
        reader.close()


@pytest.mark.slow
@pytest.mark.parametrize("with_end", [False, True], ids=["open-close", "with-end-moves"])
def test_answers_are_a_function_of_the_history(monkeypatch, with_end):
    monkeypatch.setattr(store_mod, "DELTA_REBUILD_ROWS", 3)  # rebuilds also start on their own, often

    @settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.lists(ops, min_size=1, max_size=30))
    def run(steps):
        run_history(steps, with_end)

    run()


def test_a_change_committed_right_after_a_rebuild_reaches_the_outputs(tmp_path):
    """Regression: the first commit after a background rebuild (about 5 s after start, then hourly) installed the
    rebuilt index, which moved past the rows just committed, and returned an empty batch."""
    b = Bindings(tmp_path / "b.sqlite")
    b.open("alice", "100.64.0.1", 1000, source="radius", session_id="a")
    b.commit()
    b.set_memory_limits(3_600_000, 0)
    assert b.maybe_prune(10_000)
    _settle(b)  # built in the background, installed at the next commit
    b.open("bob", "100.64.0.2", 5000, source="radius", session_id="b")
    batch = b.commit()
    assert batch.column("subscriber_id").to_pylist() == ["bob"]
    sub, _ = b.lookup(s16(["100.64.0.1", "100.64.0.2"]), np.array([6000, 6000]))
    assert [b.subscriber_names[i] for i in sub] == ["alice", "bob"]


def test_a_late_open_with_an_older_start_ends_at_the_newer_start():
    """An open whose start is before a later-starting binding of its network ends at that start (before, it stayed
    open beside the newer one: the index answered with the newer, and after the newer's end nobody, while the
    stored table, read by ``flowmed trace``, still named the older)."""
    b = Bindings()
    b.open("bob", "10.0.1.30", 11 * 3600_000, source="radius", session_id="b")
    b.open("alice", "10.0.1.30", 10 * 3600_000, source="radius", session_id="a")
    b.close_session("b", 12 * 3600_000)
    b.commit()
    rows = b.conn.execute("SELECT subscriber_id, valid_from, valid_to FROM bindings ORDER BY id").fetchall()
    assert rows == [("bob", 11 * 3600_000, 12 * 3600_000), ("alice", 10 * 3600_000, 11 * 3600_000)]


def test_overlapping_rows_of_an_older_database_are_separated_once(tmp_path):
    """A database written before the rule (an older-started binding left open beside a newer one) is put right
    when opened: the older ends where the newer starts, as lookups already answered."""
    path = tmp_path / "b.sqlite"
    b = Bindings(path)
    b.conn.execute("DELETE FROM meta WHERE key='separated'")
    for i, (sub, vf, vt) in enumerate([("bob", 200, 300), ("alice", 100, OPEN_END_MS)]):
        hi, lo, plen = parse_network("10.0.1.30")
        b.conn.execute("INSERT INTO bindings(subscriber_id, net_hi, net_lo, prefix_len, valid_from, valid_to, "
                       "source, seq) VALUES (?, ?, ?, ?, ?, ?, 'radius', ?)", (sub, hi, lo, plen, vf, vt, 50 + i))
    b.close()
    again = Bindings(path)
    assert again.conn.execute("SELECT subscriber_id, valid_from, valid_to FROM bindings ORDER BY id").fetchall() == \
        [("bob", 200, 300), ("alice", 100, 200)]
    sub, _ = again.lookup(s16(["10.0.1.30"] * 3), np.array([150, 250, 350]))
    assert [again.subscriber_names[i] if i >= 0 else "" for i in sub] == ["alice", "bob", ""]
    # the changed binding, once, for the outputs' bindings table (the RADIUS listener emits it at its start)
    batch = Bindings(path).separation_to_publish()
    assert batch is not None and batch.column("subscriber_id").to_pylist() == ["alice"]
    assert batch.column("valid_to").cast(pa.int64()).to_pylist() == [200]
    assert again.separation_to_publish() is None and Bindings(path).separation_to_publish() is None
