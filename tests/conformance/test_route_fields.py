"""Route and connection-manager fields next to real Envoy 1.40: Route.decorator under
Zipkin tracing (the response's x-envoy-decorator-operation, an incoming one consumed),
RouteMatch.grpc, HCM add_user_agent and via, as the client and the upstream see them."""
from __future__ import annotations

from compare import response_diff

TEMPLATE = """
admin:
  address: {socket_address: {address: 127.0.0.1, port_value: $admin}}
node: {id: node-7, cluster: front}
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
          add_user_agent: true
          via: proxy-a
          tracing:
            random_sampling: {value: 0}
            provider:
              name: envoy.tracers.zipkin
              typed_config:
                "@type": type.googleapis.com/envoy.config.trace.v3.ZipkinConfig
                collector_cluster: zipkin
                collector_endpoint: "/api/v2/spans"
                collector_endpoint_version: HTTP_JSON
          route_config:
            virtual_hosts:
            - name: vh
              domains: ["*"]
              routes:
              - match: {prefix: "/svc", grpc: {}}
                direct_response: {status: 200, body: {inline_string: "grpc route"}}
                decorator: {operation: grpc-op}
              - match: {prefix: "/quiet"}
                route: {cluster: upstream}
                decorator: {operation: quiet-op, propagate: false}
              - match: {prefix: "/"}
                route: {cluster: upstream}
                decorator: {operation: main-op}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}
  clusters:
  - name: upstream
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: upstream
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: $upstream}}}}]}]
  - name: zipkin
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: zipkin
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: $closed}}}}]}]
"""

CASES = [
    ("GET", "/echo", []),
    ("GET", "/echo", [("x-envoy-decorator-operation", "from-client"), ("user-agent", "ua/1"),
                      ("via", "1.1 upstream-proxy")]),
    ("GET", "/quiet/echo", []),
    ("POST", "/svc/Method", [("content-type", "application/grpc")]),
    ("POST", "/svc/Method", [("content-type", "application/grpc-web")]),
    ("POST", "/svc/Method", [("content-type", "application/grpc+proto")]),
    ("GET", "/nothing?status=404", []),
]


def test_decorator_grpc_match_user_agent_and_via_match_envoy(pair_factory):
    pair = pair_factory(TEMPLATE)
    diffs, seen = [], []
    for method, path, headers in CASES:
        body = b"" if method == "POST" else None
        e, p = pair.both(lambda s: s.http(path, method=method, headers=headers, body=body))
        # B3 of unsampled requests: Envoy 1.40 still sends x-b3-* (sampled 0), proxyd none;
        # a tracing difference of its own, outside these fields
        diffs += ["%s %s %s: %s" % (method, path, headers, d) for d in response_diff(e, p)
                  if "header x-b3-" not in d]
        seen.append(e)
    assert seen[0].header("x-envoy-decorator-operation") == "main-op"
    assert seen[3].header("grpc-message") == "grpc route"     # matched RouteMatch.grpc
    assert seen[5].header("grpc-message") == "grpc route"
    assert seen[4].header("grpc-message") is None             # gRPC-Web is not gRPC
    assert seen[2].header("x-envoy-decorator-operation") is None   # propagate: false
    assert diffs == [], "\n".join(diffs)
