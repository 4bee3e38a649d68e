"""CPU time of ``FlowDecoder.decode`` per batch shape: best of N rounds, for A/B runs on a shared machine.

    taskset -c 0 python -m bench.decode_cpu [rounds]

pytest-benchmark (bench/test_decode_bench.py) measures wall time, which on a machine shared with other jobs swings by
2-3x between runs of the same code; the process CPU time of the best round is much steadier, so two versions of the
decoder are compared by running this alternately with each. Cases: 2,000 datagrams of 30 records (v5; v9 and IPFIX
with 13 fields, 21 fields, IPv6), 2,000 datagrams of 5-30 records in random order (varied), and 2,000 datagrams of
two data sets (an IPv4 and an IPv6 template, 15 records each).
"""

from __future__ import annotations

import sys
import time

from bench.exporter import WIDE_EXTRA, bulk_datagrams
from bench.test_decode_bench import _multiset, _varied

T0 = 1_764_000_000_000
EXPORTER = "127.0.0.1"


def cases() -> list[tuple[str, list[bytes], bytes | None]]:
    out: list[tuple[str, list[bytes], bytes | None]] = []
    for v in (5, 9, 10):
        out.append((f"v{v} 13 fields" if v != 5 else "v5", *bulk_datagrams(v, 2000, 30, export_ms=T0, seed=v)))
    for v in (9, 10):
        out.append((f"v{v} 21 fields", *bulk_datagrams(v, 2000, 30, export_ms=T0, seed=v, extra=WIDE_EXTRA)))
        out.append((f"v{v} ipv6", *bulk_datagrams(v, 2000, 30, export_ms=T0, seed=v, ipv6=True)))
        datagrams, template, _ = _varied(v, 2000)
        out.append((f"v{v} varied", datagrams, template))
        out.append((f"v{v} two sets", *_multiset(v, 2000, 15)))
    return out


def main(rounds: int) -> None:
    from decoders.netflow.decoder import FlowDecoder

    for name, datagrams, template in cases():
        decoder = FlowDecoder()
        if template is not None:
            decoder.decode([(template, EXPORTER, T0)])
        items = [(d, EXPORTER, T0) for d in datagrams]
        decoder.decode(items)
        best = float("inf")
        for _ in range(rounds):
            start = time.process_time()
            result = decoder.decode(items)
            best = min(best, time.process_time() - start)
        assert not result.errors, result.errors
        print(f"{name:16s} {result.n_flows:6d} records  best {best * 1e3:7.2f} ms CPU  "
              f"{result.n_flows / best / 1e6:6.2f} M records/s")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 30)
