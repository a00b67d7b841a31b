"""The filter chain contract on real sockets.

In this process, on gevent: a sniffing read+write filter in front of tcp_proxy as the
terminal filter, over a real client, a real FilterChainConnection and a real upstream
server. Through a proxyd process: a chain that is not HCM or tcp_proxy alone (Envoy's
echo filter) is built by the listener through the registry and served by the manager.
"""
from __future__ import annotations

import os
import socket
import uuid

import gevent
import gevent.event
import pytest
from gevent.server import StreamServer

from harness import bootstrap, cluster, free_port, wait_port
from envoy.config.cluster.v3.cluster_pb2 import Cluster
from envoy.extensions.filters.network.tcp_proxy.v3.tcp_proxy_pb2 import TcpProxy as TcpProxyConfig
from proxyd.config import loader
from proxyd.network.connection import FilterChainConnection
from proxyd.network.filter import FilterStatus
from proxyd.network.filters.tcp_proxy import TcpProxy
from proxyd.stats import StatsStore
from proxyd.upstream.cluster_manager import ClusterManager

ECHO = "type.googleapis.com/envoy.extensions.filters.network.echo.v3.Echo"


class Sniffer:
    """Counts bytes each way and never changes them (a Mongo-like sniffing filter)."""

    def __init__(self, seen):
        self.seen = seen

    def initialize_read_filter_callbacks(self, callbacks):
        self.seen["connection"] = callbacks.connection.id

    def on_new_connection(self):
        return FilterStatus.CONTINUE

    def on_data(self, data, end_stream):
        self.seen["read"] = self.seen.get("read", b"") + data
        self.seen["read_end"] = end_stream or self.seen.get("read_end", False)
        return FilterStatus.CONTINUE

    def on_write(self, data, end_stream):
        self.seen["written"] = self.seen.get("written", b"") + data
        return FilterStatus.CONTINUE


class Ctx:
    def __init__(self, stats):
        self.stats = stats
        self.cluster_manager = ClusterManager(stats)


class Downstream:
    """What the listener hands a filter chain (listener.manager.DownstreamConnection)."""

    _ids = iter(range(1, 10**6))

    def __init__(self, sock, addr):
        self.sock, self.id = sock, next(self._ids)
        self.remote_address = "%s:%d" % addr
        self.local_address = "127.0.0.1:0"
        self.requested_server_name = ""
        self.protocol = None


@pytest.fixture
def ctx():
    stats = StatsStore.create("/dev/shm/proxyd-fc-test-%s.stats" % uuid.uuid4().hex)
    stats.bind(stats.claim_slot(os.getpid(), "worker"))
    yield Ctx(stats)
    stats.unlink()


def upper_upstream():
    """A gevent server that answers each chunk upper-cased and ends after the client does."""
    def handle(sock, _addr):
        while True:
            data = sock.recv(65536)
            if not data:
                sock.sendall(b"<bye>")
                sock.shutdown(socket.SHUT_WR)
                return
            sock.sendall(data.upper())
    server = StreamServer(("127.0.0.1", 0), handle)
    server.start()
    return server


def client(port, payloads):
    """A blocking client in a real thread: send, read each reply, half-close, read to EOF."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        got = []
        for p in payloads:
            s.sendall(p)
            buf = b""
            while len(buf) < len(p):
                buf += s.recv(65536)
            got.append(buf)
        s.shutdown(socket.SHUT_WR)
        tail = b""
        while chunk := s.recv(65536):
            tail += chunk
        return got, tail


def test_sniffer_in_front_of_tcp_proxy_sees_both_directions(ctx):
    up = upper_upstream()
    cfg = loader.parse_dict(cluster("up", [("127.0.0.1", up.server_port)]), Cluster())
    ctx.cluster_manager.apply([cfg], {"up": [("127.0.0.1", up.server_port, 1, "")]})
    tcp = TcpProxy(loader.parse_dict({"stat_prefix": "t", "cluster": "up"},
                                     TcpProxyConfig()), ctx)
    seen, closed = {}, []

    def serve(sock, addr):
        conn = FilterChainConnection(Downstream(sock, addr),
                                     [lambda fm: fm.add_filter(Sniffer(seen)), tcp])
        conn.serve()
        closed.append(conn.closed)
    front = StreamServer(("127.0.0.1", 0), serve)
    front.start()
    try:
        result = gevent.get_hub().threadpool.spawn(client, front.server_port, [b"hello", b"mongo"])
        got, tail = result.get(timeout=10)
        gevent.sleep(0.1)
    finally:
        front.stop()
        up.stop()
    assert got == [b"HELLO", b"MONGO"]
    assert tail == b"<bye>"                  # the upstream's reply after our half-close
    assert seen["read"] == b"hellomongo" and seen["read_end"] is True
    assert seen["written"] == b"HELLOMONGO<bye>"
    assert closed == [True]
    totals = {n: v for n, _k, v in ctx.stats.items()}
    assert totals["tcp.t.downstream_cx_total"] == 1
    assert totals["tcp.t.downstream_cx_rx_bytes_total"] == 10
    assert totals["tcp.t.downstream_cx_tx_bytes_total"] == 15
    assert totals["cluster.up.upstream_cx_destroy_remote"] + \
        totals["cluster.up.upstream_cx_destroy_local"] == 1


def test_no_upstream_host_closes_the_downstream(ctx):
    tcp = TcpProxy(loader.parse_dict({"stat_prefix": "t", "cluster": "missing"},
                                     TcpProxyConfig()), ctx)

    def serve(sock, addr):
        FilterChainConnection(Downstream(sock, addr), [tcp]).serve()
    front = StreamServer(("127.0.0.1", 0), serve)
    front.start()
    try:
        got, tail = gevent.get_hub().threadpool.spawn(client, front.server_port, []).get(timeout=10)
    finally:
        front.stop()
    assert tail == b""
    assert {n: v for n, _k, v in ctx.stats.items()}["tcp.t.downstream_cx_no_route"] == 1


def test_listener_builds_a_managed_chain_through_the_registry(proxyd_factory):
    port = free_port()
    cfg = bootstrap([{"name": "echo", "address": {"socket_address": {"address": "127.0.0.1",
                                                                      "port_value": port}},
                      "filter_chains": [{"filters": [{"name": "envoy.filters.network.echo",
                                                      "typed_config": {"@type": ECHO}}]}]}])
    proxyd_factory(cfg)
    wait_port(port)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"ping\r\n")
        assert s.recv(100) == b"ping\r\n"
        s.sendall(b"x" * 200000)
        buf = b""
        while len(buf) < 200000:
            buf += s.recv(65536)
        assert buf == b"x" * 200000
        s.shutdown(socket.SHUT_WR)
        assert s.recv(100) == b""            # no half-close without a filter asking: closed


def test_idle_timeout_closes_both_sides_while_the_upstream_reader_waits(ctx):
    upstream_closed = gevent.event.Event()

    def silent(sock, _addr):
        while sock.recv(65536):
            pass
        upstream_closed.set()
    up = StreamServer(("127.0.0.1", 0), silent)
    up.start()
    cfg = loader.parse_dict(cluster("up", [("127.0.0.1", up.server_port)]), Cluster())
    ctx.cluster_manager.apply([cfg], {"up": [("127.0.0.1", up.server_port, 1, "")]})
    tcp = TcpProxy(loader.parse_dict({"stat_prefix": "t", "cluster": "up", "idle_timeout": "0.3s"},
                                     TcpProxyConfig()), ctx)

    def serve(sock, addr):
        FilterChainConnection(Downstream(sock, addr), [tcp]).serve()
    front = StreamServer(("127.0.0.1", 0), serve)
    front.start()

    def idle_client(port):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"hi")
            return s.recv(10)          # nothing comes; the proxy closes after 0.3 s
    try:
        got = gevent.get_hub().threadpool.spawn(idle_client, front.server_port).get(timeout=10)
        assert upstream_closed.wait(timeout=5)
    finally:
        front.stop()
        up.stop()
    assert got == b""
    totals = {n: v for n, _k, v in ctx.stats.items()}
    assert totals["tcp.t.idle_timeout"] == 1
    assert totals["cluster.up.upstream_cx_destroy_local"] == 1
    assert totals["cluster.up.upstream_cx_active"] == 0
