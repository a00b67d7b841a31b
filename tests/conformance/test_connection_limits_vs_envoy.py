"""HCM common_http_protocol_options max_requests_per_connection and
max_connection_duration beside Envoy 1.40: which HTTP/1 response says Connection: close,
when the connection ends, the HTTP/2 GOAWAY notice and final GOAWAY (their last stream
ids), and the counters (downstream_cx_max_requests_reached, _max_duration_reached; no
drain_close: these are not listener drains)."""
from __future__ import annotations

import sys
import time
from pathlib import Path

from harness import Conn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "http2"))
from h2client import H2Client  # noqa: E402


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
          drain_timeout: 0.5s
          %(extra)s
          route_config:
            name: local_route
            virtual_hosts:
            - name: vh
              domains: ["*"]
              routes: [{match: {prefix: "/"}, route: {cluster: upstream}}]
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}
""" % {"name": name, "extra": extra}


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
""" % (_listener("listener", "common_http_protocol_options: {max_requests_per_connection: 2}"),
       _listener("mcd", "common_http_protocol_options: {max_connection_duration: 1s}"))
STATS = ("downstream_cx_max_requests_reached", "downstream_cx_max_duration_reached",
         "downstream_cx_drain_close", "downstream_cx_idle_timeout", "downstream_rq_total",
         "downstream_rq_2xx", "downstream_cx_total", "downstream_cx_destroy_local")


def _closes(c, within: float = 8.0) -> bool:
    return c.is_closed(within)  # one read: a timed-out socket file cannot be read again


def _h2_until_closed(c, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not c.closed and time.monotonic() < deadline:
        c.pump(0.2)


def _observe(side):
    out = []
    # HTTP/1, max_requests_per_connection 2: the 2nd response closes
    c = side.conn()
    for _ in range(2):
        r = c.request(path="/a")
        out.append(("h1 mrpc", r.status, r.header("connection")))
    out.append(("h1 mrpc closed", _closes(c)))
    c.close()
    # HTTP/2: the GOAWAY notice after the 2nd stream, a 3rd still served, the final
    # GOAWAY drain_timeout later with the last stream taken, then the close
    with H2Client(side.ports["listener"]) as h:
        for _ in range(3):
            r = h.get("/a")
            out.append(("h2 mrpc", r.status, r.reset_code, [g[:2] for g in h.goaways]))
        _h2_until_closed(h)
        out.append(("h2 mrpc end", h.closed, [g[:2] for g in h.goaways]))
    # HTTP/1, max_connection_duration 1 s: an idle connection closes (after drain_timeout)
    c = side.conn("mcd")
    r = c.request(path="/a")
    out.append(("h1 mcd", r.status, r.header("connection"), _closes(c)))
    c.close()
    # ... a busy one answers with Connection: close
    c = side.conn("mcd")
    r = c.request(path="/a?delay=1.5")
    out.append(("h1 mcd busy", r.status, r.header("connection"), _closes(c)))
    c.close()
    # HTTP/2: idle, then busy past the duration
    with H2Client(side.ports["mcd"]) as h:
        h.get("/a")
        _h2_until_closed(h)
        out.append(("h2 mcd idle", h.closed, [g[:2] for g in h.goaways]))
    with H2Client(side.ports["mcd"]) as h:
        r = h.get("/a?delay=2")
        out.append(("h2 mcd busy", r.status, r.reset_code, [g[:2] for g in h.goaways]))
        _h2_until_closed(h)
        out.append(("h2 mcd busy end", h.closed))
    time.sleep(0.3)
    stats = dict(line.split(": ", 1) for line in side.admin("/stats").body.decode().splitlines()
                 if ": " in line)
    return out, {"%s.%s" % (n, s): stats.get("http.%s.%s" % (n, s))
                 for n in ("listener", "mcd") for s in STATS}


def test_connection_limits_match_envoy(pair_factory):
    envoy, proxyd = pair_factory(TEMPLATE).both(_observe)
    assert envoy[0][:3] == [("h1 mrpc", 200, None), ("h1 mrpc", 200, "close"),
                            ("h1 mrpc closed", True)]
    assert proxyd[0] == envoy[0]
    assert proxyd[1] == envoy[1]
