"""LOGICAL_DNS and ORIGINAL_DST clusters side by side with real Envoy 1.40: ORIGINAL_DST
picks the host from the proxy_protocol destination (a restored local address) or from
x-envoy-original-dst-host with use_http_header; LOGICAL_DNS resolves its one name."""
from __future__ import annotations

import socket
import time

TEMPLATE = """
admin: {address: {socket_address: {address: 127.0.0.1, port_value: $admin}}}
static_resources:
  clusters:
  - name: od
    type: ORIGINAL_DST
    lb_policy: CLUSTER_PROVIDED
    connect_timeout: 1s
    original_dst_lb_config: {use_http_header: true}
  - name: od_tcp
    type: ORIGINAL_DST
    lb_policy: CLUSTER_PROVIDED
    connect_timeout: 1s
  - name: logical
    type: LOGICAL_DNS
    dns_lookup_family: V4_ONLY
    connect_timeout: 1s
    load_assignment:
      cluster_name: logical
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address:
        {address: localhost, port_value: $upstream}}}}]}]
  listeners:
  - name: tcp
    address: {socket_address: {address: 127.0.0.1, port_value: $listener}}
    listener_filters:
    - name: pp
      typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.listener.proxy_protocol.v3.ProxyProtocol}
    filter_chains:
    - filters:
      - name: tcp
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: tcp
          cluster: od_tcp
          access_log:
          - name: f
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: $dir/tcp.log
              log_format: {text_format_source: {inline_string: "%UPSTREAM_HOST% %RESPONSE_FLAGS%\\n"}}
  - name: http
    address: {socket_address: {address: 127.0.0.1, port_value: $other}}
    filter_chains:
    - filters:
      - name: hcm
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ing
          access_log:
          - name: f
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: $dir/http.log
              log_format: {text_format_source: {inline_string: "%REQ(:PATH)% %RESPONSE_CODE% %RESPONSE_FLAGS% %UPSTREAM_HOST% %UPSTREAM_CLUSTER%\\n"}}
          route_config:
            virtual_hosts:
            - name: vh
              domains: ["*"]
              routes:
              - {match: {prefix: /logical}, route: {cluster: logical}}
              - {match: {prefix: /}, route: {cluster: od}}
          http_filters: [{name: r, typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}]
"""

REQ = b"GET /t HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n"


def _raw(port, data):
    s = socket.create_connection(("127.0.0.1", port), timeout=3)
    out = b""
    try:
        s.sendall(data)
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            out += chunk
    except OSError:
        pass
    finally:
        s.close()
    return out.split(b"\r\n", 1)[0]


def _lines(side, name, n):
    deadline = time.monotonic() + 8
    while True:
        lines = side.read(name).splitlines()
        if len(lines) >= n or time.monotonic() > deadline:
            return lines


def test_original_dst_and_logical_dns_match_envoy(pair_factory, upstream, refused_port):
    pair = pair_factory(TEMPLATE)
    up = "127.0.0.1:%d" % upstream.port

    def run(side):
        tcp = [_raw(side.ports["listener"], b"PROXY TCP4 10.1.1.1 127.0.0.1 5 %d\r\n%s"
                    % (port, REQ)) for port in (upstream.port, refused_port)]
        http = []
        for path, value in (("/hdr", up), ("/bad", "not-an-address"), ("/v6", "[::1]"),
                            ("/none", None), ("/logical", None)):
            headers = [("x-envoy-original-dst-host", value)] if value else []
            r = side.http(path, port="other", headers=headers)
            http.append((path, r.status, r.body if r.status >= 400 else b""))
        text = side.admin("/stats").body.decode()
        stats = {k: v for k, v in (ln.split(": ", 1) for ln in text.splitlines() if ": " in ln)
                 if k.startswith(("cluster.od.", "cluster.od_tcp.", "cluster.logical.")) and k.count(".") == 2
                 and k.rsplit(".", 1)[1] in ("original_dst_host_invalid", "upstream_cx_none_healthy",
                                             "upstream_rq_200", "upstream_cx_connect_fail",
                                             "upstream_rq_503", "upstream_cx_total")}
        return tcp, http, stats

    envoy, proxyd = pair.both(run)
    assert envoy[0][0] == b"HTTP/1.1 200 X"
    assert envoy[1][0][1] == 200 and envoy[1][4][1] == 200
    assert proxyd[:2] == envoy[:2]
    assert sorted(set(proxyd[2].items()) ^ set(envoy[2].items())) == []
    envoy_logs, proxyd_logs = pair.both(lambda s: (sorted(_lines(s, "tcp.log", 2)),
                                                   _lines(s, "http.log", 5)))
    assert proxyd_logs == envoy_logs
