"""max_stream_duration through a real proxyd, HTTP/1.1 and HTTP/2: the HCM's
(common_http_protocol_options) and the route's (RouteAction.max_stream_duration), which
replaces it (0 turns it off) and replaces the route timeout too; a gRPC request's
grpc-timeout capped by grpc_timeout_header_max, less grpc_timeout_header_offset, is both
the limit and what the upstream is told. Expiry: 504 "downstream duration timeout"
(gRPC: DEADLINE_EXCEEDED), 408 while the request is still arriving, a reset once the
response started; downstream_rq_max_duration_reached counts each."""
from __future__ import annotations

import sys
import urllib.request
from pathlib import Path

import pytest

from harness import Conn, free_port, route, simple_config

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "http2"))
from h2client import H2Client  # noqa: E402

GRPC = [("content-type", "application/grpc"), ("te", "trailers")]


def _stats(admin_port: int) -> dict:
    txt = urllib.request.urlopen("http://127.0.0.1:%d/stats" % admin_port, timeout=5).read()
    return {k: v for k, _, v in (line.partition(": ") for line in txt.decode().splitlines())}


@pytest.fixture
def px(upstream, proxyd_factory):
    admin = free_port()
    routes = [route("/off", max_stream_duration={"max_stream_duration": "0s"}),
              route("/long", timeout="0.2s", max_stream_duration={"max_stream_duration": "5s"}),
              route("/grpc", max_stream_duration={"grpc_timeout_header_max": "0.4s",
                                                  "grpc_timeout_header_offset": "0.1s"}),
              route("/")]
    p = proxyd_factory(simple_config(
        free_port(), upstream.port, routes=routes, admin_port=admin,
        common_http_protocol_options={"max_stream_duration": "0.5s"}))
    p.admin = admin
    return p


def _told(r) -> dict:
    return {k: v for k, v in r.json()["headers"] if k in ("grpc-timeout",
                                                          "x-envoy-expected-rq-timeout-ms")}


def test_http1_stream_durations(px):
    with Conn(px.port) as c:
        r = c.request(path="/x?delay=3")
        assert (r.status, r.body) == (504, b"downstream duration timeout")
        r = c.request(path="/off/x?delay=1")   # the route turns the HCM's limit off
        assert r.status == 200 and _told(r) == {}
        r = c.request(path="/long/x?delay=0.6")  # ... and the 0.2 s route timeout with it
        assert r.status == 200 and _told(r) == {}
        r = c.request(path="/grpc/x", headers=GRPC + [("grpc-timeout", "10S")])
        assert r.status == 200 and _told(r) == {"grpc-timeout": "300m"}
        r = c.request(path="/grpc/x?delay=2", headers=GRPC + [("grpc-timeout", "10S")])
        assert (r.status, r.header("grpc-status"), r.header("grpc-message")) == (
            200, "4", "downstream duration timeout")
        # not gRPC (no grpc-timeout): the HCM's limit
        r = c.request(path="/grpc/x?delay=3")
        assert r.status == 504
        # a request body that stops arriving: 408
        c.send(b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
        r = c.read_response()
        assert (r.status, r.body) == (408, b"downstream duration timeout")
    with Conn(px.port) as c:
        c.send(b"GET /x?size=100&chunked=1&chunk=10&interval=0.2 HTTP/1.1\r\nHost: x\r\n\r\n")
        with pytest.raises((ConnectionError, ValueError, AssertionError)):
            c.read_response()
    st = _stats(px.admin)
    assert st["http.ingress_http.downstream_rq_max_duration_reached"] == "5"
    assert st["http.ingress_http.downstream_rq_tx_reset"] == "1"


def test_http2_stream_durations(px):
    with H2Client(px.port) as c:
        r = c.get("/x?delay=3")
        assert (r.status, bytes(r.body)) == (504, b"downstream duration timeout")
        assert c.get("/off/x?delay=1").status == 200
        r = c.get("/grpc/x?delay=2", headers=GRPC + [("grpc-timeout", "10S")])
        assert r.status == 200 and dict(r.headers).get("grpc-status") == "4"
        sid = c.request("POST", "/x", end_stream=False)
        r = c.wait(sid)
        assert (r.status, bytes(r.body)) == (408, b"downstream duration timeout")
        r = c.get("/x?size=100&chunked=1&chunk=10&interval=0.2")
        assert r.status == 200 and r.reset_code is not None and len(r.body) < 100
        assert c.get("/x").status == 200 and not c.closed
    assert _stats(px.admin)["http.ingress_http.downstream_rq_max_duration_reached"] == "4"
