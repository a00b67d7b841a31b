"""HTTP/2 rapid reset (CVE-2023-44487): a client opens streams and resets them at once.
As Envoy's HCM, once half of a connection's closed streams (from 250 of them) ended
early with no response, the connection ends (GOAWAY ENHANCE_YOUR_CALM here; Envoy
aborts) and `downstream_rq_too_many_premature_resets` counts it; the worker's memory
comes back and other clients stay served."""
from __future__ import annotations

import socket
import struct
import threading
import time
import urllib.request

import psutil

from h2client import H2Client
from harness import bootstrap, cluster, free_port, listener

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00"
BLOCK = b"\x82\x86\x84\x01\x01x"  # GET http / , :authority x (static table only)
ENHANCE_YOUR_CALM = 0xB


def _stats(admin_port: int) -> dict:
    txt = urllib.request.urlopen("http://127.0.0.1:%d/stats" % admin_port, timeout=5).read()
    return {k: v for k, _, v in (line.partition(": ") for line in txt.decode().splitlines())}


def _pairs(n: int, first_sid: int = 1) -> bytes:
    out = bytearray()
    for sid in range(first_sid, first_sid + 2 * n, 2):
        out += struct.pack(">I", len(BLOCK))[1:] + b"\x01\x05" + struct.pack(">I", sid) + BLOCK
        out += b"\x00\x00\x04\x03\x00" + struct.pack(">II", sid, 8)  # RST_STREAM CANCEL
    return bytes(out)


def _goaway_codes(data: bytes) -> list[int]:
    codes, pos = [], 0
    while pos + 9 <= len(data):
        length = int.from_bytes(data[pos:pos + 3], "big")
        if data[pos + 3] == 0x7 and pos + 9 + length <= len(data):
            codes.append(struct.unpack(">I", data[pos + 13:pos + 17])[0])
        pos += 9 + length
    return codes


def _rapid_reset(port: int, pairs: int) -> bytes:
    """Send `pairs` HEADERS + RST_STREAM on one connection; what the server sent back."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    got = bytearray()

    def read():
        try:
            while d := s.recv(65536):
                got.extend(d)
        except OSError:
            pass
    t = threading.Thread(target=read, daemon=True)
    t.start()
    try:
        s.sendall(PREFACE)
        for k in range(0, pairs, 500):
            s.sendall(_pairs(500, 1 + 2 * k))
    except OSError:
        pass  # the server closed the connection: what we want
    t.join(10)
    s.close()
    return bytes(got)


def _config(port: int, upstream_port: int, admin: int, runtime: dict | None = None) -> dict:
    bs = bootstrap([listener(port)], [cluster("upstream", [("127.0.0.1", upstream_port)])],
                   admin_port=admin)
    if runtime:
        bs["layered_runtime"] = {"layers": [{"name": "static", "static_layer": runtime}]}
    return bs


def test_rapid_reset_closes_the_connection_and_memory_comes_back(upstream, proxyd_factory):
    admin = free_port()
    px = proxyd_factory(_config(free_port(), upstream.port, admin))
    worker = psutil.Process(px.worker_pids()[0])
    with H2Client(px.port) as good:
        quiet = sorted(_timed_get(good) for _ in range(30))
        rss0 = worker.memory_info().rss
        lat = []
        replies = []
        for _ in range(20):  # 20 connections x 2,000 HEADERS + RST_STREAM
            replies.append(_rapid_reset(px.port, 2000))
            lat.extend(_timed_get(good) for _ in range(3))
        rss1 = worker.memory_info().rss
    assert all(_goaway_codes(r)[-1:] == [ENHANCE_YOUR_CALM] for r in replies)
    st = _stats(admin)
    assert int(st["http.ingress_http.downstream_rq_too_many_premature_resets"]) == 20
    # each connection ended at Envoy's 250th premature reset (a read may hold more)
    assert int(st["http.ingress_http.downstream_rq_http2_total"]) < 20 * 1000
    assert int(st["http2.rx_reset"]) >= 20 * 250
    lat.sort()
    assert lat[-1] < max(3 * quiet[-2], 0.3), (quiet[-2], lat[-1])
    assert rss1 < rss0 * 1.2 + 5e6, (rss0, rss1)


def test_streams_that_get_their_response_are_not_premature(upstream, proxyd_factory):
    """600 ordinary requests and a few client resets on one connection: it stays up."""
    admin = free_port()
    px = proxyd_factory(_config(free_port(), upstream.port, admin))
    with H2Client(px.port) as c:
        for i in range(600):
            if i % 10 == 0:
                c.reset(c.request("GET", "/slow?delay=1"))
            assert c.get("/r%d" % i).status == 200
        assert c.goaway is None and not c.closed
    assert _stats(admin)["http.ingress_http.downstream_rq_too_many_premature_resets"] == "0"


def test_max_requests_per_io_cycle(upstream, proxyd_factory):
    """With Envoy's runtime http.max_requests_per_io_cycle 1, a burst of streams sent in
    one write is still served, one new stream per loop turn."""
    px = proxyd_factory(_config(free_port(), upstream.port, free_port(),
                                {"http.max_requests_per_io_cycle": 1}))
    with H2Client(px.port) as c:
        sids = [c.request("GET", "/b%d" % i) for i in range(20)]
        assert [c.wait(s).status for s in sids] == [200] * 20


def _timed_get(client: H2Client) -> float:
    t0 = time.monotonic()
    assert client.get("/good").status == 200
    return time.monotonic() - t0
