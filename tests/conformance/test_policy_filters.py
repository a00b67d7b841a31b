"""Local rate limit and RBAC, side by side with real Envoy 1.40 on one bootstrap: the
same statuses, bodies, headers, access-log flags and details, and stats."""
from __future__ import annotations

import time

import pytest

TEMPLATE = """
admin: {address: {socket_address: {address: 127.0.0.1, port_value: $admin}}}
static_resources:
  clusters:
  - name: upstream
    connect_timeout: 1s
    load_assignment:
      cluster_name: upstream
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address:
        {address: 127.0.0.1, port_value: $upstream}}}}]}]
  listeners:
  - name: l
    address: {socket_address: {address: 127.0.0.1, port_value: $listener}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ing
          access_log:
          - name: f
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: $dir/access.log
              log_format: {text_format_source: {inline_string: "%REQ(:METHOD)% %REQ(:PATH)% %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %DYNAMIC_METADATA(envoy.filters.http.rbac:shadow_engine_result)%\\n"}}
          route_config:
            virtual_hosts:
            - name: vh
              domains: ["*"]
              routes:
              - match: {prefix: "/rl"}
                route: {cluster: upstream}
                typed_per_filter_config:
                  lrl:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
                    stat_prefix: route_rl
                    token_bucket: {max_tokens: 2, tokens_per_fill: 1, fill_interval: 3600s}
                    filter_enabled: {default_value: {numerator: 100}, runtime_key: rl_on}
                    filter_enforced: {default_value: {numerator: 100}, runtime_key: rl_enforced}
                    response_headers_to_add: [{header: {key: x-limited, value: "yes"}}]
              - match: {prefix: "/shadow-rl"}
                route: {cluster: upstream}
                typed_per_filter_config:
                  lrl:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
                    stat_prefix: shadow_rl
                    status: {code: 503}
                    token_bucket: {max_tokens: 1, tokens_per_fill: 1, fill_interval: 3600s}
                    filter_enabled: {default_value: {numerator: 100}, runtime_key: srl_on}
              - match: {prefix: "/open"}
                route: {cluster: upstream}
                typed_per_filter_config:
                  rbac: {"@type": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBACPerRoute}
              - match: {prefix: "/"}
                route: {cluster: upstream}
          http_filters:
          - name: rbac
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC
              rules:
                action: ALLOW
                policies:
                  allow-get:
                    permissions: [{header: {name: ":method", string_match: {exact: GET}}}]
                    principals: [{any: true}]
                  admin-local:
                    permissions: [{and_rules: {rules: [{url_path: {path: {prefix: /admin}}}, {not_rule: {destination_port: 1}}]}}]
                    principals: [{direct_remote_ip: {address_prefix: 127.0.0.0, prefix_len: 8}}]
              shadow_rules:
                action: DENY
                policies:
                  deny-secret:
                    permissions: [{url_path: {path: {suffix: /secret}}}]
                    principals: [{remote_ip: {address_prefix: 127.0.0.1, prefix_len: 32}}]
          - name: lrl
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
              stat_prefix: top_rl
              token_bucket: {max_tokens: 1, tokens_per_fill: 1, fill_interval: 3600s}
          - name: envoy.filters.http.router
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}
"""

REQUESTS = [("GET", "/rl/1"), ("GET", "/rl/2"), ("GET", "/rl/3"), ("GET", "/rl/secret"),
            ("GET", "/shadow-rl/1"), ("GET", "/shadow-rl/2"), ("POST", "/x"),
            ("POST", "/admin/x?y=1"), ("POST", "/open/x"), ("GET", "/a/secret"),
            ("GET", "/x"), ("GET", "/x")]
STATS = ("http.ing.rbac.", "route_rl.http_local_rate_limit.", "shadow_rl.http_local_rate_limit.",
         "top_rl.http_local_rate_limit.")


@pytest.fixture(scope="module")
def pair(pair_factory):
    return pair_factory(TEMPLATE)


def _exchange(side):
    out = []
    for method, path in REQUESTS:
        r = side.http(path, method=method, body=b"" if method == "POST" else None)
        out.append((method, path, r.status, r.body if r.status >= 400 else b"",
                    r.header("x-limited"), r.header("x-envoy-ratelimited"),
                    r.header("content-type") if r.status >= 400 else None))
    return out


def _lines(side, n):
    deadline = time.monotonic() + 8        # Envoy flushes access logs every second
    while True:
        lines = side.read("access.log").splitlines()
        if len(lines) >= n or time.monotonic() > deadline:
            return lines


def _stats(side):
    text = side.admin("/stats").body.decode()
    return {k: v for k, v in (ln.split(": ", 1) for ln in text.splitlines() if ": " in ln)
            if k.startswith(STATS)}


def test_rate_limit_and_rbac_match_envoy(pair):
    envoy, proxyd = pair.both(_exchange)
    assert proxyd == envoy
    assert sorted({e[2] for e in envoy}) == [200, 403, 429]   # every outcome is reached
    envoy_log, proxyd_log = pair.both(lambda s: _lines(s, len(REQUESTS)))
    assert proxyd_log == envoy_log
    envoy_stats, proxyd_stats = pair.both(_stats)
    assert {k: v for k, v in proxyd_stats.items() if k in envoy_stats} == envoy_stats


TCP_TEMPLATE = """
admin: {address: {socket_address: {address: 127.0.0.1, port_value: $admin}}}
static_resources:
  clusters:
  - name: upstream
    connect_timeout: 1s
    load_assignment:
      cluster_name: upstream
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address:
        {address: 127.0.0.1, port_value: $upstream}}}}]}]
  listeners:
  - name: tcp
    address: {socket_address: {address: 127.0.0.1, port_value: $listener}}
    filter_chains:
    - filters:
      - name: rl
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.local_ratelimit.v3.LocalRateLimit
          stat_prefix: tcp_rl
          token_bucket: {max_tokens: 2, fill_interval: 3600s}
      - name: tcp
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: tcp
          cluster: upstream
"""


def test_network_rate_limit_matches_envoy(pair_factory):
    pair = pair_factory(TCP_TEMPLATE)
    request = b"GET /n HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"

    def run(side):
        out = []
        for _ in range(5):
            data, closed = side.raw(request)
            out.append((data.split(b"\r\n", 1)[0], closed))
        text = side.admin("/stats").body.decode()
        stats = dict(ln.split(": ", 1) for ln in text.splitlines() if ": " in ln)
        return out, stats["local_rate_limit.tcp_rl.rate_limited"], \
            stats["tcp.tcp.downstream_cx_total"]

    envoy, proxyd = pair.both(run)
    assert [first[:12] for first, _ in envoy[0]] == [b"HTTP/1.1 200"] * 2 + [b""] * 3
    assert envoy[1:] == ("3", "5")     # tcp_proxy counts the closed ones too
    assert proxyd == envoy


RBAC_TCP_TEMPLATE = """
admin: {address: {socket_address: {address: 127.0.0.1, port_value: $admin}}}
static_resources:
  clusters:
  - name: upstream
    connect_timeout: 1s
    load_assignment:
      cluster_name: upstream
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address:
        {address: 127.0.0.1, port_value: $upstream}}}}]}]
  listeners:
  - name: allowed
    address: {socket_address: {address: 127.0.0.1, port_value: $listener}}
    filter_chains:
    - filters:
      - name: rbac
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC
          stat_prefix: nrbac_ok
          rules:
            action: ALLOW
            policies:
              local:
                permissions: [{destination_port: $listener}]
                principals: [{direct_remote_ip: {address_prefix: 127.0.0.1, prefix_len: 32}}]
          shadow_rules:
            action: DENY
            policies:
              nobody: {permissions: [{any: true}], principals: [{not_id: {any: true}}]}
      - name: tcp
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: tcp_ok
          cluster: upstream
  - name: denied
    address: {socket_address: {address: 127.0.0.1, port_value: $other}}
    filter_chains:
    - filters:
      - name: rbac
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC
          stat_prefix: nrbac_no
          rules:
            action: DENY
            policies:
              loopback:
                permissions: [{not_rule: {destination_ip: {address_prefix: 10.0.0.0, prefix_len: 8}}}]
                principals: [{remote_ip: {address_prefix: 127.0.0.0, prefix_len: 8}}]
      - name: tcp
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: tcp_no
          cluster: upstream
"""


def test_network_rbac_matches_envoy(pair_factory):
    pair = pair_factory(RBAC_TCP_TEMPLATE)
    request = b"GET /n HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"

    def run(side):
        out = [side.raw(request, port)[0].split(b" ", 2)[:2] for port in ("listener", "other")]
        text = side.admin("/stats").body.decode()
        stats = {k: v for k, v in (ln.split(": ", 1) for ln in text.splitlines() if ": " in ln)
                 if ".rbac." in k}
        return out, stats

    envoy, proxyd = pair.both(run)
    assert envoy[0] == [[b"HTTP/1.1", b"200"], [b""]]
    assert envoy[1]["nrbac_ok.rbac.allowed"] == "1" and envoy[1]["nrbac_no.rbac.denied"] == "1"
    assert proxyd[0] == envoy[0]
    assert {k: v for k, v in proxyd[1].items() if k in envoy[1]} == envoy[1]
