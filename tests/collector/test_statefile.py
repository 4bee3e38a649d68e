"""collector/statefile.py: the template state saved incrementally, compacted, whole after a crash (issue 14)."""

from __future__ import annotations

import threading
from pathlib import Path

from collector import statefile
from collector.statefile import StateWriter
from decoders.netflow import saved_state as saved
from decoders.netflow.decoder import FlowDecoder
from tests.decoders.packets import T0_MS, data_set, ip4, template_set, v9

EXP = "192.0.2.90"


def _templates(n: int, *, first: int = 256, extra: int = 0) -> bytes:
    return v9(template_set({first + i: [(8, 4), (1, 4), (1000 + i + extra, 2)] for i in range(n)}, ipfix=False))


def _content(dec: FlowDecoder) -> list[str]:
    """A decoder's saved state, record by record, in no particular order."""
    return sorted(repr(saved.decode(kind, payload)) for kind, payload, _ in saved.records(dec.save_state())[0])


def _reload(path: Path) -> FlowDecoder:
    dec = FlowDecoder()
    dec.load_state(path.read_bytes())
    return dec


def test_saves_append_only_what_changed(tmp_path: Path) -> None:
    dec = FlowDecoder()
    dec.decode([(_templates(20), EXP, T0_MS)])
    writer = StateWriter(tmp_path / "templates.bin")
    writer.load()
    writer.submit(dec.state_changes()).result()
    size = writer.path.stat().st_size
    assert _reload(writer.path).templates_known() == {EXP: 20}
    dec.decode([(_templates(1, first=260, extra=7), EXP, T0_MS)])
    changes = dec.state_changes()
    (record,) = [r for k, r in changes.records() if k[0] == "t"]
    writer.submit(changes).result()
    assert writer.path.stat().st_size == size + len(record)  # one template appended, nothing rewritten
    assert _content(_reload(writer.path)) == _content(dec)
    writer.submit(dec.state_changes()).result()  # nothing changed: nothing written
    assert writer.path.stat().st_size == size + len(record)
    writer.close()


def test_the_log_is_compacted_and_stays_bounded(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(statefile, "COMPACT_SLACK", 4096)
    dec = FlowDecoder()
    dec.decode([(_templates(10), EXP, T0_MS)])
    writer = StateWriter(tmp_path / "templates.bin")
    writer.load()
    sizes = []
    for i in range(300):  # one template changed again and again, saved each time
        dec.decode([(_templates(1, first=300, extra=i), EXP, T0_MS)])
        writer.write(dec.state_changes())
        sizes.append(writer.path.stat().st_size)
    live = len(saved.MAGIC) + writer.mirror.bytes
    assert max(sizes) <= 2 * live + 4096 + 200 and min(sizes[100:]) < max(sizes[100:])  # rewritten, repeatedly
    assert _content(_reload(writer.path)) == _content(dec)


def test_a_torn_append_is_repaired_by_the_next_save(tmp_path: Path) -> None:
    dec = FlowDecoder()
    dec.decode([(_templates(5), EXP, T0_MS)])
    path = tmp_path / "templates.bin"
    first = StateWriter(path)
    first.load()
    first.write(dec.state_changes())
    with open(path, "ab") as f:  # a crash in the middle of an append
        f.write(saved.template_record(EXP, 9, 0, 999, options=False, ipfix=False, scope=0, count=1, last_seen_ms=0,
                                      spec=b"\x00\x08\x00\x04")[:11])
    again = StateWriter(path)
    log, _ = again.load()
    assert log is not None and _reload(path).templates_known() == {EXP: 5}
    assert again.compact_next
    dec.decode([(_templates(1, first=400), EXP, T0_MS)])
    again.write(dec.state_changes())
    data = path.read_bytes()
    assert saved.records(data)[1] == len(data)  # whole again
    assert _reload(path).templates_known() == {EXP: 6}


def test_held_data_is_saved_when_it_changed_and_the_old_json_file_goes(tmp_path: Path) -> None:
    legacy = tmp_path / "templates.json"
    legacy.write_text("{}")
    writer = StateWriter(tmp_path / "templates.bin", legacy)
    writer.load()
    dec = FlowDecoder()
    dec.decode([(v9(data_set(256, [(8, 4), (1, 4)], [{8: ip4("10.0.0.1"), 1: 7}])), EXP, T0_MS)])
    writer.write(dec.state_changes())
    assert writer.held_path.is_file() and not legacy.exists()
    held_bytes = writer.held_path.read_bytes()
    restored = FlowDecoder()
    restored.load_state(writer.path.read_bytes())
    restored.load_state(held_bytes)
    assert restored.pending_bytes() == dec.pending_bytes() > 0
    writer.held_path.unlink()
    writer.write(dec.state_changes())  # held data unchanged: not written again
    assert not writer.held_path.exists()


def test_saving_runs_on_the_writers_thread(tmp_path: Path, monkeypatch) -> None:
    """The caller (the event loop) only collects the changes; encoding and writing happen on another thread."""
    threads = []
    release = threading.Event()
    write = StateWriter.write

    def slow_write(self, changes):
        threads.append(threading.current_thread().name)
        release.wait(10)
        return write(self, changes)

    monkeypatch.setattr(StateWriter, "write", slow_write)
    dec = FlowDecoder()
    dec.decode([(_templates(3), EXP, T0_MS)])
    writer = StateWriter(tmp_path / "templates.bin")
    writer.load()
    fut = writer.submit(dec.state_changes())
    assert writer.busy and not fut.done()  # submit returned while the write waits
    release.set()
    fut.result(10)
    assert not writer.busy and threads[0].startswith("flowmed-state")
    writer.close()


class _Sink:
    outputs: list = []
    stats: dict = {}
    pending_rows = 0
    dropped_rows: dict = {}
    journal_errors = journal_set_aside = 0

    def add(self, table, batch) -> bool:
        return True

    def maybe_flush(self, now=None) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def test_the_daemon_loads_every_state_file_and_saves_them_in_its_own_log(tmp_path: Path) -> None:
    """Server glue: the JSON file of the format before, another worker's log and the own log are loaded (budgets
    apply), saved at stop into the own log, and the JSON file goes once that is written."""
    import asyncio
    import json
    import time

    import uvloop
    from prometheus_client import CollectorRegistry

    from collector import config as config_mod
    from collector.server import Server
    from tests.fixtures.peers import free_port

    now = int(time.time() * 1000)  # (exporters idle for a week are forgotten at the first tick)
    state = tmp_path / "state"
    state.mkdir()
    old = {"version": 1, "pending": [], "exporters": {"192.0.2.1": {
        "templates": [[9, 0, now, [256, [[8, 4, 0], [1, 4, 0]], 0, False]]], "samplers": [], "init_ms": [],
        "last_seen_ms": now}}}
    (state / "templates.json").write_text(json.dumps(old))
    other = FlowDecoder()
    other.decode([(_templates(2), "192.0.2.2", now)])
    (state / "templates.bin.worker3").write_bytes(other.save_state())
    sets = [f'listen.udp=["127.0.0.1:{free_port()}"]', "listen.sflow=[]", f"store.path={tmp_path}",
            "metrics.enabled=false"]
    server = Server(config_mod.load(None, sets), registry=CollectorRegistry(), sink=_Sink(), mediator=None)

    async def run() -> None:
        task = asyncio.ensure_future(server.serve())
        while server.pipeline is None:
            await asyncio.sleep(0.01)
        assert server.pipeline.decoder.templates_known() == {"192.0.2.1": 1, "192.0.2.2": 2}
        server.request_stop()
        assert await task == 0

    uvloop.run(run())
    assert _reload(state / "templates.bin").templates_known() == {"192.0.2.1": 1, "192.0.2.2": 2}
    assert not (state / "templates.json").exists() and (state / "templates.bin.worker3").exists()
