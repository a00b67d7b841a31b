"""envoy.filters.http.csrf, buffer and health_check end to end with real clients: curl
over HTTP/1.1 and an HTTP/2 client; the buffer filter gives an HTTP/2 upload (which has
no Content-Length) one, and answers 413 past max_request_bytes; the health check answers
locally, and 503 once POST /healthcheck/fail, which also closes HTTP/1 connections."""
from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from harness import Proxyd, bootstrap, cluster, free_port, hcm, http, write_config

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "http2"))
from h2client import H2Client  # noqa: E402

H = "type.googleapis.com/envoy.extensions.filters.http."


@pytest.fixture(scope="module")
def px(upstream, tmp_path_factory):
    h = hcm(stat_prefix="edge")
    h["http_filters"][:0] = [
        {"name": "envoy.filters.http.health_check", "typed_config": {
            "@type": H + "health_check.v3.HealthCheck", "pass_through_mode": False,
            "headers": [{"name": ":path", "string_match": {"exact": "/healthz"}}],
            "cluster_min_healthy_percentages": {"upstream": {"value": 100}}}},
        {"name": "envoy.filters.http.csrf", "typed_config": {
            "@type": H + "csrf.v3.CsrfPolicy",
            "filter_enabled": {"default_value": {"numerator": 100}},
            "additional_origins": [{"suffix": ".trusted.example"}]}},
        {"name": "envoy.filters.http.buffer", "typed_config": {
            "@type": H + "buffer.v3.Buffer", "max_request_bytes": 4096}}]
    port = free_port()
    listener = {"name": "edge", "address": {"socket_address": {"address": "127.0.0.1",
                                                               "port_value": port}},
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": h}]}]}
    cfg = bootstrap([listener], [cluster("upstream", [("127.0.0.1", upstream.port)])],
                    free_port())
    cfg["node"]["cluster"] = "edge-cluster"
    p = Proxyd(write_config(tmp_path_factory.mktemp("policy"), cfg)).start()
    yield p
    p.cleanup()


def stats(px) -> dict:
    text = urllib.request.urlopen(px.admin_url + "/stats", timeout=5).read().decode()
    return dict(line.split(": ", 1) for line in text.splitlines() if ": " in line)


def curl(px, *args):
    out = subprocess.run(["curl", "-s", "-o", "/dev/stderr", "-w", "%{http_code}", *args,
                          "http://127.0.0.1:%d/echo" % px.port], capture_output=True, timeout=10)
    return int(out.stdout), out.stderr


def test_csrf_with_curl(px):
    code, _ = curl(px, "-X", "POST", "-d", "a=1", "-H", "origin: https://evil.example")
    assert code == 403
    code, body = curl(px, "-X", "POST", "-d", "a=1", "-H", "origin: https://app.trusted.example")
    assert code == 200 and json.loads(body)["body"] == "a=1"
    code, body = curl(px, "-X", "DELETE")
    assert code == 403 and body == b"Invalid origin"
    s = stats(px)
    assert int(s["http.edge.csrf.request_invalid"]) >= 1
    assert int(s["http.edge.csrf.missing_source_origin"]) >= 1


def test_csrf_and_buffer_over_http2(px):
    with H2Client(px.port) as c:
        auth = [("origin", "http://%s" % c.authority)]
        sid = c.request("POST", "/echo", auth, body=b"x" * 3000)
        r = c.wait(sid)
        echo = json.loads(bytes(r.body))
        assert r.status == 200 and echo["body_len"] == 3000
        assert dict(echo["headers"])["content-length"] == "3000"   # the buffer set it
        r = c.wait(c.request("POST", "/echo", auth, body=b"x" * 5000))
        assert r.status == 413
        r = c.wait(c.request("POST", "/echo", [("origin", "https://evil.example")], body=b"1"))
        assert r.status == 403 and bytes(r.body) == b"Invalid origin"


def test_buffer_gives_a_chunked_upload_its_length(px):
    code, body = curl(px, "-X", "POST", "-H", "transfer-encoding: chunked", "--data-binary",
                      "@-", "-H", "origin: http://127.0.0.1:%d" % px.port)
    assert code == 200 and json.loads(body)["body_len"] == 0


def test_health_check_and_healthcheck_fail(px):
    r = http(px.port, "GET", "/healthz")
    assert r.status == 200 and r.body == b""
    assert r.header("x-envoy-upstream-healthchecked-cluster") == "edge-cluster"
    with H2Client(px.port) as c:
        assert c.get("/healthz").status == 200
    urllib.request.urlopen(urllib.request.Request(px.admin_url + "/healthcheck/fail",
                                                  method="POST"), timeout=5)
    try:
        deadline = time.monotonic() + 10
        while http(px.port, "GET", "/healthz").status != 503:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        r = http(px.port, "GET", "/t?size=3")
        assert r.status == 200 and r.header("x-envoy-immediate-health-check-fail") == "true"
        assert r.header("connection") == "close"
        with H2Client(px.port) as c:
            assert c.get("/healthz").status == 503
            deadline = time.monotonic() + 5
            while c.goaway is None:   # the drain close: a GOAWAY notice
                assert time.monotonic() < deadline
                c.pump(0.2)
    finally:
        urllib.request.urlopen(urllib.request.Request(px.admin_url + "/healthcheck/ok",
                                                      method="POST"), timeout=5)
    s = stats(px)
    assert int(s["http.edge.health_check.ok"]) >= 2 and int(s["http.edge.health_check.failed"]) >= 2
