"""Sampling: rates from options data (keyed by sampler/selector id), from the record, and configured."""

import ipaddress

import pytest

from decoders.netflow.decoder import FlowDecoder
from decoders.sampling import SamplingPolicy, rate_from_values
from tests.decoders.packets import T0_MS, data_set, ip4, ipfix, options_template_set, template_set, v9

EXP = "192.0.2.30"
FLOW = [(8, 4), (1, 4), (2, 4)]


def flow(i=1, extra=None):
    r = {8: ip4(f"10.0.0.{i}"), 1: 100, 2: 2}
    r.update(extra or {})
    return r


def test_v9_domain_wide_sampling_interval_from_options():
    opts = options_template_set(300, [(1, 4)], [(34, 4), (35, 1)], ipfix=False)
    odata = data_set(300, [(1, 4), (34, 4), (35, 1)], [{1: 0, 34: 512, 35: 2}], pad=3)
    dg = v9(opts, odata, template_set({256: FLOW}, ipfix=False), data_set(256, FLOW, [flow()]), domain=3)
    res = FlowDecoder().decode([(dg, EXP, T0_MS)])
    f = res.flows
    assert (f["sampling_rate"][0], f["bytes"][0], f["packets"][0]) == (512, 51_200, 1024)
    assert (f["raw_bytes"][0], f["raw_packets"][0]) == (100, 2)


def test_two_samplers_in_one_domain_keep_their_rates():
    """Cisco style: options keyed by FLOW_SAMPLER_ID (48) with a random interval (50); records carry 48."""
    ofields = [(48, 1), (49, 1), (50, 4)]
    opts = options_template_set(300, [(1, 4)], ofields, ipfix=False)
    odata = data_set(300, [(1, 4)] + ofields, [{48: 1, 49: 2, 50: 100}, {48: 2, 49: 2, 50: 1000}], pad=2)
    fields = FLOW + [(48, 1)]
    dec = FlowDecoder()
    dec.decode([(v9(opts, odata, template_set({256: fields}, ipfix=False), domain=9), EXP, T0_MS)])
    res = dec.decode([(v9(data_set(256, fields, [flow(1, {48: 1}), flow(2, {48: 2}), flow(3, {48: 7})]),
                          domain=9, seq=1), EXP, T0_MS)])
    # sampler 7 is unknown and the domain announced two samplers: no guess, the configured default (1)
    assert list(res.flows["sampling_rate"]) == [100, 1000, 1]
    assert list(res.flows["bytes"]) == [10_000, 100_000, 100]


def test_ipfix_selector_packet_interval_and_space():
    ofields = [(302, 4), (305, 4), (306, 4)]
    opts = options_template_set(300, [(302, 4)], [(305, 4), (306, 4)], ipfix=True)
    odata = data_set(300, ofields, [{302: 5, 305: 1, 306: 99}, {302: 6, 305: 2, 306: 8}])
    fields = FLOW + [(302, 4)]
    dg = ipfix(opts, odata, template_set({256: fields}, ipfix=True),
               data_set(256, fields, [flow(1, {302: 5}), flow(2, {302: 6})]))
    res = FlowDecoder().decode([(dg, EXP, T0_MS)])
    assert list(res.flows["sampling_rate"]) == [100, 5]


def test_single_keyed_sampler_applies_to_records_without_sampler_id():
    ofields = [(48, 2), (50, 4)]
    opts = options_template_set(300, [(48, 2)], [(50, 4)], ipfix=True)
    odata = data_set(300, ofields, [{48: 3, 50: 64}])
    dg = ipfix(opts, odata, template_set({256: FLOW}, ipfix=True), data_set(256, FLOW, [flow()]))
    assert FlowDecoder().decode([(dg, EXP, T0_MS)]).flows["sampling_rate"][0] == 64


def test_rate_in_the_data_record_itself():
    fields = FLOW + [(34, 4)]
    dg = ipfix(template_set({256: fields}, ipfix=True),
               data_set(256, fields, [flow(1, {34: 2000}), flow(2, {34: 0})]))
    res = FlowDecoder(sampling=SamplingPolicy(default_rate=7)).decode([(dg, EXP, T0_MS)])
    assert list(res.flows["sampling_rate"]) == [2000, 7]  # 0 in the record: not announced


def test_domains_keep_their_own_rates():
    ofields = [(34, 4)]
    dgs = []
    for domain, rate in ((1, 10), (2, 20)):
        opts = options_template_set(300, [(149, 4)], ofields, ipfix=True)
        odata = data_set(300, [(149, 4)] + ofields, [{149: domain, 34: rate}])
        dgs.append((ipfix(opts, odata, template_set({256: FLOW}, ipfix=True), domain=domain), EXP, T0_MS))
    dgs += [(ipfix(data_set(256, FLOW, [flow(d)]), domain=d), EXP, T0_MS) for d in (1, 2)]
    res = FlowDecoder().decode(dgs)
    assert dict(zip(res.flows["observation_domain"].tolist(), res.flows["sampling_rate"].tolist(), strict=True)) \
        == {1: 10, 2: 20}


def test_policy_override_default_and_longest_prefix():
    opts = options_template_set(300, [(1, 4)], [(34, 4)], ipfix=False)
    odata = data_set(300, [(1, 4), (34, 4)], [{34: 100}])
    announced = v9(opts, odata, template_set({256: FLOW}, ipfix=False), data_set(256, FLOW, [flow()]))
    silent = v9(template_set({256: FLOW}, ipfix=False), data_set(256, FLOW, [flow()]))
    pol = SamplingPolicy(default_rate=2, rules=[
        (ipaddress.ip_network("10.0.0.0/8"), 1000, True),
        (ipaddress.ip_network("10.1.0.0/16"), 30, False),
        ("10.2.0.0/16", 40, False),
    ])
    dec = FlowDecoder(sampling=pol)
    res = dec.decode([(announced, "10.3.0.1", T0_MS), (announced, "10.1.0.1", T0_MS), (silent, "10.1.0.2", T0_MS),
                      (silent, "192.0.2.99", T0_MS), (silent, "10.2.0.1", T0_MS)])
    assert list(res.flows["sampling_rate"]) == [1000, 100, 30, 2, 40]
    dec.set_sampling(SamplingPolicy(default_rate=5))
    res = dec.decode([(v9(data_set(256, FLOW, [flow()]), seq=1), "10.3.0.1", T0_MS),
                      (v9(data_set(256, FLOW, [flow()]), seq=1), "10.1.0.2", T0_MS)])
    assert list(res.flows["sampling_rate"]) == [100, 5]


def test_policy_validation():
    with pytest.raises(ValueError):
        SamplingPolicy(default_rate=0)
    with pytest.raises(ValueError):
        SamplingPolicy(rules=[("10.0.0.0/8", 0, False)])


def test_rate_from_values():
    assert rate_from_values({34: 10}.get) == 10
    assert rate_from_values({50: 0, 305: 1, 306: 9}.get) == 10
    assert rate_from_values({309: 1, 310: 256}.get) == 256
    assert rate_from_values({35: 2}.get) == 0
