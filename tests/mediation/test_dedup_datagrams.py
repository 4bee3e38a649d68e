"""De-duplication per datagram (issue 17 item 2): a primary exporter's records are keyed by their datagram's identity,
so an identical resend is a duplicate in full and a partly repeated datagram counts in full; shared exporters stay
per record, secondary ones all duplicate; rejects keep their per-record ids."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from collector.config import load
from decoders.netflow.decoder import FlowDecoder
from decoders.schema import FLOWS
from mediation import Mediator
from mediation.dedup import _SEED, RECORD_KEY, ROLES, Deduplicator, _datagram_runs
from mediation.mediator import column
from mediation.subscribers.bindings import Bindings
from tests.decoders.packets import T0_MS, V4_FIELDS, data_set, ipfix, template_set, v4_record, v5

SHARED, SECONDARY = ROLES.index("shared"), ROLES.index("secondary")


def _cols(ident: list[int], offset: list[int], **over: list) -> dict[str, np.ndarray]:
    n = len(ident)
    cols = FLOWS.empty_columns(n)
    cols["datagram"][:] = ident
    cols["datagram_offset"][:] = offset
    cols["src_port"][:] = np.arange(n)  # distinct records
    for name, values in over.items():
        cols[name][:] = values
    return cols


def _mark(d: Deduplicator, ident: list[int], offset: list[int], role: list[int] | None = None, now: int = 0,
          **over: list) -> list[bool]:
    roles = np.zeros(len(ident), dtype=np.int8) if role is None else np.array(role, dtype=np.int8)
    return d.mark(_cols(ident, offset, **over), roles, now).tolist()


def test_a_resent_datagram_is_a_duplicate_in_full():
    d = Deduplicator(10_000, 1 << 16)
    assert _mark(d, [7, 7, 7, 8, 8], [20, 68, 116, 20, 68]) == [False] * 5
    assert _mark(d, [9, 7, 7, 7], [20, 20, 68, 116], now=5) == [False, True, True, True]


def test_a_copy_in_the_same_batch_is_a_duplicate_and_the_first_is_kept():
    d = Deduplicator(10_000, 1 << 16)
    # adjacent copies (one run of the identity in record order), and a copy after another datagram
    assert _mark(d, [7, 7, 7, 7, 8, 7, 7], [20, 68, 20, 68, 20, 20, 68]) == \
        [False, False, True, True, False, True, True]


def test_a_datagram_split_over_template_groups_is_one_datagram():
    """Sets of two templates in one datagram: its records come in two groups (two runs), and sets that alternate
    templates make runs whose spans overlap; neither is a copy. A copy of it in the same batch is."""
    d = Deduplicator(10_000, 1 << 16)
    # group A: sets 1 and 3 of datagram 7 (offsets 20.., 300..), group B: its set 2 (offsets 200..)
    ident = [7, 7, 7, 7, 9, 7, 7]
    offset = [20, 68, 300, 348, 20, 200, 230]
    assert _mark(d, ident, offset) == [False] * 7
    # the same batch again, twice: every record of 7 and 9 is now a copy of one already seen
    assert _mark(d, ident * 2, offset * 2, now=1) == [True] * 14


def test_a_partly_repeated_datagram_counts_in_full():
    """A datagram that repeats some records of an earlier one is another datagram (another identity): all its
    records count, the repeated ones too (only an identical resend is a duplicate)."""
    decoder = FlowDecoder()
    first = v5([{"sport": 1}, {"sport": 2}, {"sport": 3}], seq=1)
    partly = v5([{"sport": 3}, {"sport": 4}], seq=4)
    flows = [decoder.decode([(g, "192.0.2.1", T0_MS)]).flows for g in (first, partly, first)]
    d = Deduplicator(10_000, 1 << 16)
    role = np.zeros(3, dtype=np.int8)
    assert not d.mark(flows[0], role, 0).any()
    assert not d.mark(flows[1], role[:2], 1).any()
    assert d.mark(flows[2], role, 2).all()  # the identical resend


def test_shared_exporters_stay_per_record_and_secondary_are_all_duplicate():
    d = Deduplicator(10_000, 1 << 16)
    a, b = np.frombuffer(b"\1" * 16, "S16")[0], np.frombuffer(b"\2" * 16, "S16")[0]
    # the same flow (same fields) from two shared routers, in different datagrams: the second is a duplicate
    got = _mark(d, [5, 6, 11], [20, 20, 20], role=[SHARED, SHARED, SECONDARY], exporter=[a, b, a],
                src_port=[80, 80, 81])
    assert got == [False, True, True]
    # a primary exporter's records of the same flow in two datagrams are not duplicates of each other
    assert _mark(d, [12, 13], [20, 20], exporter=[a, a], src_port=[80, 80], now=1) == [False, False]


def test_records_without_identity_are_keyed_per_record():
    d = Deduplicator(10_000, 1 << 16)
    assert _mark(d, [0, 0, 0], [0, 0, 0], src_port=[1, 2, 1]) == [False, False, True]
    assert _mark(d, [0, 4], [0, 20], src_port=[2, 1], now=1) == [True, False]


def test_one_key_per_datagram_is_remembered():
    d = Deduplicator(10_000, 1 << 16)
    ident = np.repeat(np.arange(1, 101), 30).tolist()
    assert not any(_mark(d, ident, list(range(30)) * 100))
    assert d._current.count == 100


def _mediator(*extra: str) -> Mediator:
    return Mediator(load(None, ["mediation.watermark_s=60", *extra]), Bindings())


@pytest.mark.parametrize("in_one_batch", [False, True])
def test_mediator_counts_a_resent_ipfix_datagram_once(in_one_batch: bool):
    decoder = FlowDecoder()
    t = ipfix(template_set({256: V4_FIELDS}, ipfix=True), seq=0)
    data = ipfix(data_set(256, V4_FIELDS, [v4_record(i) for i in range(4)]), seq=0)
    other = ipfix(data_set(256, V4_FIELDS, [v4_record(i) for i in range(2)]), seq=4)
    batches = [[t, data, other, data]] if in_one_batch else [[t, data], [other], [data]]
    m = _mediator()
    for grams in batches:
        result = decoder.decode([(g, "192.0.2.1", T0_MS) for g in grams])
        assert not result.errors
        m.process(FLOWS.to_arrow(result.flows), T0_MS)
    assert m.counters["records_in"] == 10 and m.counters["records_duplicate"] == 4


def test_reject_ids_are_the_record_keys():
    decoder = FlowDecoder()
    bad = v5([{"sport": 1, "bytes": 0, "packets": 0}, {"sport": 2}], seq=1)  # zero counters: rejected
    flows = FLOWS.to_arrow(decoder.decode([(bad, "192.0.2.1", T0_MS)]).flows)
    m = _mediator()
    out = m.process(flows, T0_MS)
    rejects = out["rejects"]
    assert rejects.num_rows == 1
    cols = {name: column(flows, name)[:1] for name in RECORD_KEY}
    assert rejects.column("reject_id").to_pylist() == m.dedup.keys(cols, np.zeros(1, dtype=np.int8)).tolist()
    assert rejects.column("datagram").to_pylist() == [int(column(flows, "datagram")[0])]


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 4), st.integers(0, 6)), max_size=200))
def test_the_batch_pass_finds_exactly_the_repeated_places(records):
    """Against a Python model: a record is marked again exactly when its (identity, offset) came earlier in the
    batch, whatever the runs look like (copies adjacent or apart, sets interleaved, offsets falling)."""
    ident = np.array([r[0] for r in records], dtype=np.uint64)
    offset = np.array([r[1] for r in records], dtype=np.uint16)
    again = np.zeros(len(records), dtype=bool)
    uniques, first, run_uid = _datagram_runs(ident, offset, _SEED, again)
    seen: set[tuple[int, int]] = set()
    want = []
    for r in records:
        want.append(r in seen)
        seen.add(r)
    assert again.tolist() == want
    assert uniques.tolist() == list(dict.fromkeys(r[0] for r in records))
    per_record = np.repeat(run_uid, np.diff(first))
    assert (uniques[per_record] == ident).all()
