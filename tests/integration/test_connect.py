"""CONNECT through proxyd (`connect_matcher` routes, `upgrade_configs: [{upgrade_type:
CONNECT}]`, a route's `connect_config`): curl tunnelling HTTP through proxyd to a real
HTTP upstream (`curl -p -x`), HTTP/2 CONNECT with the python `h2` client moving a
megabyte each way through flow control, CONNECT refused when no upgrade_configs allows
it, and the config errors for what proxyd does not implement. The side-by-side
comparison with Envoy is tests/conformance/test_connect_vs_envoy.py."""
from __future__ import annotations

import json
import shutil
import subprocess

import pytest
import yaml

from harness import free_port, run_cli, simple_config, virtual_host
from tunnel_peers import H2Client, TcpEcho, h1_connect, ws_frame, ws_parse

CONNECT = [{"upgrade_type": "CONNECT"}]
TERMINATE = [{"upgrade_type": "CONNECT", "connect_config": {}}]


def _config(port, upstream_port, hcm_upgrades=CONNECT, route_upgrades=TERMINATE):
    action = {"cluster": "upstream"}
    if route_upgrades is not None:
        action["upgrade_configs"] = route_upgrades
    vh = virtual_host([{"match": {"connect_matcher": {}}, "route": action},
                       {"match": {"prefix": "/"}, "route": {"cluster": "upstream"}}])
    extra = {"upgrade_configs": hcm_upgrades} if hcm_upgrades else {}
    return simple_config(port, upstream_port, virtual_hosts=[vh], **extra)


@pytest.fixture
def echo():
    e = TcpEcho()
    yield e
    e.stop()


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_tunnels_http_through_a_terminated_connect(proxyd_factory, upstream):
    port = free_port()
    proxyd_factory(_config(port, upstream.port))
    out = subprocess.run(["curl", "-sS", "-p", "-x", "http://127.0.0.1:%d" % port,
                          "-D", "-", "http://service.test:8080/through/the/tunnel"],
                         capture_output=True, timeout=30)
    assert out.returncode == 0, out.stderr
    text = out.stdout.decode("latin-1")
    # curl's CONNECT answer from proxyd, then the upstream's own response in the tunnel
    assert text.startswith("HTTP/1.1 200 OK\r\n")
    body = json.loads(text.rsplit("\r\n\r\n", 1)[1])
    assert body["path"] == "/through/the/tunnel"
    assert ["host", "service.test:8080"] in [list(h) for h in body["headers"]]


def test_h2_connect_moves_a_megabyte_each_way(proxyd_factory, echo):
    port = free_port()
    proxyd_factory(_config(port, echo.port))
    c = H2Client(port)
    try:
        sid = c.request([(":method", "CONNECT"), (":authority", "echo.test:7")])
        assert c.response(sid)[0] == "200"
        payload = bytes(range(256)) * 4096  # 1 MiB, past the 64 KiB initial windows
        sent = 0
        while sent < len(payload):  # as the stream's window allows
            window = min(c.conn.local_flow_control_window(sid), 16384)
            if window <= 0:
                c._read()
                continue
            c.send(sid, payload[sent:sent + window])
            sent += window
        c.end(sid)
        assert c.received(sid, len(payload), timeout=30) == payload
        assert c.outcome(sid) == "end"
    finally:
        c.close()


def test_h1_connect_half_close_still_gets_the_echo(proxyd_factory, echo):
    port = free_port()
    proxyd_factory(_config(port, echo.port))
    status, _, echoes, tail = h1_connect(port, "echo.test:7", (b"ping",))
    assert status == "HTTP/1.1 200 OK" and echoes == [b"ping"] and tail == b""


def test_connect_no_upgrade_config_allows_is_refused_403(proxyd_factory, echo):
    port = free_port()
    proxyd_factory(_config(port, echo.port, hcm_upgrades=None, route_upgrades=None))
    status, headers, echoes, _ = h1_connect(port, "echo.test:7")
    assert status == "HTTP/1.1 403 Forbidden" and echoes == []


def test_h2_extended_connect_needs_allow_connect(proxyd_factory, echo):
    """Without http2_protocol_options.allow_connect proxyd offers no extended CONNECT
    (SETTINGS_ENABLE_CONNECT_PROTOCOL stays 0) and resets a :protocol request."""
    port = free_port()
    proxyd_factory(_config(port, echo.port))
    c = H2Client(port)
    try:
        assert c.settings.get(8, 0) == 0
        sid = c.request([(":method", "CONNECT"), (":protocol", "websocket"), (":scheme", "http"),
                         (":path", "/chat"), (":authority", "echo.test")])
        assert c.response(sid) == ("reset", 1)
    finally:
        c.close()


@pytest.mark.parametrize("change, error", [
    (lambda cfg: _route(cfg)["route"].update(upgrade_configs=[
        {"upgrade_type": "websocket", "connect_config": {}}]),
     "Non-CONNECT upgrade type websocket has ConnectConfig"),
    (lambda cfg: _route(cfg)["route"].update(upgrade_configs=[
        {"upgrade_type": "CONNECT", "connect_config": {"proxy_protocol_config": {}}}]),
     "proxy_protocol_config"),
    (lambda cfg: cfg["static_resources"]["clusters"][0].update(
        http2_protocol_options={"allow_connect": True}),
     "allow_connect upstream"),
])
def test_config_errors(tmp_path, change, error):
    cfg = _config(free_port(), 1)
    change(cfg)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = run_cli("check", "-c", str(path))
    assert out.returncode != 0 and error in out.stdout + out.stderr, out.stdout + out.stderr


def _route(cfg):
    hcm = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    return hcm["typed_config"]["route_config"]["virtual_hosts"][0]["routes"][0]


@pytest.fixture
def ws_server():
    """A websockets echo server (in a thread); answers "path:<request path>" first."""
    import threading

    from websockets.sync.server import serve

    def echo(ws):
        ws.send("path:" + ws.request.path)
        for msg in ws:
            ws.send(msg)

    server = serve(echo, "127.0.0.1", 0)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    yield server.socket.getsockname()[1]
    server.shutdown()
    t.join(5)


def test_two_websockets_over_one_http2_connection(proxyd_factory, ws_server):
    """RFC 8441 through proxyd to a real websockets server: two extended CONNECT streams
    side by side on one connection (Envoy #38645 broke all but the first), each its own
    HTTP/1.1 upgrade upstream, a 256 KiB binary message through the stream windows."""
    port = free_port()
    cfg = simple_config(port, ws_server, upgrade_configs=[{"upgrade_type": "websocket"}],
                        http2_protocol_options={"allow_connect": True})
    proxyd_factory(cfg)
    c = H2Client(port)
    try:
        assert c.settings.get(8) == 1
        sids = [c.request([(":method", "CONNECT"), (":protocol", "websocket"),
                           (":scheme", "http"), (":path", "/room/%d" % i),
                           (":authority", "ws.test"),
                           ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
                           ("sec-websocket-version", "13")]) for i in range(2)]
        for sid in sids:
            assert c.response(sid)[0] == "200"
        big = bytes(range(256)) * 1024
        for i, sid in enumerate(sids):
            c.send(sid, ws_frame("hi %d" % i))
        for i, sid in enumerate(sids):
            frames = ws_parse(c.received(sid, len("path:/room/0") + 2 + len("hi 0") + 2))
            assert frames[:2] == [(1, b"path:/room/%d" % i), (1, b"hi %d" % i)]
        frame = ws_frame(big)
        for at in range(0, len(frame), 16384):
            while c.conn.local_flow_control_window(sids[1]) < 16384:
                c._read()
            c.send(sids[1], frame[at:at + 16384])
        have = len(c.received(sids[1], 0, 0))
        data = c.received(sids[1], have + len(big) + 10, timeout=30)
        assert ws_parse(data)[2] == (2, big)
    finally:
        c.close()


def _stats(admin_port: int) -> dict:
    import urllib.request
    txt = urllib.request.urlopen("http://127.0.0.1:%d/stats" % admin_port, timeout=5).read()
    return {k: v for k, _, v in (line.partition(": ") for line in txt.decode().splitlines())}


@pytest.mark.parametrize("protocol", ["HTTP/1.1", "HTTP/2"])
def test_an_idle_tunnel_ends_at_the_stream_idle_timeout(proxyd_factory, echo, protocol):
    """A terminated CONNECT nobody writes to ends after the HCM's stream_idle_timeout:
    HTTP/1.1 by closing the connection, HTTP/2 by resetting the stream; counted in
    downstream_rq_idle_timeout, and the upgrade is no longer active."""
    import time
    port, admin = free_port(), free_port()
    cfg = _config(port, echo.port)
    cfg["admin"] = {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}}
    hcm = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    hcm["typed_config"]["stream_idle_timeout"] = "0.5s"
    proxyd_factory(cfg)
    if protocol == "HTTP/1.1":
        import socket
        s = socket.create_connection(("127.0.0.1", port), timeout=20)
        s.sendall(b"CONNECT echo.test:7 HTTP/1.1\r\nHost: echo.test:7\r\n\r\n")
        assert s.recv(4096).startswith(b"HTTP/1.1 200 OK\r\n")
        assert s.recv(4096) == b""  # proxyd closed the idle tunnel
        s.close()
    else:
        c = H2Client(port, timeout=20)
        try:
            sid = c.request([(":method", "CONNECT"), (":authority", "echo.test:7")])
            assert c.response(sid)[0] == "200"
            assert c.outcome(sid, timeout=20).startswith("reset")
        finally:
            c.close()
    deadline = time.monotonic() + 10
    while True:
        s = _stats(admin)
        if s.get("http.ingress_http.downstream_cx_upgrades_active") == "0" or \
                time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert s["http.ingress_http.downstream_rq_idle_timeout"] == "1"
    assert s["http.ingress_http.downstream_cx_upgrades_active"] == "0"
