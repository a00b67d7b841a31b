"""The global rate limit (envoy.filters.http.ratelimit) side by side with real Envoy 1.40,
both asking the same rate-limit service (grpcio, fixed windows in a real redis-server):
statuses, the 429's headers and body, X-RateLimit-* headers, what the service was asked
(descriptors in action order), flags and details, and stats."""
from __future__ import annotations

import time

import pytest

from ratelimit_service import RateLimitService, RedisServer

RL = "type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit"
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
  - name: rls
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {http2_protocol_options: {}}
    load_assignment:
      cluster_name: rls
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address:
        {address: 127.0.0.1, port_value: RLS_PORT}}}}]}]
  - name: soft
    connect_timeout: 1s
    load_assignment:
      cluster_name: soft
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address:
        {address: 127.0.0.1, port_value: $upstream}}}}]}]
  - name: rls_dead
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {http2_protocol_options: {}}
    load_assignment:
      cluster_name: rls_dead
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address:
        {address: 127.0.0.1, port_value: $closed}}}}]}]
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
              log_format: {text_format_source: {inline_string: "%REQ(:PATH)% %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS%\\n"}}
          route_config:
            virtual_hosts:
            - name: vh
              domains: ["*"]
              rate_limits: [{actions: [{generic_key: {descriptor_value: vhost}}]}]
              routes:
              - match: {prefix: "/api"}
                route:
                  cluster: upstream
                  rate_limits: [{actions: [{generic_key: {descriptor_value: api}}]}]
              - match: {prefix: "/user"}
                route:
                  cluster: upstream
                  rate_limits:
                  - actions:
                    - {generic_key: {descriptor_value: user}}
                    - {request_headers: {header_name: x-user, descriptor_key: user}}
                  - actions: [{header_value_match: {descriptor_value: admin, headers: [{name: x-admin, present_match: true}]}}]
              - match: {prefix: "/broken"}
                route:
                  cluster: upstream
                  rate_limits: [{actions: [{generic_key: {descriptor_value: broken}}]}]
              - match: {prefix: "/both"}
                route:
                  cluster: upstream
                  rate_limits: [{actions: [{generic_key: {descriptor_value: both}}]}]
                typed_per_filter_config:
                  envoy.filters.http.ratelimit:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimitPerRoute
                    vh_rate_limits: INCLUDE
                    domain: other
              - match: {prefix: "/novh"}
                route: {cluster: upstream}
                typed_per_filter_config:
                  envoy.filters.http.ratelimit:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimitPerRoute
                    vh_rate_limits: IGNORE
              - match: {prefix: "/masked"}
                route:
                  cluster: upstream
                  rate_limits:
                  - actions: [{masked_remote_address: {v4_prefix_mask_len: 24}}]
                    hits_addend: {number: 3}
              - match: {prefix: "/stage1"}
                route:
                  cluster: upstream
                  rate_limits: [{stage: 1, actions: [{generic_key: {descriptor_value: api}}]}]
              - match: {prefix: "/"}
                route: {cluster: upstream}
          http_filters:
          - name: envoy.filters.http.ratelimit
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit
              domain: web
              timeout: 1s
              enable_x_ratelimit_headers: DRAFT_VERSION_03
              response_headers_to_add: [{header: {key: x-limited-by, value: web}}]
              rate_limit_service:
                transport_api_version: V3
                grpc_service: {envoy_grpc: {cluster_name: rls}}
          - name: envoy.filters.http.router
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}
  - name: soft
    address: {socket_address: {address: 127.0.0.1, port_value: $soft_listener}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ing_soft
          route_config:
            virtual_hosts:
            - name: vh
              domains: ["*"]
              routes:
              - match: {prefix: "/"}
                route:
                  cluster: soft
                  rate_limits: [{actions: [{generic_key: {descriptor_value: soft}}]}]
          http_filters:
          - name: envoy.filters.http.ratelimit
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit
              domain: web
              timeout: 1s
              filter_enforced: {default_value: {numerator: 0}, runtime_key: rl_soft}
              rate_limit_service:
                transport_api_version: V3
                grpc_service: {envoy_grpc: {cluster_name: rls}}
          - name: envoy.filters.http.router
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}
  - name: deny
    address: {socket_address: {address: 127.0.0.1, port_value: $deny_listener}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ing_deny
          route_config:
            virtual_hosts:
            - name: vh
              domains: ["*"]
              routes:
              - match: {prefix: "/"}
                route:
                  cluster: upstream
                  rate_limits: [{actions: [{destination_cluster: {}}]}]
          http_filters:
          - name: envoy.filters.http.ratelimit
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit
              domain: web
              failure_mode_deny: true
              disable_x_envoy_ratelimited_header: true
              rate_limit_service:
                transport_api_version: V3
                grpc_service: {envoy_grpc: {cluster_name: rls_dead}}
          - name: envoy.filters.http.router
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}
"""

LIMITS = {("web", "generic_key=api"): (2, "MINUTE"),
          ("web", "generic_key=user|user=carol"): (1, "HOUR"),
          ("web", "header_match=admin"): (5, "HOUR"),
          ("web", "generic_key=vhost"): (1, "HOUR"),
          ("web", "masked_remote_address=127.0.0.0/24"): (4, "HOUR"),
          ("other", "generic_key=both"): (1, "HOUR"), ("web", "generic_key=soft"): (1, "HOUR"), ("other", "generic_key=vhost"): (5, "HOUR")}
REQUESTS = [("/api/1", []), ("/api/2", []), ("/api/3", []), ("/user", [("x-user", "carol")]),
            ("/user", [("x-user", "carol"), ("x-admin", "1")]), ("/user", []),
            ("/broken", []), ("/masked", []), ("/masked", []), ("/both", []), ("/novh", []), ("/stage1", []), ("/other", []), ("/other", [])]
STATS = ("cluster.soft.ratelimit.", "cluster.upstream.ratelimit.", "cluster.upstream.upstream_rq_4",
         "cluster.upstream.upstream_rq_5", "cluster.rls.upstream_rq_total")


@pytest.fixture(scope="module")
def rls():
    redis_server = RedisServer()
    svc = RateLimitService(redis_server.port, LIMITS, over_body=b"slow down")
    yield svc
    svc.stop()
    redis_server.stop()


@pytest.fixture(scope="module")
def pair(pair_factory, rls):
    return pair_factory(TEMPLATE.replace("RLS_PORT", str(rls.port)))


def _exchange(side, rls):
    rls.reset()
    out = []
    for path, headers in REQUESTS:
        r = side.http(path, headers=headers)
        seen = {}
        if r.status == 200:
            echo = {k.lower(): v for k, v in r.json()["headers"]}
            seen = {"x-rls-checked": echo.get("x-rls-checked")}
        out.append((path, r.status, r.body if r.status != 200 else b"",
                    r.header("x-envoy-ratelimited"), r.header("x-rls-said"),
                    r.header("x-limited-by"),
                    r.header("x-ratelimit-limit"), r.header("x-ratelimit-remaining"),
                    r.header("x-ratelimit-reset") is not None, seen))
    out += [side.http("/s", port="soft_listener").status for _ in range(2)]
    d = side.http("/x", port="deny_listener")
    out.append((d.status, d.body, d.header("x-envoy-ratelimited")))
    return out, list(rls.seen)


def _lines(side, n):
    deadline = time.monotonic() + 8
    while True:
        lines = side.read("access.log").splitlines()
        if len(lines) >= n or time.monotonic() > deadline:
            return lines
        time.sleep(0.05)


def _stats(side):
    text = side.admin("/stats").body.decode()
    return {k: v for k, v in (ln.split(": ", 1) for ln in text.splitlines() if ": " in ln)
            if k.startswith(STATS) and v != "0"}


def test_global_rate_limit_matches_envoy(pair, rls):
    envoy, proxyd = pair.both(lambda s: _exchange(s, rls))
    assert proxyd[0] == envoy[0]
    assert proxyd[1] == envoy[1]           # the same descriptors, in the same order
    assert {e[1] for e in envoy[0][:len(REQUESTS)]} == {200, 429}
    envoy_log, proxyd_log = pair.both(lambda s: _lines(s, len(REQUESTS)))
    assert proxyd_log == envoy_log
    envoy_stats, proxyd_stats = pair.both(_stats)
    assert proxyd_stats == envoy_stats
