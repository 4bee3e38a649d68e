"""Property: whatever the CMTS does (intervals with idle flows, flow re-creation, reboots, redelivered documents,
wrapping counters), the usage billed equals what its counters advanced after the baseline interval."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.cmts import CmtsSimulator
from decoders.ipdr import messages as m
from mediation.ipdr.usage import CmSubscribers, IpdrUsage
from tests.ipdr.helpers import EXPORTER_IP, connected, records, start_flows

ACTIONS = st.lists(st.sampled_from(["interval", "idle_interval", "recreate", "reboot", "redeliver"]),
                   min_size=1, max_size=8)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(actions=ACTIONS, seed=st.integers(0, 1000), wrap=st.sampled_from([0.0, 0.5]))
def test_usage_equals_counters_advanced(actions, seed, wrap):
    sim = CmtsSimulator(6, seed=seed, wrap_fraction=wrap)
    subs = {modem.mac: f"sub{i}" for i, modem in enumerate(sim.modems)}
    usage = IpdrUsage(None, CmSubscribers.from_dict(subs))
    conn = connected()
    start_flows(conn, sim)
    billed: dict[tuple[str, str], int] = {}
    last_docs: list[bytes] = []

    def deliver(docs: list[bytes]) -> None:
        for doc in docs:
            for ev in records(conn.receive_data(doc)):
                for row in usage.mediate(ev, "cmts1", EXPORTER_IP, 0).usage.to_pylist():
                    key = (row["subscriber_id"], row["direction"])
                    billed[key] = billed.get(key, 0) + row["bytes"]

    sim.generate_interval()
    deliver([sim.encode_document(sid) for sid in (1, 2)])  # baseline
    sim.reset_advanced()
    billed.clear()
    for action in actions:
        if action == "reboot":
            sim.reboot()
            last_docs = []  # what the CMTS had not delivered is lost with its memory: nothing to re-send
            for sid in (1, 2):  # new configId after the reboot: templates again
                conn.receive_data(m.encode(sim.template_data(sid)))
                conn.send(m.FinalTemplateDataAck(sid))
            continue
        if action == "redeliver":
            deliver(last_docs)  # the same documents again (after a reconnect): nothing more is billed
            continue
        if action == "recreate":
            sim.recreate_flow(seed % 6, direction=1 + seed % 2)
        sim.generate_interval(active_fraction=0.0 if action == "idle_interval" else 0.8)
        last_docs = [sim.encode_document(sid) for sid in (1, 2)]
        deliver(last_docs)
    expected = {k: v for k, v in sim.expected_usage(subs).items() if v}
    assert {k: v for k, v in billed.items() if v} == expected
