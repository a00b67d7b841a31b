"""envoy.filters.http.header_to_metadata next to real Envoy 1.40: the metadata it writes,
as %DYNAMIC_METADATA(...)% in the access log shows it, and the headers it removes, for
request and response rules, cookies, values from config, regex rewrites, NUMBER and
BASE64 values."""
from __future__ import annotations

import base64
import time

from compare import response_diff

FMT = ("%DYNAMIC_METADATA(envoy.filters.http.header_to_metadata:version)% "
       "%DYNAMIC_METADATA(envoy.lb:tier)% %DYNAMIC_METADATA(envoy.lb:num)% "
       "%DYNAMIC_METADATA(app:user)% %DYNAMIC_METADATA(app:missing)% "
       "%DYNAMIC_METADATA(app:decoded)% %DYNAMIC_METADATA(app:backend)%")
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
          access_log:
          - name: file
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: $dir/access.log
              log_format: {text_format_source: {inline_string: "FMT\\n"}}
          route_config:
            virtual_hosts:
            - name: vh
              domains: ["*"]
              routes:
              - match: {prefix: "/"}
                route: {cluster: upstream}
          http_filters:
          - name: envoy.filters.http.header_to_metadata
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.header_to_metadata.v3.Config
              request_rules:
              - header: x-version
                on_header_present: {key: version, type: STRING}
                on_header_missing: {key: version, value: none, type: STRING}
                remove: true
              - header: x-tier
                on_header_present:
                  metadata_namespace: envoy.lb
                  key: tier
                  regex_value_rewrite: {pattern: {regex: "^tier-(.*)$$"}, substitution: "\\\\1"}
              - header: x-num
                on_header_present: {metadata_namespace: envoy.lb, key: num, type: NUMBER}
              - cookie: user
                on_header_present: {metadata_namespace: app, key: user}
              - header: x-absent
                on_header_missing: {metadata_namespace: app, key: missing, value: "yes"}
              - header: x-b64
                on_header_present: {metadata_namespace: app, key: decoded, encode: BASE64}
              response_rules:
              - header: x-backend
                on_header_present: {metadata_namespace: app, key: backend}
                remove: true
          - name: envoy.filters.http.router
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}
  clusters:
  - name: upstream
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: upstream
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: $upstream}}}}]}]
""".replace("FMT", FMT)

CASES = [
    ("/echo", []),
    ("/echo", [("x-version", "v2"), ("x-tier", "tier-gold"), ("x-num", "42.5"),
               ("cookie", "a=1; user=alice; b=2")]),
    ("/echo", [("x-num", "not a number"), ("x-b64", base64.b64encode(b"hidden").decode()),
               ("x-version", "")]),
    ("/echo?hdr=x-backend:b-7", [("x-version", "v1"), ("x-version", "v3")]),
]


def test_header_to_metadata_matches_envoy(pair_factory):
    pair = pair_factory(TEMPLATE)
    diffs = []
    for path, headers in CASES:
        e, p = pair.both(lambda s: s.http(path, headers=headers))
        diffs += ["%s %s: %s" % (path, headers, d) for d in response_diff(e, p)]
    deadline = time.monotonic() + 10
    while True:
        logs = pair.both(lambda s: s.read("access.log").splitlines())
        if all(len(x) >= len(CASES) for x in logs) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert len(logs[0]) == len(CASES)
    assert logs[0][1].startswith("v2 gold 42.5 alice")
    for i, (e, p) in enumerate(zip(*logs)):
        if e != p:
            diffs.append("log line %d: envoy %r, proxyd %r" % (i, e, p))
    assert diffs == [], "\n".join(diffs)
