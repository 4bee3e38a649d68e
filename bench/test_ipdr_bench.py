"""IPDR speed: SAMIS records per second per core through decode, delta and usage.

    python -m pytest bench/test_ipdr_bench.py --benchmark-enable --benchmark-timer=time.process_time -s

One round: two SAMIS documents (SAMIS-TYPE-1 and SAMIS-TYPE-2 sessions of the CMTS simulator, 25,000 cable modems,
two service flows each: 50,000 records, ~13 MB of IPDR/SP DATA messages) fed to the sans-I/O collector connection
(framing, DATA headers, columnar compact-XDR decode), then to :class:`mediation.ipdr.usage.IpdrUsage` (SF instance
keys, delta rules, durable-state update, subscriber lookup by CM MAC, spreading each 15-minute delta over the 3-4
5-minute usage intervals it covers) producing the ``ipdr_records`` and ``usage`` Arrow batches. The state already
holds the previous interval (every record is a real delta). Not included: socket reads, the Sink's writer thread and
the journal fsync (once per ACK, not per record).

``--benchmark-timer=time.process_time`` measures CPU time of this process (per core), not wall time, which the
shared 2-core machines here inflate by other jobs. With ``--benchmark-disable`` (the suite default) it runs once on
a small interval as a plain test.
"""

from __future__ import annotations

import pytest

from bench.cmts import CmtsSimulator
from decoders.ipdr import messages as m
from decoders.ipdr.session import CollectorConnection, RecordsReceived
from mediation.ipdr.usage import CmSubscribers, IpdrUsage

EXPORTER_IP = bytes(10) + b"\xff\xff" + bytes([192, 0, 2, 1])


def _enabled(request: pytest.FixtureRequest) -> bool:
    opt = request.config.getoption
    return bool(opt("benchmark_enable", default=False)) or not opt("benchmark_disable", default=True)


def _connection(sim: CmtsSimulator) -> CollectorConnection:
    conn = CollectorConnection()
    conn.send(m.Connect())
    conn.receive_data(m.encode(m.ConnectResponse(m.Capability.MULTISESSION, 60, "sim")))
    for sid in (1, 2):
        conn.send(m.FlowStart(sid))
        conn.receive_data(m.encode(sim.template_data(sid)))
        conn.send(m.FinalTemplateDataAck(sid))
    return conn


def _run(conn: CollectorConnection, usage: IpdrUsage, documents: list[bytes]) -> tuple[int, int]:
    records = usage_rows = 0
    for doc in documents:
        for ev in conn.receive_data(doc):
            if isinstance(ev, RecordsReceived):
                result = usage.mediate(ev, "cmts1", EXPORTER_IP, 0)
                records += result.ipdr_records.num_rows
                usage_rows += result.usage.num_rows
    return records, usage_rows


def test_samis_records_per_second(benchmark, request):
    modems = 25_000 if _enabled(request) else 500
    sim = CmtsSimulator(modems, seed=7)
    subscribers = CmSubscribers.from_dict({modem.mac: f"sub{i}" for i, modem in enumerate(sim.modems)})
    sim.generate_interval()
    baseline = [sim.encode_document(sid) for sid in (1, 2)]
    sim.generate_interval()
    documents = [sim.encode_document(sid) for sid in (1, 2)]
    expected = 4 * modems

    def setup():
        conn = _connection(sim)
        usage = IpdrUsage(None, subscribers, preexisting="count")
        _run(conn, usage, baseline)
        return (conn, usage, documents), {}

    records, usage_rows = benchmark.pedantic(_run, setup=setup, rounds=5 if _enabled(request) else 1,
                                             iterations=1)
    # every record is billed; a 15-minute delta is spread over the 3 or 4 five-minute usage intervals it touches
    assert records == expected // 2 and 3 * records <= usage_rows <= 4 * records
    benchmark.extra_info["records_per_round"] = records
    benchmark.extra_info["bytes_per_round"] = sum(len(d) for d in documents)
    if benchmark.stats is not None and benchmark.stats.stats.mean:
        benchmark.extra_info["records_per_s"] = round(records / benchmark.stats.stats.mean)
        print(f"\nIPDR: {records} SAMIS records per round, {records / benchmark.stats.stats.mean:,.0f} records/s "
              f"(mean), {records / benchmark.stats.stats.min:,.0f} records/s (best)")
