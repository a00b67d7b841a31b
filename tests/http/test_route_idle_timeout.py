"""RouteAction.idle_timeout through a real proxyd, over HTTP/1.1 (raw sockets, curl)
and HTTP/2: it replaces the HCM's stream_idle_timeout for the streams of that route
(shorter or longer, 0 turns it off), 504 "stream timeout" SI once the request is
complete, 408 while it is still arriving, a reset once the response started, and a
stream that keeps moving never times out."""
from __future__ import annotations

import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from harness import Conn, free_port, route, simple_config

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "http2"))
from h2client import H2Client  # noqa: E402


def _stats(admin_port: int) -> dict:
    txt = urllib.request.urlopen("http://127.0.0.1:%d/stats" % admin_port, timeout=5).read()
    return {k: v for k, _, v in (line.partition(": ") for line in txt.decode().splitlines())}


@pytest.fixture
def px(upstream, proxyd_factory):
    admin = free_port()
    routes = [route("/off", timeout="0s", idle_timeout="0s"),
              route("/short", timeout="0s", idle_timeout="0.3s"),
              route("/")]
    p = proxyd_factory(simple_config(free_port(), upstream.port, routes=routes,
                                     admin_port=admin, stream_idle_timeout="0.8s"))
    p.admin = admin
    return p


def test_http1_route_idle_timeout(px):
    with Conn(px.port) as c:
        r = c.request(path="/short/silent?delay=3")
        assert (r.status, r.body) == (504, b"stream timeout")
    with Conn(px.port) as c:
        # 0 turns the HCM's 0.8 s off for this route
        assert c.request(path="/off/slow?delay=1.5").status == 200
        # moving every 0.1 s: never idle for 0.3 s
        r = c.request(path="/short/drip?size=12&chunked=1&chunk=1&interval=0.1")
        assert (r.status, r.body) == (200, b"0123456789ab")
        # a request body that stops arriving: 408 (and the connection closes)
        c.send(b"POST /short/upload HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
        r = c.read_response()
        assert (r.status, r.body, r.header("connection")) == (408, b"stream timeout", "close")
    with Conn(px.port) as c:
        # the response started, then stalled: reset (the body never completes)
        c.send(b"GET /short/stall?size=30&chunked=1&chunk=10&interval=2 HTTP/1.1\r\nHost: x\r\n\r\n")
        with pytest.raises((ConnectionError, ValueError, AssertionError)):
            c.read_response()
    st = _stats(px.admin)
    assert st["http.ingress_http.downstream_rq_idle_timeout"] == "3"
    assert st["http.ingress_http.downstream_rq_tx_reset"] == "1"


def test_http2_route_idle_timeout(px):
    with H2Client(px.port) as c:
        r = c.get("/short/silent?delay=3")
        assert (r.status, bytes(r.body)) == (504, b"stream timeout")
        assert c.get("/off/slow?delay=1.5").status == 200
        r = c.get("/short/drip?size=12&chunked=1&chunk=1&interval=0.1")
        assert (r.status, bytes(r.body)) == (200, b"0123456789ab")
        sid = c.request("POST", "/short/upload", end_stream=False)
        r = c.wait(sid)
        assert (r.status, bytes(r.body)) == (408, b"stream timeout")
        r = c.get("/short/stall?size=30&chunked=1&chunk=10&interval=2")
        assert r.status == 200 and r.reset_code is not None and bytes(r.body) == b"0123456789"
        # the HCM's own timeout still holds on other routes
        r = c.get("/other/silent?delay=3")
        assert (r.status, bytes(r.body)) == (504, b"stream timeout")
        assert not c.closed
    assert _stats(px.admin)["http.ingress_http.downstream_rq_idle_timeout"] == "4"


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl missing")
def test_curl_sees_the_route_idle_timeout(px):
    for flag in ("--http1.1", "--http2-prior-knowledge"):
        out = subprocess.run(["curl", "-sS", flag, "-w", "\n%{http_code}",
                              px.url + "/short/silent?delay=3"], capture_output=True, timeout=20)
        assert out.stdout == b"stream timeout\n504", (flag, out)
