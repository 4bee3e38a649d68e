"""The exporter simulator's scenarios, checked three ways: what was encoded, what tshark decodes from the capture,
and what flowmed decodes.

tshark is the independent referee for the encoder: every flow record tshark decodes must carry the values the
scenario meant, field by field. flowmed must then produce exactly the scenario's expected rows (with sampling
applied, held data decoded once its template arrives, templates scoped per exporter and domain).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from bench.pcapwrite import write_pcap
from bench.scenarios import SCENARIOS, Scenario, rows_from_columns
from tests.fixtures.tshark import TsharkMessage, tshark_messages, tshark_records, tshark_row

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


@pytest.mark.external
@pytest.mark.parametrize("name", [name for name, s in _SCENARIOS.items() if s.tshark_check])
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


@pytest.mark.external
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


@pytest.mark.external
def test_tshark_reads_varlen_and_enterprise_fields(tmp_path: Path) -> None:
    scenario = _SCENARIOS["varlen"]
    ipfix = _records_of(scenario, tmp_path, "192.0.2.30")
    assert [r.get("cflow.if_name", "") for r in ipfix] == ["ge-0/0/1", "", "xe-1/2/3.100", "lo0", "lo0"]
    # the 300-byte description needs the 3-byte length form; the last two records use it for short values too
    assert [r.get("cflow.string_len_long") for r in ipfix] == [None, "300", None, "3", "3"]
    v9 = _records_of(scenario, tmp_path, "192.0.2.31")
    assert [r["cflow.if_name"] for r in v9] == ["Gi0/1", "y" * 280]


@pytest.mark.external
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
    order = [i for i in range(40) if i != 5]
    order[9:11] = [11, 10]  # #5 lost, #10 and #11 swapped
    assert [int(m.header["cflow.sequence"]) for m in loss if m.src == "192.0.2.100"] == order
    ipfix_seq = [2 * i + (2 if i > 5 else 0) for i in order]  # message #5 carried 4 records, the others 2
    assert [int(m.header["cflow.sequence"]) for m in loss if m.src == "192.0.2.101"] == ipfix_seq


@pytest.mark.external
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


# ---------------------------------------------------------------------------------------------------------------
# flowmed's decoding of the same scenarios


def _multiset(rows: list[dict[str, object]]) -> Counter:
    return Counter(tuple(sorted(r.items())) for r in rows)


def _decode_each(decoder, scenario: Scenario, start: int = 0, stop: int | None = None):
    """Decode datagrams one ``decode`` call each (as the daemon's small batches do); rows and results."""
    rows, results = [], []
    for d in scenario.datagrams[start:stop]:
        result = decoder.decode([(d.payload, d.src, d.time_ms)])
        rows += rows_from_columns(result.flows)
        results.append(result)
    return rows, results


def _total(results, name: str) -> Counter:
    return sum((getattr(r, name) for r in results), Counter())


@pytest.mark.parametrize("name", list(_SCENARIOS))
def test_flowmed_decodes_the_scenario(name: str) -> None:
    from decoders.netflow.decoder import FlowDecoder

    scenario = _SCENARIOS[name]
    rows, results = _decode_each(FlowDecoder(), scenario)
    assert _multiset(rows) == _multiset(scenario.expected)
    errors = Counter()
    for (exporter, _reason), n in _total(results, "errors").items():
        errors[exporter] += n
    assert errors == Counter(scenario.expected_errors)
    assert sum(_total(results, "sequence_lost").values()) == scenario.expected_sequence_losses
    # the same datagrams as one batch give the same rows
    batch = FlowDecoder().decode([(d.payload, d.src, d.time_ms) for d in scenario.datagrams])
    assert _multiset(rows_from_columns(batch.flows)) == _multiset(scenario.expected)


@pytest.mark.parametrize("name", list(_SCENARIOS))
def test_flowmed_restart_mid_scenario_loses_nothing(name: str) -> None:
    """Save the decoder state after any datagram (nothing held), load it into a new decoder, and go on: the rows
    are the same as without the restart (templates and sampling rates survive)."""
    from decoders.netflow.decoder import FlowDecoder

    scenario = _SCENARIOS[name]
    cuts = 0
    for cut in range(1, len(scenario.datagrams)):
        first = FlowDecoder()
        before, _ = _decode_each(first, scenario, 0, cut)
        if first.pending_bytes():
            continue  # held data is not part of the saved state (bounded, short-lived by design)
        second = FlowDecoder()
        second.load_state(first.save_state())
        after, results = _decode_each(second, scenario, cut)
        assert _multiset(before + after) == _multiset(scenario.expected), f"cut {cut}"
        cuts += 1
    assert cuts > 0 or len(scenario.datagrams) == 1


def test_flowmed_counts_held_and_replayed_data() -> None:
    from decoders.netflow.decoder import FlowDecoder

    _, results = _decode_each(FlowDecoder(), _SCENARIOS["data-before-template"])
    assert _total(results, "pending_held") == Counter({"192.0.2.50": 2, "192.0.2.51": 1})
    assert _total(results, "pending_replayed") == Counter({"192.0.2.50": 2, "192.0.2.51": 1})


def test_flowmed_counts_losses_per_exporter_despite_reordering() -> None:
    from decoders.netflow.decoder import FlowDecoder

    _, results = _decode_each(FlowDecoder(), _SCENARIOS["sequence-loss"])
    assert _total(results, "sequence_lost") == Counter({"192.0.2.100": 1, "192.0.2.101": 4})


def test_flowmed_detects_exporter_restarts() -> None:
    """A reboot (sequence back to 0, sysUptime back near 0) is a restart, not a loss and not reordering."""
    from decoders.netflow.decoder import FlowDecoder

    _, results = _decode_each(FlowDecoder(), _SCENARIOS["exporter-restart"])
    assert _total(results, "sequence_lost") == Counter()
    assert _total(results, "sequence_resets") == Counter({"192.0.2.70": 1, "192.0.2.71": 1, "192.0.2.72": 1})


@pytest.mark.external
@pytest.mark.parametrize("version,ipv6,time_form,wide", [
    (5, False, None, False), (9, False, "sysuptime", False), (9, True, "milliseconds", True),
    (10, False, "milliseconds", True), (10, True, "microseconds", False), (10, False, "nanoseconds", False),
    (10, False, "delta_microseconds", True), (10, False, "seconds", False),
])
def test_bulk_datagrams_agree_with_tshark_and_flowmed(version: int, ipv6: bool, time_form: str | None, wide: bool,
                                                      tmp_path: Path) -> None:
    """The benchmark and load datagrams (vectorised encoder) decode identically in tshark and flowmed."""
    from bench.exporter import WIDE_EXTRA, bulk_datagrams
    from bench.pcapwrite import Datagram
    from decoders.netflow.decoder import FlowDecoder

    t0 = 1_764_000_000_000
    data, first = bulk_datagrams(version, 4, 30 if version == 5 else 25, export_ms=t0, ipv6=ipv6,
                                 time_form=time_form, extra=WIDE_EXTRA if wide else (), seed=7)
    payloads = ([first] if first else []) + data
    path = tmp_path / "bulk.pcap"
    write_pcap(path, [Datagram(p, "192.0.2.200", time_ms=t0) for p in payloads])
    theirs = [tshark_row(r) for r in tshark_records(tshark_messages(path, [2055]))]
    result = FlowDecoder().decode([(p, "192.0.2.200", t0) for p in payloads])
    assert result.errors == Counter()
    ours = rows_from_columns(result.flows)
    assert len(ours) == len(theirs) == len(data) * (30 if version == 5 else 25)
    for mine, ref in zip(ours, theirs, strict=True):
        assert {k: mine[k] for k in ref} == ref
