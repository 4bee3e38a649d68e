"""Fixtures of the console tests: the store built from known flows (once per session) and a console over it."""

from __future__ import annotations

import pytest

from tests.console.dataset import Dataset, build


@pytest.fixture(scope="session")
def dataset(tmp_path_factory) -> Dataset:
    """Two days of known traffic through the daemon's pipeline, rated (see tests/console/dataset.py)."""
    return build(tmp_path_factory.mktemp("console-dataset"))


@pytest.fixture(scope="session")
def console(dataset, tmp_path_factory):
    """``flowmed console`` (the installed command) serving the dataset's store on a free loopback port."""
    from tests.console.helpers import ConsoleProcess  # imported late: tests.fixtures are pytest plugins

    proc = ConsoleProcess(dataset, tmp_path_factory.mktemp("console-run"))
    try:
        proc.wait_ready()
        yield proc
    finally:
        proc.stop()
