"""envoy.filters.http.ratelimit end to end: real proxyd (two workers), a grpcio rate-limit
service counting fixed windows in a real redis-server. The limit holds across workers
(the service decides), the default 20 ms timeout and an erroring service fail open or
closed as configured, gRPC clients get RESOURCE_EXHAUSTED when asked, and the calls go
through the service's cluster (its stats)."""
from __future__ import annotations

import time
import urllib.request
from pathlib import Path

import pytest

from harness import Proxyd, bootstrap, cluster, free_port, hcm, http, write_config
from ratelimit_service import RateLimitService, RedisServer
from side_services import H2_OPTIONS

RL = "type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit"


def _listener(name, port, prefix, filter_cfg, routes, log):
    h = hcm(routes=routes, stat_prefix=prefix, access_log=[{
        "name": "file", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
            "path": log, "log_format": {"text_format_source": {"inline_string":
                "%REQ(:PATH)% %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS%\n"}}}}])
    h["http_filters"].insert(0, {"name": "envoy.filters.http.ratelimit",
                                 "typed_config": dict({"@type": RL}, **filter_cfg)})
    return {"name": name, "address": {"socket_address": {"address": "127.0.0.1",
                                                         "port_value": port}},
            "filter_chains": [{"filters": [{
                "name": "envoy.filters.network.http_connection_manager", "typed_config": h}]}]}


def _route(prefix, key):
    return {"match": {"prefix": prefix}, "route": {
        "cluster": "upstream",
        "rate_limits": [{"actions": [{"generic_key": {"descriptor_value": key}},
                                     {"remote_address": {}}]}]}}


def config(ports, upstream_port, rls_port, d):
    service = {"transport_api_version": "V3",
               "grpc_service": {"envoy_grpc": {"cluster_name": "rls"}}}
    routes = [_route("/slow", "slow"), _route("/broken", "broken"), _route("/", "api")]
    listeners = [
        _listener("open", ports[0], "open", {"domain": "web", "timeout": "2s",
                                             "rate_limited_as_resource_exhausted": True,
                                             "rate_limit_service": service},
                  routes, str(d / "open.log")),
        # the default 20 ms timeout, failing closed
        _listener("closed", ports[1], "closed", {"domain": "web", "failure_mode_deny": True,
                                                 "rate_limit_service": service},
                  routes, str(d / "closed.log")),
    ]
    clusters = [cluster("upstream", [("127.0.0.1", upstream_port)]),
                cluster("rls", [("127.0.0.1", rls_port)],
                        typed_extension_protocol_options=H2_OPTIONS)]
    return bootstrap(listeners, clusters, ports[2])


@pytest.fixture(scope="module")
def rls():
    r = RedisServer()
    svc = RateLimitService(r.port, {("web", "generic_key=api|remote_address=127.0.0.1"):
                                    (5, "HOUR")}, slow=0.5)
    yield svc
    svc.stop()
    r.stop()


@pytest.fixture(scope="module")
def px(upstream, rls, tmp_path_factory):
    d = tmp_path_factory.mktemp("ratelimit")
    ports = [free_port() for _ in range(3)]
    p = Proxyd(write_config(d, config(ports, upstream.port, rls.port, d)), concurrency=2)
    p.start()
    p.ports, p.dir = ports, d
    yield p
    p.cleanup()


def stats(px) -> dict:
    text = urllib.request.urlopen(px.admin_url + "/stats", timeout=5).read().decode()
    return dict(line.split(": ", 1) for line in text.splitlines() if ": " in line)


def log_lines(path: Path, n: int) -> list[str]:
    deadline = time.monotonic() + 10
    while True:
        lines = path.read_text().splitlines() if path.exists() else []
        if len(lines) >= n or time.monotonic() > deadline:
            return lines
        time.sleep(0.05)


def test_limit_holds_across_workers_and_errors_fail_open(px, rls):
    rls.reset()
    codes = [http(px.ports[0], "GET", "/a%d" % i).status for i in range(8)]  # new connections
    assert codes == [200] * 5 + [429] * 3
    assert rls.seen[0] == ("web", [[("generic_key", "api"), ("remote_address", "127.0.0.1")]], 0,
                           [None])
    grpc = http(px.ports[0], "POST", "/pkg.Svc/M", body=b"",
                headers=[("content-type", "application/grpc")])
    assert grpc.header("grpc-status") == "8"               # RESOURCE_EXHAUSTED
    assert http(px.ports[0], "GET", "/slow").status == 200  # within the 2 s timeout
    assert http(px.ports[0], "GET", "/broken").status == 200   # the service failed: open
    s = stats(px)
    assert s["cluster.upstream.ratelimit.over_limit"] == "4"
    assert s["cluster.upstream.ratelimit.ok"] == "6"
    assert s["cluster.upstream.ratelimit.error"] == "1"
    assert s["cluster.upstream.ratelimit.failure_mode_allowed"] == "1"
    assert s["cluster.rls.upstream_rq_total"] == "11"
    lines = log_lines(px.dir / "open.log", 12)
    # two workers write the log: lines may interleave out of request order
    assert "/a5 429 RL request_rate_limited" in lines and "/a4 200 - via_upstream" in lines
    assert "/pkg.Svc/M 200 RL request_rate_limited" in lines   # gRPC: trailers-only reply


def test_timeout_fails_closed_with_rlse(px, rls):
    r = http(px.ports[1], "GET", "/slow")           # 0.5 s service, 20 ms timeout
    assert (r.status, r.body) == (500, b"")
    assert log_lines(px.dir / "closed.log", 1)[-1] == "/slow 500 RLSE rate_limiter_error"
    s = stats(px)
    assert int(s["cluster.rls.upstream_rq_timeout"]) >= 1
