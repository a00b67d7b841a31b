"""ext_authz side by side with real Envoy 1.40 on one bootstrap, both asking the same real
authorization services (a grpcio server deciding with a Rego policy, a plain HTTP
service): statuses, bodies, headers both ways, flags and details, and stats."""
from __future__ import annotations

import time

import pytest

from authz_services import HttpAuthz, RegoAuthz

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
  - name: authz
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {http2_protocol_options: {}}
    load_assignment:
      cluster_name: authz
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address:
        {address: 127.0.0.1, port_value: GRPC_PORT}}}}]}]
  - name: authz_http
    connect_timeout: 1s
    load_assignment:
      cluster_name: authz_http
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address:
        {address: 127.0.0.1, port_value: HTTP_PORT}}}}]}]
  - name: authz_dead
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {http2_protocol_options: {}}
    load_assignment:
      cluster_name: authz_dead
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address:
        {address: 127.0.0.1, port_value: $closed}}}}]}]
  listeners:
  - name: grpc
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
              path: $dir/grpc.log
              log_format: {text_format_source: {inline_string: "%REQ(:PATH)% %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %DYNAMIC_METADATA(envoy.filters.http.ext_authz:user)%\\n"}}
          route_config:
            virtual_hosts:
            - name: vh
              domains: ["*"]
              routes:
              - match: {prefix: "/public"}
                route: {cluster: upstream}
                typed_per_filter_config:
                  envoy.filters.http.ext_authz:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute
                    disabled: true
              - match: {prefix: "/ctx"}
                route: {cluster: upstream}
                typed_per_filter_config:
                  envoy.filters.http.ext_authz:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute
                    check_settings: {context_extensions: {tier: gold}}
              - match: {prefix: "/"}
                route: {cluster: upstream}
          http_filters:
          - name: envoy.filters.http.ext_authz
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz
              transport_api_version: V3
              grpc_service: {envoy_grpc: {cluster_name: authz}, timeout: 0.5s}
          - name: envoy.filters.http.router
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}
  - name: http
    address: {socket_address: {address: 127.0.0.1, port_value: $http_listener}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ing_http
          access_log:
          - name: f
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: $dir/http.log
              log_format: {text_format_source: {inline_string: "%REQ(:PATH)% %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS%\\n"}}
          route_config:
            virtual_hosts:
            - name: vh
              domains: ["*"]
              routes: [{match: {prefix: "/"}, route: {cluster: upstream}}]
          http_filters:
          - name: envoy.filters.http.ext_authz
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz
              transport_api_version: V3
              http_service:
                server_uri: {uri: "http://authz_http", cluster: authz_http, timeout: 0.5s}
                path_prefix: /authz
                authorization_request:
                  allowed_headers: {patterns: [{exact: x-user}]}
                authorization_response:
                  allowed_upstream_headers: {patterns: [{exact: x-authz-user}]}
                  allowed_client_headers: {patterns: [{exact: www-authenticate}, {exact: x-deny-reason}]}
          - name: envoy.filters.http.router
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}
  - name: body
    address: {socket_address: {address: 127.0.0.1, port_value: $body_listener}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ing_body
          route_config:
            virtual_hosts:
            - name: vh
              domains: ["*"]
              routes:
              - match: {prefix: "/nobuf"}
                route: {cluster: upstream}
                typed_per_filter_config:
                  envoy.filters.http.ext_authz:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute
                    check_settings: {disable_request_body_buffering: true}
              - match: {prefix: "/"}
                route: {cluster: upstream}
          http_filters:
          - name: envoy.filters.http.ext_authz
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz
              transport_api_version: V3
              with_request_body: {max_request_bytes: 8, allow_partial_message: true}
              grpc_service: {envoy_grpc: {cluster_name: authz}, timeout: 0.5s}
          - name: envoy.filters.http.router
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}
  - name: deny_disabled
    address: {socket_address: {address: 127.0.0.1, port_value: $off_listener}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ing_off
          route_config:
            virtual_hosts:
            - name: vh
              domains: ["*"]
              routes: [{match: {prefix: "/"}, route: {cluster: upstream}}]
          http_filters:
          - name: envoy.filters.http.ext_authz
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz
              transport_api_version: V3
              status_on_error: {code: 503}
              filter_enabled: {default_value: {numerator: 0}, runtime_key: authz_off2}
              deny_at_disable: {default_value: true, runtime_key: authz_deny_off}
              grpc_service: {envoy_grpc: {cluster_name: authz}}
          - name: envoy.filters.http.router
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}
  - name: reroute
    address: {socket_address: {address: 127.0.0.1, port_value: $reroute_listener}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ing_reroute
          route_config:
            virtual_hosts:
            - name: vh
              domains: ["*"]
              routes:
              - match: {prefix: "/", headers: [{name: x-authz-user, string_match: {exact: alice}}]}
                direct_response: {status: 202, body: {inline_string: rerouted}}
              - match: {prefix: "/"}
                route: {cluster: upstream}
          http_filters:
          - name: envoy.filters.http.ext_authz
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz
              transport_api_version: V3
              clear_route_cache: true
              grpc_service: {envoy_grpc: {cluster_name: authz}, timeout: 0.5s}
          - name: envoy.filters.http.router
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}
  - name: dead
    address: {socket_address: {address: 127.0.0.1, port_value: $dead_listener}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ing_dead
          route_config:
            virtual_hosts:
            - name: vh
              domains: ["*"]
              routes: [{match: {prefix: "/"}, route: {cluster: upstream}}]
          http_filters:
          - name: envoy.filters.http.ext_authz
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz
              transport_api_version: V3
              failure_mode_allow: true
              failure_mode_allow_header_add: true
              grpc_service: {envoy_grpc: {cluster_name: authz_dead}}
          - name: dead_off
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz
              transport_api_version: V3
              stat_prefix: switched
              filter_enabled: {default_value: {numerator: 0}, runtime_key: authz_off}
              grpc_service: {envoy_grpc: {cluster_name: authz_dead}}
          - name: envoy.filters.http.router
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}
"""

GRPC_REQUESTS = [("/a", [("x-user", "alice"), ("x-secret", "s")]),
                 ("/b", [("x-user", "bob")]), ("/c", []), ("/public/x", []),
                 ("/ctx", [("x-user", "carol")]), ("/slow", [("x-user", "alice")])]
HTTP_REQUESTS = [("/p?q=1", [("x-user", "alice"), ("x-secret", "s")]), ("/d", []),
                 ("/error", [])]
STATS = ("http.ing_reroute.ext_authz.", "http.ing_body.ext_authz.", "http.ing_off.ext_authz.", "http.ing.ext_authz.", "http.ing_http.ext_authz.", "http.ing_dead.ext_authz.",
         "cluster.upstream.ext_authz.", "cluster.upstream.upstream_rq_4")
UPSTREAM_SEEN = ("x-body", "x-partial", "x-authz-user", "x-secret", "x-ctx", "x-authz-extra",
                 "x-envoy-auth-failure-mode-allowed")


@pytest.fixture(scope="module")
def pair(pair_factory):
    g, h = RegoAuthz(slow=2.0), HttpAuthz()
    try:
        yield pair_factory(TEMPLATE.replace("GRPC_PORT", str(g.port))
                           .replace("HTTP_PORT", str(h.port)))
    finally:
        g.stop()
        h.stop()


def _outcome(r):
    seen = {}
    if r.status == 200:
        echo = {k.lower(): v for k, v in r.json()["headers"]}
        seen = {k: echo.get(k) for k in UPSTREAM_SEEN}
    return (r.status, r.body if r.status != 200 else b"", r.header("x-authz-said"),
            r.header("x-deny-reason"), r.header("www-authenticate"),
            r.header_all("content-type") if r.status != 200 else None, seen)


def _exchange(side):
    out = [_outcome(side.http(p, headers=h)) for p, h in GRPC_REQUESTS]
    out += [_outcome(side.http(p, port="http_listener", headers=h)) for p, h in HTTP_REQUESTS]
    out.append(_outcome(side.http("/f", port="dead_listener")))
    dave = [("x-user", "dave")]
    for path, body in (("/short", b"hello"), ("/long", b"0123456789abc"), ("/get", None),
                       ("/nobuf", b"hello")):
        out.append(_outcome(side.http(path, port="body_listener", method="POST" if body
                                      else "GET", headers=dave, body=body)))
    out.append(_outcome(side.http("/o", port="off_listener")))
    r = side.http("/r", port="reroute_listener", headers=[("x-user", "alice")])
    out.append((r.status, r.body))       # the authz-added header re-matched the route
    return out


def _lines(side, name, n):
    deadline = time.monotonic() + 8        # Envoy flushes access logs every second
    while True:
        lines = side.read(name).splitlines()
        if len(lines) >= n or time.monotonic() > deadline:
            return lines
        time.sleep(0.05)


def _stats(side):
    text = side.admin("/stats").body.decode()
    return {k: v for k, v in (ln.split(": ", 1) for ln in text.splitlines() if ": " in ln)
            if k.startswith(STATS)}


def test_ext_authz_matches_envoy(pair):
    envoy, proxyd = pair.both(_exchange)
    assert proxyd == envoy
    assert sorted({e[0] for e in envoy}) == [200, 202, 401, 403, 503]
    for name, n in (("grpc.log", len(GRPC_REQUESTS)), ("http.log", len(HTTP_REQUESTS))):
        envoy_log, proxyd_log = pair.both(lambda s: _lines(s, name, n))
        assert proxyd_log == envoy_log, name
    envoy_stats, proxyd_stats = pair.both(_stats)
    envoy_counted = {k: v for k, v in envoy_stats.items() if v != "0"}
    proxyd_counted = {k: v for k, v in proxyd_stats.items() if v != "0"}
    assert proxyd_counted == envoy_counted
    # Envoy's declared names (ok, denied, error, failure_mode_allowed, disabled) exist here too
    for name in ("ok", "denied", "error", "failure_mode_allowed", "disabled"):
        assert "http.ing.ext_authz." + name in proxyd_stats
