"""CSRF, buffer and health-check filters next to real Envoy 1.40: the same template, the
same statuses, headers and bodies (the upstream's echo shows what the buffer filter sent
on), and the same stats; then POST /healthcheck/fail on both and the same again."""
from __future__ import annotations

import time

from compare import response_diff
from harness import http

H = "type.googleapis.com/envoy.extensions.filters.http."
TEMPLATE = """
admin:
  address: {socket_address: {address: 127.0.0.1, port_value: $admin}}
node: {id: n1, cluster: edge-cluster}
static_resources:
  listeners:
  - name: main
    address: {socket_address: {address: 127.0.0.1, port_value: $listener}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: main
          route_config:
            virtual_hosts:
            - name: vh
              domains: ["*"]
              routes:
              - match: {prefix: "/shadow"}
                route: {cluster: upstream}
                typed_per_filter_config:
                  envoy.filters.http.csrf:
                    "@type": %(h)scsrf.v3.CsrfPolicy
                    filter_enabled: {default_value: {numerator: 0}}
                    shadow_enabled: {default_value: {numerator: 100}}
              - match: {prefix: "/nobuf"}
                route: {cluster: upstream}
                typed_per_filter_config:
                  envoy.filters.http.buffer:
                    "@type": %(h)sbuffer.v3.BufferPerRoute
                    disabled: true
              - match: {prefix: "/bigbuf"}
                route: {cluster: upstream}
                typed_per_filter_config:
                  envoy.filters.http.buffer:
                    "@type": %(h)sbuffer.v3.BufferPerRoute
                    buffer: {max_request_bytes: 20000}
              - match: {prefix: "/"}
                route: {cluster: upstream}
          http_filters:
          - name: envoy.filters.http.health_check
            typed_config:
              "@type": %(h)shealth_check.v3.HealthCheck
              pass_through_mode: false
              headers: [{name: ":path", string_match: {exact: "/healthz"}}]
              cluster_min_healthy_percentages: {upstream: {value: 100}}
          - name: envoy.filters.http.csrf
            typed_config:
              "@type": %(h)scsrf.v3.CsrfPolicy
              filter_enabled: {default_value: {numerator: 100}}
              additional_origins: [{prefix: "https://trusted"}, {exact: "other.example:8443"}]
          - name: envoy.filters.http.buffer
            typed_config:
              "@type": %(h)sbuffer.v3.Buffer
              max_request_bytes: 1000
          - name: envoy.filters.http.router
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}
  - name: passthrough
    address: {socket_address: {address: 127.0.0.1, port_value: $pass}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: pass
          route_config:
            virtual_hosts:
            - name: vh
              domains: ["*"]
              routes:
              - match: {prefix: "/"}
                route: {cluster: upstream}
          http_filters:
          - name: envoy.filters.http.health_check
            typed_config:
              "@type": %(h)shealth_check.v3.HealthCheck
              pass_through_mode: true
              cache_time: 3600s
              headers: [{name: x-hc, present_match: true}]
          - name: hc2
            typed_config:
              "@type": %(h)shealth_check.v3.HealthCheck
              pass_through_mode: false
              headers: [{name: ":path", string_match: {prefix: "/missing"}}]
              cluster_min_healthy_percentages: {nope: {value: 50}}
          - name: envoy.filters.http.router
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}
  clusters:
  - name: upstream
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: upstream
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: $upstream}}}}]}]
""".replace("%(h)s", H)

ORIGIN = "http://example.com"   # the harness sends Host: example.com
# (name, method, path, headers, body, port)
CASES = [
    ("csrf_same_origin", "POST", "/echo", [("origin", ORIGIN)], b"x" * 10, "listener"),
    ("csrf_cross", "POST", "/echo", [("origin", "https://evil.example")], b"x", "listener"),
    ("csrf_referer", "PUT", "/echo", [("referer", "http://example.com/page?q=1")], b"x",
     "listener"),
    ("csrf_missing", "DELETE", "/echo", [], None, "listener"),
    ("csrf_additional_prefix", "PATCH", "/echo", [("origin", "https://trusted.example")], b"1",
     "listener"),
    ("csrf_additional_exact", "POST", "/echo", [("origin", "https://other.example:8443")], b"1",
     "listener"),
    ("csrf_get", "GET", "/echo", [("origin", "https://evil.example")], None, "listener"),
    ("csrf_null_origin", "POST", "/echo", [("origin", "null")], b"1", "listener"),
    ("csrf_shadow", "POST", "/shadow/echo", [("origin", "https://evil.example")], b"1",
     "listener"),
    ("buffer_chunked", "POST", "/echo", [("origin", ORIGIN), ("transfer-encoding", "chunked")],
     b"1f4\r\n" + b"y" * 500 + b"\r\n0\r\n\r\n", "listener"),
    ("buffer_too_large", "POST", "/echo", [("origin", ORIGIN)], b"z" * 1500, "listener"),
    ("buffer_off", "POST", "/nobuf/echo", [("origin", ORIGIN), ("transfer-encoding", "chunked")],
     b"5dc\r\n" + b"z" * 1500 + b"\r\n0\r\n\r\n", "listener"),
    ("buffer_route_limit", "POST", "/bigbuf/echo", [("origin", ORIGIN)], b"z" * 15000,
     "listener"),
    ("hc", "GET", "/healthz", [], None, "listener"),
    ("hc_query", "GET", "/healthz?x=1", [], None, "listener"),
    ("hc_pass_first", "GET", "/echo?status=200", [("x-hc", "1")], None, "pass"),
    ("hc_pass_cached", "GET", "/echo?status=200", [("x-hc", "1")], None, "pass"),
    ("hc_pass_other", "GET", "/t?size=4", [], None, "pass"),
    ("hc_missing_cluster", "GET", "/missing", [], None, "pass"),
]
AFTER_FAIL = ["hc", "hc_pass_cached", "hc_pass_other", "csrf_get"]


def _stats(side) -> dict:
    out = {}
    for line in side.admin("/stats").body.decode().splitlines():
        name, _, value = line.partition(": ")
        if ".csrf." in name or ".health_check." in name or name == "http.main.downstream_rq_too_large":
            out[name] = value
    return out


def test_csrf_buffer_and_health_check_match_envoy(pair_factory):
    pair = pair_factory(TEMPLATE)
    by_name = {c[0]: c for c in CASES}
    diffs, statuses = [], {}

    def run(name, tag=""):
        _, method, path, headers, body, port = by_name[name]
        e, p = pair.both(lambda s: s.http(path, port=port, method=method, headers=headers,
                                          body=body))
        diffs.extend("%s%s: %s" % (name, tag, d) for d in response_diff(e, p))
        statuses[name + tag] = e.status
    for c in CASES:
        run(c[0])
    assert statuses["csrf_cross"] == 403 and statuses["csrf_shadow"] == 200
    assert statuses["buffer_too_large"] == 413 and statuses["hc"] == 200
    for side in pair.sides:
        http(side.ports["admin"], "POST", "/healthcheck/fail", host="127.0.0.1")
        deadline = time.monotonic() + 10   # proxyd's workers read the master's state
        while side.http("/t?size=1").header("x-envoy-immediate-health-check-fail") is None:
            assert time.monotonic() < deadline, side.name
            time.sleep(0.05)
    for name in AFTER_FAIL:
        run(name, " (failed)")
    assert statuses["hc (failed)"] == 503
    stats = pair.both(_stats)
    diffs += ["stat %s: envoy %s, proxyd %s" % (k, stats[0].get(k), stats[1].get(k))
              for k in sorted(set(stats[0]) | set(stats[1])) if stats[0].get(k) != stats[1].get(k)]
    assert diffs == [], "\n".join(diffs)
