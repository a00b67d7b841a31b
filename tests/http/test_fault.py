"""envoy.filters.http.fault end to end: fixed delay then abort (flags DI,FI), header
driven aborts and delays (x-envoy-fault-*), a percentage header that can only lower the
configured one, a delay that does not hold up the worker, max_active_faults and the
fault.* stats. Real proxyd, real upstream, real sockets."""
from __future__ import annotations

import threading
import time
import urllib.request
from pathlib import Path

import pytest

from harness import Proxyd, bootstrap, cluster, free_port, hcm, http, write_config

FAULT = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"
FILE_LOG = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"


def _listener(port, prefix, fault, log_path, routes=None):
    h = hcm(stat_prefix=prefix, routes=routes, access_log=[{"name": "file", "typed_config": {
        "@type": FILE_LOG, "path": log_path, "log_format": {"text_format_source": {
            "inline_string": "%REQ(:PATH)% %RESPONSE_CODE% %RESPONSE_FLAGS% "
                             "%RESPONSE_CODE_DETAILS%\n"}}}}])
    h["http_filters"].insert(0, {"name": "envoy.filters.http.fault",
                                 "typed_config": dict({"@type": FAULT}, **fault)})
    return {"name": prefix, "address": {"socket_address": {"address": "127.0.0.1",
                                                           "port_value": port}},
            "filter_chains": [{"filters": [{
                "name": "envoy.filters.network.http_connection_manager", "typed_config": h}]}]}


@pytest.fixture(scope="module")
def px(upstream, tmp_path_factory):
    d = tmp_path_factory.mktemp("fault")
    log = str(d / "access.log")
    full = {"numerator": 100}
    fixed = {"delay": {"fixed_delay": "0.3s", "percentage": full},
             "abort": {"http_status": 418, "percentage": full}}
    by_header = {"delay": {"header_delay": {}, "percentage": full},
                 "abort": {"header_abort": {}, "percentage": {"numerator": 100}},
                 "max_active_faults": 1}
    never = {"abort": {"http_status": 503}}   # no percentage: 0 %, never fires
    matching = {"abort": {"http_status": 500, "percentage": full}, "upstream_cluster": "upstream",
                "headers": [{"name": "x-fault-me", "present_match": True}],
                "downstream_nodes": ["canary"]}
    cfg = bootstrap([_listener(free_port(), "fixed", fixed, log),
                     _listener(free_port(), "hdr", by_header, log),
                     _listener(free_port(), "never", never, log, routes=[
                         {"match": {"prefix": "/route-abort"}, "route": {"cluster": "upstream"},
                          "typed_per_filter_config": {"envoy.filters.http.fault": dict(
                              {"@type": FAULT}, abort={"http_status": 451, "percentage": full})}},
                         {"match": {"prefix": "/"}, "route": {"cluster": "upstream"}}]),
                     _listener(free_port(), "matching", matching, log)],
                    [cluster("upstream", [("127.0.0.1", upstream.port)])], free_port())
    p = Proxyd(write_config(d, cfg), concurrency=2)   # max_active_faults spans workers
    p.start()
    p.access_log = log
    yield p
    p.cleanup()


def stats(px) -> dict:
    text = urllib.request.urlopen(px.admin_url + "/stats", timeout=5).read().decode()
    return dict(line.split(": ", 1) for line in text.splitlines() if ": " in line)


def log_line(px, path):
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        p = Path(px.access_log)
        for line in (p.read_text().splitlines() if p.exists() else []):
            if line.startswith(path + " "):
                return line
        time.sleep(0.05)
    raise AssertionError("no access log line for " + path)


def test_fixed_delay_then_abort(px):
    t0 = time.monotonic()
    r = http(px.ports[0], "GET", "/fixed")
    assert time.monotonic() - t0 >= 0.29
    assert r.status == 418 and r.body == b"fault filter abort"
    assert log_line(px, "/fixed") == "/fixed 418 DI,FI fault_filter_abort"
    s = stats(px)
    assert int(s["http.fixed.fault.delays_injected"]) >= 1
    assert int(s["http.fixed.fault.aborts_injected"]) >= 1


def test_header_abort_and_no_header_passes(px):
    r = http(px.ports[1], "GET", "/h-abort", [("x-envoy-fault-abort-request", "429")])
    assert r.status == 429 and r.body == b"fault filter abort"
    r = http(px.ports[1], "GET", "/h-none")
    assert r.status == 200 and r.json()["path"] == "/h-none"
    # a percentage header of 0 lowers the configured 100 %: no fault
    r = http(px.ports[1], "GET", "/h-zero", [("x-envoy-fault-abort-request", "429"),
                                             ("x-envoy-fault-abort-request-percentage", "0")])
    assert r.status == 200


def test_unset_percentage_never_fires(px):
    assert http(px.ports[2], "GET", "/never").status == 200


def test_header_delay_does_not_block_the_worker_and_max_active_faults(px):
    s0 = stats(px)
    out = {}

    def slow():
        t0 = time.monotonic()
        out["status"] = http(px.ports[1], "GET", "/h-slow",
                             [("x-envoy-fault-delay-request", "1000")]).status
        out["took"] = time.monotonic() - t0

    t = threading.Thread(target=slow)
    t.start()
    time.sleep(0.3)
    t0 = time.monotonic()
    # while the first delay is active: a second one overflows max_active_faults (1)
    r = http(px.ports[1], "GET", "/h-overflow", [("x-envoy-fault-delay-request", "1000")])
    assert r.status == 200 and time.monotonic() - t0 < 0.9
    assert stats(px)["http.hdr.fault.active_faults"] == "1"
    t.join(10)
    assert out["status"] == 200 and out["took"] >= 0.95
    s1 = stats(px)
    overflow = "http.hdr.fault.faults_overflow"
    assert int(s1[overflow]) - int(s0.get(overflow, 0)) == 1
    assert s1["http.hdr.fault.active_faults"] == "0"
    assert log_line(px, "/h-slow") == "/h-slow 200 DI via_upstream"


def test_grpc_abort_header_gives_a_trailers_only_grpc_status(px):
    r = http(px.ports[1], "POST", "/pkg.Svc/Call", [("content-type", "application/grpc"),
                                                    ("x-envoy-fault-abort-grpc-request", "14")],
             body=b"\x00\x00\x00\x00\x00")
    assert r.status == 200 and r.header("grpc-status") == "14"
    assert r.header("grpc-message") == "fault filter abort"


def test_fault_applies_only_to_matching_headers_cluster_and_node(px):
    node = ("x-envoy-downstream-service-node", "canary")
    assert http(px.ports[3], "GET", "/m", [("x-fault-me", "1"), node]).status == 500
    assert http(px.ports[3], "GET", "/m", [node]).status == 200
    assert http(px.ports[3], "GET", "/m", [("x-fault-me", "1")]).status == 200


def test_route_fault_replaces_the_filters_over_http1_and_http2(px):
    import sys
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "http2"))
    from h2client import H2Client
    r = http(px.ports[2], "GET", "/route-abort")
    assert r.status == 451 and r.body == b"fault filter abort"
    with H2Client(px.ports[2]) as c:
        assert c.get("/route-abort").status == 451
        assert c.get("/elsewhere?size=3").status == 200   # the filter's: 0 %, never fires
    assert int(stats(px)["http.never.fault.aborts_injected"]) == 2
