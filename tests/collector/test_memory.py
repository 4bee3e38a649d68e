"""collector.memory: the heap's freed space goes back to the kernel while the daemon runs."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Frees one 4 MiB block (which raises glibc's dynamic mmap threshold to 4 MiB), then allocates 60 blocks of 1 MiB
# with a small block after each (so the freed space is not at the top of the heap and is not trimmed at free), frees
# the big ones, waits for the trimmer (when started) and prints the resident set before and after the frees.
SCRIPT = r"""
import json, sys, time
import numpy as np
from collector.memory import start_trimmer

def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024

thread = start_trimmer(0.05) if sys.argv[1] == "trim" else None
a = np.ones(4 << 20, np.uint8)
del a
big, small = [], []
for _ in range(60):
    big.append(np.ones(1 << 20, np.uint8))
    small.append(np.ones(16 << 10, np.uint8))
held = rss()
del big
time.sleep(0.5)
print(json.dumps({"started": thread is not None, "held": held, "after": rss()}))
"""


def _run(mode: str) -> dict[str, int]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    out = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, check=True,
                         env={**env, "PYTHONPATH": str(ROOT)}, cwd=ROOT)
    return json.loads(out.stdout)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc")
def test_freed_heap_space_goes_back_to_the_kernel() -> None:
    plain, trimmed = _run("plain"), _run("trim")
    assert trimmed["started"] is True
    # without it, the 60 MiB freed stay resident (the dynamic threshold put them in the heap)
    assert plain["held"] - plain["after"] < 10 << 20
    # with it, they are given back within one period
    assert trimmed["held"] - trimmed["after"] > 50 << 20


def test_the_daemon_starts_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """``flowmed run`` (single process, supervisor and each worker all pass through it) starts the trimmer first."""
    from click.testing import CliRunner

    from collector.commands import core

    called: list[bool] = []

    class Stop(Exception):
        pass

    def fake_start() -> None:
        called.append(True)
        raise Stop

    monkeypatch.setattr(core, "start_trimmer", fake_start)
    result = CliRunner().invoke(core.run, ["--set", "store.enabled=false"])
    assert isinstance(result.exception, Stop) and called == [True]
