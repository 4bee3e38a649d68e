"""Decode rate of flowmed's ``SflowDecoder``, with the NetFlow v9 rate of the same run beside it.

    taskset -c 0 python -m pytest bench/test_sflow_bench.py --benchmark-enable --benchmark-columns=mean,min,rounds

Each round decodes one listener-sized batch of 2000 pre-encoded datagrams in one ``decode`` call, as the daemon
does. sFlow: datagrams of one agent with 7 flow samples each (a 128-byte raw Ethernet header and an extended switch
record per sample, about 1,300 bytes: what fits a 1,500-byte MTU; random IPv4 TCP/UDP packets, half of them
802.1Q-tagged, 48 data sources) and a counter sample in every tenth. The batches continue each other's sequence
numbers and sample pools (ten batches in turn), so the loss accounting runs its steady-state path, as on a live
socket. v9: ``bench.exporter.bulk_datagrams`` (30 records of a 13-field template per datagram), the
``decode v9 13 fields`` case of bench/test_decode_bench.py. Records per second = flow samples (sFlow) or flow
records (v9) per round / round time; ``extra_info`` carries the counts. ``decode+arrow sflow`` adds the
``flows`` Arrow batch the pipeline builds.

With ``--benchmark-disable`` (the suite's default) each runs once on a few datagrams, as a plain test.
"""

from __future__ import annotations

import pytest

from bench.exporter import bulk_datagrams as netflow_datagrams
from bench.sflow import bulk_datagrams

T0 = 1_764_000_000_000
EXPORTER = "127.0.0.1"
DATAGRAMS = 2000
SAMPLES = 7
BATCHES = 10


def _enabled(benchmark) -> bool:
    return not benchmark.disabled


def _batches(n: int, batches: int) -> list[list[tuple[bytes, str, int]]]:
    """``batches`` consecutive batches of ``n`` datagrams of one agent (sequence numbers continue)."""
    datagrams = bulk_datagrams(n * batches, SAMPLES, counters_every=10)
    return [[(d, EXPORTER, T0 + b) for d in datagrams[b * n:(b + 1) * n]] for b in range(batches)]


def _rounds(benchmark, run, batches) -> int:
    """Run ``run(batch)`` over the batches in turn (a fresh decoder each time they start again)."""
    from decoders.sflow.decoder import SflowDecoder

    state = {"i": 0, "decoder": SflowDecoder()}
    state["decoder"].decode(batches[-1][:1])  # compile outside the rounds (cached after the first run)
    state["decoder"] = SflowDecoder()

    def setup():
        i = state["i"]
        state["i"] += 1
        if i % len(batches) == 0:
            state["decoder"] = SflowDecoder()
        return (state["decoder"], batches[i % len(batches)]), {}

    if _enabled(benchmark):
        return benchmark.pedantic(run, setup=setup, rounds=50, warmup_rounds=1)
    args, _ = setup()
    return benchmark(run, *args)


def test_decode_rate_sflow(benchmark) -> None:
    n = DATAGRAMS if _enabled(benchmark) else 5
    batches = _batches(n, BATCHES if _enabled(benchmark) else 1)

    def run(decoder, items) -> int:
        result = decoder.decode(items)
        assert not result.errors and not result.sequence_lost and not result.samples_lost
        return result.n_flows

    benchmark.group = "decode sflow vs v9"
    benchmark.extra_info.update(records=n * SAMPLES, datagrams=n, impl="flowmed", protocol="sflow",
                                samples_per_datagram=SAMPLES)
    assert _rounds(benchmark, run, batches) == n * SAMPLES


def test_decode_rate_v9_same_run(benchmark) -> None:
    from decoders.netflow.decoder import FlowDecoder

    n = DATAGRAMS if _enabled(benchmark) else 5
    datagrams, template = netflow_datagrams(9, n, 30, export_ms=T0, seed=9)
    decoder = FlowDecoder()
    decoder.decode([(template, EXPORTER, T0)])
    items = [(d, EXPORTER, T0) for d in datagrams]

    def run() -> int:
        result = decoder.decode(items)
        assert not result.errors
        return result.n_flows

    benchmark.group = "decode sflow vs v9"
    benchmark.extra_info.update(records=n * 30, datagrams=n, impl="flowmed", protocol="v9", template="13 fields")
    decoded = benchmark.pedantic(run, rounds=50, warmup_rounds=1) if _enabled(benchmark) else benchmark(run)
    assert decoded == n * 30


def test_decode_to_arrow_rate_sflow(benchmark) -> None:
    from decoders.schema import FLOWS

    n = DATAGRAMS if _enabled(benchmark) else 5
    batches = _batches(n, BATCHES if _enabled(benchmark) else 1)

    def run(decoder, items) -> int:
        result = decoder.decode(items)
        assert not result.errors
        return FLOWS.to_arrow(result.flows).num_rows

    benchmark.group = "decode+arrow sflow"
    benchmark.extra_info.update(records=n * SAMPLES, datagrams=n, impl="flowmed", protocol="sflow")
    assert _rounds(benchmark, run, batches) == n * SAMPLES


@pytest.mark.parametrize("samples", [1, 3, 7])
def test_decode_rate_sflow_by_samples_per_datagram(benchmark, samples: int) -> None:
    """Datagrams rate with fewer samples per datagram (a quiet link sends datagrams that are not full)."""
    from decoders.sflow.decoder import SflowDecoder

    n = DATAGRAMS if _enabled(benchmark) else 5
    items = [(d, EXPORTER, T0) for d in bulk_datagrams(n, samples)]
    decoder = SflowDecoder()
    decoder.decode(items[:1])

    def run() -> int:
        return decoder.decode(items).n_flows

    benchmark.group = "decode sflow, samples per datagram"
    benchmark.extra_info.update(records=n * samples, datagrams=n, impl="flowmed", protocol="sflow",
                                samples_per_datagram=samples)
    decoded = benchmark.pedantic(run, rounds=30, warmup_rounds=1) if _enabled(benchmark) else benchmark(run)
    assert decoded == n * samples
