"""envoy.filters.http.grpc_web and grpc_http1_bridge in front of a real grpcio server:
gRPC-Web over HTTP/2 (binary and text, trailers folded into the body) and over HTTP/1.1
with curl; an HTTP/1.1 gRPC call through the bridge; Envoy's grpc-web call stats."""
from __future__ import annotations

import base64
import struct
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "http2"))
from h2_helpers import grpc_server, h2_cluster  # noqa: E402,F401
from h2client import H2Client  # noqa: E402

from harness import Proxyd, bootstrap, free_port, hcm, http, write_config  # noqa: E402

H = "type.googleapis.com/envoy.extensions.filters.http."


def frame(msg: bytes, flag: bytes = b"\x00") -> bytes:
    return flag + struct.pack(">I", len(msg)) + msg


def _listener(port, prefix, filt):
    h = hcm(stat_prefix=prefix, routes=[{"match": {"prefix": "/"}, "route": {"cluster": "grpc"}}])
    h["http_filters"].insert(0, filt)
    return {"name": prefix, "address": {"socket_address": {"address": "127.0.0.1",
                                                           "port_value": port}},
            "filter_chains": [{"filters": [{
                "name": "envoy.filters.network.http_connection_manager", "typed_config": h}]}]}


@pytest.fixture(scope="module")
def px(grpc_server, tmp_path_factory):
    web, bridge = free_port(), free_port()
    cfg = bootstrap([
        _listener(web, "web", {"name": "envoy.filters.http.grpc_web",
                               "typed_config": {"@type": H + "grpc_web.v3.GrpcWeb"}}),
        _listener(bridge, "bridge", {"name": "envoy.filters.http.grpc_http1_bridge",
                                     "typed_config": {"@type": H + "grpc_http1_bridge.v3.Config"}})],
        [h2_cluster("grpc", grpc_server)], free_port())
    p = Proxyd(write_config(tmp_path_factory.mktemp("grpcweb"), cfg)).start()
    p.web, p.bridge = web, bridge
    yield p
    p.cleanup()


def test_grpc_web_over_http2_binary_and_text(px):
    with H2Client(px.web) as c:
        r = c.wait(c.request("POST", "/test.Echo/Unary",
                             [("content-type", "application/grpc-web+proto")], body=frame(b"abc")))
        assert r.status == 200 and r.header("content-type") == "application/grpc-web+proto"
        body = bytes(r.body)
        assert body.startswith(frame(b"cba") + b"\x80") and b"grpc-status:0\r\n" in body
        assert b"x-trailer:t1\r\n" in body
        r = c.wait(c.request("POST", "/test.Echo/ServerStream",
                             [("content-type", "application/grpc-web-text"),
                              ("accept", "application/grpc-web-text")],
                             body=base64.b64encode(frame(b"2,4"))))
        decoded = base64.b64decode(bytes(r.body))
        assert decoded.startswith(frame(b"\x00" * 4) + frame(b"\x01" * 4) + b"\x80")
    s = urllib.request.urlopen(px.admin_url + "/stats", timeout=5).read().decode()
    assert "cluster.grpc.grpc-web.test.Echo.Unary.success: " in s


def test_grpc_web_over_http1_with_curl(px):
    out = subprocess.run(["curl", "-s", "--data-binary", "@-", "-H",
                          "content-type: application/grpc-web+proto",
                          "http://127.0.0.1:%d/test.Echo/Unary" % px.web],
                         input=frame(b"curl"), capture_output=True, timeout=10)
    assert out.stdout.startswith(frame(b"lruc") + b"\x80")


def test_http1_grpc_call_through_the_bridge(px):
    r = http(px.bridge, "POST", "/test.Echo/Unary", [("content-type", "application/grpc"),
                                                     ("te", "trailers")], body=frame(b"xyz"))
    assert r.status == 200 and r.header("grpc-status") == "0"
    assert r.header("content-length") == "8" and r.body == frame(b"zyx")
