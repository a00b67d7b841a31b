"""envoy.filters.network.tcp_proxy end to end against TCP servers run by the test."""
from __future__ import annotations

import hashlib
import os
import socket
import ssl
import sys
import threading
import time

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "tls"))

from certs import CA  # noqa: E402
from harness import bootstrap, cluster, closed_port, free_port  # noqa: E402
from tlsutil import downstream_tls, stats, wait_stat  # noqa: E402

TCP_PROXY = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
FILE_LOG = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"


def pattern(n: int, seed: int = 7) -> bytes:
    """n deterministic, non-repeating-looking bytes (a repeated short pattern would hide
    reordering bugs)."""
    block = hashlib.sha256(b"%d" % seed).digest() * 2048  # 64 KiB
    out = bytearray()
    i = 0
    while len(out) < n:
        out += hashlib.sha256(block[:32] + i.to_bytes(4, "big")).digest()[:1] + block[1:]
        i += 1
    return bytes(out[:n])


class TcpServer:
    """A threaded TCP server: each connection reads until EOF, then answers with
    sha256(received) + `reply_size` bytes of pattern(), then closes. With `tls`, it
    speaks TLS. `hold=True`: read nothing, keep connections open (idle tests)."""

    def __init__(self, reply_size: int = 0, tls: ssl.SSLContext | None = None, hold=False,
                 tag: bytes = b""):
        self.reply = pattern(reply_size)
        self.tls = tls
        self.hold = hold
        self.tag = tag
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.sni = []
        self.closed = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c):
        try:
            if self.tls is not None:
                c = self.tls.wrap_socket(c, server_side=True)
            if self.hold:
                c.recv(1)  # returns when the proxy closes the connection
                self.closed.set()
                return
            h = hashlib.sha256()
            while True:
                data = c.recv(1 << 20)
                if not data:
                    break
                h.update(data)
            c.sendall(self.tag + h.digest() + self.reply)
            if self.tls is not None:
                c = c.unwrap()
            c.shutdown(socket.SHUT_WR)
            c.recv(1)
        except OSError:
            pass
        finally:
            c.close()

    def stop(self):
        self.sock.close()


def tcp_listener(port, stat_prefix="tcp", cluster_name="upstream", tls=None, **extra) -> dict:
    cfg = dict({"@type": TCP_PROXY, "stat_prefix": stat_prefix, "cluster": cluster_name}, **extra)
    if "weighted_clusters" in extra:
        del cfg["cluster"]
    fc = {"filters": [{"name": "envoy.filters.network.tcp_proxy", "typed_config": cfg}]}
    if tls:
        fc["transport_socket"] = tls
    return {"name": "tcp", "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
            "filter_chains": [fc]}


def exchange(port, payload: bytes, client_tls: ssl.SSLContext | None = None):
    """Send payload, half-close, read everything back: (reply bytes, seconds). The
    servers here answer only after EOF, so sending everything first cannot deadlock."""
    t0 = time.monotonic()
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    if client_tls is not None:
        s = client_tls.wrap_socket(s, server_hostname="a.example.com")
    s.sendall(payload)
    if client_tls is None:
        s.shutdown(socket.SHUT_WR)
    else:
        _tls_half_close(s)
    buf = bytearray()
    while True:
        try:
            d = s.recv(1 << 20)
        except ssl.SSLZeroReturnError:  # the proxy's close_notify
            break
        if not d:
            break
        buf += d
    s.close()
    return bytes(buf), time.monotonic() - t0


def _tls_half_close(s):
    """Send close_notify without waiting for the peer's (one SSL_shutdown), as a TLS 1.3
    client that is done writing does; reading goes on afterwards."""
    s.setblocking(False)
    try:
        s._sslobj.shutdown()
    except (ssl.SSLWantReadError, ssl.SSLError):
        pass
    s.settimeout(30)


@pytest.fixture
def server_factory():
    made = []

    def make(**kw):
        srv = TcpServer(**kw)
        made.append(srv)
        return srv
    yield make
    for srv in made:
        srv.stop()


def test_large_transfer_both_ways_byte_for_byte(proxyd_factory, server_factory):
    srv = server_factory(reply_size=48 << 20)
    port = free_port()
    px = proxyd_factory(bootstrap([tcp_listener(port)], [cluster("upstream", [("127.0.0.1", srv.port)])]))
    payload = pattern(32 << 20, seed=3)
    reply, _ = exchange(port, payload)
    assert reply[:32] == hashlib.sha256(payload).digest(), "upstream got different bytes"
    assert hashlib.sha256(reply[32:]).digest() == hashlib.sha256(srv.reply).digest()
    assert len(reply) == 32 + len(srv.reply)
    s = stats(px)
    assert s["tcp.tcp.downstream_cx_total"] == 1
    assert s["tcp.tcp.downstream_cx_rx_bytes_total"] == len(payload)
    assert s["tcp.tcp.downstream_cx_tx_bytes_total"] == len(reply)
    assert s["cluster.upstream.upstream_cx_total"] == 1
    assert s["cluster.upstream.upstream_cx_tx_bytes_total"] == len(payload)
    assert wait_stat(px, "cluster.upstream.upstream_cx_active", 0) == 0


def test_half_close_client_still_gets_reply(proxyd_factory, server_factory):
    """The server only answers after EOF: the proxy must pass the client's FIN on and keep
    the other direction open."""
    srv = server_factory(reply_size=1000)
    port = free_port()
    proxyd_factory(bootstrap([tcp_listener(port)], [cluster("upstream", [("127.0.0.1", srv.port)])]))
    reply, _ = exchange(port, b"ping")
    assert reply == hashlib.sha256(b"ping").digest() + srv.reply
    reply, _ = exchange(port, b"")  # immediate FIN
    assert reply == hashlib.sha256(b"").digest() + srv.reply


def test_idle_timeout_closes_and_counts(proxyd_factory, server_factory):
    srv = server_factory(hold=True)
    port = free_port()
    px = proxyd_factory(bootstrap([tcp_listener(port, idle_timeout="0.5s")],
                                  [cluster("upstream", [("127.0.0.1", srv.port)])]))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        t0 = time.monotonic()
        assert s.recv(1) == b""
        took = time.monotonic() - t0
    assert 0.4 < took < 3.0
    assert srv.closed.wait(3)
    assert wait_stat(px, "tcp.tcp.idle_timeout", 1) == 1


def test_activity_defers_idle_timeout(proxyd_factory, server_factory):
    port = free_port()
    srv = server_factory()
    proxyd_factory(bootstrap([tcp_listener(port, idle_timeout="0.6s")],
                             [cluster("upstream", [("127.0.0.1", srv.port)])]))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        for _ in range(5):
            s.sendall(b"x" * 10)
            time.sleep(0.3)
        s.shutdown(socket.SHUT_WR)
        assert s.recv(64) == hashlib.sha256(b"x" * 50).digest()


def test_no_cluster_and_connect_failure(proxyd_factory, server_factory, tmp_path):
    port, port2 = free_port(), free_port()
    log = tmp_path / "tcp.log"
    access_log = [{"name": "envoy.access_loggers.file", "typed_config": {
        "@type": FILE_LOG, "path": str(log),
        "log_format": {"text_format_source": {"inline_string":
                       "%RESPONSE_FLAGS% %UPSTREAM_HOST% %BYTES_RECEIVED% %BYTES_SENT%\n"}}}}]
    px = proxyd_factory(bootstrap(
        [tcp_listener(port, stat_prefix="nr", cluster_name="missing"),
         dict(tcp_listener(port2, stat_prefix="uf", max_connect_attempts=3, access_log=access_log),
              name="tcp2")],
        [cluster("upstream", [("127.0.0.1", closed_port())])]))
    for p in (port, port2):
        with socket.create_connection(("127.0.0.1", p), timeout=5) as s:
            assert s.recv(1) == b""
    assert wait_stat(px, "tcp.nr.downstream_cx_no_route", 1) == 1
    assert wait_stat(px, "cluster.upstream.upstream_cx_connect_fail", 3) == 3
    assert stats(px)["cluster.upstream.upstream_cx_connect_attempts_exceeded"] == 1  # as Envoy
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not (log.exists() and log.read_text()):
        time.sleep(0.05)
    assert log.read_text().split()[:1] == ["UF,URX"]       # as Envoy 1.40


def test_access_log_fields(proxyd_factory, server_factory, tmp_path):
    srv = server_factory(reply_size=100)
    port = free_port()
    log = tmp_path / "tcp.log"
    access_log = [{"name": "envoy.access_loggers.file", "typed_config": {
        "@type": FILE_LOG, "path": str(log),
        "log_format": {"text_format_source": {"inline_string":
                       "%UPSTREAM_HOST% %UPSTREAM_CLUSTER% %BYTES_RECEIVED% %BYTES_SENT% "
                       "%RESPONSE_FLAGS%\n"}}}}]
    proxyd_factory(bootstrap([tcp_listener(port, access_log=access_log)],
                             [cluster("upstream", [("127.0.0.1", srv.port)])]))
    exchange(port, b"12345")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not (log.exists() and log.read_text()):
        time.sleep(0.05)
    assert log.read_text().split() == ["127.0.0.1:%d" % srv.port, "upstream", "5", "132", "-"]


def test_weighted_clusters(proxyd_factory, server_factory):
    a, b = server_factory(tag=b"A"), server_factory(tag=b"B")
    port = free_port()
    proxyd_factory(bootstrap(
        [tcp_listener(port, weighted_clusters={"clusters": [{"name": "a", "weight": 3},
                                                            {"name": "b", "weight": 1}]})],
        [cluster("a", [("127.0.0.1", a.port)]), cluster("b", [("127.0.0.1", b.port)])]))
    tags = [exchange(port, b"")[0][:1] for _ in range(40)]
    assert set(tags) == {b"A", b"B"}
    assert tags.count(b"A") > tags.count(b"B")


def test_tls_downstream_buffered_path(proxyd_factory, server_factory, tmp_path):
    """TLS on the listener: the relay copies through user space; bytes still exact."""
    ca = CA(tmp_path)
    cert = tuple(map(str, ca.issue("a", ["a.example.com"])))
    srv = server_factory(reply_size=5 << 20)
    port = free_port()
    proxyd_factory(bootstrap([tcp_listener(port, tls=downstream_tls(cert))],
                             [cluster("upstream", [("127.0.0.1", srv.port)])]))
    ctx = ssl.create_default_context(cafile=str(ca.cert_path))
    payload = pattern(3 << 20, seed=9)
    reply, _ = exchange(port, payload, client_tls=ctx)
    assert reply[:32] == hashlib.sha256(payload).digest()
    assert reply[32:] == srv.reply


def test_upstream_tls_tcp(proxyd_factory, server_factory, tmp_path):
    ca = CA(tmp_path)
    crt, key = ca.issue("up", ["upstream.test"])
    sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    sctx.load_cert_chain(crt, key)
    seen = []
    sctx.sni_callback = lambda sock, name, ctx: seen.append(name)
    srv = server_factory(reply_size=1 << 20, tls=sctx)
    port = free_port()
    tls = {"name": "envoy.transport_sockets.tls", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
        "sni": "upstream.test",
        "common_tls_context": {"validation_context": {"trusted_ca": {"filename": str(ca.cert_path)}}}}}
    proxyd_factory(bootstrap([tcp_listener(port)],
                             [cluster("upstream", [("127.0.0.1", srv.port)], transport_socket=tls)]))
    payload = pattern(1 << 20)
    reply, _ = exchange(port, payload)
    assert reply[:32] == hashlib.sha256(payload).digest()
    assert reply[32:] == srv.reply
    assert seen == ["upstream.test"]


def test_config_errors(tmp_path):
    from harness import run_cli, write_config
    bad_log = [{"name": "f", "typed_config": {
        "@type": FILE_LOG, "path": str(tmp_path / "x.log"),
        "log_format": {"text_format_source": {"inline_string": "%NOT_AN_OPERATOR%"}}}}]
    cfg = bootstrap([tcp_listener(free_port(), access_log=bad_log)],
                    [cluster("upstream", [("127.0.0.1", 1)])])
    cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"].append(
        {"name": "tail", "typed_config": {"@type": TCP_PROXY, "stat_prefix": "t", "cluster": "x"}})
    r = run_cli("check", "-c", write_config(tmp_path, cfg))
    assert r.returncode == 1
    assert "filter_chains[0].filters[0]: tcp_proxy is a terminal filter and must be the last " \
           "network filter of its chain" in r.stderr
    assert "filters[0].typed_config.access_log[0].typed_config.log_format.text_format_source" \
           ".inline_string: unknown access log command operator %NOT_AN_OPERATOR%" in r.stderr
