"""CONNECT beside Envoy 1.40 on one template: HTTP/1.1 and HTTP/2 CONNECT routed by
`connect_matcher`, terminated by a route's `connect_config` (a TCP connection to a real
echo service, a 200, the payload both ways) or proxied to an upstream that answers the
CONNECT itself; `allow_post`; the 404 of a CONNECT no route matches, the 403 of a
disabled one, the 503 of a refused connection. Compared: statuses and headers, relayed
bytes, how each tunnel ended, what the upstream received, the access log and stats."""
from __future__ import annotations

import time

import pytest

from tunnel_peers import H2ConnectEcho, TcpEcho, h1_connect, h2_connect

TEMPLATE = """
admin:
  address: {socket_address: {address: 127.0.0.1, port_value: $admin}}
static_resources:
  listeners:
  - name: main
    address: {socket_address: {address: 127.0.0.1, port_value: $listener}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress_http
          upgrade_configs: [{upgrade_type: CONNECT}]
          access_log:
          - name: envoy.access_loggers.file
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: $dir/access.log
              log_format: {text_format_source: {inline_string: "%REQ(:METHOD)% %REQ(:AUTHORITY)% %REQ(:PATH)% %PROTOCOL% %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %UPSTREAM_CLUSTER% %BYTES_RECEIVED% %BYTES_SENT%\\n"}}
          route_config:
            name: local_route
            virtual_hosts:
            - name: term
              domains: ["term.test:443"]
              routes:
              - match: {connect_matcher: {}}
                route: {cluster: echo, upgrade_configs: [{upgrade_type: CONNECT, connect_config: {}}]}
            - name: proxy
              domains: ["proxy.test:443"]
              routes:
              - match: {connect_matcher: {}}
                route: {cluster: connect_up}
            - name: proxy_h2
              domains: ["h2proxy.test:443"]
              routes:
              - match: {connect_matcher: {}}
                route: {cluster: connect_h2}
            - name: "off"
              domains: ["off.test:443"]
              routes:
              - match: {connect_matcher: {}}
                route: {cluster: echo, upgrade_configs: [{upgrade_type: CONNECT, enabled: false}]}
            - name: dead
              domains: ["dead.test:443"]
              routes:
              - match: {connect_matcher: {}}
                route: {cluster: dead, upgrade_configs: [{upgrade_type: CONNECT, connect_config: {}}]}
            - name: post
              domains: ["post.test"]
              routes:
              - match: {prefix: "/"}
                route: {cluster: echo, upgrade_configs: [{upgrade_type: CONNECT, connect_config: {allow_post: true}}]}
            - name: any
              domains: ["*"]
              routes:
              - match: {prefix: "/"}
                route: {cluster: echo}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}
  clusters:
  - name: echo
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: echo
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: @echo@}}}}]}]
  - name: connect_up
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: connect_up
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: @connect@}}}}]}]
  - name: connect_h2
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {http2_protocol_options: {}}
    load_assignment:
      cluster_name: connect_h2
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: @h2@}}}}]}]
  - name: dead
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: dead
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: $closed}}}}]}]
"""
STATS = ("http.ingress_http.downstream_cx_upgrades_total",
         "http.ingress_http.downstream_cx_upgrades_active",
         "http.ingress_http.downstream_rq_ws_on_non_ws_route",
         "http.ingress_http.downstream_rq_2xx", "http.ingress_http.downstream_rq_4xx",
         "http.ingress_http.downstream_rq_5xx", "http.ingress_http.downstream_rq_total",
         "http.ingress_http.downstream_rq_http1_total", "http.ingress_http.downstream_rq_http2_total",
         "http.ingress_http.downstream_rq_tx_reset", "http.ingress_http.downstream_rq_rx_reset",
         "http.ingress_http.downstream_rq_response_before_rq_complete",
         "http.ingress_http.downstream_rq_completed", "http.ingress_http.downstream_cx_total",
         "cluster.echo.upstream_cx_total", "cluster.echo.upstream_rq_total",
         "cluster.echo.upstream_rq_200", "cluster.echo.upstream_rq_completed",
         "cluster.echo.upstream_rq_pending_total", "cluster.echo.upstream_cx_destroy_local",
         "cluster.echo.upstream_cx_destroy_remote",
         "cluster.echo.upstream_cx_rx_bytes_total", "cluster.echo.upstream_cx_tx_bytes_total",
         "cluster.connect_up.upstream_rq_total", "cluster.connect_up.upstream_rq_200",
         "cluster.connect_up.upstream_cx_total", "cluster.connect_h2.upstream_rq_total",
         "cluster.connect_h2.upstream_rq_200", "cluster.connect_h2.upstream_cx_total",
         "cluster.dead.upstream_cx_connect_fail", "cluster.dead.upstream_rq_503")


@pytest.fixture(scope="module")
def peers():
    echo, connect, h2 = TcpEcho(), TcpEcho(connect=True), H2ConnectEcho()
    yield echo, connect, h2
    echo.stop()
    connect.stop()
    h2.stop()


def _upstream_head(head: bytes) -> tuple:
    """The CONNECT the upstream got: its request line and header names (values vary)."""
    lines = head.decode("latin-1").split("\r\n")
    return lines[0], sorted(h.split(":", 1)[0].lower() for h in lines[1:])


def _observe(side, connect_peer, h2_peer):
    port = side.ports["listener"]
    out = {}
    connect_peer.heads.clear()
    h2_peer.heads.clear()
    out["h1 terminated"] = h1_connect(port, "term.test:443", (b"hello", b"x" * 100000))
    out["h1 proxied"] = h1_connect(port, "proxy.test:443", (b"hello",))
    out["h1 upstream head"] = [_upstream_head(h) for h in connect_peer.heads]
    out["h1 no route"] = h1_connect(port, "other.test:443")
    out["h1 disabled"] = h1_connect(port, "off.test:443")
    out["h1 connect failure"] = h1_connect(port, "dead.test:443")
    out["h2 terminated"] = h2_connect(port, "term.test:443", b"hello" * 1000)
    out["h2 proxied"] = h2_connect(port, "proxy.test:443")
    # proxied to an HTTP/2 cluster: CONNECT over HTTP/2 upstream, its stream the tunnel
    out["h1 proxied over h2"] = h1_connect(port, "h2proxy.test:443", (b"hello", b"z" * 70000))
    out["h2 proxied over h2"] = h2_connect(port, "h2proxy.test:443")
    out["h2 upstream heads"] = [[(k, v) for k, v in h if k not in ("x-request-id",)]
                                for h in h2_peer.heads]
    r = side.http("/p", method="POST", body=b"posted", host="post.test")
    out["post"] = (r.status, r.body)
    deadline = time.monotonic() + 10
    while True:
        stats = dict(line.split(": ", 1) for line in side.admin("/stats").body.decode().splitlines()
                     if ": " in line)
        lines = side.read("access.log").splitlines()
        if (stats.get(STATS[1]) == "0" and len(lines) >= 10) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    return out, sorted(lines), {n: stats.get(n, "0") for n in STATS}


def test_connect_matches_envoy(pair_factory, peers):
    echo, connect, h2 = peers
    template = (TEMPLATE.replace("@echo@", str(echo.port)).replace("@connect@", str(connect.port))
                .replace("@h2@", str(h2.port)))
    envoy, proxyd = pair_factory(template).both(lambda side: _observe(side, connect, h2))
    seen = envoy[0]
    # the cases reach what they test
    assert seen["h1 terminated"][0] == "HTTP/1.1 200 OK"
    assert seen["h1 terminated"][2] == [b"hello", b"x" * 100000]
    assert seen["h1 proxied"][2] == [b"hello"]
    assert seen["h2 terminated"][1][0] == "200" and seen["h2 terminated"][2] == b"hello" * 1000
    assert seen["h1 no route"][0].startswith("HTTP/1.1 404")
    assert seen["h1 disabled"][0].startswith("HTTP/1.1 403")
    assert seen["h1 connect failure"][0].startswith("HTTP/1.1 503")
    assert seen["post"] == (200, b"posted")
    assert seen["h1 proxied over h2"][2] == [b"hello", b"z" * 70000]
    assert seen["h2 proxied over h2"][2] == b"hello"
    for case in seen:
        assert proxyd[0][case] == seen[case], case
    assert proxyd[1] == envoy[1]
    assert proxyd[2] == envoy[2]
