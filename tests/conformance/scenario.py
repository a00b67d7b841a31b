"""The conformance scenario: one bootstrap template that reaches every kind of reply
proxyd implements (proxied, direct, redirect, and the local replies 404 NR, 503 UF/UH/NC,
504 UT, 408, 400, 431, gRPC-shaped), and the fixed list of requests driven through both
proxies. Responses, access-log lines and stats are all compared on this same traffic.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass

from harness import Response, build_request

HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
FILE_LOG = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"

CUSTOM_FORMAT = (
    "%RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_FLAGS_LONG% %RESPONSE_CODE_DETAILS% "
    "%PROTOCOL% %REQ(:METHOD)% %REQ(:PATH)% %REQ(:AUTHORITY)% %REQ(X-MISSING?USER-AGENT)% "
    "%REQ(USER-AGENT):5% %RESP(CONTENT-TYPE)% %RESP(LOCATION)% %BYTES_RECEIVED% "
    "%UPSTREAM_CLUSTER% %ROUTE_NAME% %UPSTREAM_HOST% %UPSTREAM_REMOTE_ADDRESS% "
    "%UPSTREAM_REMOTE_ADDRESS_WITHOUT_PORT% %DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT% "
    "%DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT% %DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT% "
    "%START_TIME(%Y)% %HOSTNAME%\n")
"""Every operator proxyd supports whose value is the same through both proxies; the ones
that differ by nature (times, ports, ids, byte counts with a Date header) are in
VOLATILE_FORMAT and only compared for presence."""

VOLATILE_FORMAT = (
    "%START_TIME% %DURATION% %REQUEST_DURATION% %RESPONSE_DURATION% %RESPONSE_TX_DURATION% "
    "%BYTES_SENT% %UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS% "
    "%DOWNSTREAM_DIRECT_REMOTE_ADDRESS% %DOWNSTREAM_REMOTE_PORT% %DOWNSTREAM_LOCAL_ADDRESS% "
    "%DOWNSTREAM_LOCAL_PORT% %CONNECTION_ID% %STREAM_ID% %TRACE_ID%\n")


def _file_log(name: str, fmt: str | None) -> str:
    """A file access logger writing into the side's directory, as flow YAML (JSON)."""
    cfg = {"@type": FILE_LOG, "path": "$dir/" + name}
    if fmt is not None:
        cfg["log_format"] = {"text_format_source": {"inline_string": fmt}}
    return json.dumps({"name": "envoy.access_loggers.file", "typed_config": cfg})


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
          "@type": %(hcm)s
          stat_prefix: ingress_http
          codec_type: AUTO
          request_timeout: 0.4s
          access_log:
          - %(default_log)s
          - %(custom_log)s
          - %(volatile_log)s
          route_config:
            name: local_route
            validate_clusters: false
            virtual_hosts:
            - name: redirects
              domains: [redirect.example.com]
              routes:
              - match: {prefix: "/"}
                redirect: {https_redirect: true}
            - name: main
              domains: ["*"]
              response_headers_to_add:
              - header: {key: x-vhost, value: main}
              routes:
              - name: direct
                match: {path: /direct}
                direct_response: {status: 200, body: {inline_string: "hello from the route\\n"}}
              - name: direct_503
                match: {path: /direct-503}
                direct_response: {status: 503}
              - name: redirect_host
                match: {prefix: /moved}
                redirect: {host_redirect: new.example.com, response_code: PERMANENT_REDIRECT}
              - name: redirect_path
                match: {prefix: /old/}
                redirect: {prefix_rewrite: /new/}
              - name: up
                match: {prefix: /up/}
                route: {cluster: upstream, prefix_rewrite: /}
              - name: slow
                match: {prefix: /slow}
                route: {cluster: upstream, timeout: 0.3s}
              - name: refused
                match: {prefix: /refused}
                route: {cluster: refused}
              - name: empty
                match: {prefix: /empty}
                route: {cluster: empty}
              - name: nocluster
                match: {prefix: /nocluster}
                route: {cluster: does_not_exist}
              - name: by_header
                match: {prefix: /by-header}
                route: {cluster_header: x-cluster, cluster_not_found_response_code: NOT_FOUND,
                        prefix_rewrite: /}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}
  - name: tcp
    address: {socket_address: {address: 127.0.0.1, port_value: $tcp}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: tcp_in
          cluster: upstream
  clusters:
  - name: upstream
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: upstream
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: $upstream}}}}]}]
  - name: refused
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: refused
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: $closed}}}}]}]
  - name: empty
    type: STATIC
    connect_timeout: 1s
    load_assignment: {cluster_name: empty}
""" % {"hcm": HCM, "default_log": _file_log("default.log", None),
       "custom_log": _file_log("custom.log", CUSTOM_FORMAT),
       "volatile_log": _file_log("volatile.log", VOLATILE_FORMAT)}


@dataclass
class Case:
    """One request of the scenario: `raw` bytes sent on a fresh connection (or a plain
    request built from method/path/headers/body), answered by both proxies."""
    name: str
    path: str = "/"
    method: str = "GET"
    headers: tuple = ()
    body: bytes | None = None
    host: str = "example.com"
    raw: bytes | None = None
    pause: float = 0.0  # keep the connection open this long after sending (408)
    flags: str = "-"  # the %RESPONSE_FLAGS% Envoy logs (asserted: the case reaches its reply)
    status: int = 200  # the status Envoy answers (asserted the same way)
    echo: bool = False  # answered by the upstream's echo (its length varies with conn ids)
    port: str = "listener"  # "tcp": through the tcp_proxy listener (no HCM, no HCM log)

    def request_bytes(self) -> bytes:
        return self.raw if self.raw is not None else build_request(
            self.method, self.path, self.headers, self.body, self.host)


GRPC = (("content-type", "application/grpc"), ("te", "trailers"))

CASES = [
    Case("proxied", "/up/echo?x=1", headers=(("user-agent", "conformance/1"),), echo=True),
    Case("proxied_post", "/up/post", "POST", body=b"0123456789", echo=True),
    Case("upstream_404", "/up/missing?status=404", status=404, echo=True),
    Case("upstream_500", "/up/err?status=500", status=500, echo=True),
    Case("upstream_chunked", "/up/c?chunked=1&size=100"),
    Case("upstream_header", "/up/h?hdr=x-custom:yes&hdr=cache-control:no-cache", echo=True),
    Case("head", "/up/head", "HEAD", echo=True),
    Case("direct", "/direct"),
    Case("direct_503_no_body", "/direct-503", status=503),
    Case("redirect_https", "/any?q=1", host="redirect.example.com", status=301),
    Case("redirect_host", "/moved/here", status=308),
    Case("redirect_prefix", "/old/page", status=301),
    Case("no_route_404", "/nowhere", flags="NR", status=404),
    Case("connect_failure_503", "/refused", flags="UF", status=503),
    Case("no_healthy_upstream_503", "/empty", flags="UH", status=503),
    Case("no_cluster_503", "/nocluster", flags="NC", status=503),
    Case("cluster_header", "/by-header/echo", headers=(("x-cluster", "upstream"),), echo=True),
    Case("cluster_header_missing_404", "/by-header/x", flags="NC", status=404),
    Case("cluster_header_unknown_404", "/by-header/x", headers=(("x-cluster", "nope"),),
         flags="NC", status=404),
    Case("upstream_timeout_504", "/slow?delay=1.5", flags="UT", status=504),
    Case("grpc_no_route", "/nowhere.Service/Method", "POST", headers=GRPC, body=b"", flags="NR"),
    Case("grpc_connect_failure", "/refused.Service/Method", "POST", headers=GRPC, body=b"",
         flags="UF"),
    Case("request_timeout_408", raw=b"POST /up/partial HTTP/1.1\r\nHost: example.com\r\n"
         b"Content-Length: 10\r\n\r\n01234", pause=1.0, status=408),
    Case("bad_request_400", raw=b"GET / HTTP/1.1\r\nHost: example.com\r\nbad header\r\n\r\n",
         flags="DPE", status=400),
    Case("header_too_large_431", "/up/big", headers=(("x-big", "a" * 70000),), flags="DPE",
         status=431),
    Case("upstream_reset_503", "/up/reset?close=1", flags="UC", status=503),
    Case("tcp_proxy", "/through/tcp", headers=(("connection", "close"),), echo=True, port="tcp"),
]
HCM_CASES = [c for c in CASES if c.port == "listener"]
"""The cases the HTTP listener's access logs show, in order."""


@dataclass
class Exchange:
    case: Case
    response: Response | None


def drive(side, case: Case) -> Exchange:
    """Send `case` to one side on a fresh connection; parse its response when it sent one."""
    conn = side.conn(case.port)
    try:
        conn.send(case.request_bytes())
        if case.pause:
            time.sleep(case.pause)
        resp = conn.read_response(case.method)
    except (ConnectionError, OSError):
        resp = None
    finally:
        conn.close()
    return Exchange(case, resp)


LOG_FILES = ("default.log", "custom.log", "volatile.log")


@dataclass
class Observed:
    """Everything both proxies showed for the scenario traffic, as (envoy, proxyd) pairs."""
    pair: object
    exchanges: dict  # case name -> (Exchange, Exchange)
    logs: dict  # log file name -> ([envoy lines], [proxyd lines])
    stats: tuple  # ({name: value}, {name: value}) from /stats?format=json
    prometheus: tuple  # (text, text) of /stats/prometheus


def named_ports(side, text: str) -> str:
    """Listener addresses in stat names and labels carry the side's own ports: name them
    by the template's placeholder instead (`listener.127.0.0.1_<listener>.`)."""
    for name, port in side.ports.items():
        text = text.replace("127.0.0.1_%d" % port, "127.0.0.1_<%s>" % name)
    return text


def _stats(side) -> dict:
    out = {}
    for entry in side.admin("/stats?format=json").json()["stats"]:
        if "name" in entry:
            out[named_ports(side, entry["name"])] = entry["value"]
    return out


def _wait_logs(pair, expected: int, timeout: float = 6.0) -> dict:
    """Both sides' access-log lines, once every log has `expected` lines (both flush on
    a timer: Envoy every 50 ms here, proxyd every second), or at the timeout (a side that
    logs fewer lines shows as a difference)."""
    deadline = time.monotonic() + timeout
    while True:
        logs = {f: tuple(s.read(f).splitlines() for s in pair.sides) for f in LOG_FILES}
        if all(len(v) >= expected for f in LOG_FILES for v in logs[f]) or \
                time.monotonic() > deadline:
            return logs
        time.sleep(0.05)


def observe(pair) -> Observed:
    """Drive every case through both proxies in order, then read their logs and stats."""
    exchanges = {c.name: pair.both(lambda s, c=c: drive(s, c)) for c in CASES}
    logs = _wait_logs(pair, len(HCM_CASES))
    stats = pair.both(_stats)
    prom = pair.both(lambda s: named_ports(s, s.admin("/stats/prometheus").body.decode()))
    return Observed(pair, exchanges, logs, stats, prom)
