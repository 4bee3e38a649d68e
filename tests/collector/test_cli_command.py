"""No test or benchmark spawns a bare ``flowmed`` from PATH: they take the one beside the interpreter.

A bare ``flowmed`` passes only on machines where some ``flowmed`` happens to be on PATH (issue 13): CI runs
``.venv/bin/python -m pytest`` without the virtualenv on PATH. ``tests.fixtures.cli.flowmed_command`` is the way.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

from tests.fixtures.cli import flowmed_command

ROOT = Path(__file__).resolve().parents[2]


SPAWNERS = frozenset({"run", "Popen", "call", "check_call", "check_output", "create_subprocess_exec",
                      "create_subprocess_shell", "getoutput", "getstatusoutput", "system", "popen", "execvp",
                      "execv", "execlp", "spawnlp"})
"""Names of the functions that start a program (subprocess, asyncio, os)."""


def _argv0(node: ast.expr) -> ast.expr | None:
    """The first item of an argv expression: a list or tuple literal, or one concatenated with more."""
    while isinstance(node, ast.BinOp):
        node = node.left
    if isinstance(node, (ast.List, ast.Tuple)) and node.elts:
        return node.elts[0]
    return node


def bare_cli_uses(source: str) -> list[int]:
    """Lines of ``source`` that run or look up the command ``flowmed`` on PATH: a program-starting call (see
    :data:`SPAWNERS`) whose program is the string ``flowmed`` (or a shell line starting with it), or
    ``shutil.which("flowmed")``."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call) or not node.args:
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
        first = _argv0(node.args[0])
        program = first.value if isinstance(first, ast.Constant) and isinstance(first.value, str) else None
        if program is None:
            continue
        if name == "which" and program == "flowmed":
            lines.append(node.lineno)
        elif name in SPAWNERS and (program == "flowmed" or program.startswith("flowmed ")):
            lines.append(node.lineno)
    return lines


def test_the_guard_recognises_bare_invocations() -> None:
    bad = ('subprocess.run(["flowmed", "status"])\nshutil.which("flowmed")\n'
           'subprocess.Popen(("flowmed", "run"))\nsubprocess.run("flowmed query x", shell=True)\n'
           'subprocess.run(["flowmed"] + args)\nasyncio.create_subprocess_exec("flowmed", "run")\n')
    assert bare_cli_uses(bad) == [1, 2, 3, 4, 5, 6]
    fine = ('subprocess.run([flowmed_command(), "status"])\n'
            'pytest.mark.parametrize("impl", ["flowmed", "netflow"])\nrun_once(h, "flowmed", 9)\n')
    assert bare_cli_uses(fine) == []


def test_no_test_or_benchmark_spawns_a_bare_flowmed() -> None:
    offenders = []
    for folder in ("tests", "bench", "fuzz", "scripts"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for line in bare_cli_uses(path.read_text()):
                offenders.append(f"{path.relative_to(ROOT)}:{line}")
    assert offenders == [], "use tests.fixtures.cli.flowmed_command() instead of a bare flowmed: " + ", ".join(
        offenders)


def test_flowmed_command_is_this_interpreters() -> None:
    assert Path(flowmed_command()) == Path(sys.executable).with_name("flowmed")
