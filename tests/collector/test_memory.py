"""collector.memory: glibc's mmap threshold fixed at the daemon's start, so freed large arrays leave the process."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from collector import memory

ROOT = Path(__file__).resolve().parents[2]

# Frees one 4 MiB block (which raises glibc's dynamic threshold to 4 MiB), then allocates 60 blocks of 1 MiB with a
# small block after each (so freed space is not at the top of the heap and cannot be trimmed), frees the big ones and
# prints glibc's mallinfo2: bytes in the heap arenas and in mmapped blocks.
SCRIPT = r"""
import ctypes, json, sys
import numpy as np
from collector.memory import tune_allocator

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                               "fsmblks", "uordblks", "fordblks", "keepcost")]

applied = tune_allocator() if sys.argv[1] == "tune" else False
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
a = np.ones(4 << 20, np.uint8)
del a
big, small = [], []
for _ in range(60):
    big.append(np.ones(1 << 20, np.uint8))
    small.append(np.ones(16 << 10, np.uint8))
del big
mi = libc.mallinfo2()
print(json.dumps({"applied": applied, "heap": mi.arena, "heap_free": mi.fordblks}))
"""


def _run(mode: str, **env: str) -> dict[str, int]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    out = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, check=True,
                         env={**full, "PYTHONPATH": str(ROOT), **env}, cwd=ROOT)
    return json.loads(out.stdout)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc")
def test_freed_large_blocks_leave_the_heap_once_tuned() -> None:
    untuned, tuned = _run("plain"), _run("tune")
    assert tuned["applied"] is True
    # untuned: the 60 MiB freed stay in the heap arena (dynamic threshold raised to 4 MiB by the first free)
    assert untuned["heap_free"] > 50 << 20
    # tuned: the 1 MiB blocks were mmapped and unmapped at free; the heap holds only the small blocks
    assert tuned["heap_free"] < 8 << 20
    assert tuned["heap"] < untuned["heap"] - (40 << 20)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc")
def test_an_operators_environment_wins() -> None:
    assert memory.tune_allocator({memory.ENV_OVERRIDE: "1048576"}) is False
    assert _run("tune", MALLOC_MMAP_THRESHOLD_="33554432")["applied"] is False


def test_the_daemon_tunes_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    """``flowmed run`` (single process, supervisor and each worker all pass through it) calls the tuning first."""
    from click.testing import CliRunner

    from collector.commands import core

    called: list[bool] = []

    class Stop(Exception):
        pass

    def fake_tune() -> bool:
        called.append(True)
        raise Stop

    monkeypatch.setattr(core, "tune_allocator", fake_tune)
    result = CliRunner().invoke(core.run, ["--set", "store.enabled=false"])
    assert isinstance(result.exception, Stop) and called == [True]
