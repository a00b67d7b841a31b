"""Route idle_timeout, route and HCM max_stream_duration (with the gRPC header rules)
beside Envoy 1.40 on one template: statuses, bodies, gRPC trailers-only replies, what
the upstream is told (grpc-timeout, x-envoy-expected-rq-timeout-ms), response flags and
details, and the HCM's counters."""
from __future__ import annotations

import json
import time

ROUTES = """
              - match: {prefix: "/idle0"}
                route: {cluster: upstream, timeout: 0s, idle_timeout: 0s}
              - match: {prefix: "/idle"}
                route: {cluster: upstream, timeout: 0s, idle_timeout: 0.3s}
              - match: {prefix: "/msdg"}
                route: {cluster: upstream, max_stream_duration: {grpc_timeout_header_max: 0.3s}}
              - match: {prefix: "/msdo"}
                route: {cluster: upstream, max_stream_duration: {grpc_timeout_header_max: 0s, grpc_timeout_header_offset: 0.1s}}
              - match: {prefix: "/msd0"}
                route: {cluster: upstream, max_stream_duration: {max_stream_duration: 0s}}
              - match: {prefix: "/msdt"}
                route: {cluster: upstream, timeout: 0.2s, max_stream_duration: {max_stream_duration: 0.4s}}
              - match: {prefix: "/msd"}
                route: {cluster: upstream, timeout: 0s, max_stream_duration: {max_stream_duration: 0.3s}}
              - match: {prefix: "/"}
                route: {cluster: upstream}
"""


def _listener(name: str, extra: str) -> str:
    return """
  - name: %(name)s
    address: {socket_address: {address: 127.0.0.1, port_value: $%(name)s}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: %(name)s
          %(extra)s
          access_log:
          - name: envoy.access_loggers.file
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: $dir/%(name)s.log
              log_format: {text_format: "%%RESPONSE_CODE%% %%RESPONSE_FLAGS%% %%RESPONSE_CODE_DETAILS%% %%REQ(:PATH)%%\\n"}
          route_config:
            name: local_route
            virtual_hosts:
            - name: vh
              domains: ["*"]
              routes: %(routes)s
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}
""" % {"name": name, "extra": extra, "routes": ROUTES}


TEMPLATE = """
admin:
  address: {socket_address: {address: 127.0.0.1, port_value: $admin}}
static_resources:
  listeners:%s%s
  clusters:
  - name: upstream
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: upstream
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: $upstream}}}}]}]
""" % (_listener("listener", "stream_idle_timeout: 0.6s"),
       _listener("hcmmsd", "common_http_protocol_options: {max_stream_duration: 0.4s}"))

GRPC = [("content-type", "application/grpc"), ("te", "trailers")]
TOLD = ("grpc-timeout", "x-envoy-expected-rq-timeout-ms")
# (port, path, request headers)
CASES = [
    ("listener", "/idle0?delay=1", ()),                  # route idle 0 beats the HCM's 0.6 s
    ("listener", "/idle?delay=1", ()),                   # 504 SI
    ("listener", "/idle?size=40&chunked=1&chunk=10&interval=0.15", ()),  # never idle
    ("listener", "/idle?size=100&chunked=1&chunk=10&interval=1", ()),    # reset mid-body
    ("listener", "/msd?delay=1", ()),                    # 504 downstream duration timeout
    ("listener", "/msd?size=100&chunked=1&chunk=10&interval=0.2", ()),   # reset mid-body
    ("listener", "/msdt?delay=0.3", ()),                 # the route timeout is not used
    ("listener", "/msdg?delay=0", GRPC + [("grpc-timeout", "10S")]),     # capped to 300m
    ("listener", "/msdg?delay=1", GRPC + [("grpc-timeout", "10S")]),     # DEADLINE_EXCEEDED
    ("listener", "/msdo?delay=0", GRPC + [("grpc-timeout", "5S")]),      # less the offset
    ("listener", "/msdg?delay=0", ()),                   # not gRPC: no duration at all
    ("listener", "/x?delay=0", ()),
    ("hcmmsd", "/x?delay=1", ()),                        # the HCM's duration
    ("hcmmsd", "/msd0?delay=0.6", ()),                   # a route's 0 turns it off
    ("hcmmsd", "/msdg?delay=1", GRPC + [("grpc-timeout", "10S")]),
]
STATS = ("downstream_rq_idle_timeout", "downstream_rq_max_duration_reached",
         "downstream_rq_tx_reset", "downstream_rq_rx_reset", "downstream_rq_2xx",
         "downstream_rq_5xx", "downstream_rq_completed", "downstream_rq_timeout")


def _observe(side):
    out = []
    for port, path, headers in CASES:
        try:
            r = side.http(path, port=port, headers=headers)
        except (ConnectionError, ValueError, AssertionError) as e:  # a reset mid-body
            out.append((path, "reset", type(e).__name__))
            continue
        told = None
        if r.status == 200 and r.body.startswith(b"{"):
            told = sorted((k, v) for k, v in r.json()["headers"] if k in TOLD)
        out.append((path, r.status, r.body if not r.body.startswith(b"{") else b"json",
                    r.header("grpc-status"), r.header("grpc-message"), told))
    deadline = time.monotonic() + 10
    want = {"listener": sum(c[0] == "listener" for c in CASES),
            "hcmmsd": sum(c[0] == "hcmmsd" for c in CASES)}
    while time.monotonic() < deadline and any(
            side.read(n + ".log").count("\n") < k for n, k in want.items()):
        time.sleep(0.1)
    stats = dict(line.split(": ", 1) for line in side.admin("/stats").body.decode().splitlines()
                 if ": " in line)
    return (out, sorted(side.read("listener.log").splitlines()),
            sorted(side.read("hcmmsd.log").splitlines()),
            {"%s.%s" % (n, s): stats.get("http.%s.%s" % (n, s)) for n in want for s in STATS})


def test_stream_timeouts_match_envoy(pair_factory):
    envoy, proxyd = pair_factory(TEMPLATE).both(_observe)
    print(json.dumps(envoy, indent=1, default=repr))
    assert proxyd[0] == envoy[0]
    assert proxyd[1:] == envoy[1:]
