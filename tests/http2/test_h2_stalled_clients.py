"""A client that never opens its HTTP/2 window (SETTINGS_INITIAL_WINDOW_SIZE 0) holds
streams with large responses: no other client may wait for it. Its streams hold their
upstream's flow-control window, so on a shared HTTP/2 upstream connection they used to
hold the connection window too, and every other stream there waited (a probe took 15 s;
Envoy 1.40 also stalls there, 11-14 s); the pool now opens new streams on a connection
with room in its receive window, and an upstream stream's window is 1 MiB by default, so
each stalled stream holds at most that in the worker."""
from __future__ import annotations

import socket
import struct
import time

import psutil

from h2_helpers import h2_cluster
from h2client import H2Client
from harness import bootstrap, cluster, free_port, listener, route, virtual_host
from proxyd.http.codec import http2 as h2c

GRPC = [("content-type", "application/grpc"), ("te", "trailers")]


def _grpc_message(payload: bytes) -> bytes:
    return b"\x00" + struct.pack(">I", len(payload)) + payload


def _stalled_client(port: int, requests: list) -> socket.socket:
    """Open a stream per (path, headers, body) with a stream window of 0; never read."""
    opts = h2c.Http2Options()
    opts.initial_stream_window_size = 0
    opts.initial_connection_window_size = 65535
    codec = h2c.Http2Codec(True, opts)
    for path, headers, body in requests:
        sid = codec.next_stream_id()
        codec.send_headers(sid, [(":method", "POST" if body else "GET"), (":scheme", "http"),
                                 (":authority", "x"), (":path", path)] + headers, not body)
        if body:
            codec.send_data(sid, body, True)
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(codec.data_to_send())
    return s


def _probe(port: int, n: int, request) -> list[float]:
    lat = []
    for _ in range(n):
        with H2Client(port) as c:
            t0 = time.monotonic()
            r = request(c)
            lat.append(time.monotonic() - t0)
            assert r.status == 200 and r.ended, (r.status, r.reset_code)
    return sorted(lat)


def _unary(c: H2Client):
    return c.wait(c.request("POST", "/test.Echo/Unary", headers=GRPC,
                            body=_grpc_message(b"hello")), 10)


def test_stalled_streams_do_not_hold_up_a_shared_http2_upstream(grpc_server, proxyd_factory):
    """Streams of 100 x 1 MB gRPC messages to clients that never open their window;
    100 probes through the same cluster stay fast, and the worker's memory bounded."""
    px = proxyd_factory(bootstrap([listener(free_port(), virtual_hosts=[virtual_host(
        [route("/", "grpc")])])], [h2_cluster("grpc", grpc_server)]))
    worker = psutil.Process(px.worker_pids()[0])
    quiet = _probe(px.port, 20, _unary)
    rss0 = worker.memory_info().rss
    stream = ("/test.Echo/ServerStream", GRPC, _grpc_message(b"100,1000000"))
    # 20 streams on one client at once, then 10 clients one after another (each used
    # to get a stream window of 16 MiB from the upstream, all of it waiting in the worker)
    socks = [_stalled_client(px.port, [stream] * 20)]
    try:
        for _ in range(10):
            time.sleep(0.2)
            socks.append(_stalled_client(px.port, [stream]))
        time.sleep(1.0)  # the upstream fills the stalled streams' windows
        lat = _probe(px.port, 100, _unary)
        rss1 = worker.memory_info().rss
    finally:
        for s in socks:
            s.close()
    assert lat[98] < max(3 * quiet[18], 0.25), (quiet[18], lat[98])
    assert rss1 - rss0 < 40e6, (rss0, rss1)


def test_stalled_streams_do_not_hold_up_http1_upstreams(upstream, proxyd_factory):
    """The same with an HTTP/1 upstream (64 KB read per stalled stream, then nothing),
    probes on the same cluster."""
    px = proxyd_factory(bootstrap([listener(free_port(), virtual_hosts=[virtual_host(
        [route("/", "upstream")])])], [cluster("upstream", [("127.0.0.1", upstream.port)])]))
    worker = psutil.Process(px.worker_pids()[0])

    def get(c):
        return c.get("/probe")
    quiet = _probe(px.port, 20, get)
    rss0 = worker.memory_info().rss
    s = _stalled_client(px.port, [("/big%d?size=8000000" % i, [], b"") for i in range(20)])
    try:
        time.sleep(1.0)
        lat = _probe(px.port, 100, get)
        rss1 = worker.memory_info().rss
    finally:
        s.close()
    assert lat[98] < max(3 * quiet[18], 0.25), (quiet[18], lat[98])
    assert rss1 - rss0 < 40e6, (rss0, rss1)
