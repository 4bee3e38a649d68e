"""A short coverage-guided (atheris) run of every fuzz target, and the crash regressions.

The long runs are by hand (docs/hardening.md); here each target gets a few hundred executions from its seed corpus,
in a subprocess with libFuzzer's own guards: ``-timeout`` (a hang), ``-rss_limit_mb`` (unbounded memory) and any
exception escaping the target (a crash) make the run fail, and the input it saved is shown.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from decoders.flows import FlowDecoder
from fuzz.seeds import SEEDS, write_seeds
from fuzz.targets import EXPORTER, TARGETS, split_datagrams
from tests.fixtures.peers import IN_CI

ROOT = Path(__file__).resolve().parents[2]
CRASHERS = Path(__file__).parent / "crashers"
RUNS = 300
"""Executions per target in the suite (a few seconds each); the long runs use -max_total_time."""


def test_every_target_has_seeds() -> None:
    assert set(SEEDS) == set(TARGETS)


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_seeds_pass_their_target(target: str) -> None:
    seeds = SEEDS[target]()
    assert seeds
    for s in seeds:
        TARGETS[target](s)


@pytest.mark.parametrize("version", [5, 9, 10])
def test_flow_seeds_reach_the_records(version: int) -> None:
    """The seeds are real exports (so the fuzzer starts deep inside the decoder, not at the version check)."""
    name = {5: "netflow_v5", 9: "netflow_v9", 10: "ipfix"}[version]
    for s in SEEDS[name]():
        res = FlowDecoder().decode([(d, EXPORTER, 0) for d in split_datagrams(s)])
        assert res.n_flows > 0 and not res.errors


def _crashers() -> list[tuple[str, Path]]:
    return [(d.name, f) for d in sorted(CRASHERS.iterdir()) if d.is_dir() for f in sorted(d.iterdir())]


@pytest.mark.parametrize("target,path", _crashers(), ids=lambda v: v.name if isinstance(v, Path) else v)
def test_crashers_stay_fixed(target: str, path: Path) -> None:
    if "oom" not in path.name:
        TARGETS[target](path.read_bytes())
        return
    # an input that once exhausted memory: replayed in a child whose peak RSS is measured
    code = (f"import sys; from fuzz.targets import TARGETS; TARGETS[{target!r}](open(sys.argv[1], 'rb').read())")
    proc = subprocess.Popen([sys.executable, "-c", code, str(path)], cwd=ROOT, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    assert proc.returncode == 0, proc.stderr.read().decode()[-3000:] if proc.stderr else ""
    assert usage.ru_maxrss < 1024 * 1024, f"peak RSS {usage.ru_maxrss // 1024} MiB"  # ru_maxrss is in KiB


@pytest.mark.slow
@pytest.mark.parametrize("target", sorted(TARGETS))
def test_short_atheris_run(target: str, tmp_path: Path) -> None:
    try:
        import atheris  # noqa: F401
    except ImportError:
        if IN_CI:
            pytest.fail("atheris is required in CI (pip install -e .[test])")
        pytest.skip("atheris not installed (pip install atheris)")
    corpus = tmp_path / "corpus"
    write_seeds(target, corpus)
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    cmd = [sys.executable, str(ROOT / "fuzz" / "run.py"), target, str(corpus), f"-runs={RUNS}",
           "-rss_limit_mb=1536", "-timeout=30", "-max_total_time=60", f"-artifact_prefix={artifacts}/",
           "-print_final_stats=1"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    saved = sorted(p.name for p in artifacts.iterdir())
    assert proc.returncode == 0 and not saved, (
        f"{target}: exit {proc.returncode}, saved {saved} (copy to tests/hardening/crashers/{target}/)\n"
        + proc.stderr[-4000:])
    assert "stat::number_of_executed_units" in proc.stderr
