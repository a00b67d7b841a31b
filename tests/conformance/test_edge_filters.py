"""CORS, fault injection and gzip compression next to real Envoy 1.40: the same template
through both, the same answers (headers the filters set, bodies, statuses) and stats."""
from __future__ import annotations

import gzip

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
            name: local_route
            virtual_hosts:
            - name: vh
              domains: ["*"]
              typed_per_filter_config:
                envoy.filters.http.cors:
                  "@type": type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy
                  allow_origin_string_match: [{exact: "https://a.example"}]
                  allow_methods: "GET,POST"
                  allow_headers: "content-type"
                  expose_headers: "x-trace"
                  max_age: "60"
                  allow_credentials: true
              routes:
              - match: {prefix: "/"}
                route: {cluster: upstream}
          http_filters:
          - name: envoy.filters.http.fault
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault
              abort: {header_abort: {}, percentage: {numerator: 100}}
              delay: {header_delay: {}, percentage: {numerator: 100}}
          - name: envoy.filters.http.cors
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors}
          - name: envoy.filters.http.compressor
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.compressor.v3.Compressor
              compressor_library:
                name: text_optimized
                typed_config:
                  "@type": type.googleapis.com/envoy.extensions.compression.gzip.compressor.v3.Gzip
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

SCENARIOS = {
    "preflight": ("OPTIONS", "/api", [("origin", "https://a.example"),
                                      ("access-control-request-method", "POST")]),
    "cors_get": ("GET", "/api?size=10", [("origin", "https://a.example")]),
    "cors_bad": ("GET", "/api?size=10", [("origin", "https://b.example")]),
    "abort": ("GET", "/x", [("x-envoy-fault-abort-request", "503")]),
    "delay_then_abort": ("GET", "/x", [("x-envoy-fault-delay-request", "100"),
                                       ("x-envoy-fault-abort-request", "429")]),
    "delay": ("GET", "/x?size=5", [("x-envoy-fault-delay-request", "100")]),
    "abort_grpc_plain": ("GET", "/x", [("x-envoy-fault-abort-grpc-request", "14")]),
    "gzip": ("GET", "/t?size=2000&hdr=content-type:text/plain",
             [("accept-encoding", "gzip;q=0.5, br;q=0.9")]),
    "gzip_etag": ("GET", "/t?size=2000&hdr=content-type:text/plain&hdr=etag:\"v1\"",
                  [("accept-encoding", "gzip")]),
    "gzip_small": ("GET", "/t?size=10&hdr=content-type:text/plain", [("accept-encoding", "gzip")]),
    "gzip_q0": ("GET", "/t?size=2000&hdr=content-type:text/plain",
                [("accept-encoding", "gzip;q=0, identity")]),
    "gzip_json_no_transform": ("GET", "/t?size=2000&hdr=content-type:application/json"
                               "&hdr=cache-control:no-transform", [("accept-encoding", "*")]),
    "gzip_none": ("GET", "/t?size=2000&hdr=content-type:text/plain", []),
    "gzip_identity": ("GET", "/t?size=2000&hdr=content-type:text/plain",
                      [("accept-encoding", "identity")]),
    "gzip_br_only": ("GET", "/t?size=2000&hdr=content-type:text/plain",
                     [("accept-encoding", "br")]),
    "gzip_encoded": ("GET", "/t?size=2000&hdr=content-type:text/html&hdr=content-encoding:br",
                     [("accept-encoding", "gzip")]),
    "gzip_weak_etag": ("GET", "/t?size=2000&hdr=content-type:text/css&hdr=etag:W/\"v1\"",
                       [("accept-encoding", "deflate, gzip;q=1.0")]),
    "gzip_no_type": ("GET", "/t?size=2000", [("accept-encoding", "gzip")]),
    "gzip_image": ("GET", "/t?size=2000&hdr=content-type:image/png", [("accept-encoding", "gzip")]),
}

STAT_FAMILIES = ("http.ingress.cors.", "http.ingress.fault.aborts_injected",
                 "http.ingress.fault.delays_injected", "http.ingress.compressor.")


def _decoded(resp):
    """The response with a gzip body decoded: zlib and Envoy's zlib-ng choose different
    (equally valid) bytes, so the client-visible content is what must match."""
    if resp.header("content-encoding") == "gzip":
        resp.body = gzip.decompress(resp.body)
    return resp


def _filter_stats(side) -> dict:
    out = {}
    for line in side.admin("/stats").body.decode().splitlines():
        name, _, value = line.partition(": ")
        # compressed byte counts differ with the deflate implementation (see _decoded)
        if name.startswith(STAT_FAMILIES) and not name.endswith(".total_compressed_bytes"):
            out[name] = value
    return out


def test_cors_fault_and_gzip_match_envoy(pair_factory):
    pair = pair_factory(TEMPLATE)
    diffs = []
    for name, (method, path, headers) in SCENARIOS.items():
        e, p = pair.both(lambda s: _decoded(s.http(path, method=method, headers=headers)))
        diffs += ["%s: %s" % (name, d) for d in response_diff(e, p)]
    stats = pair.both(_filter_stats)
    assert int(stats[0]["http.ingress.compressor.text_optimized.gzip.compressed"]) == 4
    assert stats[0]["http.ingress.cors.origin_valid"] == "2"
    assert stats[0]["http.ingress.fault.delays_injected"] == "2"
    diffs += ["stat %s: envoy %s, proxyd %s" % (k, stats[0].get(k), stats[1].get(k))
              for k in sorted(set(stats[0]) | set(stats[1])) if stats[0].get(k) != stats[1].get(k)]
    assert diffs == [], "\n".join(diffs)


LEGACY_CORS = """
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
          route_config:
            virtual_hosts:
            - name: www
              domains: ["*"]
              cors:
                allow_origin_string_match: [{safe_regex: {regex: "\\\\*"}}]
                allow_methods: "GET"
                filter_enabled: {default_value: {numerator: 100}, runtime_key: cors.www.enabled}
                shadow_enabled: {default_value: {numerator: 0}, runtime_key: cors.www.shadow_enabled}
              routes:
              - match: {prefix: "/cors/open"}
                route: {cluster: upstream}
              - match: {prefix: "/cors/disabled"}
                route: {cluster: upstream, cors: {filter_enabled: {default_value: {numerator: 0}}}}
              - match: {prefix: "/cors/restricted"}
                route:
                  cluster: upstream
                  cors:
                    allow_origin_string_match: [{safe_regex: {regex: ".*\\\\.envoyproxy\\\\.io"}}]
                    allow_methods: "GET"
          http_filters:
          - name: envoy.filters.http.cors
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors}
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


def test_legacy_cors_fields_match_envoy(pair_factory):
    pair = pair_factory(LEGACY_CORS)
    local = [("origin", "http://localhost:8002")]
    cases = [("GET", "/cors/open?size=5", local), ("GET", "/cors/disabled?size=5", local),
             ("GET", "/cors/restricted?size=5", local),
             ("GET", "/cors/restricted?size=5", [("origin", "https://www.envoyproxy.io")]),
             ("OPTIONS", "/cors/open", local + [("access-control-request-method", "GET")])]
    diffs, allowed = [], []
    for method, path, headers in cases:
        e, p = pair.both(lambda s: s.http(path, method=method, headers=headers))
        diffs += ["%s %s: %s" % (method, path, d) for d in response_diff(e, p)]
        allowed.append(e.header("access-control-allow-origin") is not None)
    assert allowed == [True, False, False, True, True]
    assert diffs == [], "\n".join(diffs)


PREFLIGHT_OPTIONS = LEGACY_CORS.replace("""              cors:
                allow_origin_string_match: [{safe_regex""", """              typed_per_filter_config:
                envoy.filters.http.cors:
                  "@type": type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy
                  allow_origin_string_match: [{exact: "https://a.example"}]
                  allow_methods: "GET"
                  forward_not_matching_preflights: false
                  allow_private_network_access: true
                  max_age: "5"
              cors:
                allow_origin_string_match: [{safe_regex""", 1)


def test_unforwarded_preflight_and_private_network_access_match_envoy(pair_factory):
    assert "forward_not_matching_preflights" in PREFLIGHT_OPTIONS
    pair = pair_factory(PREFLIGHT_OPTIONS)
    pre = [("access-control-request-method", "GET"),
           ("access-control-request-private-network", "true")]
    cases = [("OPTIONS", "/cors/open", [("origin", "https://b.example")] + pre),
             ("OPTIONS", "/cors/open", [("origin", "https://a.example")] + pre),
             ("GET", "/cors/open?size=5", [("origin", "https://a.example")])]
    diffs = []
    for method, path, headers in cases:
        e, p = pair.both(lambda s: s.http(path, method=method, headers=headers))
        diffs += ["%s %s: %s" % (method, headers[0][1], d) for d in response_diff(e, p)]
        if method == "OPTIONS":
            assert e.body == b"" and e.header("access-control-allow-methods") == "GET"
    assert diffs == [], "\n".join(diffs)


GZIP_EXAMPLE = TEMPLATE.replace("""              compressor_library:
                name: text_optimized""", """              response_direction_config:
                common_config:
                  min_content_length: 100
                  content_type: [application/json]
                disable_on_etag_header: true
                uncompressible_response_codes: [206]
              compressor_library:
                name: text_optimized""").replace(
    '"@type": type.googleapis.com/envoy.extensions.compression.gzip.compressor.v3.Gzip',
    '"@type": type.googleapis.com/envoy.extensions.compression.gzip.compressor.v3.Gzip\n'
    '                  memory_level: 3\n                  window_bits: 10')


def test_gzip_sandbox_settings_match_envoy(pair_factory):
    """Envoy's gzip sandbox: JSON only, 100 bytes at least, nothing with an ETag (and
    uncompressible_response_codes)."""
    assert "uncompressible_response_codes" in GZIP_EXAMPLE and "window_bits: 10" in GZIP_EXAMPLE
    pair = pair_factory(GZIP_EXAMPLE)
    json_type = "&hdr=content-type:application/json"
    cases = ["/j?size=150" + json_type, "/j?size=99" + json_type, "/j?size=500&hdr=etag:x" + json_type,
             "/j?size=500&hdr=cache-control:no-transform" + json_type,
             '/j?size=500%s&hdr=etag:W/"x"' % json_type, "/j?size=500&hdr=content-type:text/html",
             "/j?size=500&status=206" + json_type, "/j?size=500&status=404" + json_type]
    diffs, encodings = [], []
    for path in cases:
        e, p = pair.both(lambda s: _decoded(s.http(path, headers=[("accept-encoding", "gzip")])))
        diffs += ["%s: %s" % (path, d) for d in response_diff(e, p)]
        encodings.append(e.header("content-encoding"))
    assert encodings == ["gzip", None, None, None, None, None, None, "gzip"]
    stats = pair.both(_filter_stats)
    diffs += ["stat %s: envoy %s, proxyd %s" % (k, stats[0].get(k), stats[1].get(k))
              for k in sorted(set(stats[0]) | set(stats[1])) if stats[0].get(k) != stats[1].get(k)]
    assert diffs == [], "\n".join(diffs)
