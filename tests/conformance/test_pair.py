"""The pair fixture itself: both proxies serve the same template, and one proxied request
and one direct response look the same through either."""
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
          stat_prefix: ingress_http
          codec_type: AUTO
          route_config:
            name: local_route
            virtual_hosts:
            - name: vh
              domains: ["*"]
              routes:
              - match: {prefix: "/direct"}
                direct_response: {status: 200, body: {inline_string: "hello\\n"}}
              - match: {prefix: "/"}
                route: {cluster: upstream}
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
"""


def test_both_proxies_serve_the_same_template(pair_factory):
    pair = pair_factory(TEMPLATE)
    assert pair.envoy.ports["listener"] != pair.proxyd.ports["listener"]
    e, p = pair.http("/direct")
    assert (e.status, e.body) == (200, b"hello\n")
    assert response_diff(e, p) == []
    e, p = pair.http("/some/path?x=1")
    assert e.status == 200 and e.json()["path"] == "/some/path?x=1"
    assert response_diff(e, p) == []
    assert pair.envoy.admin("/ready").body == pair.proxyd.admin("/ready").body == b"LIVE\n"
