"""The metrics/status endpoint is bounded whatever clients do (issue 14 item 4): idle half-requests hold no threads
and cannot lock a scrape out, a request must arrive in time, and a client that goes away early logs nothing."""

from __future__ import annotations

import json
import logging
import socket
import struct
import threading
import time
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry, Counter

from collector.status import MAX_REQUEST_BYTES, RESPONDERS, HttpServer


@pytest.fixture
def registry() -> CollectorRegistry:
    reg = CollectorRegistry()
    Counter("flowmed_test_things", "Things.", registry=reg).inc(3)
    return reg


@pytest.fixture
def server(registry: CollectorRegistry) -> Iterator[HttpServer]:
    http = HttpServer("127.0.0.1:0", registry, lambda: {"pid": 1, "exporters": []})
    http.start()
    yield http
    http.close()


def _port(http: HttpServer) -> int:
    return int(http.address.rpartition(":")[2])


def _get(http: HttpServer, path: str) -> tuple[int, str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{_port(http)}{path}", timeout=10) as resp:
        return resp.status, resp.read().decode()


def _connect(http: HttpServer, first_bytes: bytes = b"") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", _port(http)), timeout=10)
    if first_bytes:
        sock.sendall(first_bytes)
    return sock


def _closed_by_server(sock: socket.socket) -> bool:
    """True when the server has closed this connection (EOF or reset), without waiting."""
    sock.setblocking(False)
    try:
        while True:
            if not sock.recv(4096):
                return True
    except BlockingIOError:
        return False
    except OSError:
        return True
    finally:
        sock.setblocking(True)


def test_idle_half_requests_hold_no_threads_and_a_scrape_still_answers(server: HttpServer) -> None:
    baseline = threading.active_count()
    idle = [_connect(server, b"GET /metr") for _ in range(300)]
    try:
        status, body = _get(server, "/metrics")  # the scrape displaces the oldest idle connection
        assert status == 200 and "flowmed_test_things_total 3.0" in body
        assert threading.active_count() - baseline <= RESPONDERS  # a thread per connection made 300 here
        assert server.open_connections <= server.max_connections
        # every connection beyond the limit was closed by the server, not left to hold a descriptor
        deadline = time.monotonic() + 30
        while sum(_closed_by_server(s) for s in idle) < len(idle) - server.max_connections:
            assert time.monotonic() < deadline, "connections over the limit were not closed"
            time.sleep(0.1)
    finally:
        for s in idle:
            s.close()


def test_a_request_must_arrive_within_its_deadline(registry: CollectorRegistry) -> None:
    http = HttpServer("127.0.0.1:0", registry, dict, request_timeout_s=0.5)
    http.start()
    try:
        sock = _connect(http, b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # the blank line never comes
        answer = b""
        while chunk := sock.recv(4096):  # blocks until the server gives up on the request (socket timeout: 10 s)
            answer += chunk
        sock.close()
        assert answer.startswith(b"HTTP/1.1 408 ")
        assert _get(http, "/metrics")[0] == 200
    finally:
        http.close()


def test_a_client_leaving_early_logs_no_traceback(registry: CollectorRegistry, capfd: pytest.CaptureFixture,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    answering = threading.Event()

    def slow_status() -> dict:
        answering.set()
        time.sleep(0.3)  # the client resets its connection meanwhile
        return {"exporters": [{"address": f"192.0.2.{i % 250}"} for i in range(20000)]}

    http = HttpServer("127.0.0.1:0", registry, slow_status)
    http.start()
    try:
        with caplog.at_level(logging.DEBUG):
            _connect(http).close()  # connects and goes
            _connect(http, b"GET /sta").close()  # half a request
            for _ in range(3):  # a whole request, then a reset before the (large) answer is written
                answering.clear()
                sock = _connect(http, b"GET /status HTTP/1.1\r\nHost: x\r\n\r\n")
                assert answering.wait(10)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.close()
            status, body = _get(http, "/status")  # still answering
            assert status == 200 and len(json.loads(body)["exporters"]) == 20000
    finally:
        http.close()
    err = capfd.readouterr().err
    assert "Traceback" not in err and "Exception occurred" not in err, err
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text


def test_methods_paths_and_oversized_requests(server: HttpServer) -> None:
    def raw(request: bytes) -> bytes:
        sock = _connect(server, request)
        out = b""
        while chunk := sock.recv(65536):
            out += chunk
        sock.close()
        return out

    assert raw(b"GET / HTTP/1.0\r\n\r\n").startswith(b"HTTP/1.1 200 ")
    head = raw(b"HEAD /metrics HTTP/1.1\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and head.endswith(b"\r\n\r\n")  # headers only
    assert raw(b"GET /nothing HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 404 ")
    assert raw(b"POST /metrics HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 405 ")
    assert raw(b"nonsense\r\n\r\n").startswith(b"HTTP/1.1 400 ")
    too_long = b"GET /metrics HTTP/1.1\r\nX: "
    too_long += b"a" * (MAX_REQUEST_BYTES + 1 - len(too_long))  # exactly what the server reads before it answers
    assert raw(too_long).startswith(b"HTTP/1.1 431 ")


def test_ipv6_endpoint(registry: CollectorRegistry) -> None:
    http = HttpServer("[::1]:0", registry, dict)
    http.start()
    try:
        with urllib.request.urlopen(f"http://{http.address}/metrics", timeout=10) as resp:
            assert resp.status == 200
    finally:
        http.close()
