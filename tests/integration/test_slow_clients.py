"""Clients that open connections and then send too little: half an HTTP/2 preface, a
request head trickled byte by byte, a HEADERS frame cut short. Waiting for them must
cost no CPU and must not slow anyone else down; the HCM's idle_timeout and
request_headers_timeout end them as Envoy does."""
from __future__ import annotations

import socket
import struct
import time
import urllib.request

import psutil

from harness import Conn, free_port, simple_config

SETTINGS = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


def _stats(admin_port: int) -> dict:
    txt = urllib.request.urlopen("http://127.0.0.1:%d/stats" % admin_port, timeout=5).read()
    return {k: v for k, _, v in (line.partition(": ") for line in txt.decode().splitlines())}


def _cpu_percent(proc: psutil.Process, seconds: float) -> float:
    proc.cpu_percent(None)
    time.sleep(seconds)
    return proc.cpu_percent(None)


def _good_client(port: int, n: int) -> list[float]:
    """`n` requests, each on a fresh connection; their latencies, sorted."""
    lat = []
    for _ in range(n):
        t0 = time.monotonic()
        with Conn(port) as c:
            assert c.request("GET", "/").status == 200
        lat.append(time.monotonic() - t0)
    return sorted(lat)


def _wait_closed(socks, timeout: float) -> int:
    """How many of `socks` the server closed within `timeout` (reading what it sent)."""
    deadline = time.monotonic() + timeout
    closed = 0
    for s in socks:
        while True:
            s.settimeout(max(deadline - time.monotonic(), 0.01))
            try:
                if not s.recv(65536):
                    closed += 1
                    break
            except socket.timeout:
                break
            except OSError:
                closed += 1
                break
    return closed


def test_half_prefaces_cost_no_cpu_and_close_at_idle_timeout(upstream, proxyd_factory):
    """200 connections stop inside the HTTP/2 magic (while codec AUTO still decides) or
    after it (inside the preface): the worker stays idle (it used to poll each one every
    millisecond: 78% CPU for 200), a good client is served, and idle_timeout closes them."""
    admin = free_port()
    px = proxyd_factory(simple_config(free_port(), upstream.port, admin_port=admin,
                                      common_http_protocol_options={"idle_timeout": "3s"}))
    worker = psutil.Process(px.worker_pids()[0])
    quiet = _good_client(px.port, 50)
    socks = []
    for i in range(200):
        s = socket.create_connection(("127.0.0.1", px.port))
        s.sendall(b"PRI * HT" if i % 2 else b"PRI * HTTP/2.0\r\n\r\n")
        socks.append(s)
    time.sleep(0.3)
    try:
        assert _cpu_percent(worker, 1.0) < 25
        lat = _good_client(px.port, 100)
        assert lat[98] < max(3 * quiet[48], 0.25), (quiet[48], lat[98])
        assert _wait_closed(socks, 6.0) == 200
    finally:
        for s in socks:
            s.close()
    time.sleep(0.3)
    assert _cpu_percent(worker, 1.0) < 10
    st = _stats(admin)
    assert int(st["http.ingress_http.downstream_cx_idle_timeout"]) == 200
    assert _good_client(px.port, 10)


def test_request_headers_timeout_ends_trickling_heads(upstream, proxyd_factory):
    """300 HTTP/1 clients trickle a request head a byte every 0.3 s: each gets Envoy's
    408 "request header timeout" and is closed after request_headers_timeout (1 s); a
    complete request on a trickling client's heels is served."""
    admin = free_port()
    px = proxyd_factory(simple_config(free_port(), upstream.port, admin_port=admin,
                                      request_headers_timeout="1s"))
    socks = []
    for _ in range(300):
        s = socket.create_connection(("127.0.0.1", px.port))
        s.sendall(b"GET / HTTP/1.1\r\nHo")
        socks.append(s)
    t0 = time.monotonic()
    answers = []
    for s in socks:
        s.setblocking(False)
    deadline = t0 + 8.0
    pending = set(range(len(socks)))
    got = {i: b"" for i in pending}
    while pending and time.monotonic() < deadline:
        for i in list(pending):
            try:
                socks[i].send(b"s")
            except OSError:
                pass
            try:
                while True:
                    d = socks[i].recv(65536)
                    if not d:
                        pending.discard(i)
                        answers.append(time.monotonic() - t0)
                        break
                    got[i] += d
            except (BlockingIOError, ConnectionResetError):
                pass
        assert _good_client(px.port, 1)
        time.sleep(0.3)
    for s in socks:
        s.close()
    assert not pending, "%d trickling connections still open after 8 s" % len(pending)
    assert all(v.startswith(b"HTTP/1.1 408 ") and v.endswith(b"request header timeout")
               for v in got.values()), set(v[:40] for v in got.values())
    assert min(answers) >= 0.9
    st = _stats(admin)
    assert int(st["http.ingress_http.downstream_rq_header_timeout"]) == 300


def test_request_headers_timeout_ends_a_cut_http2_header_block(upstream, proxyd_factory):
    """A HEADERS frame that never ends (its payload cut short) holds up the whole
    connection: after request_headers_timeout it ends with GOAWAY."""
    admin = free_port()
    px = proxyd_factory(simple_config(free_port(), upstream.port, admin_port=admin,
                                      request_headers_timeout="1s"))
    s = socket.create_connection(("127.0.0.1", px.port), timeout=5)
    t0 = time.monotonic()
    s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + SETTINGS
              + struct.pack(">I", 16)[1:] + b"\x01\x04" + struct.pack(">I", 1) + b"\x82")
    data = b""
    while True:
        d = s.recv(65536)
        if not d:
            break
        data += d
    took = time.monotonic() - t0
    s.close()
    assert 0.9 <= took < 4, took
    assert b"\x00\x00\x08\x07\x00\x00\x00\x00\x00" in data  # GOAWAY
    st = _stats(admin)
    assert int(st["http.ingress_http.downstream_rq_header_timeout"]) == 1


def test_request_headers_timeout_runs_from_a_heads_first_byte(upstream, proxyd_factory):
    """Idle time between keep-alive requests does not count (idle_timeout covers it);
    a head that arrives in pieces within the timeout is served."""
    px = proxyd_factory(simple_config(free_port(), upstream.port, request_headers_timeout="1s"))
    with Conn(px.port) as c:
        assert c.request("GET", "/one").status == 200
        time.sleep(1.5)
        c.send(b"GET /two HTTP/1.1\r\nHost: x\r\n")
        time.sleep(0.5)
        c.send(b"Accept: */*\r\n\r\n")
        assert c.read_response().status == 200
