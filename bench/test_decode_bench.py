"""Decode rate of flowmed's ``FlowDecoder`` vs the PyPI ``netflow`` package, on the same datagrams in memory.

    taskset -c 0 python -m pytest bench/test_decode_bench.py --benchmark-enable --benchmark-columns=mean,stddev,rounds

Each benchmark decodes a batch of pre-encoded datagrams (30 flow records each, fixed-length IPv4 templates, as
``bench.exporter.bulk_datagrams`` builds them; v9 with sysUptime times, IPFIX with millisecond times) and asserts
the number of records decoded, so a broken decoder cannot look fast. Records per second = records per round / mean
round time; ``extra_info`` carries the record count. flowmed decodes the batch in one ``decode`` call (as the daemon
does); ``netflow`` is called per datagram through its packet classes (``V5ExportPacket``, ``V9ExportPacket``,
``IPFIXExportPacket``), not ``parse_packet()``, which misreads datagrams that happen to be valid UTF-8.

Two further flowmed-only groups measure what the daemon meets beside the ratios: ``decode vN varied`` (datagrams of
5 to 30 records in random order, so their records are gathered rather than read in place, and received times that
advance over the batch as the listener stamps them) and ``decode+arrow vN`` (the 13-field batch decoded and turned
into the Arrow batch the pipeline hands on, ``FLOWS.to_arrow``).

With ``--benchmark-disable`` (the default in the test suite) each benchmark runs once on a few datagrams, as a plain
test of the same code.
"""

from __future__ import annotations

import random
import struct

import pytest

from bench.exporter import WIDE_EXTRA, bulk_datagrams

T0 = 1_764_000_000_000
RECORDS = 30
EXPORTER = "127.0.0.1"


def _enabled(benchmark) -> bool:
    """False under --benchmark-disable (the suite's default): run once, on little data."""
    return not benchmark.disabled


def _datagrams(benchmark, version: int, impl: str, wide: bool) -> tuple[list[bytes], bytes | None]:
    # netflow is ~100x slower: give it fewer datagrams so a round stays short
    n = (2000 if impl == "flowmed" else 200) if _enabled(benchmark) else 5
    return bulk_datagrams(version, n, RECORDS, export_ms=T0, seed=version, extra=WIDE_EXTRA if wide else ())


def _flowmed(datagrams: list[bytes], template: bytes | None):
    from decoders.netflow.decoder import FlowDecoder

    decoder = FlowDecoder()
    if template is not None:
        decoder.decode([(template, EXPORTER, T0)])
    items = [(d, EXPORTER, T0) for d in datagrams]

    def run() -> int:
        result = decoder.decode(items)
        assert not result.errors
        return result.n_flows

    return run


def _netflow(version: int, datagrams: list[bytes], template: bytes | None):
    import netflow.ipfix
    import netflow.v5
    import netflow.v9

    if version == 5:
        def run() -> int:
            return sum(len(netflow.v5.V5ExportPacket(d).flows) for d in datagrams)
        return run
    cls = netflow.v9.V9ExportPacket if version == 9 else netflow.ipfix.IPFIXExportPacket
    templates: dict = {}
    cls(template, templates)

    def run_templated() -> int:
        return sum(len(cls(d, templates).flows) for d in datagrams)

    return run_templated


@pytest.mark.parametrize("impl", ["flowmed", "netflow"])
@pytest.mark.parametrize("version,template", [(5, "v5"), (9, "13 fields"), (9, "21 fields"), (10, "13 fields"),
                                              (10, "21 fields")])
def test_decode_rate(benchmark, version: int, template: str, impl: str) -> None:
    """v5 records, or a v9/IPFIX template of 13 fields (5-tuple, flags, ToS, counters, interfaces, times) or 21
    (plus next hop, AS numbers, prefix lengths, direction, VLAN, end reason: what routers typically send)."""
    datagrams, tmpl = _datagrams(benchmark, version, impl, wide=template == "21 fields")
    run = _flowmed(datagrams, tmpl) if impl == "flowmed" else _netflow(version, datagrams, tmpl)
    expected = len(datagrams) * RECORDS
    benchmark.group = f"decode v{version} {template}"
    benchmark.extra_info.update(records=expected, datagrams=len(datagrams), version=version, impl=impl,
                                template=template)
    rounds = 50 if impl == "flowmed" else 10
    decoded = benchmark.pedantic(run, rounds=rounds, warmup_rounds=1) if _enabled(benchmark) else benchmark(run)
    assert decoded == expected


@pytest.mark.parametrize("version", [9, 10])
def test_decode_rate_ipv6(benchmark, version: int) -> None:
    """flowmed only: IPv6 templates (16-byte addresses) at the same record count."""
    n = 2000 if _enabled(benchmark) else 5
    datagrams, template = bulk_datagrams(version, n, RECORDS, export_ms=T0, ipv6=True, seed=version)
    run = _flowmed(datagrams, template)
    benchmark.group = f"decode v{version} ipv6"
    benchmark.extra_info.update(records=n * RECORDS, datagrams=n, version=version, impl="flowmed",
                                template="13 fields ipv6")
    decoded = benchmark.pedantic(run, rounds=50, warmup_rounds=1) if _enabled(benchmark) else benchmark(run)
    assert decoded == n * RECORDS


def _varied(version: int, n: int) -> tuple[list[bytes], bytes | None, int]:
    """``n`` datagrams of 5 to 30 records, shuffled, sequence numbers renumbered in the new order."""
    parts: list[tuple[bytes, int]] = []
    template = None
    for k in (5, 10, 15, 20, 25, 30):
        datagrams, template = bulk_datagrams(version, max(1, n // 6), k, export_ms=T0, seed=k)
        parts += [(d, k) for d in datagrams]
    random.Random(version).shuffle(parts)
    out, seq = [], 1 if version == 9 else 0  # v9 counts the template datagram, IPFIX counts data records
    for d, k in parts:
        b = bytearray(d)
        struct.pack_into(">I", b, 12 if version == 9 else 8, seq)
        seq += 1 if version == 9 else k
        out.append(bytes(b))
    return out, template, sum(k for _, k in parts)


@pytest.mark.parametrize("version", [9, 10])
def test_decode_rate_varied(benchmark, version: int) -> None:
    """flowmed only: datagrams of different lengths, received over 50 ms (20 per ms), as a listener batch is."""
    from decoders.netflow.decoder import FlowDecoder

    datagrams, template, expected = _varied(version, 2000 if _enabled(benchmark) else 12)
    decoder = FlowDecoder()
    decoder.decode([(template, EXPORTER, T0)])
    items = [(d, EXPORTER, T0 + i // 20) for i, d in enumerate(datagrams)]

    def run() -> int:
        result = decoder.decode(items)
        assert not result.errors and not result.sequence_lost
        return result.n_flows

    benchmark.group = f"decode v{version} varied"
    benchmark.extra_info.update(records=expected, datagrams=len(datagrams), version=version, impl="flowmed",
                                template="13 fields, 5-30 records per datagram")
    decoded = benchmark.pedantic(run, rounds=50, warmup_rounds=1) if _enabled(benchmark) else benchmark(run)
    assert decoded == expected


@pytest.mark.parametrize("version", [9, 10])
def test_decode_to_arrow_rate(benchmark, version: int) -> None:
    """flowmed only: decode and build the ``flows`` Arrow batch, the pipeline's step per batch of datagrams."""
    from decoders.netflow.decoder import FlowDecoder
    from decoders.schema import FLOWS

    n = 2000 if _enabled(benchmark) else 5
    datagrams, template = bulk_datagrams(version, n, RECORDS, export_ms=T0, seed=version)
    decoder = FlowDecoder()
    decoder.decode([(template, EXPORTER, T0)])
    items = [(d, EXPORTER, T0) for d in datagrams]

    def run() -> int:
        result = decoder.decode(items)
        assert not result.errors
        return FLOWS.to_arrow(result.flows).num_rows

    benchmark.group = f"decode+arrow v{version}"
    benchmark.extra_info.update(records=n * RECORDS, datagrams=n, version=version, impl="flowmed",
                                template="13 fields")
    decoded = benchmark.pedantic(run, rounds=50, warmup_rounds=1) if _enabled(benchmark) else benchmark(run)
    assert decoded == n * RECORDS


def _multiset(version: int, n: int, records: int) -> tuple[list[bytes], bytes]:
    """``n`` datagrams of two data sets each (an IPv4 and an IPv6 template, ``records`` flows in each), after the
    datagram of both templates: the shape of exporters that send IPv4 and IPv6 flows together."""
    from bench.exporter import IpfixExporter, V9Exporter, flow_template, random_columns

    boot_ms = T0 - 3_600_000
    encoder: V9Exporter | IpfixExporter = V9Exporter(0, boot_ms=boot_ms) if version == 9 \
        else IpfixExporter(0, boot_ms=boot_ms)
    form = "sysuptime" if version == 9 else "milliseconds"
    v4, v6 = flow_template(256, time_form=form), flow_template(257, ipv6=True, time_form=form)
    first = encoder.datagram(encoder.templates(v4, v6), export_ms=T0)
    c4 = random_columns(v4, n * records, export_ms=T0, boot_ms=boot_ms, seed=1)
    c6 = random_columns(v6, n * records, export_ms=T0, boot_ms=boot_ms, seed=2)
    out = []
    for i in range(n):
        part4 = {k: v[i * records:(i + 1) * records] for k, v in c4.items()}
        part6 = {k: v[i * records:(i + 1) * records] for k, v in c6.items()}
        out.append(encoder.datagram(encoder.data(v4, part4), encoder.data(v6, part6), export_ms=T0))
    return out, first


@pytest.mark.parametrize("version", [9, 10])
def test_decode_rate_multiset(benchmark, version: int) -> None:
    """flowmed only: datagrams of two data sets (IPv4 and IPv6 templates, 15 records each)."""
    n = 2000 if _enabled(benchmark) else 5
    datagrams, template = _multiset(version, n, RECORDS // 2)
    run = _flowmed(datagrams, template)
    benchmark.group = f"decode v{version} multi-set"
    benchmark.extra_info.update(records=n * RECORDS, datagrams=n, version=version, impl="flowmed",
                                template="13 fields ipv4 + 13 fields ipv6, one set each")
    decoded = benchmark.pedantic(run, rounds=50, warmup_rounds=1) if _enabled(benchmark) else benchmark(run)
    assert decoded == n * RECORDS
