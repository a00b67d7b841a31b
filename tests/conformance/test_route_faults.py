"""Per-route fault injection next to real Envoy 1.40: HTTPFault in typed_per_filter_config
at virtual-host and route level replaces the filter's settings, the most specific level
winning whole; a route can also disable the filter (FilterConfig.disabled)."""
from __future__ import annotations

from compare import response_diff

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
          stat_prefix: ingress
          route_config:
            virtual_hosts:
            - name: faulty
              domains: ["faulty"]
              typed_per_filter_config:
                envoy.filters.http.fault:
                  "@type": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault
                  abort: {http_status: 503, percentage: {numerator: 100}}
              routes:
              - match: {prefix: "/teapot"}
                route: {cluster: upstream}
                typed_per_filter_config:
                  envoy.filters.http.fault:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault
                    abort: {http_status: 418, percentage: {numerator: 100}}
                    headers: [{name: x-tea, present_match: true}]
              - match: {prefix: "/off"}
                route: {cluster: upstream}
                typed_per_filter_config:
                  envoy.filters.http.fault:
                    "@type": type.googleapis.com/envoy.config.route.v3.FilterConfig
                    disabled: true
              - match: {prefix: "/"}
                route: {cluster: upstream}
            - name: plain
              domains: ["*"]
              routes:
              - match: {prefix: "/header"}
                route: {cluster: upstream}
                typed_per_filter_config:
                  envoy.filters.http.fault:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault
                    abort: {header_abort: {}, percentage: {numerator: 100}}
              - match: {prefix: "/"}
                route: {cluster: upstream}
          http_filters:
          - name: envoy.filters.http.fault
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault
              abort: {http_status: 429, percentage: {numerator: 100}}
              headers: [{name: x-fault, present_match: true}]
          - name: envoy.filters.http.router
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}
  clusters:
  - name: upstream
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: upstream
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: $upstream}}}}]}]
"""

CASES = [
    ("faulty", "/x?size=3", []),                     # the virtual host's 503
    ("faulty", "/teapot?size=3", []),                # the route's: needs x-tea
    ("faulty", "/teapot?size=3", [("x-tea", "1")]),  # 418
    ("faulty", "/teapot?size=3", [("x-fault", "1")]),  # the filter's 429 is replaced
    ("faulty", "/off?size=3", [("x-fault", "1")]),   # disabled on this route
    ("plain", "/x?size=3", [("x-fault", "1")]),      # the filter's own: 429
    ("plain", "/x?size=3", []),
    ("plain", "/header?size=3", [("x-envoy-fault-abort-request", "402")]),
    ("plain", "/header?size=3", [("x-fault", "1")]),
]


def test_route_fault_config_matches_envoy(pair_factory):
    pair = pair_factory(TEMPLATE)
    diffs, statuses = [], []
    for host, path, headers in CASES:
        e, p = pair.both(lambda s: s.http(path, headers=headers, host=host))
        diffs += ["%s%s %s: %s" % (host, path, headers, d) for d in response_diff(e, p)]
        statuses.append(e.status)
    assert statuses == [503, 200, 418, 200, 200, 429, 200, 402, 200]
    stats = pair.both(lambda s: {k: v for k, v in (
        line.split(": ", 1) for line in s.admin("/stats").body.decode().splitlines())
        if k.startswith("http.ingress.fault.")})
    diffs += ["stat %s: envoy %s, proxyd %s" % (k, stats[0].get(k), stats[1].get(k))
              for k in sorted(set(stats[0]) | set(stats[1])) if stats[0].get(k) != stats[1].get(k)]
    assert diffs == [], "\n".join(diffs)
