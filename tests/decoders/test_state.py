"""Templates and sampling options survive a restart (save_state/load_state); limits and expiry."""

import pytest

from decoders.errors import SavedStateError
from decoders.netflow.decoder import DecoderLimits, FlowDecoder
from tests.decoders.packets import T0_MS, data_set, ip4, ipfix, options_template_set, template_set, v9

EXP = "192.0.2.60"
FIELDS = [(8, 4), (1, 4), (48, 1), (22, 4), (21, 4)]


def test_restart_loses_no_data():
    opts = options_template_set(300, [(1, 4)], [(48, 1), (50, 4)], ipfix=False)
    odata = data_set(300, [(1, 4), (48, 1), (50, 4)], [{48: 1, 50: 10}, {48: 2, 50: 20}], pad=2)
    boot = T0_MS - 1_000_000
    init_opts = options_template_set(301, [(149, 4)], [(160, 8)], ipfix=True)
    init_data = data_set(301, [(149, 4), (160, 8)], [{149: 0, 160: boot}])
    before = FlowDecoder()
    before.decode([(v9(opts, odata, template_set({256: FIELDS}, ipfix=False), domain=7), EXP, T0_MS),
                   (ipfix(init_opts, init_data, template_set({256: FIELDS}, ipfix=True)), EXP, T0_MS)])
    state = before.save_state()

    after = FlowDecoder()
    after.load_state(state)
    assert after.templates_known() == {EXP: 4}
    recs = [{8: ip4("10.0.0.1"), 1: 5, 48: 1, 22: 100, 21: 200}, {8: ip4("10.0.0.2"), 1: 5, 48: 2, 22: 100, 21: 200}]
    res = after.decode([(v9(data_set(256, FIELDS, recs), domain=7, seq=1), EXP, T0_MS),
                        (ipfix(data_set(256, FIELDS, recs[:1]), seq=0), EXP, T0_MS)])
    assert res.n_flows == 3 and not res.errors
    assert res.flows["sampling_rate"].tolist() == [10, 20, 1]
    assert res.flows["flow_start"][2] == boot + 100  # IPFIX sysUptime via the saved systemInitTime


@pytest.mark.parametrize("junk", [b"", b"{", b"[]", b'{"version": 99}', b'{"version": 1, "exporters": {"x": 1}}'])
def test_bad_state_is_an_error(junk):
    with pytest.raises(SavedStateError):
        FlowDecoder().load_state(junk)


def test_limits_exporters_and_templates():
    dec = FlowDecoder(limits=DecoderLimits(max_exporters=2, max_templates_per_exporter=3))
    tmpl = v9(template_set({256 + i: [(8, 4), (1, 4)] for i in range(5)}, ipfix=False))
    res = dec.decode([(tmpl, f"192.0.2.{i}", T0_MS) for i in range(1, 5)])
    assert dec.templates_known() == {"192.0.2.1": 3, "192.0.2.2": 3}
    assert res.limit_hits[("192.0.2.1", "max_templates_per_exporter")] == 2
    assert res.limit_hits[("192.0.2.3", "max_exporters")] == 1
    # a refresh of a known template is not refused at the limit
    res = dec.decode([(tmpl, "192.0.2.1", T0_MS)])
    assert res.limit_hits[("192.0.2.1", "max_templates_per_exporter")] == 2


def test_template_timeout_and_idle_exporters():
    dec = FlowDecoder(limits=DecoderLimits(template_timeout_ms=10_000, exporter_idle_ms=60_000))
    dec.decode([(v9(template_set({256: [(8, 4)]}, ipfix=False)), EXP, T0_MS)])
    dec.decode([(v9(template_set({257: [(8, 4)]}, ipfix=False)), EXP, T0_MS + 8000)])
    out = dec.expire(T0_MS + 15_000)
    assert out[(EXP, "template_expired")] == 1 and dec.templates_known() == {EXP: 1}
    out = dec.expire(T0_MS + 100_000)
    assert out[(EXP, "exporter_expired")] == 1 and dec.templates_known() == {}


def test_data_held_for_a_template_survives_a_restart():
    fields = [(8, 4), (1, 4)]
    before = FlowDecoder()
    before.decode([(v9(data_set(256, fields, [{8: ip4("10.0.0.1"), 1: 7}]), domain=3), EXP, T0_MS - 10)])
    after = FlowDecoder()
    after.load_state(before.save_state())
    assert after.pending_bytes() == before.pending_bytes() > 0
    res = after.decode([(v9(template_set({256: fields}, ipfix=False), domain=3, seq=1), EXP, T0_MS)])
    assert res.flows["raw_bytes"].tolist() == [7] and res.flows["time_received"].tolist() == [T0_MS - 10]


# --- issue 14: the saved state is incremental, compact, bounded when loaded ---------------------------------------

def _templates(n: int, *, first: int = 256, extra: int = 0) -> bytes:
    return v9(template_set({first + i: [(8, 4), (1, 4), (1000 + i + extra, 2)] for i in range(n)}, ipfix=False))


def _log(dec: FlowDecoder) -> list[tuple]:
    """An incremental save of ``dec`` as the keys it sets (True) or deletes (False)."""
    return sorted((key, record is not None) for key, record in dec.state_changes().records())


def test_state_changes_hold_only_what_changed():
    dec = FlowDecoder()
    dec.decode([(_templates(10), EXP, T0_MS)])
    first = _log(dec)
    assert sum(1 for key, _ in first if key[0] == "t") == 10
    dec.decode([(_templates(10), EXP, T0_MS + 1000)])  # refreshed, unchanged
    assert _log(dec) == []
    dec.decode([(_templates(1, first=260, extra=50), EXP, T0_MS + 2000),  # one changed
                (ipfix(b"\x00\x02\x00\x08\x01\x00\x00\x00"), EXP, T0_MS)])  # an IPFIX withdrawal of nothing known
    assert _log(dec) == [(("t", EXP, 9, 0, 260), True)]
    dec.expire(T0_MS + 8 * 86_400_000)  # the exporter idles out
    changes = _log(dec)
    assert (("e", EXP), False) in changes and sum(1 for key, alive in changes if key[0] == "t" and not alive) == 10


def test_a_log_of_changes_replays_and_a_torn_tail_costs_only_itself():
    from decoders.netflow import saved_state as saved

    dec = FlowDecoder()
    dec.decode([(_templates(5), EXP, T0_MS)])
    log = dec.save_state()
    dec.decode([(_templates(1, first=258, extra=9), EXP, T0_MS), (_templates(1, first=300), EXP, T0_MS)])
    dec.decode([(ipfix(data_set(256, FIELDS, [])), EXP, T0_MS)])
    appended = b"".join(r if r is not None else saved.delete_record(k) for k, r in dec.state_changes().records())
    again = FlowDecoder()
    again.load_state(log + appended + appended[:7])  # a crash while appending the next record
    assert again.save_state() == dec.save_state()
    mirror = saved.StateMirror()
    assert mirror.load(log + appended + appended[:7]) == len(log) + len(appended)
    assert FlowDecoder().load_state(mirror.snapshot()) == 0


def test_loading_applies_the_budget_and_compiles_nothing(monkeypatch):
    from decoders.netflow import templates as T
    from decoders.netflow.templates import template_cost

    big = FlowDecoder()
    big.decode([(_templates(50), EXP, T0_MS)])
    calls = []
    monkeypatch.setattr(T, "_compile", lambda *a: calls.append(a))
    cost = template_cost(3, 0, 12)
    small = FlowDecoder(DecoderLimits(template_max_bytes_per_exporter=20 * cost))
    assert small.load_state(big.save_state()) == 30
    assert small.templates_known() == {EXP: 20} and small.template_memory() == 20 * cost and calls == []
    # the refused ones are deleted from the saved state by the next save
    assert sum(1 for key, alive in _log(small) if key[0] == "t" and not alive) == 30


def test_the_json_state_of_the_previous_format_loads_and_is_saved_again():
    import json

    fields = [[8, 4, 0], [1, 4, 0]]
    state = {"version": 1, "pending": [], "exporters": {EXP: {
        "templates": [[9, 7, T0_MS, [256, fields, 0, False]], [9, 7, T0_MS, [300, [[1, 4, -1], [48, 1, 0]], 1, True]]],
        "samplers": [[7, [48, 1], 10]], "init_ms": [], "last_seen_ms": T0_MS}}}
    dec = FlowDecoder()
    assert dec.load_state(json.dumps(state).encode()) == 0
    assert dec.templates_known() == {EXP: 2}
    res = dec.decode([(v9(data_set(256, [(8, 4), (1, 4)], [{8: ip4("10.0.0.1"), 1: 3}]), domain=7), EXP, T0_MS)])
    assert res.n_flows == 1 and res.flows["raw_bytes"].tolist() == [3]
    assert {key for key, alive in _log(dec) if alive} == {("e", EXP), ("t", EXP, 9, 7, 256), ("t", EXP, 9, 7, 300)}
