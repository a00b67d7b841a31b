"""Route.decorator names the Zipkin server span and, with propagate, answers
x-envoy-decorator-operation; an incoming one names the span instead and goes no further;
RouteMatch.grpc; HCM add_user_agent and via. Real clients (curl, HTTP/2), a collector."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from harness import bootstrap, cluster, free_port, http, listener, virtual_host

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "http2"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from h2client import H2Client  # noqa: E402
from observability.test_zipkin import Collector  # noqa: E402

ZIPKIN = "type.googleapis.com/envoy.config.trace.v3.ZipkinConfig"


def test_decorator_grpc_match_user_agent_and_via(upstream, proxyd_factory):
    col = Collector()
    try:
        port = free_port()
        routes = [
            {"match": {"prefix": "/", "grpc": {}}, "route": {"cluster": "upstream"},
             "decorator": {"operation": "grpc-call"}},
            {"match": {"prefix": "/"}, "route": {"cluster": "upstream"},
             "decorator": {"operation": "checkout"}}]
        cfg = bootstrap([listener(port, virtual_hosts=[virtual_host(routes)], add_user_agent=True,
                                  via="edge-1", tracing={
                                      "random_sampling": {"value": 100},
                                      "provider": {"name": "envoy.tracers.zipkin", "typed_config": {
                                          "@type": ZIPKIN, "collector_cluster": "zipkin",
                                          "collector_endpoint": "/api/v2/spans",
                                          "collector_endpoint_version": "HTTP_JSON"}}})],
                        [cluster("upstream", [("127.0.0.1", upstream.port)]),
                         cluster("zipkin", [col.address])])
        cfg["node"] = {"id": "n-9", "cluster": "front"}
        proxyd_factory(cfg)
        out = subprocess.run(["curl", "-s", "-D", "/dev/stderr", "-H", "via: 1.0 old",
                              "http://127.0.0.1:%d/echo" % port], capture_output=True, timeout=10)
        head = out.stderr.decode().lower()
        assert "x-envoy-decorator-operation: checkout" in head and "via: edge-1" in head
        seen = dict(json.loads(out.stdout)["headers"])
        assert seen["via"] == "1.0 old, edge-1"
        assert seen["x-envoy-downstream-service-cluster"] == "front"
        assert seen["x-envoy-downstream-service-node"] == "n-9"
        assert seen["user-agent"].startswith("curl/")
        with H2Client(port) as c:
            r = c.get("/echo", [("x-envoy-decorator-operation", "client-named")])
            seen = dict(json.loads(bytes(r.body))["headers"])
            assert "x-envoy-decorator-operation" not in seen and seen["user-agent"] == "front"
            assert r.header("x-envoy-decorator-operation") is None
            r = c.wait(c.request("POST", "/echo", [("content-type", "application/grpc")], b""))
            assert r.header("x-envoy-decorator-operation") == "grpc-call"
        r = http(port, path="/echo")
        deadline = time.monotonic() + 8
        while len([s for s in col.spans() if s["kind"] == "SERVER"]) < 4:
            assert time.monotonic() < deadline, col.spans()
            time.sleep(0.05)
        names = sorted(s["name"] for s in col.spans() if s["kind"] == "SERVER")
        assert names == ["checkout", "checkout", "client-named", "grpc-call"]
    finally:
        col.close()
