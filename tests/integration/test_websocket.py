"""WebSocket over HTTP/1.1 through proxyd (`upgrade_configs` on the HCM and on routes),
with the real `websockets` client and server: the handshake, messages both ways, the
upgrade stats, refusals (403), half-close, and the stream idle timeout."""
from __future__ import annotations

import socket
import threading
import time
import urllib.request

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect
from websockets.sync.server import serve

from harness import cluster, free_port, route, simple_config

WS = [{"upgrade_type": "websocket"}]


def _stats(admin_port: int) -> dict:
    txt = urllib.request.urlopen("http://127.0.0.1:%d/stats" % admin_port, timeout=5).read()
    return {k: v for k, _, v in (line.partition(": ") for line in txt.decode().splitlines())}


def _wait_stat(admin_port: int, name: str, value: str, timeout: float = 10.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        s = _stats(admin_port)
        if s.get(name) == value or time.monotonic() > deadline:
            return s
        time.sleep(0.05)


@pytest.fixture
def ws_server():
    """A websockets echo server (in a thread); answers "path:<request path>" first."""
    def echo(ws):
        ws.send("path:" + ws.request.path)
        for msg in ws:
            ws.send(msg)

    server = serve(echo, "127.0.0.1", 0)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        yield server.socket.getsockname()[1]
    finally:
        server.shutdown()
        t.join(5)


def _proxy(proxyd_factory, upstream_port, routes=None, **hcm):
    port, admin = free_port(), free_port()
    cfg = simple_config(port, upstream_port, routes=routes, admin_port=admin, **hcm)
    return proxyd_factory(cfg), port, admin


def test_websocket_messages_both_ways_and_upgrade_stats(proxyd_factory, ws_server):
    px, port, admin = _proxy(proxyd_factory, ws_server, upgrade_configs=WS)
    with connect("ws://127.0.0.1:%d/chat?room=1" % port, open_timeout=10) as ws:
        assert ws.recv(timeout=10) == "path:/chat?room=1"
        assert ws.response.status_code == 101
        assert ws.response.headers["upgrade"].lower() == "websocket"
        ws.send("hello")
        assert ws.recv(timeout=10) == "hello"
        big = bytes(range(256)) * 1000
        ws.send(big)
        assert ws.recv(timeout=10) == big
        s = _stats(admin)
        assert s["http.ingress_http.downstream_cx_upgrades_total"] == "1"
        assert s["http.ingress_http.downstream_cx_upgrades_active"] == "1"
    s = _wait_stat(admin, "http.ingress_http.downstream_cx_upgrades_active", "0")
    assert s["http.ingress_http.downstream_cx_upgrades_active"] == "0"
    assert s["cluster.upstream.upstream_rq_101"] == "1"
    assert s["http.ingress_http.downstream_rq_1xx"] == "1"


def test_an_upgrade_no_config_allows_is_refused_403(proxyd_factory, ws_server):
    px, port, admin = _proxy(proxyd_factory, ws_server)
    with pytest.raises(InvalidStatus) as e:
        connect("ws://127.0.0.1:%d/" % port, open_timeout=10)
    assert e.value.response.status_code == 403
    s = _stats(admin)
    assert s["http.ingress_http.downstream_rq_ws_on_non_ws_route"] == "1"
    assert s["http.ingress_http.downstream_cx_upgrades_total"] == "0"


def test_route_upgrade_configs_override_the_hcm(proxyd_factory, ws_server):
    routes = [route("/off", upgrade_configs=[{"upgrade_type": "WebSocket", "enabled": False}]),
              route("/on", upgrade_configs=[{"upgrade_type": "websocket"}]),
              route("/")]
    # the HCM allows none: only /on upgrades
    px, port, admin = _proxy(proxyd_factory, ws_server, routes=routes)
    with connect("ws://127.0.0.1:%d/on" % port, open_timeout=10) as ws:
        assert ws.recv(timeout=10) == "path:/on"
    for path in ("/off", "/"):
        with pytest.raises(InvalidStatus) as e:
            connect("ws://127.0.0.1:%d%s" % (port, path), open_timeout=10)
        assert e.value.response.status_code == 403
    # the HCM allows it: a route can still turn it off
    px2, port2, _ = _proxy(proxyd_factory, ws_server, routes=routes, upgrade_configs=WS)
    with connect("ws://127.0.0.1:%d/" % port2, open_timeout=10) as ws:
        assert ws.recv(timeout=10) == "path:/"
    with pytest.raises(InvalidStatus):
        connect("ws://127.0.0.1:%d/off" % port2, open_timeout=10)


class RawUpgradeServer:
    """Answers an upgrade with 101, then echoes bytes until the client half-closes, then
    sends "bye" and closes: what a half-close through the tunnel must preserve."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        try:
            c, _ = self.sock.accept()
        except OSError:
            return
        with c:
            data = b""
            while b"\r\n\r\n" not in data:
                data += c.recv(4096)
            rest = data.split(b"\r\n\r\n", 1)[1]
            c.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: test\r\n"
                      b"Connection: Upgrade\r\n\r\n" + rest)
            while True:
                d = c.recv(4096)
                if not d:
                    break
                c.sendall(d)
            c.sendall(b"bye")

    def close(self):
        self.sock.close()


def test_half_close_goes_through_the_tunnel(proxyd_factory):
    up = RawUpgradeServer()
    try:
        px, port, admin = _proxy(proxyd_factory, up.port,
                                 upgrade_configs=[{"upgrade_type": "test"}])
        c = socket.create_connection(("127.0.0.1", port), timeout=10)
        c.sendall(b"GET /t HTTP/1.1\r\nHost: x\r\nUpgrade: test\r\nConnection: Upgrade\r\n\r\n"
                  b"early")
        c.sendall(b"-late")
        c.shutdown(socket.SHUT_WR)
        got = b""
        while True:
            d = c.recv(65536)
            if not d:
                break
            got += d
        c.close()
        head, _, body = got.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101 ")
        assert b"upgrade: test" in head.lower() and b"connection: upgrade" in head.lower()
        assert body == b"early-latebye"
    finally:
        up.close()


def test_an_idle_tunnel_ends_at_the_stream_idle_timeout(proxyd_factory, ws_server):
    px, port, admin = _proxy(proxyd_factory, ws_server, upgrade_configs=WS,
                             stream_idle_timeout="0.5s")
    with connect("ws://127.0.0.1:%d/" % port, open_timeout=10, ping_interval=None) as ws:
        assert ws.recv(timeout=10) == "path:/"
        s = _wait_stat(admin, "http.ingress_http.downstream_cx_upgrades_active", "0")
    assert s["http.ingress_http.downstream_cx_upgrades_active"] == "0"
    assert s["http.ingress_http.downstream_rq_idle_timeout"] == "1"


def test_an_h2c_upgrade_is_served_as_http1(proxyd_factory, upstream):
    """curl --http2 on plain HTTP asks for h2c: Envoy (and proxyd) answer over HTTP/1.1."""
    px, port, admin = _proxy(proxyd_factory, upstream.port, upgrade_configs=WS)
    c = socket.create_connection(("127.0.0.1", port), timeout=10)
    c.sendall(b"GET /h2c HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\n"
              b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n")
    got = b""
    while True:
        d = c.recv(65536)
        if not d:
            break
        got += d
    c.close()
    assert got.startswith(b"HTTP/1.1 200 ")
    assert b"upgrade" not in got.split(b"\r\n\r\n", 1)[0].lower().replace(b"connection: close", b"")
