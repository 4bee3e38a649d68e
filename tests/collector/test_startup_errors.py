"""Start-up failures say what failed: a taken address names itself and what it was for (flows, RADIUS, IPDR,
metrics), and a second daemon on the same store is refused by the store's lock instead of running beside the first
(issue 15)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from collector.listener import ListenError, UdpListener
from collector.storelock import StoreLock, StoreLocked
from tests.collector.daemon import Daemon


def _blocker(kind: int) -> tuple[socket.socket, int]:
    sock = socket.socket(socket.AF_INET, kind)
    sock.bind(("127.0.0.1", 0))
    if kind == socket.SOCK_STREAM:
        sock.listen(1)
    return sock, sock.getsockname()[1]


def test_a_taken_flow_port_names_the_address_and_its_purpose() -> None:
    blocker, port = _blocker(socket.SOCK_DGRAM)
    try:
        with pytest.raises(ListenError) as err:
            UdpListener(f"127.0.0.1:{port}").bind()
    finally:
        blocker.close()
    assert str(err.value).startswith(f"cannot listen for flows (NetFlow/IPFIX) on 127.0.0.1:{port}: ")
    assert "Address already in use" in str(err.value) and "a second flowmed" in str(err.value)
    assert isinstance(err.value, OSError)  # callers that catch OSError still do


def test_the_store_lock_refuses_a_second_holder_and_is_released(tmp_path: Path) -> None:
    first, second = StoreLock(tmp_path / "data"), StoreLock(tmp_path / "data")
    first.acquire()
    with pytest.raises(StoreLocked) as err:
        second.acquire()
    assert f"the store {tmp_path / 'data'} is in use by another flowmed" in str(err.value)
    first.release()
    second.acquire()  # free again once the holder lets go (or dies: the kernel drops the lock)
    second.release()


@pytest.mark.slow
@pytest.mark.parametrize(("purpose", "kind", "sets"), [
    ("flows (NetFlow/IPFIX)", socket.SOCK_DGRAM, lambda p: [f'listen.udp=["127.0.0.1:{p}"]']),
    ("flows (sFlow)", socket.SOCK_DGRAM, lambda p: [f'listen.sflow=["127.0.0.1:{p}"]']),
    ("metrics", socket.SOCK_STREAM, lambda p: [f"metrics.listen=127.0.0.1:{p}"]),
    ("RADIUS accounting", socket.SOCK_DGRAM,
     lambda p: ["radius.enabled=true", f'radius.listen=["127.0.0.1:{p}"]', "radius.clients=[{address='127.0.0.1', "
                                                                            "secret='s'}]"]),
    ("IPDR/SP", socket.SOCK_STREAM, lambda p: ["ipdr.enabled=true", f"ipdr.listen=127.0.0.1:{p}"]),
], ids=["flows", "sflow", "metrics", "radius", "ipdr"])
def test_the_daemon_says_which_address_is_taken_and_for_what(tmp_path: Path, purpose: str, kind: int,
                                                             sets) -> None:
    blocker, port = _blocker(kind)
    try:
        d = Daemon(tmp_path, *sets(port))
        try:
            rc = d.proc.wait(60)
        finally:
            d.kill()
    finally:
        blocker.close()
    log = d.log_text()
    assert rc == 1, log
    assert 'msg="cannot start"' in log
    assert f"cannot listen for {purpose} on 127.0.0.1:{port}: Address already in use" in log, log
    assert "Traceback" not in log
    assert "flowmed started" not in log, "a start that failed must not have claimed to be up"


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2], ids=["single", "supervisor"])
def test_a_second_daemon_on_the_same_store_is_refused(tmp_path: Path, workers: int) -> None:
    first = Daemon(tmp_path / "first", workers=workers)
    try:
        first.wait_message("READY=1")
        # its own ports, the same store: only the lock can refuse it
        second = Daemon(tmp_path / "second", f"store.path={first.store}", workers=workers)
        try:
            rc = second.proc.wait(60)
        finally:
            second.kill()
        log = second.log_text()
        assert rc == 1, log
        assert f"the store {first.store} is in use by another flowmed (pid {first.proc.pid}" in log, log
        assert "flowmed started" not in log
        # the first one is untouched: still answering, and it stops cleanly
        assert "flowmed_build_info" in first.get("/metrics")
        assert first.stop() == 0
    finally:
        first.kill()
    # once the first is gone the store is free again
    third = Daemon(tmp_path / "third", f"store.path={first.store}")
    try:
        third.wait_message("READY=1")
        assert third.stop() == 0
    finally:
        third.kill()
