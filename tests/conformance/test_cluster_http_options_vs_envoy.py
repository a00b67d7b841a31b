"""A cluster's HttpProtocolOptions.common_http_protocol_options beside Envoy 1.40:
max_stream_duration (504 UMSDR upstream_max_stream_duration_reached before the response,
a reset after it), max_requests_per_connection (which request an upstream connection
carries last, over HTTP/1.1) and idle_timeout (an idle upstream connection is not
reused past it), with the cluster counters."""
from __future__ import annotations

import time

UPH = "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def _cluster(name: str, common: str) -> str:
    return """
  - name: %(name)s
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": %(uph)s
        common_http_protocol_options: %(common)s
        explicit_http_config: {http_protocol_options: {}}
    load_assignment:
      cluster_name: %(name)s
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: $upstream}}}}]}]
""" % {"name": name, "uph": UPH, "common": common}


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
          access_log:
          - name: envoy.access_loggers.file
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: $dir/access.log
              log_format: {text_format: "%%RESPONSE_CODE%% %%RESPONSE_FLAGS%% %%RESPONSE_CODE_DETAILS%% %%REQ(:PATH)%%\\n"}
          route_config:
            name: local_route
            virtual_hosts:
            - name: vh
              domains: ["*"]
              routes:
              - {match: {prefix: "/msd"}, route: {cluster: msd}}
              - {match: {prefix: "/mrpc"}, route: {cluster: mrpc}}
              - {match: {prefix: "/idle"}, route: {cluster: idle}}
              - {match: {prefix: "/mcd"}, route: {cluster: mcd}}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}
  clusters:%s%s%s%s
""" % (_cluster("msd", "{max_stream_duration: 0.3s}"),
       _cluster("mrpc", "{max_requests_per_connection: 2}"),
       _cluster("idle", "{idle_timeout: 0.4s}"),
       _cluster("mcd", "{max_connection_duration: 0.5s}"))
STATS = ("upstream_rq_max_duration_reached", "upstream_cx_max_requests", "upstream_cx_total",
         "upstream_cx_max_duration_reached", "upstream_cx_destroy_local",
         "upstream_cx_idle_timeout",
         "upstream_rq_total", "upstream_rq_504", "upstream_rq_200", "upstream_rq_completed")


def _observe(side):
    out = []
    for path in ("/msd?delay=1", "/msd?size=100&chunked=1&chunk=10&interval=0.2", "/msd"):
        try:
            r = side.http(path)
            out.append((path, r.status, r.body if not r.body.startswith(b"{") else b"json"))
        except (ConnectionError, ValueError, AssertionError) as e:
            out.append((path, "reset", type(e).__name__))
    c = side.conn()   # one downstream connection, so the upstream requests go in turn
    for i in range(5):
        r = c.request(path="/mrpc/%d" % i)
        out.append(("mrpc", r.status, r.json()["conn_requests"]))
    r = c.request(path="/idle/1")
    first = r.json()["conn_id"]
    r = c.request(path="/idle/2")
    out.append(("idle reused at once", r.json()["conn_id"] == first))
    time.sleep(1.0)
    r = c.request(path="/idle/3")
    out.append(("idle reused after 1 s", r.json()["conn_id"] == first, r.json()["conn_requests"]))
    # max_connection_duration: an idle connection is closed, a busy one not reused
    first = c.request(path="/mcd/1").json()["conn_id"]
    time.sleep(1.0)
    r = c.request(path="/mcd/2?delay=0.8").json()
    out.append(("mcd idle reused", r["conn_id"] == first))
    r2 = c.request(path="/mcd/3").json()
    out.append(("mcd busy reused", r2["conn_id"] == r["conn_id"], r2["conn_requests"]))
    c.close()
    time.sleep(1.0)  # the last connections' idle_timeout and max_connection_duration pass
    deadline = time.monotonic() + 10
    while side.read("access.log").count("\n") < 14 and time.monotonic() < deadline:
        time.sleep(0.1)
    stats = dict(line.split(": ", 1) for line in side.admin("/stats").body.decode().splitlines()
                 if ": " in line)
    return (out, sorted(side.read("access.log").splitlines()),
            {"%s.%s" % (c, s): stats.get("cluster.%s.%s" % (c, s))
             for c in ("msd", "mrpc", "idle", "mcd") for s in STATS})


def test_cluster_http_options_match_envoy(pair_factory):
    envoy, proxyd = pair_factory(TEMPLATE).both(_observe)
    assert envoy[0][0] == ("/msd?delay=1", 504, b"upstream max stream duration reached")
    assert proxyd[0] == envoy[0]
    assert proxyd[1] == envoy[1]
    assert proxyd[2] == envoy[2]
