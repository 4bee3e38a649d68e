"""docs/walkthrough.md runs as written: its ``sh`` blocks in order in one bash session, each block's output checked
against the ``text`` block that follows it.

The only things the test chooses are the variables the page itself defines at its top (``WALK_DIR`` and the ports:
a temporary directory and free loopback ports) and ``PATH``, whose first entry is the directory of this interpreter,
so that ``flowmed`` and ``python`` are the ones of this installation (never a ``flowmed`` found elsewhere).

Expected output, as the page explains: a line ``...`` stands for any number of lines; within a line, ``...`` for any
text; the other lines follow one another as shown. Runs of blanks and tabs compare as one space.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.fixtures.peers import free_port, require_tool

pytestmark = [pytest.mark.external, pytest.mark.slow]

DOC = Path(__file__).resolve().parents[2] / "docs" / "walkthrough.md"
MARK = "@@walkthrough-block"


@dataclass
class Block:
    number: int
    """Position among the page's sh blocks, from 1."""
    line: int
    """Line of the page where the block starts (for messages)."""
    commands: str
    expected: str | None = None
    """The text block following it, if any."""


def blocks(text: str) -> list[Block]:
    """The page's ``sh`` blocks, each with the ``text`` block after it (before the next ``sh`` block)."""
    out: list[Block] = []
    for m in re.finditer(r"^```(\w*)\n(.*?)^```$", text, flags=re.S | re.M):
        lang, body = m.group(1), m.group(2)
        line = text.count("\n", 0, m.start()) + 1
        if lang == "sh":
            out.append(Block(len(out) + 1, line, body))
        elif lang == "text":
            assert out and out[-1].expected is None, f"walkthrough.md:{line}: a text block with no sh block before it"
            out[-1].expected = body
    return out


def _norm(line: str) -> str:
    return re.sub(r"[ \t]+", " ", line.strip())


def _line_matches(pattern: str, line: str) -> bool:
    parts = [re.escape(p) for p in _norm(pattern).split("...")]
    return re.fullmatch(".*".join(parts), _norm(line)) is not None


def matches(expected: str, actual: str) -> bool:
    """Does ``actual`` match ``expected`` (``...`` lines and ``...`` inside lines as the module docstring says)?"""
    pats = [p for p in expected.splitlines()]
    lines = [a for a in actual.splitlines() if a.strip()]

    def go(i: int, j: int) -> bool:
        if i == len(pats):
            return j == len(lines)
        if pats[i].strip() == "...":
            return any(go(i + 1, k) for k in range(j, len(lines) + 1))
        return j < len(lines) and _line_matches(pats[i], lines[j]) and go(i + 1, j + 1)

    return go(0, 0)


def test_blocks_and_matching():
    """The page parses into command blocks with their expected output, and the matcher does what it says."""
    found = blocks(DOC.read_text())
    assert len(found) >= 10 and all(b.commands.strip() for b in found)
    assert sum(b.expected is not None for b in found) >= 8
    assert matches("a\n...\nc ... e", "a\nb\nb2\nc d e\n")
    assert matches("x...", "x1") and matches("...", "") and not matches("a", "a\nb")
    assert not matches("a\nc", "a\nb\nc") and not matches("c ... e", "c d f")
    assert matches("total  received\t3", "total\t\treceived\t3")


def test_walkthrough_runs_as_written(tmp_path):
    require_tool("radclient")
    found = blocks(DOC.read_text())
    script = "set -e\n" + "".join(f"printf '\\n{MARK} {b.number}\\n'\n{b.commands}\n" for b in found)
    walk = tmp_path / "walk"
    env = dict(os.environ, WALK_DIR=str(walk), FLOW_PORT=str(free_port()), RADIUS_PORT=str(free_port()),
               METRICS_PORT=str(free_port(socket.SOCK_STREAM)),
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    try:
        proc = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=600, check=False)
    finally:
        _stop_daemon(walk / "flowmed.pid")
    outputs: dict[int, str] = {}
    for part in proc.stdout.split(f"\n{MARK} ")[1:]:
        number, _, out = part.partition("\n")
        outputs[int(number)] = out
    log = walk / "flowmed.log"
    context = f"\nstderr:\n{proc.stderr[-4000:]}\ndaemon log:\n{log.read_text()[-4000:] if log.exists() else ''}"
    assert proc.returncode == 0, (f"block {max(outputs, default=0)} failed with {proc.returncode}; its output:\n"
                                  f"{outputs.get(max(outputs, default=0), '')}{context}")
    assert sorted(outputs) == [b.number for b in found]
    for b in found:
        if b.expected is not None:
            assert matches(b.expected, outputs[b.number]), (
                f"walkthrough.md:{b.line}: block {b.number} printed\n{outputs[b.number]}\nexpected\n{b.expected}"
                f"{context}")


def _stop_daemon(pid_file: Path) -> None:
    """The daemon the page started, if the page did not get as far as stopping it (by its recorded id)."""
    if not pid_file.exists():
        return
    pid = int(pid_file.read_text().strip())
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
