"""What a deployment gets: the dependencies, the constraints file, the wheel's packages and the set-up scripts."""

from __future__ import annotations

import os
import subprocess
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "packaging" / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[name.lower().replace("_", "-")] = version
    return pins


def test_every_runtime_dependency_is_pinned_within_its_range() -> None:
    pins = _pins()
    for spec in PYPROJECT["project"]["dependencies"]:
        req = Requirement(spec)
        name = req.name.lower().replace("_", "-")
        assert name in pins, f"{name} is a dependency but packaging/constraints.txt does not pin it"
        assert req.specifier.contains(pins[name]), f"constraints pin {name}=={pins[name]} outside {req.specifier}"


def test_dependencies_name_the_versions_the_code_needs() -> None:
    deps = {Requirement(s).name: Requirement(s).specifier for s in PYPROJECT["project"]["dependencies"]}
    assert not deps["pyarrow"].contains("18.1.0")  # the sink calls pa.concat_batches (pyarrow 19)
    assert not deps["chdb"].contains("99.0.0")  # capped at a major version: the SQL guard relies on its parser
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert {"test", "lint", "fuzz"} <= set(extras)


def test_the_wheel_holds_the_product_not_the_benchmarks_or_fuzzers() -> None:
    include = PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
    for package in ("collector", "decoders", "mediation", "rating"):
        assert f"{package}*" in include
    assert not any(p.startswith(("bench", "fuzz", "tests")) for p in include)


def _apt_requests(tmp_path: Path, profile: str) -> list[str]:
    """The packages ``scripts/install-system-deps PROFILE`` asks apt-get for on a machine that has none."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "apt.log"
    (bin_dir / "dpkg").write_text("#!/bin/sh\nexit 1\n")  # nothing is installed
    (bin_dir / "apt-get").write_text(f'#!/bin/sh\necho "$@" >> {log}\n')
    (bin_dir / "sudo").write_text('#!/bin/sh\nexec "$@"\n')
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    subprocess.run([str(ROOT / "scripts" / "install-system-deps"), profile], env=env, check=True, timeout=30)
    installs = [line for line in log.read_text().splitlines() if line.startswith("install")]
    return installs[0].split()


def test_running_installs_only_what_running_needs(tmp_path: Path) -> None:
    run = _apt_requests(tmp_path, "run")
    assert "python3-venv" in run
    for peer in ("clickhouse-server", "prometheus", "pmacct", "nfdump", "tshark", "chromium", "zookeeper"):
        assert peer not in run


def test_testing_installs_every_peer(tmp_path: Path) -> None:
    test = _apt_requests(tmp_path, "test")
    for peer in ("clickhouse-server", "tshark", "softflowd", "freeradius-utils", "prometheus", "nfdump", "pmacct",
                 "zookeeper", "chromium", "chromium-driver"):
        assert peer in test


def test_the_run_script_uses_the_run_profile_and_the_constraints() -> None:
    run = (ROOT / "scripts" / "run").read_text()
    assert "install-system-deps run" in run and "-c packaging/constraints.txt" in run
    test = (ROOT / "scripts" / "test").read_text()
    assert "install-system-deps test" in test and "--quick" in test
