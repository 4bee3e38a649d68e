"""The exporter simulator's scenarios, checked three ways: what was encoded, what tshark decodes from the capture,
and what flowmed decodes.

tshark is the independent referee for the encoder: every flow record tshark decodes must carry the values the
scenario meant, field by field. flowmed must then produce exactly the scenario's expected rows (with sampling
applied, held data decoded once its template arrives, templates scoped per exporter and domain).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.pcapwrite import write_pcap
from bench.scenarios import SCENARIOS, Scenario
from tests.fixtures.tshark import TsharkMessage, tshark_messages, tshark_records, tshark_row

pytestmark = pytest.mark.external

_SCENARIOS = {name: build() for name, build in SCENARIOS.items()}


def _tshark_by_datagram(scenario: Scenario, tmp_path: Path) -> list[TsharkMessage]:
    """tshark's decoding of each datagram, capture split where the scenario redefines templates (tshark 4.0 keeps
    the first definition of a template id; see ``Scenario.tshark_segments``)."""
    bounds = [*scenario.tshark_segments, len(scenario.datagrams)]
    out: list[TsharkMessage] = []
    for n, (start, stop) in enumerate(zip(bounds, bounds[1:], strict=False)):
        path = tmp_path / f"{scenario.name}-{n}.pcap"
        write_pcap(path, scenario.datagrams[start:stop])
        messages = tshark_messages(path, scenario.ports)
        assert len(messages) == stop - start, f"tshark saw {len(messages)} NetFlow messages, wrote {stop - start}"
        out += messages
    return out


@pytest.mark.parametrize("name", list(_SCENARIOS))
def test_tshark_decodes_what_the_scenario_encoded(name: str, tmp_path: Path) -> None:
    scenario = _SCENARIOS[name]
    messages = _tshark_by_datagram(scenario, tmp_path)
    compared = 0
    for i, (message, rows) in enumerate(zip(messages, scenario.rows, strict=True)):
        decoded = [tshark_row(r) for r in tshark_records([message])]
        assert message.src == scenario.datagrams[i].src
        if scenario.held[i]:
            # data before its template: tshark cannot decode it either, but the data set is there
            assert decoded == []
            assert any(s.set_id >= 256 for s in message.sets)
            continue
        assert len(decoded) == len(rows), f"datagram {i}"
        for got, want in zip(decoded, rows, strict=True):
            assert got == {k: want[k] for k in got}, f"datagram {i}"
            compared += 1
    assert compared == sum(len(r) for r, held in zip(scenario.rows, scenario.held, strict=True) if not held) > 0


def _records_of(scenario: Scenario, tmp_path: Path, exporter: str, **kw: object) -> list[dict[str, object]]:
    messages = [m for m in _tshark_by_datagram(scenario, tmp_path) if m.src == exporter]
    return tshark_records(messages, **kw)  # type: ignore[arg-type]


def test_tshark_reads_the_sampling_options(tmp_path: Path) -> None:
    scenario = _SCENARIOS["options-with-sampling"]
    v9_interval = _records_of(scenario, tmp_path, "192.0.2.20", options=True)
    assert [(r["cflow.sampling_interval"], r["cflow.sampling_algorithm"]) for r in v9_interval] == [("100", "1")]
    samplers = _records_of(scenario, tmp_path, "192.0.2.21", options=True)
    assert [(r["cflow.sampler_id"], r["cflow.sampler_mode"], r["cflow.sampler_random_interval"])
            for r in samplers] == [("1", "2", "10"), ("2", "2", "1000")]
    selectors = _records_of(scenario, tmp_path, "192.0.2.22", options=True)
    assert [(r["cflow.selector_id"], r["cflow.sampling_packet_interval"], r["cflow.sampling_packet_space"])
            for r in selectors] == [("7", "1", "49"), ("8", "1", "511")]
    # the flow records name their sampler / selector, and one IPFIX record carries its own interval
    assert [r["cflow.sampler_id"] for r in _records_of(scenario, tmp_path, "192.0.2.21")] == ["1", "2", "1", "2"]
    assert [r["cflow.selector_id"] for r in _records_of(scenario, tmp_path, "192.0.2.22")] == ["7", "8", "7", "8"]
    assert {r["cflow.sampling_interval"] for r in _records_of(scenario, tmp_path, "192.0.2.23")} == {"20"}
    v5 = _records_of(scenario, tmp_path, "192.0.2.24")
    assert {(r["cflow.samplingmode"], r["cflow.samplerate"], r["cflow.engine_type"], r["cflow.engine_id"])
            for r in v5} == {("1", "64", "1", "2")}


def test_tshark_reads_varlen_and_enterprise_fields(tmp_path: Path) -> None:
    scenario = _SCENARIOS["varlen"]
    ipfix = _records_of(scenario, tmp_path, "192.0.2.30")
    assert [r.get("cflow.if_name", "") for r in ipfix] == ["ge-0/0/1", "", "xe-1/2/3.100", "lo0", "lo0"]
    # the 300-byte description needs the 3-byte length form; the last two records use it for short values too
    assert [r.get("cflow.string_len_long") for r in ipfix] == [None, "300", None, "3", "3"]
    v9 = _records_of(scenario, tmp_path, "192.0.2.31")
    assert [r["cflow.if_name"] for r in v9] == ["Gi0/1", "y" * 280]


def test_tshark_reads_sequence_numbers_and_restarts(tmp_path: Path) -> None:
    restart = _SCENARIOS["exporter-restart"]
    messages = _tshark_by_datagram(restart, tmp_path)

    def seq(src: str) -> list[int]:
        return [int(m.header["cflow.sequence"]) for m in messages if m.src == src]

    assert seq("192.0.2.70") == [5000, 5001, 0, 1]  # v9: export packets
    assert seq("192.0.2.71") == [90_000, 90_003, 0, 3]  # v5: flows
    assert seq("192.0.2.72") == [1_000_000, 0, 3]  # IPFIX: data records
    uptimes = [m.sysuptime_ms for m in messages if m.src == "192.0.2.70"]
    assert uptimes[2] == 5_000 and uptimes[1] > 40 * 86_400_000 - 10_000
    loss = _tshark_by_datagram(_SCENARIOS["sequence-loss"], tmp_path)
    assert [int(m.header["cflow.sequence"]) for m in loss] == [0, 2, 0, 6]


def test_tshark_reads_template_withdrawal_and_redefinition(tmp_path: Path) -> None:
    scenario = _SCENARIOS["template-change-mid-stream"]
    messages = _tshark_by_datagram(scenario, tmp_path)
    ipfix = [m for m in messages if m.src == "192.0.2.61"]
    template_sets = [[(s.set_id, s.template_ids) for s in m.sets if s.set_id == 2] for m in ipfix]
    assert template_sets == [[(2, [256])], [(2, [256]), (2, [256])], [(2, [2]), (2, [256])]]
    v9 = [m for m in messages if m.src == "192.0.2.60"]
    assert [[s.set_id for s in m.sets] for m in v9] == [[0, 256], [0], [256], [0, 256]]


def test_scenario_pcaps_cover_every_case() -> None:
    assert set(_SCENARIOS) >= {"ipv6", "options-with-sampling", "varlen", "multi-exporter-domain-same-template-id",
                               "data-before-template", "template-change-mid-stream", "exporter-restart"}
    versions = {r["version"] for s in _SCENARIOS.values() for r in s.expected}
    assert versions == {5, 9, 10}
