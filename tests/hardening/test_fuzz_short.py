"""A short coverage-guided (atheris) run of every fuzz target, and the crash regressions.

The long runs are by hand (docs/hardening.md); here every target is fuzzed for a bounded time (``FUZZ_SECONDS``,
two targets at a time) from its seed corpus, in subprocesses with libFuzzer's own guards: ``-timeout`` (a hang),
``-rss_limit_mb`` (unbounded memory) and any exception escaping the target (a crash) make the test fail, and the
inputs saved are shown. A time zone naming a directory of the zone database escaped ``parse_plans`` as an OSError
and went unnoticed while this test ran a fixed 300 executions; a fuzzer finds it in seconds.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from decoders.netflow.decoder import FlowDecoder
from fuzz.seeds import SEEDS, write_seeds
from fuzz.targets import EXPORTER, TARGETS, split_datagrams
from tests.fixtures.peers import IN_CI

ROOT = Path(__file__).resolve().parents[2]
CRASHERS = Path(__file__).parent / "crashers"
FUZZ_SECONDS = int(os.environ.get("FLOWMED_FUZZ_SECONDS", "10"))
"""Seconds of coverage-guided fuzzing per target in the suite (set FLOWMED_FUZZ_SECONDS for a longer CI run)."""
PARALLEL = 2
"""Targets fuzzed at once: 10 targets of 10 s take about a minute on 2 cores."""


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


def _fuzz(target: str, workdir: Path) -> subprocess.Popen:
    """Start a coverage-guided run of ``target`` for FUZZ_SECONDS from its seeds (stderr to ``workdir/log``)."""
    corpus = workdir / "corpus"
    write_seeds(target, corpus)
    artifacts = workdir / "artifacts"
    artifacts.mkdir()
    cmd = [sys.executable, str(ROOT / "fuzz" / "run.py"), target, str(corpus), f"-max_total_time={FUZZ_SECONDS}",
           "-rss_limit_mb=1536", "-timeout=30", f"-artifact_prefix={artifacts}/", "-print_final_stats=1"]
    with open(workdir / "log", "wb") as log:
        return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log)


def _finding(target: str, workdir: Path, proc: subprocess.Popen) -> str | None:
    """What a finished run found (a crash, hang or memory blow-up, or a run that did not run), None if nothing."""
    log = (workdir / "log").read_text(errors="replace")
    saved = sorted((workdir / "artifacts").iterdir())
    if proc.returncode == 0 and not saved and "stat::number_of_executed_units" in log:
        return None
    inputs = "".join(f"\n  {p} ({p.stat().st_size} bytes): {p.read_bytes()[:300]!r}" for p in saved)
    return (f"{target}: exit {proc.returncode}; saved inputs (copy to tests/hardening/crashers/{target}/):{inputs}\n"
            + log[-4000:])


@pytest.mark.slow
@pytest.mark.timeout(FUZZ_SECONDS * -(-len(TARGETS) // PARALLEL) + 300)
def test_every_target_fuzzed_for_a_bounded_time(tmp_path: Path) -> None:
    """Every target under atheris for FUZZ_SECONDS, PARALLEL at a time; any crash, hang or OOM fails the test."""
    try:
        import atheris  # noqa: F401
    except ImportError:
        if IN_CI:
            pytest.fail("atheris is required in CI (pip install -e .[test])")
        pytest.skip("atheris not installed (pip install atheris)")
    waiting = sorted(TARGETS)
    running: dict[str, tuple[subprocess.Popen, Path, float]] = {}
    findings: list[str] = []
    try:
        while waiting or running:
            while waiting and len(running) < PARALLEL:
                target = waiting.pop(0)
                workdir = tmp_path / target
                workdir.mkdir()
                running[target] = (_fuzz(target, workdir), workdir, time.monotonic())
            for target, (proc, workdir, started) in list(running.items()):
                if proc.poll() is None and time.monotonic() - started > FUZZ_SECONDS + 120:
                    proc.kill()  # libFuzzer's own -max_total_time/-timeout did not stop it
                    proc.wait()
                if proc.returncode is not None:
                    del running[target]
                    finding = _finding(target, workdir, proc)
                    if finding:
                        findings.append(finding)
            time.sleep(0.2)
    finally:
        for proc, _, _ in running.values():
            proc.kill()
            proc.wait()
    assert not findings, "\n\n".join(findings)
