"""Where the daemon's memory is: ``flowmed run`` under load with an in-process probe, variants interleaved.

    python -m bench.memprobe --seconds 90 --rate 30000 --variant base --variant "MALLOC_ARENA_MAX=2" --rounds 2

Each variant is a set of environment variables (``base``: none added) given to a fresh ``flowmed run`` started by
:class:`bench.harness.Harness` (the harness's ``flowmed``: the issue's pipeline, 100,000 static subscribers, the
embedded store), offered ``--rate`` v9 datagrams/s (30 records each, ``vary``) for ``--seconds``. The variants run
one after the other, round after round, so a busy machine weighs on each alike.

``FLOWMED_MEMPROBE_UNTUNED=1`` runs the daemon without :func:`collector.memory.start_trimmer` (as before it);
``FLOWMED_MEMPROBE_TRIM_S=N`` calls ``malloc_trim(0)`` every N seconds as well (what the heap
holds free, and could give back).

The daemon runs under ``python -m bench.memprobe daemon ARGS`` (the same ``collector.cli`` ``main``, in the same
process) with a thread that writes, every ``FLOWMED_MEMPROBE_EVERY_S`` seconds, a JSON line to ``FLOWMED_MEMPROBE``:
VmRSS and VmHWM, ``/proc/self/smaps_rollup`` (anonymous against file-backed), glibc's ``mallinfo2`` (bytes in the
heap arenas, in use and free, and in mmapped chunks), the arena count from ``malloc_info``, pyarrow's memory pool
(bytes allocated, its peak and backend) and the number of threads. At the end it lists the largest anonymous
mappings of ``/proc/PID/smaps``. The report: per variant, the median over the second half of the run of each
figure, plus the last sample.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

MiB = 2**20


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                      "fsmblks", "uordblks", "fordblks", "keepcost")]


def _status() -> dict[str, int]:
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "Threads"):
            out[key] = int(value.split()[0]) * (1024 if key != "Threads" else 1)
    return out


def _rollup(pid: int | str = "self") -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, _, value = line.partition(":")
        if key in ("Rss", "Anonymous", "Private_Dirty", "Shared_Clean", "Private_Clean"):
            out[key] = int(value.split()[0]) * 1024
    return out


def _arenas(libc: ctypes.CDLL) -> int:
    """Arenas (heaps) glibc has, from ``malloc_info``'s XML."""
    with tempfile.NamedTemporaryFile("rb", suffix=".xml") as tmp:
        f = libc.fopen(tmp.name.encode(), b"w")
        libc.malloc_info(0, f)
        libc.fclose(f)
        return len(re.findall(rb"<heap nr=", tmp.read()))


def probe_sample(libc: ctypes.CDLL) -> dict[str, Any]:
    """One sample of every figure (the module docstring)."""
    import pyarrow as pa

    mi = libc.mallinfo2()
    pool = pa.default_memory_pool()
    return {"t": time.time(), **_status(), **{f"rollup_{k}": v for k, v in _rollup().items()},
            "malloc_heap": mi.arena, "malloc_in_use": mi.uordblks, "malloc_free": mi.fordblks,
            "malloc_mmapped": mi.hblkhd, "malloc_mmapped_chunks": mi.hblks, "malloc_top_pad": mi.keepcost,
            "malloc_arenas": _arenas(libc), "arrow_allocated": pa.total_allocated_bytes(),
            "arrow_max": pool.max_memory(), "arrow_backend": pool.backend_name}


def _probe_loop(path: str, every: float) -> None:
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = _MallInfo2
    libc.fopen.restype = ctypes.c_void_p
    libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
    libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
    libc.fclose.argtypes = [ctypes.c_void_p]
    trim_every = float(os.environ.get("FLOWMED_MEMPROBE_TRIM_S", "0"))
    last_trim = time.monotonic()
    with open(path, "a") as out:
        while True:
            time.sleep(every)
            if trim_every and time.monotonic() - last_trim >= trim_every:
                libc.malloc_trim(0)
                last_trim = time.monotonic()
            out.write(json.dumps(probe_sample(libc)) + "\n")
            out.flush()


def daemon(args: list[str]) -> None:
    """``collector.cli``'s main with the probe thread (``FLOWMED_MEMPROBE`` names its output file)."""
    path = os.environ.get("FLOWMED_MEMPROBE")
    if path:
        every = float(os.environ.get("FLOWMED_MEMPROBE_EVERY_S", "2"))
        threading.Thread(target=_probe_loop, args=(path, every), name="memprobe", daemon=True).start()
    from collector.cli import main as cli_main

    if os.environ.get("FLOWMED_MEMPROBE_UNTUNED"):  # "before": no trimming thread, as until now
        from collector.commands import core

        core.start_trimmer = lambda: None
    sys.argv = ["flowmed", *args]
    cli_main()


def largest_anonymous(pid: int, n: int = 12) -> list[dict[str, Any]]:
    """The ``n`` largest mappings of ``pid`` by anonymous RSS."""
    maps: list[dict[str, Any]] = []
    cur: dict[str, Any] = {}
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        first = line.split()[0]
        if "-" in first and not first.endswith(":"):
            start, end = (int(x, 16) for x in first.split("-"))
            cur = {"size_mib": round((end - start) / MiB, 1), "name": " ".join(line.split()[5:]) or "[anon]"}
            maps.append(cur)
        elif first == "Anonymous:":
            cur["anon_mib"] = round(int(line.split()[1]) / 1024, 1)
        elif first == "Rss:":
            cur["rss_mib"] = round(int(line.split()[1]) / 1024, 1)
    maps.sort(key=lambda m: -m.get("anon_mib", 0))
    return maps[:n]


def _env_of(variant: str) -> dict[str, str]:
    if variant == "base":
        return {}
    return dict(item.split("=", 1) for item in variant.split(","))


def run_variant(h: Any, variant: str, rate: int, seconds: float, workdir: Path) -> dict[str, Any]:
    """One fresh daemon with ``variant``'s environment under load; the summary of its probe."""
    import bench.harness as harness
    from bench.load import run_load

    probe = workdir / f"probe-{h.runs + 1:03d}.jsonl"
    env_add = {k: v for k, v in _env_of(variant).items() if not k.startswith("set:")}
    env_add["FLOWMED_MEMPROBE"] = str(probe)
    sets = [a for k, v in _env_of(variant).items() if k.startswith("set:") for a in ("--set", f"{k[4:]}={v}")]
    real_popen = subprocess.Popen

    metrics: list[str] = []

    def popen(cmd: list[str], **kw: Any) -> subprocess.Popen:  # type: ignore[type-arg]
        if cmd[1:3] == ["-m", "collector.cli"]:
            metrics.extend(a.split("=", 1)[1] for a in cmd if a.startswith("metrics.listen="))
            cmd = [cmd[0], "-m", "bench.memprobe", "daemon", *cmd[3:], *sets]
            kw["env"] = {**kw.get("env", os.environ), **env_add}
        return real_popen(cmd, **kw)

    harness.subprocess.Popen = popen  # type: ignore[assignment,attr-defined]
    try:
        c = h.start("flowmed")
    finally:
        harness.subprocess.Popen = real_popen  # type: ignore[assignment,attr-defined]
    out: dict[str, Any] = {}
    try:
        idle = _rollup(c.proc.pid)["Rss"]
        load0 = os.getloadavg()[0]
        cpu0 = harness.cpu_seconds([c.proc.pid])
        buffered: list[int] = []
        stop = threading.Event()

        def sample_sink() -> None:  # rows waiting in the sink (every table), from the daemon's /metrics
            while not stop.wait(2.0):
                try:
                    text = urllib.request.urlopen(f"http://{metrics[0]}/metrics", timeout=2).read().decode()
                except OSError:
                    continue
                buffered.append(sum(int(float(line.split()[-1])) for line in text.splitlines()
                                    if line.startswith("flowmed_sink_buffered_rows")))

        sampler = threading.Thread(target=sample_sink, daemon=True)
        sampler.start()
        run_load(version=9, target=("127.0.0.1", c.port), rate=rate, duration_s=seconds, records=30, vary=True)
        out["cpu_cores"] = round((harness.cpu_seconds([c.proc.pid]) - cpu0) / seconds, 2)
        stop.set()
        half = buffered[len(buffered) // 2:] or [0]
        out["sink_rows_median_second_half"], out["sink_rows_max"] = int(statistics.median(half)), max(buffered or [0])
        out["largest_anon"] = largest_anonymous(c.proc.pid, 8)
        out["drops"] = sum(dr for _, dr in harness.udp_sockets(c.port))
        harness.wait_drained(c.port)
        out["load"] = round((load0 + os.getloadavg()[0]) / 2, 1)
    finally:
        c.stop()
    samples = [json.loads(line) for line in probe.read_text().splitlines()]
    t0 = samples[0]["t"]
    late = [s for s in samples if s["t"] - t0 >= seconds / 2 and s["t"] - t0 <= seconds]
    keys = [k for k in samples[0] if k not in ("t", "arrow_backend", "Threads", "malloc_arenas",
                                                "malloc_mmapped_chunks")]
    return {"variant": variant, "idle_rss_mib": round(idle / MiB), **out,
            "backend": samples[0]["arrow_backend"], "arenas": max(s["malloc_arenas"] for s in samples),
            "threads": max(s["Threads"] for s in samples),
            "median_second_half_mib": {k: round(statistics.median(s[k] for s in late) / MiB) for k in keys},
            "max_mib": {k: round(max(s[k] for s in samples) / MiB) for k in ("VmRSS", "malloc_heap", "malloc_free",
                                                                              "arrow_allocated", "arrow_max")},
            "series_mib": {k: [round(samples[len(samples) * i // 10][k] / MiB) for i in range(10)]
                           for k in ("VmRSS", "malloc_heap", "malloc_free", "malloc_mmapped")}}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["daemon"]:
        daemon(argv[1:])
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=90.0)
    p.add_argument("--rate", type=int, default=30000)
    p.add_argument("--variant", action="append",
                   help='"base" or "VAR=VALUE[,VAR=VALUE]", set:KEY=VALUE for a --set of flowmed (repeatable)')
    p.add_argument("--rounds", type=int, default=1)
    a = p.parse_args(argv)
    from bench.harness import Harness

    with tempfile.TemporaryDirectory(prefix="flowmed-memprobe-") as tmp:
        h = Harness(Path(tmp))
        try:
            for r in range(a.rounds):
                for v in a.variant or ["base"]:
                    res = run_variant(h, v, a.rate, a.seconds, Path(tmp))
                    print(json.dumps({"round": r, **res}), flush=True)
        finally:
            h.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
