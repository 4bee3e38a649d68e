"""What templates cost the event loop (issue 14): refusal, refresh, the incremental state save, loading state.

    taskset -c 0 python -m pytest bench/test_template_bench.py --benchmark-enable --benchmark-columns=mean,stddev

* ``refused``: one 61.6 KB IPFIX datagram of 30 distinct 512-field templates from an exporter whose template budget
  is spent (the flood of the report: it cost 19-56 ms to parse even when refused); ``refused enterprise``: 15
  such templates with every field an enterprise field (61.5 KB; each specifier walked);
* ``refreshed``: the same datagram again from an exporter that knows those templates;
* ``state changes``: what the event loop spends on a save when 30 templates changed among 20,000 known;
* ``load``: loading a saved state of 2,000 512-field templates (nothing compiled).

With ``--benchmark-disable`` (the suite's default) each runs once, as a plain test.
"""

from __future__ import annotations

from bench.exporter import Field, IpfixExporter, template
from decoders.netflow.decoder import DecoderLimits, FlowDecoder
from decoders.netflow.templates import template_cost

T0 = 1_764_000_000_000
EXPORTER = "192.0.2.1"


def _datagram(first: int, *, enterprise: bool = False, generation: int = 0) -> bytes:
    exporter = IpfixExporter(domain=1)
    tmpls = [template(first + t, *[Field(1000 + (i + t + generation) % 20000, 4, 9 if enterprise else 0)
                                   for i in range(512)]) for t in range(15 if enterprise else 30)]
    return exporter.datagram(exporter.templates(*tmpls), export_ms=T0)


def _spent(enterprise: bool) -> FlowDecoder:
    """A decoder whose exporter's budget is spent (by templates other than the ones benchmarked)."""
    dec = FlowDecoder(DecoderLimits(template_max_bytes_per_exporter=2 * template_cost(512, 0, 4096)))
    dec.decode([(_datagram(4000, enterprise=enterprise), EXPORTER, T0)])
    assert dec.templates_known() == {EXPORTER: 2}
    return dec


def test_refused(benchmark) -> None:
    dec, dgram = _spent(False), _datagram(256)
    res = benchmark(dec.decode, [(dgram, EXPORTER, T0)])
    assert res.limit_hits[(EXPORTER, "template_max_bytes_per_exporter")] == 30


def test_refused_enterprise(benchmark) -> None:
    dec, dgram = _spent(True), _datagram(256, enterprise=True)
    res = benchmark(dec.decode, [(dgram, EXPORTER, T0)])
    assert res.limit_hits[(EXPORTER, "template_max_bytes_per_exporter")] == 15


def test_refreshed(benchmark) -> None:
    dec, dgram = FlowDecoder(), _datagram(256)
    dec.decode([(dgram, EXPORTER, T0)])
    res = benchmark(dec.decode, [(dgram, EXPORTER, T0)])
    assert not res.limit_hits and not res.templates_learned and dec.templates_known() == {EXPORTER: 30}


def test_state_changes(benchmark) -> None:
    dec = FlowDecoder(DecoderLimits(max_templates_per_exporter=30_000))
    for i in range(20_000 // 30 if not benchmark.disabled else 3):
        dec.decode([(_small(256 + 30 * i), EXPORTER, T0)])
    dec.state_changes()
    generation = iter(range(1, 1 << 30))

    def save() -> int:
        dec.decode([(_small(256, generation=next(generation)), EXPORTER, T0)])
        return len(dec.state_changes().items)

    assert benchmark(save) == 30


def _small(first: int, generation: int = 0) -> bytes:
    exporter = IpfixExporter(domain=1)
    tmpls = [template(first + t, "sourceIPv4Address", "destinationIPv4Address", "octetDeltaCount",
                      Field(2000 + generation % 10000, 4)) for t in range(30)]
    return exporter.datagram(exporter.templates(*tmpls), export_ms=T0)


def test_load(benchmark) -> None:
    limits = DecoderLimits(max_templates_per_exporter=5000, template_max_bytes_per_exporter=1 << 30,
                           template_max_bytes=1 << 31)
    dec = FlowDecoder(limits)
    for i in range(2000 // 30 if not benchmark.disabled else 1):
        dec.decode([(_datagram(256 + 30 * i), EXPORTER, T0)])
    state = dec.save_state()
    n = sum(dec.templates_known().values())

    def load() -> int:
        again = FlowDecoder(limits)
        again.load_state(state)
        return sum(again.templates_known().values())

    assert benchmark(load) == n
