"""The dispatching decoder: NetFlow/IPFIX and sFlow datagrams of one batch go to their decoders and come back as one
result equal to what each decoder gives on its own."""

from __future__ import annotations

import numpy as np

from bench.sflow import bulk_datagrams
from decoders.dispatch import DispatchDecoder
from decoders.netflow.decoder import FlowDecoder
from decoders.sampling import SamplingPolicy
from decoders.sflow import SFLOW_VERSION
from decoders.sflow.decoder import SflowDecoder
from tests.decoders.packets import T0_MS, V4_FIELDS, data_set, ipfix, template_set, v4_record, v5, v9

NETFLOW = "192.0.2.50"
SFLOW = "198.51.100.7"


def _netflow_datagrams() -> list[bytes]:
    tmpl = template_set({256: V4_FIELDS}, ipfix=False)
    return [v9(tmpl, data_set(256, V4_FIELDS, [v4_record(i) for i in range(3)]), seq=0),
            v5([{"packets": 7, "bytes": 700}]),
            ipfix(template_set({300: V4_FIELDS}, ipfix=True), data_set(300, V4_FIELDS, [v4_record(5)]))]


def _mixed() -> tuple[list, list, list]:
    """A batch with the protocols interleaved, and its NetFlow and sFlow parts in order."""
    nf = [(d, NETFLOW, T0_MS + i) for i, d in enumerate(_netflow_datagrams())]
    sf = [(d, SFLOW, T0_MS + i) for i, d in enumerate(bulk_datagrams(6, counters_every=2))]
    mixed = [nf[0], sf[0], sf[1], nf[1], sf[2], nf[2], *sf[3:]]
    return mixed, nf, sf


def test_a_mixed_batch_equals_each_protocol_decoded_alone() -> None:
    mixed, nf, sf = _mixed()
    got = DispatchDecoder().decode(mixed)
    want_nf = FlowDecoder().decode(nf)
    want_sf = SflowDecoder().decode(sf)
    assert want_nf.n_flows == 5 and want_sf.n_flows == 42 and not want_nf.errors and not want_sf.errors
    assert got.n_flows == want_nf.n_flows + want_sf.n_flows
    assert list(got.flows) == list(want_nf.flows)
    for name, col in got.flows.items():
        assert col.dtype == want_nf.flows[name].dtype, name
        np.testing.assert_array_equal(col, np.concatenate((want_nf.flows[name], want_sf.flows[name])), name)
    assert got.datagrams == want_nf.datagrams + want_sf.datagrams
    assert got.datagrams[(SFLOW, SFLOW_VERSION)] == 6
    assert got.records == want_nf.records + want_sf.records
    assert got.n_counters == want_sf.n_counters == 3
    for name, col in want_sf.interface_counters.items():
        np.testing.assert_array_equal(got.interface_counters[name], col, name)
    assert got.samples == {(SFLOW, "flow"): 42, (SFLOW, "counter"): 3}


def test_state_and_errors_per_protocol_and_counters_per_exporter() -> None:
    dec = DispatchDecoder()
    mixed, _, _ = _mixed()
    dec.decode(mixed)
    assert set(dec.exporters) == {NETFLOW, SFLOW}
    assert dec.templates_known() == {NETFLOW: 2}
    assert dec.agents_known() == {SFLOW: 1}
    # sFlow datagrams lost between two batches are a datagram sequence gap of their agent (counted once 32 later
    # ones did not fill it)
    more = bulk_datagrams(48, counters_every=2)[8:]
    res = dec.decode([(b"\0\0\0\4garbage", SFLOW, T0_MS + 100), *((d, SFLOW, T0_MS + 100) for d in more),
                      (b"\x00\x09\x00", NETFLOW, T0_MS + 100)])
    assert res.sequence_lost[SFLOW] == 2  # datagrams 7 and 8 of the agent never came
    assert res.errors[(SFLOW, "unknown_version")] == 1
    assert res.errors[(NETFLOW, "truncated")] == 1
    assert res.n_counters == 20 and len(res.interface_counters["if_index"]) == 20
    assert dec.pending_bytes() == 0
    expired = dec.expire(T0_MS + 30 * 86_400_000)
    assert expired[(NETFLOW, "exporter_expired")] == 1 and expired[(SFLOW, "exporter_expired")] == 1
    assert dec.exporters == {}


def test_one_protocol_batches_and_the_saved_state_are_the_netflow_decoders() -> None:
    dec = DispatchDecoder(sflow=SflowDecoder(), netflow=FlowDecoder())
    _, nf, sf = _mixed()
    only_sf = dec.decode(sf)
    assert only_sf.n_flows == 42 and only_sf.n_counters == 3 and not only_sf.errors
    only_nf = dec.decode(nf)
    assert only_nf.n_flows == 5 and only_nf.n_counters == 0 and only_nf.interface_counters == {}
    assert dec.decode([]).n_flows == 0
    restored = DispatchDecoder()
    restored.load_state(dec.save_state())
    assert restored.templates_known() == {NETFLOW: 2}
    dec.set_sampling(SamplingPolicy(1, [(f"{SFLOW}/32", 7, True)]))
    again = dec.decode(sf[:1])
    assert int(again.flows["packets"].sum()) == 7 * 7  # 7 samples, each scaled by the override rate
