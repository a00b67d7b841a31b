"""WebSocket upgrades beside Envoy 1.40 on one template (`upgrade_configs` on the HCM and
on routes), with the real `websockets` client and server: the 101's status and headers,
messages through the tunnel, the 403 of a refused upgrade, the upgrade stats and the
access log."""
from __future__ import annotations

import threading
import time

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect
from websockets.sync.server import serve

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
          upgrade_configs: [{upgrade_type: websocket}]
          access_log:
          - name: envoy.access_loggers.file
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: $dir/access.log
              log_format: {text_format_source: {inline_string: "%RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %UPSTREAM_CLUSTER% %REQ(:PATH)%\\n"}}
          route_config:
            name: local_route
            virtual_hosts:
            - name: vh
              domains: ["*"]
              routes:
              - match: {prefix: "/off"}
                route: {cluster: ws, upgrade_configs: [{upgrade_type: websocket, enabled: false}]}
              - match: {prefix: "/"}
                route: {cluster: ws}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}
  clusters:
  - name: ws
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: ws
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: @ws@}}}}]}]
"""
STATS = ("http.ingress_http.downstream_cx_upgrades_total",
         "http.ingress_http.downstream_cx_upgrades_active",
         "http.ingress_http.downstream_rq_ws_on_non_ws_route",
         "http.ingress_http.downstream_rq_1xx", "http.ingress_http.downstream_rq_4xx",
         "http.ingress_http.downstream_rq_total", "cluster.ws.upstream_rq_101",
         "cluster.ws.upstream_rq_total", "cluster.ws.upstream_cx_total",
         "http.ingress_http.downstream_rq_rx_reset",
         "http.ingress_http.downstream_rq_response_before_rq_complete",
         "http.ingress_http.downstream_cx_destroy_local",
         "http.ingress_http.downstream_cx_destroy_remote")
VOLATILE = {"date", "sec-websocket-accept", "x-envoy-upstream-service-time"}


@pytest.fixture(scope="module")
def ws_port():
    def echo(ws):
        ws.send("path:" + ws.request.path)
        for msg in ws:
            ws.send(msg)

    server = serve(echo, "127.0.0.1", 0)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    yield server.socket.getsockname()[1]
    server.shutdown()
    t.join(5)


def _headers(resp) -> list:
    return sorted((k.lower(), "<v>" if k.lower() in VOLATILE else v)
                  for k, v in resp.headers.raw_items())


def _observe(side):
    url = "ws://127.0.0.1:%d" % side.ports["listener"]
    out = []
    with connect(url + "/chat?x=1", open_timeout=10) as ws:
        out.append((ws.response.status_code, _headers(ws.response)))
        out.append(ws.recv(timeout=10))
        ws.send("hello")
        ws.send(b"\x00\x01" * 5000)
        out.append((ws.recv(timeout=10), ws.recv(timeout=10)))
    with pytest.raises(InvalidStatus) as e:
        connect(url + "/off", open_timeout=10)
    r = e.value.response
    out.append((r.status_code, _headers(r), r.body))
    deadline = time.monotonic() + 10
    while True:
        stats = dict(line.split(": ", 1) for line in side.admin("/stats").body.decode().splitlines()
                     if ": " in line)
        lines = side.read("access.log").splitlines()
        if (stats.get(STATS[1]) == "0" and len(lines) >= 2) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    return out, sorted(lines), {n: stats.get(n) for n in STATS}


def test_websocket_upgrades_match_envoy(pair_factory, ws_port):
    envoy, proxyd = pair_factory(TEMPLATE.replace("@ws@", str(ws_port))).both(_observe)
    assert envoy[0][0][0] == 101 and envoy[0][3][0] == 403  # the cases reach their replies
    assert envoy[2]["http.ingress_http.downstream_cx_upgrades_total"] == "1"
    assert proxyd[0] == envoy[0]
    assert proxyd[1] == envoy[1]
    assert proxyd[2] == envoy[2]


RBAC_IN_FRONT = """      - name: envoy.filters.network.rbac
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC
          stat_prefix: ws_rbac
          rules:
            action: DENY
            policies:
              nobody: {permissions: [{any: true}], principals: [{not_id: {any: true}}]}
      - name: envoy.filters.network.http_connection_manager
"""


def test_websocket_upgrade_behind_network_rbac_matches_envoy(pair_factory, ws_port):
    """The HCM behind a network filter: the tunnel's bytes go through the chain too."""
    template = TEMPLATE.replace("@ws@", str(ws_port)).replace(
        "      - name: envoy.filters.network.http_connection_manager\n", RBAC_IN_FRONT, 1)
    pair = pair_factory(template)
    envoy, proxyd = pair.both(_observe)
    assert envoy[0][0][0] == 101 and envoy[0][3][0] == 403
    assert proxyd == envoy
    allowed = pair.both(lambda s: dict(
        line.split(": ", 1) for line in s.admin("/stats").body.decode().splitlines()
        if ": " in line).get("ws_rbac.rbac.allowed"))
    assert allowed == ("2", "2")
