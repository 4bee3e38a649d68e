"""The flow Mediator end to end on hand-built batches, with exact figures per subscriber, interval and direction."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from collector.config import load
from mediation import Mediator
from mediation.reconcile import FIELDS, balance_holds
from mediation.subscribers.bindings import Bindings
from mediation.validate import REASONS
from tests.mediation.mediation_helpers import INTERVAL, MIN, T0, flows, usage_totals

S = 1000


def config(*extra: str):
    return load(None, ["mediation.watermark_s=60", *extra])


def subscribers() -> Bindings:
    b = Bindings()
    b.open("alice", "100.64.0.1", T0 - 3600 * S)
    b.open("bob", "100.64.0.2", T0 - 3600 * S)
    b.open("carol", "100.64.0.3", T0 - 3600 * S)
    b.open("dave", "100.64.0.3", T0 + 2 * MIN)  # the address moves to dave in the middle of the interval
    b.open("erin", "2001:db8:e::/56", T0 - 3600 * S)
    b.commit()
    return b


def first_batch():
    r = T0 + 355 * S
    return flows([
        dict(src="100.64.0.1", dst="8.8.8.8", start=T0 + 10 * S, end=T0 + 40 * S, bytes=1000, packets=10, received=r),
        dict(src="8.8.8.8", dst="100.64.0.1", start=T0 + 20 * S, end=T0 + 50 * S, bytes=5000, packets=5, received=r,
             src_port=443, dst_port=40000),
        dict(src="100.64.0.1", dst="100.64.0.2", start=T0 + 30 * S, end=T0 + 60 * S, bytes=700, packets=7,
             received=r),
        dict(src="198.51.100.9", dst="8.8.4.4", start=T0 + 30 * S, end=T0 + 31 * S, bytes=300, packets=3, received=r),
        dict(src="100.64.0.3", dst="1.1.1.1", start=T0 + 60 * S, end=T0 + 61 * S, bytes=400, packets=4, received=r),
        dict(src="100.64.0.3", dst="1.1.1.1", start=T0 + 180 * S, end=T0 + 181 * S, bytes=600, packets=6, received=r),
        # 100 s + 300 s + 50 s over three intervals
        dict(src="2001:4860::8888", dst="2001:db8:e:1::5", start=T0 - 100 * S, end=T0 + 350 * S, bytes=4500,
             packets=45, received=r),
        # the first record again in the same batch: a duplicate
        dict(src="100.64.0.1", dst="8.8.8.8", start=T0 + 10 * S, end=T0 + 40 * S, bytes=1000, packets=10, received=r),
    ])


def run_scenario(mediator: Mediator) -> list[dict[str, pa.RecordBatch]]:
    outs = [mediator.process(first_batch(), T0 + 355 * S)]
    outs.append(mediator.process(flows([
        # resent later: still a duplicate
        dict(src="100.64.0.1", dst="8.8.8.8", start=T0 + 10 * S, end=T0 + 40 * S, bytes=1000, packets=10,
             received=T0 + 365 * S),
        dict(src="100.64.0.2", dst="8.8.8.8", start=T0 + 50 * S, end=T0 + 40 * S, bytes=999, packets=9,
             received=T0 + 365 * S),  # ends before it starts: rejected
    ]), T0 + 370 * S))
    # the T0 interval closed at T0 + 360 s; this record for it arrives late and becomes a correction row
    outs.append(mediator.process(flows([
        dict(src="100.64.0.1", dst="9.9.9.9", start=T0 + 100 * S, end=T0 + 110 * S, bytes=250, packets=2,
             received=T0 + 400 * S),
    ]), T0 + 400 * S))
    outs.append(mediator.close_all(T0 + 400 * S))
    return outs


EXPECTED = {
    ("alice", T0, "up"): 1000 + 700 + 250,
    ("alice", T0, "down"): 5000,
    ("bob", T0, "down"): 700,
    ("", T0, "unattributed"): 300,
    ("carol", T0, "up"): 400,
    ("dave", T0, "up"): 600,
    ("erin", T0 - INTERVAL, "down"): 1000,
    ("erin", T0, "down"): 3000,
    ("erin", T0 + INTERVAL, "down"): 500,
}


def tables(outs, name):
    return [o[name] for o in outs if name in o]


def test_usage_is_exact_per_subscriber_interval_and_direction():
    m = Mediator(config(), subscribers())
    outs = run_scenario(m)
    assert usage_totals(tables(outs, "usage")) == EXPECTED
    usage = pa.Table.from_batches(tables(outs, "usage"))
    # the late record is a correction row, not lost; the interval's own row came first
    alice_up = [r for r in usage.to_pylist() if r["subscriber_id"] == "alice" and r["direction"] == "up"]
    assert sorted((r["correction"], r["bytes"]) for r in alice_up) == [(0, 1700), (1, 250)]
    assert len(set(usage.column("row_id").to_pylist())) == usage.num_rows
    assert set(usage.column("source").to_pylist()) == {"flow"}
    assert m.counters["bytes_duplicate"] == 2000 and m.counters["records_duplicate"] == 2
    assert m.counters["bytes_rejected"] == 999 and m.counters["rejected_end_before_start"] == 1
    assert m.counters["unbalanced_batches"] == 0


def test_two_workers_parts_of_one_key_have_distinct_row_ids():
    """SO_REUSEPORT can spread one exporter over workers: each writes a part of the same key at the same time; the
    parts must not share a row id, or FINAL (and the embedded store's usage view) would keep only one of them."""
    ids = []
    for worker in (0, 1):
        usage = pa.Table.from_batches(tables(run_scenario(Mediator(config(), subscribers(), worker=worker)), "usage"))
        ids.append(set(usage.column("row_id").to_pylist()))
    assert ids[0] and ids[0].isdisjoint(ids[1])
    single = pa.Table.from_batches(tables(run_scenario(Mediator(config(), subscribers())), "usage"))
    assert usage_totals([b for b in single.to_batches()]) == EXPECTED


def test_reconciliation_balances_exactly():
    m = Mediator(config(), subscribers())
    recon = pa.Table.from_batches(tables(run_scenario(m), "reconciliation")).to_pylist()
    total = {f: sum(int(r[f]) for r in recon) for f in FIELDS}
    assert total["bytes_in"] == 15749
    assert (total["bytes_attributed"], total["bytes_unattributed"], total["bytes_rejected"],
            total["bytes_duplicate"]) == (12450, 300, 999, 2000)
    assert balance_holds(total) and all(r["balanced"] == 1 for r in recon)
    assert total["bytes_usage"] == sum(EXPECTED.values())  # alice->bob counted for both
    assert total["records_in"] == 11


def test_rejects_keep_the_raw_record_and_reason():
    m = Mediator(config(), subscribers())
    outs = run_scenario(m)
    (rej,) = tables(outs, "rejects")
    row = rej.to_pylist()[0]
    assert row["reason"] == "end_before_start" and row["bytes"] == 999 and row["packets"] == 9
    assert row["src_addr"] == b"\0" * 10 + b"\xff\xff" + bytes([100, 64, 0, 2]) and row["reject_id"] != 0


def test_validation_reasons():
    m = Mediator(config("mediation.max_lateness_s=3600", "mediation.max_flow_duration_s=600"), subscribers())
    r = T0 + 10 * MIN
    batch = flows([
        dict(src="100.64.0.1", dst="8.8.8.8", start=5, end=10, bytes=1, packets=1, received=r),
        dict(src="100.64.0.1", dst="8.8.8.8", start=r, end=r - 1, bytes=1, packets=1, received=r),
        dict(src="100.64.0.1", dst="8.8.8.8", start=r, end=r + 3600 * S, bytes=1, packets=1, received=r),
        dict(src="100.64.0.1", dst="8.8.8.8", start=r - 7200 * S, end=r - 7100 * S, bytes=1, packets=1, received=r),
        dict(src="100.64.0.1", dst="8.8.8.8", start=r - 700 * S, end=r - 1, bytes=1, packets=1, received=r),
        dict(src="100.64.0.1", dst="8.8.8.8", start=r - 1, end=r - 1, bytes=0, packets=0, received=r),
        dict(src="100.64.0.1", dst="8.8.8.8", start=r - 1, end=r - 1, bytes=10**9, packets=1, received=r),
        dict(src="100.64.0.1", dst="8.8.8.8", start=r - 1, end=r - 1, bytes=1500, packets=1, received=r),
    ])
    out = m.process(batch, r)
    assert out["rejects"].column("reason").to_pylist() == list(REASONS)
    assert m.counters["records_rejected"] == 7


def test_traffic_classes_from_rules():
    cfg = config('mediation.classes=[{name="cdn", prefixes=["8.8.8.0/24"]}, {name="dns", ports=[53], '
                 'protocols=[17]}]')
    m = Mediator(cfg, subscribers())
    m.process(flows([
        dict(src="100.64.0.1", dst="8.8.8.8", start=T0, end=T0 + 1, bytes=10, packets=1),
        dict(src="8.8.8.8", dst="100.64.0.1", start=T0, end=T0 + 1, bytes=20, packets=1),  # remote = source
        dict(src="100.64.0.1", dst="9.9.9.9", start=T0, end=T0 + 1, bytes=30, packets=1, dst_port=53, protocol=17),
        dict(src="100.64.0.1", dst="9.9.9.9", start=T0, end=T0 + 1, bytes=40, packets=1, dst_port=53, protocol=6),
    ]), T0 + 5 * S)
    rows = m.close_all(T0 + 5 * S)["usage"].to_pylist()
    got = {(r["direction"], r["traffic_class"]): r["bytes"] for r in rows}
    assert got == {("up", "cdn"): 10, ("down", "cdn"): 20, ("up", "dns"): 30, ("up", "default"): 40}


def test_dedup_roles_shared_and_secondary():
    cfg = config('mediation.exporter_roles=[{prefix="192.0.2.0/28", role="shared"}, '
                 '{prefix="192.0.2.99", role="secondary"}]')
    m = Mediator(cfg, subscribers())
    same = dict(src="100.64.0.1", dst="8.8.8.8", start=T0, end=T0 + S, bytes=100, packets=1)
    out = m.process(flows([{**same, "exporter": "192.0.2.1"}, {**same, "exporter": "192.0.2.2"},
                           {**same, "exporter": "192.0.2.99", "bytes": 5}, {**same, "exporter": "192.0.2.200"}]),
                    T0 + 2 * S)
    assert out == {} or "usage" not in out
    assert m.counters["bytes_duplicate"] == 105  # the second shared router's copy and the secondary's record
    assert usage_totals([m.close_all(T0 + 2 * S)["usage"]]) == {("alice", T0, "up"): 200}  # shared + primary .200


def test_an_interval_closes_on_tick_without_traffic():
    m = Mediator(config(), subscribers())
    m.process(flows([dict(src="100.64.0.1", dst="8.8.8.8", start=T0, end=T0 + S, bytes=100, packets=1)]), T0 + S)
    assert "usage" not in m.tick(T0 + INTERVAL + 59 * S)
    assert usage_totals([m.tick(T0 + INTERVAL + 60 * S)["usage"]]) == {("alice", T0, "up"): 100}


def test_n_workers_give_the_same_usage_as_one():
    """The kernel keeps an exporter on one worker: split the records by exporter over two mediators."""
    rng = np.random.default_rng(3)
    rows = []
    for _ in range(400):
        start = T0 + int(rng.integers(-INTERVAL, 3 * INTERVAL))
        rows.append(dict(src=f"100.64.0.{rng.integers(1, 5)}", dst=f"8.8.{rng.integers(0, 3)}.8", start=start,
                         end=start + int(rng.integers(0, 2 * INTERVAL)), bytes=int(rng.integers(1, 10**7)),
                         packets=int(rng.integers(1, 1000)), received=T0 + 4 * INTERVAL,
                         exporter=f"192.0.2.{rng.integers(1, 5)}"))
    rows += rows[:50]  # resends
    now = T0 + 4 * INTERVAL
    one = Mediator(config(), subscribers())
    single = [one.process(flows(rows), now), one.close_all(now)]
    workers = [Mediator(config(), subscribers()) for _ in range(2)]
    parts = []
    for w, m in enumerate(workers):
        mine = [r for r in rows if int(r["exporter"].rsplit(".", 1)[1]) % 2 == w]
        parts += [m.process(flows(mine), now), m.close_all(now)]
    assert usage_totals(tables(parts, "usage")) == usage_totals(tables(single, "usage"))
    recon_one = pa.Table.from_batches(tables(single, "reconciliation")).to_pylist()
    recon_n = pa.Table.from_batches(tables(parts, "reconciliation")).to_pylist()
    for f in FIELDS:
        assert sum(r[f] for r in recon_one) == sum(r[f] for r in recon_n)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["100.64.0.1", "100.64.0.2", "100.64.0.3", "8.8.8.8", "2001:db8:e::9",
                                           "2001:4860::1"]),
                          st.sampled_from(["100.64.0.1", "100.64.0.3", "9.9.9.9", "2001:db8:e:5::1", "2001:4860::2"]),
                          st.integers(-2 * INTERVAL, 2 * INTERVAL), st.integers(0, 3 * INTERVAL),
                          st.integers(0, 10**12), st.integers(0, 10**6), st.sampled_from(["192.0.2.1", "192.0.2.2"])),
                min_size=1, max_size=60),
       st.integers(0, 4 * INTERVAL))
def test_every_byte_is_accounted_for_exactly_once(records, now_offset):
    """Whatever the records: usage parts add up to the records that were not rejected or duplicate, per record side,
    and the reconciliation balances."""
    rows = [dict(src=s, dst=d, start=T0 + st_, end=T0 + st_ + dur, bytes=b, packets=p, exporter=e,
                 received=T0 + 2 * INTERVAL) for s, d, st_, dur, b, p, e in records]
    m = Mediator(config("mediation.max_flow_duration_s=3600"), subscribers())
    outs = [m.process(flows(rows), T0 + now_offset), m.close_all(T0 + 5 * INTERVAL)]
    recon = pa.Table.from_batches(tables(outs, "reconciliation")).to_pylist()
    total = {f: sum(int(r[f]) for r in recon) for f in FIELDS}
    assert balance_holds(total) and total["bytes_in"] == sum(r["bytes"] for r in rows)
    usage = sum(usage_totals(tables(outs, "usage")).values())
    assert usage == total["bytes_usage"]
    assert total["bytes_attributed"] + total["bytes_unattributed"] <= usage <= 2 * total["bytes_attributed"] + \
        total["bytes_unattributed"]
    assert m.counters["unbalanced_batches"] == 0


def test_many_parts_are_handled_in_chunks_with_the_same_result(monkeypatch):
    import mediation.mediator as mediator_mod

    monkeypatch.setattr(mediator_mod, "MAX_PARTS", 3)  # the three-interval flow alone fills a chunk
    m = Mediator(config(), subscribers())
    outs = run_scenario(m)
    assert usage_totals(tables(outs, "usage")) == EXPECTED
    recon = pa.Table.from_batches(tables(outs, "reconciliation")).to_pylist()
    assert sum(r["bytes_in"] for r in recon) == 15749 and all(r["balanced"] for r in recon)
    assert len(m._chunks(np.array([0, 0, 0, 0]), np.array([INTERVAL * 2, 1, 1, 1]))) == 2


def test_reload_changes_class_rules_and_keeps_rows_already_summed():
    m = Mediator(config('mediation.classes=[{name="cdn", prefixes=["8.8.8.0/24"]}]'), subscribers())
    m.process(flows([dict(src="100.64.0.1", dst="8.8.8.8", start=T0, end=T0 + 1, bytes=10, packets=1)]), T0 + S)
    # SIGHUP: a new rule first, the cdn rule renamed; the open interval keeps "cdn" for what it already holds
    m.reload(config('mediation.classes=[{name="dns", ports=[53]}, {name="cdn2", prefixes=["8.8.8.0/24"]}]',
                    "mediation.max_flow_duration_s=60"))
    m.process(flows([dict(src="100.64.0.1", dst="8.8.8.8", start=T0, end=T0 + 1, bytes=20, packets=1),
                     dict(src="100.64.0.1", dst="9.9.9.9", start=T0, end=T0 + 1, bytes=30, packets=1, dst_port=53),
                     dict(src="100.64.0.1", dst="9.9.9.9", start=T0, end=T0 + 120_000, bytes=40, packets=1)]),
              T0 + 2 * S)
    rows = m.close_all(T0 + 2 * S)["usage"].to_pylist()
    assert {r["traffic_class"]: r["bytes"] for r in rows} == {"cdn": 10, "cdn2": 20, "dns": 30}
    assert m.counters["rejected_too_long"] == 1


def test_attribution_is_each_records_lookup_at_its_start():
    """With ``keep_attribution`` the Mediator keeps, per record with traffic, both addresses' subscriber and binding
    id at ``flow_start`` (the compliance stage's lookups); rejected and duplicate records are marked unknown. The
    usage is the same as without it, also with split records and chunks."""
    b = subscribers()
    batch = first_batch()  # a record over three intervals, one towards dave's address after it moved, a duplicate
    plain = Mediator(config(), b)
    keeping = Mediator(config(), b)
    keeping.keep_attribution = True
    assert keeping.take_attribution() is None
    outs = [keeping.process(batch, T0 + 355 * S), keeping.close_all(T0 + 400 * S)]
    ref = [plain.process(batch, T0 + 355 * S), plain.close_all(T0 + 400 * S)]
    assert tables(outs, "usage")[0].equals(tables(ref, "usage")[0])
    got = keeping.take_attribution()
    assert keeping.take_attribution() is None  # taken once
    start = batch.column("flow_start").cast(pa.int64()).to_numpy()
    assert got.start.tolist() == start.tolist()
    src_sub, src_bid = b.lookup(np.array(batch.column("src_addr").to_pylist(), dtype="S16"), start)
    dst_sub, dst_bid = b.lookup(np.array(batch.column("dst_addr").to_pylist(), dtype="S16"), start)
    assert got.known.tolist() == [True] * 7 + [False]
    assert got.src_sub[:7].tolist() == src_sub[:7].tolist() and got.src_bid[:7].tolist() == src_bid[:7].tolist()
    assert got.dst_sub[:7].tolist() == dst_sub[:7].tolist() and got.dst_bid[:7].tolist() == dst_bid[:7].tolist()
    assert (got.src_sub[7], got.src_bid[7], got.dst_bid[7]) == (-1, -1, -1)
    assert (got.dst_bid[:7] >= 0).sum() == 3 and (got.src_bid[:7] >= 0).sum() == 4
    # two calls (the Pipeline's slices of one batch): one attribution in call order
    sliced = Mediator(config(), b)
    sliced.keep_attribution = True
    sliced.process(batch.slice(0, 3), T0 + 355 * S)
    sliced.process(batch.slice(3), T0 + 355 * S)
    again = sliced.take_attribution()
    assert len(again) == 8 and again.known.tolist() == got.known.tolist()
    assert again.src_bid.tolist() == got.src_bid.tolist() and again.dst_sub.tolist() == got.dst_sub.tolist()
    # the same batch again: all duplicates, nothing looked up
    sliced.process(batch, T0 + 356 * S)
    assert not sliced.take_attribution().known.any()


def test_attribution_counts_only_records_with_traffic(monkeypatch):
    """Entries are per record with traffic, so they stay aligned with the compliance stage's records when records
    without traffic (pure NAT events) are left out of the Mediator's batch; chunks of parts give the same."""
    import mediation.mediator as mediator_mod

    monkeypatch.setattr(mediator_mod, "MAX_PARTS", 3)
    m = Mediator(config(), subscribers())
    m.keep_attribution = True
    batch = flows([
        dict(src="100.64.0.1", dst="8.8.8.8", start=T0 + 10 * S, end=T0 + 40 * S, bytes=0, packets=0),
        dict(src="2001:4860::8888", dst="2001:db8:e:1::5", start=T0 - 100 * S, end=T0 + 350 * S, bytes=4500,
             packets=45),
        dict(src="100.64.0.2", dst="8.8.8.8", start=T0 + 10 * S, end=T0 + 40 * S, bytes=0, packets=3),
        dict(src="100.64.0.3", dst="1.1.1.1", start=T0 + 180 * S, end=T0 + 181 * S, bytes=600, packets=6),
    ])
    m.process(batch, T0 + 355 * S)
    got = m.take_attribution()
    assert len(got) == 3 and got.known.tolist() == [True, False, True]  # bytes 0, packets 3: rejected
    names = m.bindings.subscriber_names
    assert names[got.dst_sub[0]] == "erin" and got.src_sub[0] == -1
    assert names[got.src_sub[2]] == "dave"  # at T0 + 180 s the address is dave's
