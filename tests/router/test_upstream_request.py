"""The upstream side of the router below the process level: the ConnPool interface
(`proxyd/upstream/conn_pool.py`) and its HTTP/1 codec client over a real loopback
connection to an in-test server (no proxyd process, no mock sockets)."""
from __future__ import annotations

import os
import uuid

import gevent
import pytest
from envoy.config.cluster.v3 import cluster_pb2
from gevent import socket as gsocket

from proxyd.http.headers import Headers
from proxyd.http.message import RequestHead
from proxyd.stats import StatsStore
from proxyd.upstream.cluster import Cluster, UpstreamConnectError
from proxyd.upstream.codec_client_http1 import Http1Stream
from proxyd.upstream.conn_pool import (CONNECTION_GONE, DATA, END, HEAD, ConnPool, StreamReset,
                                       UpstreamProtocolError, UpstreamStream)
from proxyd.upstream.resource_manager import Overflow


class Server:
    """A loopback listener whose accepted connections a test drives by hand."""

    def __init__(self):
        self.sock = gsocket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self._accepting = gevent.spawn(self._accept)
        self.conns: list = []

    def _accept(self):
        while True:
            c, _ = self.sock.accept()
            self.conns.append(c)

    def conn(self, i: int = 0):
        with gevent.Timeout(5):
            while len(self.conns) <= i:
                gevent.sleep(0.01)
        return self.conns[i]

    def read_request(self, c) -> bytes:
        data = b""
        with gevent.Timeout(5):
            while b"\r\n\r\n" not in data:
                chunk = c.recv(65536)
                assert chunk, data
                data += chunk
        return data

    def close(self):
        self._accepting.kill()
        for c in self.conns:
            c.close()
        self.sock.close()


@pytest.fixture
def env():
    store = StatsStore.create("/dev/shm/proxyd-test-%s.stats" % uuid.uuid4().hex)
    store.bind(store.claim_slot(os.getpid()))
    server = Server()
    config = cluster_pb2.Cluster(name="c")
    config.connect_timeout.seconds = 2
    cluster = Cluster(config, [("127.0.0.1", server.port, 1, "")], store)
    try:
        yield cluster, server, store
    finally:
        cluster.close()
        server.close()
        store.unlink()


def stats(store) -> dict:
    return {name: value for name, _, value in store.items()}


def get(path: str = "/x", method: str = "GET") -> RequestHead:
    return RequestHead(method, path, "h", "http", "HTTP/1.1", Headers([("host", "h")]))


def events(us) -> list:
    out = []
    while True:
        ev = us.next_event()
        out.append(ev)
        if ev[0] == END:
            return out


def test_both_pools_implement_the_conn_pool_protocol(env):
    cluster, _, _ = env
    host = cluster.hosts[0]
    # runtime-checkable structurally: the names the router calls exist on both sides
    for name in ("new_stream", "close_idle"):
        assert callable(getattr(host.pool, name))
    for name in ("encode_headers", "encode_data", "encode_trailers", "next_event", "pending",
                 "interrupt", "reset", "done"):
        assert callable(getattr(Http1Stream, name)), name
        assert name in UpstreamStream.__dict__, name
    assert "new_stream" in ConnPool.__dict__


def test_http1_exchange_relays_events_and_reuses_the_connection(env):
    cluster, server, store = env
    pool = cluster.hosts[0].pool
    us = pool.new_stream()
    assert us.multiplexed is False and us.local_address.startswith("127.0.0.1:")
    us.encode_headers(get(), Headers([("host", "h"), ("x-a", "1")]), True)
    c = server.conn()
    req = server.read_request(c)
    assert req.startswith(b"GET /x HTTP/1.1\r\n") and b"x-a: 1\r\n" in req
    c.sendall(b"HTTP/1.1 100 Continue\r\n\r\n"
              b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello")
    evs = events(us)
    assert [e[0] for e in evs] == [HEAD, DATA, END]
    head = evs[0][1]
    assert head.status == 200 and evs[0][2] is False  # 100 dropped; the body follows
    assert evs[1][1] == b"hello"
    assert sum(cluster.resources.requests._total) == 0  # the stream gave its request back
    # the connection went back to the pool and carries the next exchange
    us2 = pool.new_stream()
    assert us2.conn.reused
    us2.encode_headers(get("/y"), Headers([("host", "h")]), True)
    assert server.read_request(c).startswith(b"GET /y ")
    c.sendall(b"HTTP/1.1 204 No Content\r\n\r\n")
    evs = events(us2)
    assert evs[0][0] == HEAD and evs[0][1].status == 204 and evs[0][2] is True
    s = stats(store)
    assert s["cluster.c.upstream_cx_total"] == 1
    assert s["cluster.c.upstream_cx_rx_bytes_total"] > 0
    assert s["cluster.c.upstream_cx_tx_bytes_total"] == len(req) + len(b"GET /y HTTP/1.1\r\n") \
        + len(b"host: h\r\n\r\n")


def test_http1_chunked_request_body(env):
    cluster, server, _ = env
    us = cluster.hosts[0].pool.new_stream()
    req = get("/post", "POST")
    req.chunked = True
    us.encode_headers(req, Headers([("host", "h"), ("transfer-encoding", "chunked")]), False)
    us.encode_data(b"abc", False)
    us.encode_data(b"", True)
    c = server.conn()
    data = b""
    with gevent.Timeout(5):
        while not data.endswith(b"0\r\n\r\n"):
            data += c.recv(65536)
    assert data.split(b"\r\n\r\n", 1)[1] == b"3\r\nabc\r\n0\r\n\r\n"
    us.reset()


def test_a_reused_connection_closed_before_any_byte_is_replayable(env):
    cluster, server, store = env
    pool = cluster.hosts[0].pool
    us = pool.new_stream()
    us.encode_headers(get(), Headers([("host", "h")]), True)
    c = server.conn()
    server.read_request(c)
    c.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
    events(us)
    us = pool.new_stream()  # the same, now idle-then-reused, connection
    us.encode_headers(get(), Headers([("host", "h")]), True)
    server.read_request(c)
    c.close()
    with pytest.raises(StreamReset) as e:
        us.next_event()
    assert e.value.code == CONNECTION_GONE and e.value.replayable
    us.done()
    assert stats(store)["cluster.c.upstream_cx_destroy_remote"] == 1


def test_a_fresh_connection_closed_mid_response_is_not_replayable(env):
    cluster, server, _ = env
    us = cluster.hosts[0].pool.new_stream()
    us.encode_headers(get(), Headers([("host", "h")]), True)
    c = server.conn()
    server.read_request(c)
    c.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc")
    c.close()
    assert us.next_event()[0] == HEAD
    assert us.next_event() == (DATA, b"abc")
    with pytest.raises(StreamReset) as e:
        us.next_event()
    assert not e.value.replayable


def test_bytes_beyond_the_response_keep_the_connection_out_of_the_pool(env):
    cluster, server, store = env
    pool = cluster.hosts[0].pool
    us = pool.new_stream()
    us.encode_headers(get(), Headers([("host", "h")]), True)
    c = server.conn()
    server.read_request(c)
    c.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokEXTRA")
    events(us)
    s = stats(store)
    assert s["cluster.c.upstream_cx_protocol_error"] == 1
    assert s["cluster.c.upstream_cx_destroy_local"] == 1
    assert s["cluster.c.upstream_cx_active"] == 0


def test_a_malformed_response_is_a_protocol_error(env):
    cluster, server, _ = env
    us = cluster.hosts[0].pool.new_stream()
    us.encode_headers(get(), Headers([("host", "h")]), True)
    c = server.conn()
    server.read_request(c)
    c.sendall(b"HTTP/1.1 abc nonsense\r\n\r\n")
    with pytest.raises(UpstreamProtocolError):
        us.next_event()
    us.done()


def test_reset_closes_the_connection_and_counts_a_cancel_only(env):
    cluster, server, store = env
    pool = cluster.hosts[0].pool
    us = pool.new_stream()
    us.encode_headers(get(), Headers([("host", "h")]), True)
    us.reset(False)  # a timeout or a retry
    us = pool.new_stream()
    us.encode_headers(get(), Headers([("host", "h")]), True)
    us.reset()       # the client went away
    us.reset()       # idempotent
    s = stats(store)
    assert s["cluster.c.upstream_cx_total"] == 2
    assert s["cluster.c.upstream_cx_destroy_local"] == 2
    assert s["cluster.c.upstream_rq_tx_reset"] == 1
    assert s["cluster.c.upstream_cx_active"] == 0


def test_max_requests_breaker_refuses_a_stream(env):
    cluster, server, store = env
    requests = cluster.resources.requests
    held = []
    while requests.can_create():
        requests.inc()
        held.append(1)
    try:
        with pytest.raises(Overflow):
            cluster.hosts[0].pool.new_stream()
        assert stats(store)["cluster.c.upstream_rq_active_overflow"] == 1
    finally:
        for _ in held:
            requests.dec()


def test_connect_failure_is_raised_by_new_stream(env):
    cluster, server, _ = env
    server.close()
    config = cluster_pb2.Cluster(name="gone")
    gone = Cluster(config, [("127.0.0.1", server.port, 1, "")], cluster._store)
    try:
        with pytest.raises(UpstreamConnectError) as e:
            gone.hosts[0].pool.new_stream()
        assert e.value.reason == "connection refused"
    finally:
        gone.close()


# -- HTTP/2 codec client -----------------------------------------------------------------

class H2Server:
    """Server side of one upstream HTTP/2 connection, driven by the test through
    proxyd's own sans-IO codec (server role)."""

    def __init__(self, sock):
        from proxyd.http.codec import http2 as h2c
        self.h2c = h2c
        self.sock = sock
        self.codec = h2c.Http2Codec(False)
        self.flush()

    def flush(self):
        data = self.codec.data_to_send()
        if data:
            self.sock.sendall(data)
            self.codec.written()

    def until(self, kind):
        """Read until an event of `kind` arrives; returns it."""
        with gevent.Timeout(5):
            while True:
                data = self.sock.recv(65536)
                assert data
                for ev in self.codec.receive(data):
                    if ev[0] == kind:
                        self.flush()
                        return ev
                self.flush()


def _h2_cluster(env):
    cluster, server, store = env
    from envoy.config.core.v3 import protocol_pb2  # noqa: F401 (the Any's type)
    config = cluster_pb2.Cluster(name="h2")
    config.http2_protocol_options.SetInParent()
    return Cluster(config, [("127.0.0.1", server.port, 1, "")], store)


def test_http2_stream_relays_events_and_acknowledges_after_the_next_ask(env):
    _, server, store = env
    cluster = _h2_cluster(env)
    try:
        pool = cluster.hosts[0].h2pool
        us = pool.new_stream()
        assert us.multiplexed is True
        req = get("/h2")
        req.headers.add("te", "trailers")
        us.encode_headers(req, Headers([("host", "h"), ("x-a", "1")]), True)
        srv = H2Server(server.conn())
        h2c = srv.h2c
        ev = srv.until(h2c.HEADERS)
        sid, head = ev[1], dict(ev[2])
        assert head[":method"] == "GET" and head[":path"] == "/h2" and head[":authority"] == "h"
        assert head["x-a"] == "1" and head["te"] == "trailers" and "host" not in head
        srv.codec.send_headers(sid, [(":status", "200"), ("content-length", "3")], False)
        srv.codec.send_data(sid, b"abc", False)
        srv.codec.send_headers(sid, [("grpc-status", "0")], True)
        srv.flush()
        ev = us.next_event()
        assert ev[0] == HEAD and ev[1].status == 200 and ev[1].content_length == 3
        assert us.next_event() == (DATA, b"abc")
        ev = us.next_event()  # acknowledges the DATA before waiting for more
        assert ev[0] == 3 and ev[1].get("grpc-status") == "0"  # TRAILERS
        assert us.next_event()[0] == END
        us.done()
        assert sum(cluster.resources.requests._total) == 0
    finally:
        cluster.close()


def test_http2_stream_reset_by_the_upstream(env):
    _, server, _ = env
    cluster = _h2_cluster(env)
    try:
        us = cluster.hosts[0].h2pool.new_stream()
        us.encode_headers(get(), Headers([("host", "h")]), True)
        srv = H2Server(server.conn())
        sid = srv.until(srv.h2c.HEADERS)[1]
        srv.codec.reset(sid, srv.h2c.REFUSED_STREAM)
        srv.flush()
        with pytest.raises(StreamReset) as e:
            us.next_event()
        assert e.value.code == srv.h2c.REFUSED_STREAM and e.value.replayable
    finally:
        cluster.close()
