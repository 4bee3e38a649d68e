"""``decoders.received.Received``: a batch in one buffer (a listener's slots, with gaps) decodes exactly as the same
datagrams given as tuples, and nothing decoded refers to the buffer afterwards (the listener reuses it)."""

from __future__ import annotations

from collections import Counter

import numpy as np

from bench.sflow import bulk_datagrams
from decoders.dispatch import DispatchDecoder
from decoders.netflow import fast_path
from decoders.netflow.decoder import FlowDecoder
from decoders.received import OVERSIZED, Received
from tests.decoders.packets import T0_MS, V4_FIELDS, data_set, ipfix, template_set, v4_record, v5, v9

A, B, SF = "192.0.2.1", "2001:db8::2", "198.51.100.7"


def _tuples() -> list[tuple[bytes, str, int]]:
    tmpl = template_set({256: V4_FIELDS}, ipfix=False)
    out = [(v9(tmpl, seq=0), A, T0_MS)]
    out += [(v9(data_set(256, V4_FIELDS, [v4_record(i + j) for j in range(3)]), seq=i + 1), A, T0_MS + i)
            for i in range(12)]
    out += [(v5([{"packets": i + 1, "bytes": 100}], seq=i), B, T0_MS + 20 + i) for i in range(6)]
    out.insert(5, (b"\x00\x07junk", B, T0_MS + 3))  # bad input in the middle
    out.append((ipfix(template_set({300: V4_FIELDS}, ipfix=True), data_set(300, V4_FIELDS, [v4_record(5)])),
                B, T0_MS + 40))
    return out


def _slotted(items: list[tuple[bytes, str, int]], slot: int = 2048) -> tuple[Received, np.ndarray]:
    """``items`` as a listener holds them: one slot each in a larger buffer, garbage in between."""
    arena = np.full(len(items) * slot, 0xEE, dtype=np.uint8)
    names: dict[str, int] = {}
    for i, (payload, _, _) in enumerate(items):
        arena[i * slot:i * slot + len(payload)] = np.frombuffer(payload, dtype=np.uint8)
    codes = np.array([names.setdefault(e, len(names)) for _, e, _ in items], dtype=np.int64)
    rec = Received(memoryview(arena), np.arange(len(items), dtype=np.int64) * slot,
                   np.array([len(p) for p, _, _ in items], dtype=np.int64), codes, list(names),
                   np.array([t for _, _, t in items], dtype=np.int64))
    return rec, arena


def _same(got, want) -> None:
    assert got.n_flows == want.n_flows
    for name, col in want.flows.items():
        np.testing.assert_array_equal(got.flows[name], col, name)
    assert got.datagrams == want.datagrams and got.records == want.records and got.errors == want.errors
    assert got.sequence_lost == want.sequence_lost


def test_a_slotted_buffer_decodes_as_tuples_and_leaves_nothing_behind() -> None:
    items = _tuples()
    want = FlowDecoder().decode(items)
    assert want.n_flows == 36 + 6 + 1 and want.errors
    rec, arena = _slotted(items)
    assert fast_path.scan(rec) is not None  # the blocks are read in the slots, with the gaps between them
    got = FlowDecoder().decode(rec)
    _same(got, want)
    copied = {name: col.copy() for name, col in got.flows.items()}
    arena[:] = 0x55  # the listener receives the next datagrams into the same slots
    for name, col in copied.items():
        np.testing.assert_array_equal(got.flows[name], col, name)


def test_tuples_round_trip_and_selection() -> None:
    items = _tuples()
    rec = Received.of(items)
    assert len(rec) == len(items) and list(rec) == items and rec[3] == items[3]
    assert list(rec[2:5]) == items[2:5]
    mask = np.array([e == B for _, e, _ in items])
    assert list(rec.select(mask)) == [i for i in items if i[1] == B]
    assert rec.exporter_list() == [e for _, e, _ in items]
    both = Received.concat([rec.select(mask), rec.select(~mask)])
    assert list(both) == [i for i in items if i[1] == B] + [i for i in items if i[1] != B]


def test_dispatch_splits_sflow_from_a_received_batch_and_counts_oversized() -> None:
    nf = _tuples()
    sf = [(d, SF, T0_MS + i) for i, d in enumerate(bulk_datagrams(4, counters_every=2))]
    mixed = nf[:3] + sf[:2] + nf[3:] + sf[2:]
    want = DispatchDecoder().decode(mixed)
    rec, _ = _slotted(mixed, slot=4096)
    rec.oversized = Counter({A: 2})
    got = DispatchDecoder().decode(rec)
    assert got.errors[(A, OVERSIZED)] == 2 and got.datagrams[(A, 0)] == want.datagrams[(A, 0)] + 2
    got.errors.pop((A, OVERSIZED))
    got.datagrams[(A, 0)] -= 2
    got.datagrams = +got.datagrams
    _same(got, want)
    assert got.n_counters == want.n_counters and got.samples == want.samples


def test_concat_copies_only_the_datagrams_of_slotted_buffers() -> None:
    items = _tuples()
    slotted, arena = _slotted(items, slot=4096)
    both = Received.concat([slotted, Received.of(items[:3])])
    assert list(both) == items + items[:3]
    assert len(both.buf) == sum(len(p) for p, _, _ in items + items[:3])  # not the slots with their gaps
    arena[:] = 0  # the listener's buffer reused: the batch holds its own copy
    assert list(both) == items + items[:3]
    assert list(slotted.compact()) == list(slotted)
