"""``flowmed ipdr sessions`` against the simulated CMTS, and ``flowmed ipdr state``."""

from __future__ import annotations

import asyncio
import json
import socket
import threading

from click.testing import CliRunner

from bench.cmts import CmtsSimulator
from collector.cli import main
from mediation.ipdr.usage import IpdrUsage
from tests.fixtures.peers import free_port
from tests.ipdr.helpers import EXPORTER_IP, make_event


def test_sessions_lists_what_the_cmts_offers():
    loop = asyncio.new_event_loop()
    sim = CmtsSimulator(2)
    started = threading.Event()
    port = {}

    def serve():
        asyncio.set_event_loop(loop)
        port["p"] = loop.run_until_complete(sim.listen("127.0.0.1", 0))
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    started.wait(10)
    try:
        refused = f"127.0.0.1:{free_port(socket.SOCK_STREAM)}"
        result = CliRunner().invoke(main, ["ipdr", "sessions", "--exporter", f"127.0.0.1:{port['p']}",
                                           "--exporter", refused, "--timeout", "5"])
    finally:
        asyncio.run_coroutine_threadsafe(sim.close(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
    lines = [json.loads(line) for line in result.output.splitlines()]
    assert result.exit_code == 1  # the second exporter refuses the connection
    assert [s["name"] for s in lines[0]["sessions"]] == ["DOCSIS-SAMIS-TYPE-1", "DOCSIS-SAMIS-TYPE-2"]
    assert lines[0]["vendor"] == "flowmed-cmts-sim" and "error" in lines[1]


def test_state_summary(tmp_path):
    u = IpdrUsage(tmp_path / "data" / "state" / "ipdr", preexisting="count")
    u.mediate(make_event([{"RecCreationTime": 1000, "ServiceOctetsPassed": 5}]), "cmts1", EXPORTER_IP, 0)
    u.commit()
    result = CliRunner().invoke(main, ["ipdr", "state", "--set", f"store.path={tmp_path / 'data'}"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["instances"] == 1 and summary["watermarks"] == {"cmts1|1|1700000000": 0}
