"""gRPC-Web and the gRPC HTTP/1.1 bridge next to real Envoy 1.40, both in front of the
same grpcio server: gRPC-Web binary and text calls (HTTP/1.1), trailers folded into the
body, errors; HTTP/1.1 gRPC calls bridged (status and grpc-status in the headers); the
same bytes, headers and per-cluster gRPC stats."""
from __future__ import annotations

import base64
import struct
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "http2"))
from h2_helpers import grpc_server  # noqa: E402,F401  (the fixture)

from compare import response_diff  # noqa: E402

TEMPLATE = """
admin:
  address: {socket_address: {address: 127.0.0.1, port_value: $admin}}
static_resources:
  listeners:
  - name: web
    address: {socket_address: {address: 127.0.0.1, port_value: $listener}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: web
          route_config:
            virtual_hosts:
            - name: vh
              domains: ["*"]
              routes:
              - match: {prefix: "/"}
                route: {cluster: grpc}
          http_filters:
          - name: envoy.filters.http.grpc_web
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.grpc_web.v3.GrpcWeb}
          - name: envoy.filters.http.router
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}
  - name: bridge
    address: {socket_address: {address: 127.0.0.1, port_value: $bridge}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: bridge
          route_config:
            virtual_hosts:
            - name: vh
              domains: ["*"]
              routes:
              - match: {prefix: "/"}
                route: {cluster: grpc}
          http_filters:
          - name: envoy.filters.http.grpc_http1_bridge
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.grpc_http1_bridge.v3.Config}
          - name: envoy.filters.http.router
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}
  clusters:
  - name: grpc
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {http2_protocol_options: {}}
    load_assignment:
      cluster_name: grpc
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: GRPC_PORT}}}}]}]
"""


def frame(msg: bytes) -> bytes:
    return b"\x00" + struct.pack(">I", len(msg)) + msg


WEB = [("content-type", "application/grpc-web+proto"), ("x-grpc-web", "1")]
TEXT = [("content-type", "application/grpc-web-text"), ("accept", "application/grpc-web-text")]
# grpcio resets a call without `te: trailers`, which HTTP/1.1 clients of the bridge send
GRPC = [("content-type", "application/grpc"), ("te", "trailers")]
# (name, port, path, headers, body)
CASES = [
    ("web_unary", "listener", "/test.Echo/Unary", WEB, frame(b"hello")),
    ("web_text", "listener", "/test.Echo/Unary", TEXT, base64.b64encode(frame(b"text mode!"))),
    ("web_fail", "listener", "/test.Echo/Unary", WEB, frame(b"fail")),
    ("web_stream", "listener", "/test.Echo/ServerStream", WEB, frame(b"3,5")),
    ("web_stream_text", "listener", "/test.Echo/ServerStream", TEXT,
     base64.b64encode(frame(b"2,7"))),
    ("bridge_unary", "bridge", "/test.Echo/Unary", GRPC,
     frame(b"bridge")),
    ("bridge_fail", "bridge", "/test.Echo/Unary", GRPC,
     frame(b"fail")),
    ("bridge_stream", "bridge", "/test.Echo/ServerStream", GRPC, frame(b"2,3")),
]


def _stats(side) -> dict:
    out = {}
    for line in side.admin("/stats").body.decode().splitlines():
        name, _, value = line.partition(": ")
        if name.startswith(("cluster.grpc.grpc.", "cluster.grpc.grpc-web.")):
            out[name] = value
    return out


@pytest.fixture(scope="module")
def pair(pair_factory, grpc_server):
    return pair_factory(TEMPLATE.replace("GRPC_PORT", str(grpc_server)))


def test_grpc_web_and_http1_bridge_match_envoy(pair):
    diffs, seen = [], {}
    for name, port, path, headers, body in CASES:
        e, p = pair.both(lambda s: s.http(path, port=port, method="POST", headers=headers,
                                          body=body))
        diffs += ["%s: %s" % (name, d) for d in response_diff(e, p)]
        seen[name] = e
    assert seen["web_unary"].body.startswith(frame(b"olleh") + b"\x80")
    assert seen["bridge_unary"].header("grpc-status") == "0"   # trailers moved up
    assert seen["bridge_fail"].header("grpc-status") == "5"    # trailers-only, as it came
    stats = pair.both(_stats)
    assert stats[0]
    diffs += ["stat %s: envoy %s, proxyd %s" % (k, stats[0].get(k), stats[1].get(k))
              for k in sorted(set(stats[0]) | set(stats[1])) if stats[0].get(k) != stats[1].get(k)]
    assert diffs == [], "\n".join(diffs)
