"""Data before its template: held (bounded in bytes and age), replayed when the template arrives."""

from decoders.netflow.decoder import DecoderLimits, FlowDecoder
from tests.decoders.packets import T0_MS, data_set, ip4, ipfix, template_set, v9

EXP = "192.0.2.50"
FIELDS = [(8, 4), (1, 4), (152, 8)]


def rec(i):
    return {8: ip4(f"10.0.0.{i}"), 1: i, 152: T0_MS - i}


def test_data_before_template_is_replayed_with_its_own_context():
    dec = FlowDecoder()
    early = dec.decode([(v9(data_set(256, FIELDS, [rec(1), rec(2)]), domain=4, seq=0), EXP, T0_MS - 50)])
    assert early.n_flows == 0 and early.pending_held[EXP] == 1 and not early.errors
    assert dec.pending_bytes() > 0
    res = dec.decode([(v9(template_set({256: FIELDS}, ipfix=False), domain=4, seq=1), EXP, T0_MS)])
    assert res.n_flows == 2 and res.pending_replayed[EXP] == 1
    assert list(res.flows["raw_bytes"]) == [1, 2]
    assert set(res.flows["time_received"]) == {T0_MS - 50}  # when the data arrived, not the template
    assert dec.pending_bytes() == 0


def test_template_later_in_the_same_batch():
    res = FlowDecoder().decode([
        (ipfix(data_set(256, FIELDS, [rec(1)])), EXP, T0_MS),
        (ipfix(template_set({256: FIELDS}, ipfix=True), data_set(256, FIELDS, [rec(2)])), EXP, T0_MS),
    ])
    assert sorted(res.flows["raw_bytes"].tolist()) == [1, 2]


def test_held_data_is_per_exporter_and_domain():
    dec = FlowDecoder()
    dec.decode([(ipfix(data_set(256, FIELDS, [rec(1)]), domain=1), EXP, T0_MS),
                (ipfix(data_set(256, FIELDS, [rec(2)]), domain=1), "192.0.2.51", T0_MS)])
    res = dec.decode([(ipfix(template_set({256: FIELDS}, ipfix=True), domain=2), EXP, T0_MS)])
    assert res.n_flows == 0
    res = dec.decode([(ipfix(template_set({256: FIELDS}, ipfix=True), domain=1), EXP, T0_MS)])
    assert res.flows["raw_bytes"].tolist() == [1]


def test_bounded_by_bytes_oldest_dropped_and_counted():
    dec = FlowDecoder(limits=DecoderLimits(pending_max_bytes=1000))
    dgs = [(v9(data_set(256 + i, FIELDS, [rec(1)] * 10)), EXP, T0_MS + i) for i in range(10)]
    res = dec.decode(dgs)
    assert dec.pending_bytes() <= 1000
    assert res.pending_dropped[EXP] > 0 and res.errors[(EXP, "pending_overflow")] == res.pending_dropped[EXP]
    assert res.limit_hits[(EXP, "pending_max_bytes")] == res.pending_dropped[EXP]
    # the newest survived: its template replays it
    res = dec.decode([(v9(template_set({265: FIELDS}, ipfix=False)), EXP, T0_MS)])
    assert res.n_flows == 10


def test_expiry_by_age():
    dec = FlowDecoder(limits=DecoderLimits(pending_max_age_ms=1000))
    dec.decode([(v9(data_set(256, FIELDS, [rec(1)])), EXP, T0_MS)])
    assert dec.expire(T0_MS + 500)[(EXP, "pending_expired")] == 0
    assert dec.expire(T0_MS + 1500)[(EXP, "pending_expired")] == 1
    assert dec.pending_bytes() == 0
    # also expired by the clock of later datagrams
    dec.decode([(v9(data_set(256, FIELDS, [rec(1)])), EXP, T0_MS)])
    res = dec.decode([(v9(data_set(300, FIELDS, [rec(1)])), "192.0.2.99", T0_MS + 5000)])
    assert res.errors[(EXP, "pending_expired")] == 1
