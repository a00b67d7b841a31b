"""Envoy's Jaeger architecture with proxyd in Envoy's places, against a real Jaeger
(all-in-one v1.75.0, in-memory storage, built by tests/peers/build.sh):

    client -> front proxyd (front-proxy) -> sidecar proxyd ingress (service1) -> service1
           service1 -> sidecar proxyd egress (service1) -> service2

service1 forwards the B3 headers and x-request-id it got, as a traced service must. Both
proxyds report Zipkin v2 JSON to Jaeger's Zipkin port; the test reads each trace back from
Jaeger's query API (/api/traces) and checks one trace per request with the right
parent/child chain, service names, span kinds and tags, for a sampled request, an
unsampled one (nothing reaches Jaeger) and one forced with x-envoy-force-trace."""
from __future__ import annotations

import http.server as http_server
import json
import threading
import time
import urllib.request

import pytest

from harness import bootstrap, cluster, free_port, http, listener
from peers.go_peers import Jaeger

ZIPKIN = "type.googleapis.com/envoy.config.trace.v3.ZipkinConfig"
FORWARDED = ("x-request-id", "x-b3-traceid", "x-b3-spanid", "x-b3-parentspanid",
             "x-b3-sampled", "x-b3-flags", "x-ot-span-context")


def tracing(random_sampling):
    return {"random_sampling": {"value": random_sampling}, "spawn_upstream_span": True,
            "provider": {"name": "envoy.tracers.zipkin", "typed_config": {
                "@type": ZIPKIN, "collector_cluster": "jaeger",
                "collector_endpoint": "/api/v2/spans",
                "collector_endpoint_version": "HTTP_JSON"}}}


class Service1:
    """Calls service2 through its sidecar's egress listener, forwarding the trace headers."""

    def __init__(self, egress_port: int):
        class Handler(http_server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                fwd = {k: v for k, v in self.headers.items() if k.lower() in FORWARDED}
                req = urllib.request.Request(f"http://127.0.0.1:{egress_port}/service2",
                                             headers=fwd)
                with urllib.request.urlopen(req, timeout=10) as r:
                    downstream = json.loads(r.read())
                body = json.dumps({"service1_saw": dict(self.headers.items()),
                                   "service2": downstream}).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass

        self.server = http_server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def jaeger(tmp_path_factory):
    j = Jaeger(tmp_path_factory.mktemp("jaeger"))
    yield j
    j.stop()


@pytest.fixture(scope="module")
def mesh(jaeger, upstream, module_proxyd_factory):
    """The front proxy and the sidecar: {"sampled": port of the front listener sampling
    every request, "off": port of one sampling none}."""
    front, front0, ingress, egress = free_port(), free_port(), free_port(), free_port()
    svc1 = Service1(egress)
    jaeger_cluster = cluster("jaeger", [("127.0.0.1", jaeger.zipkin_port)])
    sidecar = bootstrap(
        [listener(ingress, name="ingress", tracing=tracing(0)),
         listener(egress, name="egress", tracing=tracing(0))],
        [cluster("upstream", [("127.0.0.1", svc1.port)]),
         cluster("service2", [("127.0.0.1", upstream.port)]), jaeger_cluster])
    # the egress listener's routes go to service2
    eg_hcm = sidecar["static_resources"]["listeners"][1]["filter_chains"][0]["filters"][0]
    for vh in eg_hcm["typed_config"]["route_config"]["virtual_hosts"]:
        for r in vh["routes"]:
            r["route"]["cluster"] = "service2"
    sidecar["node"] = {"id": "service1-sidecar-1", "cluster": "service1"}
    edges = []
    for port, name, sampling in ((front, "front", 100), (front0, "front_unsampled", 0)):
        edge = listener(port, name=name, tracing=tracing(sampling))
        edge_hcm = edge["filter_chains"][0]["filters"][0]["typed_config"]
        edge_hcm["use_remote_address"] = True
        edge_hcm["internal_address_config"] = {"cidr_ranges": [
            {"address_prefix": "127.0.0.1", "prefix_len": 32}]}
        edges.append(edge)
    front_bs = bootstrap(edges, [cluster("upstream", [("127.0.0.1", ingress)]),
                                 jaeger_cluster])
    front_bs["node"] = {"id": "front-proxy-1", "cluster": "front-proxy"}
    module_proxyd_factory(sidecar)
    module_proxyd_factory(front_bs)
    yield {"sampled": front, "off": front0}
    svc1.close()


def wait_trace(jaeger, trace_id, n, timeout=30.0):
    deadline = time.monotonic() + timeout
    while True:
        t = jaeger.trace(trace_id)
        if t is not None and len(t["spans"]) >= n:
            time.sleep(0.3)
            return jaeger.trace(trace_id)
        assert time.monotonic() < deadline, (trace_id, t and len(t["spans"]))
        time.sleep(0.2)


def structure(trace):
    """[(service, kind, depth)] sorted by depth, and the spans by id."""
    procs = {k: v["serviceName"] for k, v in trace["processes"].items()}
    spans = {s["spanID"]: s for s in trace["spans"]}

    def parent(s):
        refs = [r["spanID"] for r in s.get("references", []) if r["refType"] == "CHILD_OF"]
        return refs[0] if refs else None

    def tags(s):
        return {t["key"]: t["value"] for t in s["tags"]}

    def depth(s):
        d = 0
        while parent(s) is not None:
            s = spans[parent(s)]
            d += 1
        return d
    rows = sorted(((depth(s), procs[s["processID"]], tags(s)["span.kind"], s["operationName"],
                    tags(s)) for s in spans.values()), key=lambda r: r[0])
    return rows, spans, parent


def check_chain(trace, rid):
    rows, spans, parent = structure(trace)
    assert [(d, svc, kind) for d, svc, kind, _op, _t in rows] == [
        (0, "front-proxy", "server"), (1, "front-proxy", "client"),
        (2, "service1", "server"), (3, "service1", "client"),
        (4, "service1", "server"), (5, "service1", "client")], rows
    roots = [s for s in spans.values() if parent(s) is None]
    assert len(roots) == 1
    for d, _svc, kind, op, tags in rows:
        assert tags["component"] == "proxy"
        assert tags["http.status_code"] == "200"
        if kind == "server":
            assert op == "ingress" and tags["guid:x-request-id"] == rid
            assert tags["http.method"] == "GET"
        else:
            assert op.startswith("router ") and op.endswith(" egress")
    assert rows[1][4]["upstream_cluster"] == "upstream"
    assert rows[5][4]["upstream_cluster"] == "service2"
    return rows


def test_sampled_request_is_one_two_hop_trace_in_jaeger(jaeger, mesh):
    r = http(mesh["sampled"], path="/trace/1")
    assert r.status == 200
    saw1 = {k.lower(): v for k, v in r.json()["service1_saw"].items()}
    saw2 = {k.lower(): v for k, v in r.json()["service2"]["headers"]}
    trace_id = saw1["x-b3-traceid"]
    assert saw2["x-b3-traceid"] == trace_id and saw1["x-b3-sampled"] == "1"
    rid = saw1["x-request-id"]
    assert rid[14] == "9" and saw2["x-request-id"] == rid
    trace = wait_trace(jaeger, trace_id, 6)
    rows = check_chain(trace, rid)
    assert rows[0][4]["http.url"].endswith("/trace/1")
    # the id service2 got is the last CLIENT span's
    assert any(s["spanID"] == saw2["x-b3-spanid"] and
               {t["key"]: t["value"] for t in s["tags"]}["span.kind"] == "client"
               for s in trace["spans"])
    services = jaeger.get("/api/services")["data"]
    assert {"front-proxy", "service1"} <= set(services)


def test_forced_request_is_traced_with_sampling_off(jaeger, mesh):
    # neither that front listener nor the sidecar samples anything themselves: what the
    # front forces carries the trace to the end
    r = http(mesh["off"], path="/trace/forced", headers=[("x-envoy-force-trace", "1")])
    assert r.status == 200
    saw1 = {k.lower(): v for k, v in r.json()["service1_saw"].items()}
    rid = saw1["x-request-id"]
    assert rid[14] == "a" and saw1["x-b3-sampled"] == "1"     # the trace reason: forced
    trace = wait_trace(jaeger, saw1["x-b3-traceid"], 6)
    check_chain(trace, rid)


def test_unsampled_request_reaches_jaeger_not_at_all(jaeger, mesh):
    r = http(mesh["off"], path="/trace/unsampled")
    assert r.status == 200
    saw1 = {k.lower(): v for k, v in r.json()["service1_saw"].items()}
    saw2 = {k.lower(): v for k, v in r.json()["service2"]["headers"]}
    # told not to sample at every hop (Envoy sends ids and x-b3-sampled: 0)
    assert saw1["x-b3-sampled"] == saw2["x-b3-sampled"] == "0"
    rid = saw1["x-request-id"]
    assert rid[14] == "4" and saw2["x-request-id"] == rid    # not traceable, end to end
    # a sampled request after it: once its trace is in Jaeger, the batches holding the
    # unsampled request's spans (there are none) would be too
    r2 = http(mesh["sampled"], path="/trace/marker")
    marker = {k.lower(): v for k, v in r2.json()["service1_saw"].items()}
    wait_trace(jaeger, marker["x-b3-traceid"], 6)
    for service in ("front-proxy", "service1"):
        tags = json.dumps({"guid:x-request-id": rid})
        found = jaeger.get(f"/api/traces?service={service}&tags="
                           + urllib.request.quote(tags) + "&lookback=1h&limit=20")["data"]
        assert found == [], service
