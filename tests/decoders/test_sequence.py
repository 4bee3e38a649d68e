"""Sequence accounting: loss counted once, reordering tolerated, restarts detected, per protocol unit."""

from decoders.netflow.decoder import FlowDecoder
from decoders.sequence import SequenceTracker
from tests.decoders.packets import T0_MS, data_set, ip4, ipfix, template_set, v9

EXP = "192.0.2.40"
FIELDS = [(8, 4), (1, 4)]


def feed(tracker, key, seqs, count=1):
    return sum(tracker.observe(key, s, count) for s in seqs)


def test_in_order_loses_nothing_and_first_value_is_a_baseline():
    t = SequenceTracker()
    assert feed(t, ("a",), [1000, 1001, 1002, 1003]) == 0


def test_gap_counted_after_patience():
    t = SequenceTracker(patience=4)
    assert feed(t, ("a",), [0, 1, 5]) == 0  # 2, 3, 4 might still come
    assert feed(t, ("a",), [6, 7, 8, 9, 10]) == 3


def test_reordered_datagrams_are_not_lost():
    t = SequenceTracker(patience=4)
    assert feed(t, ("a",), [0, 1, 3, 2, 5, 4, 6, 7, 8, 9, 10, 11, 12]) == 0


def test_partial_fill_counts_only_the_rest():
    t = SequenceTracker(patience=3)
    assert feed(t, ("a",), [0, 10, 4]) == 0
    assert feed(t, ("a",), [11, 12, 13, 14]) == 8  # 1..9 missing, 4 arrived late


def test_records_unit_and_wraparound():
    t = SequenceTracker(patience=2)
    lost = t.observe(("a",), 2**32 - 30, 30)
    lost += t.observe(("a",), 0, 30)
    lost += t.observe(("a",), 60, 30)  # 30..59 missing
    lost += feed(t, ("a",), [90, 120, 150], count=30)
    assert lost == 30


def test_restart_is_a_reset_not_a_loss():
    t = SequenceTracker()
    feed(t, ("a",), range(5000, 5010))
    assert feed(t, ("a",), [0, 1, 2]) == 0
    assert t.resets == 1


def test_duplicates_are_ignored():
    t = SequenceTracker(patience=2)
    assert feed(t, ("a",), [0, 1, 1, 2, 2, 3, 4, 5]) == 0


def test_bounded_keys():
    t = SequenceTracker(max_keys=10)
    for i in range(100):
        t.observe((str(i),), 0, 1)
    assert len(t.states) == 10


def test_decoder_counts_v9_datagrams_and_ipfix_records_per_domain():
    dec = FlowDecoder()
    dec.decode([(v9(template_set({256: FIELDS}, ipfix=False), domain=d), EXP, T0_MS) for d in (1, 2)])
    rec = {8: ip4("10.0.0.1"), 1: 1}
    lost = 0
    for i in range(1, 60):
        dgs = [(v9(data_set(256, FIELDS, [rec] * 3), seq=i, domain=d), EXP, T0_MS) for d in (1, 2)]
        if i in (5, 6, 7):
            dgs = dgs[1:]  # three v9 datagrams of domain 1 lost, none of domain 2
        lost += dec.decode(dgs).sequence_lost[EXP]
    assert lost == 3
    dec.decode([(ipfix(template_set({256: FIELDS}, ipfix=True), seq=0), EXP, T0_MS)])
    lost, seq = 0, 0
    for i in range(60):
        n = 4
        if i != 10:  # one IPFIX message of 4 records lost
            lost += dec.decode([(ipfix(data_set(256, FIELDS, [rec] * n), seq=seq), EXP, T0_MS)]).sequence_lost[EXP]
        seq += n
    assert lost == 4


def test_ipfix_records_of_variable_length_sets_count_in_the_sequence():
    var = [(8, 4), (96, 0xFFFF), (1, 4)]
    dec = FlowDecoder()
    dec.decode([(ipfix(template_set({256: var}, ipfix=True), seq=0), EXP, T0_MS)])
    lost, seq, batch = 0, 0, []
    for i in range(50):
        n = 1 + i % 4
        dg = ipfix(data_set(256, var, [{8: ip4("10.0.0.1"), 96: "x" * i, 1: i}] * n), seq=seq)
        seq += n
        if i != 20:  # one message lost
            batch.append((dg, EXP, T0_MS))
        if len(batch) == 7:  # several datagrams per decode call, as the daemon batches them
            lost += dec.decode(batch).sequence_lost[EXP]
            batch = []
    lost += dec.decode(batch).sequence_lost[EXP]
    lost += sum(dec.decode([(ipfix(data_set(256, var, [{1: 1}]), seq=seq + k), EXP, T0_MS)]).sequence_lost[EXP]
                for k in range(40))
    assert lost == 1 + 20 % 4
