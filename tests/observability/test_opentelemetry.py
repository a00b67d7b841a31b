"""envoy.tracers.opentelemetry and the HCM tracing layer: OTLP encoding read back by the
OTLP messages, W3C parsing, Envoy's sampling decision and its runtime keys, and proxyd
exporting through a real OpenTelemetry Collector (tests/peers/build.sh)."""
from __future__ import annotations

import time

import pytest
from envoy.config.trace.v3 import opentelemetry_pb2  # noqa: F401  (registers the type)
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2)
from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from harness import bootstrap, cluster, free_port, http, listener
from peers.go_peers import Collector
from real_envoy import admin_stats
from side_services import H2_OPTIONS
from proxyd.observability.config_check import check_tracing
from proxyd.observability.tracing import hcm, otlp, w3c
from proxyd.runtime import Runtime, flatten

from .conftest import FakeStats, make_info
from .otlp_receiver import Receiver, flat

OTEL = "type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig"


def test_otlp_encoding_reads_back_with_the_otlp_messages():
    s = otlp.span(bytes.fromhex("0af7651916cd43dd8448eb211c80319c"),
                  bytes.fromhex("b7ad6b7169203331"), bytes.fromhex("00f067aa0ba902b7"),
                  "foo=bar", "ingress", otlp.KIND_SERVER, 1_700_000_000_000_000_000,
                  1_700_000_000_500_000_000, [("http.method", "GET"), ("ünï", "✓"),
                                              ("n", 7), ("b", True)],
                  [(1_700_000_000_100_000_000, "first_upstream_tx_byte_sent")],
                  status=otlp.STATUS_ERROR, flags=0x301)
    body = otlp.export_request([("service.name", "svc")], "proxyd", "1.0", [s, s])
    [a, b] = flat(ExportTraceServiceRequest.FromString(body))
    assert a == b
    assert (a["trace_id"], a["span_id"], a["parent_span_id"], a["trace_state"]) == \
        ("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331", "00f067aa0ba902b7", "foo=bar")
    assert (a["name"], a["kind"], a["start"], a["end"]) == \
        ("ingress", "SERVER", 1_700_000_000_000_000_000, 1_700_000_000_500_000_000)
    assert a["attributes"] == {"http.method": "GET", "ünï": "✓", "n": 7, "b": True}
    assert a["events"] == ["first_upstream_tx_byte_sent"]
    assert (a["status"], a["flags"], a["resource"], a["scope"]) == \
        (2, 0x301, {"service.name": "svc"}, "proxyd")


@pytest.mark.parametrize("value, ok", [
    ("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", True),
    ("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00", True),
    ("00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01", False),   # upper case
    ("00-00000000000000000000000000000000-b7ad6b7169203331-01", False),   # zero trace
    ("00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01", False),   # zero span
    ("ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", False),
    ("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-x", False),
    ("00-0af7651916cd43dd8448eb211c80319-cb7ad6b7169203331-01", False),
])
def test_traceparent_validation(value, ok):
    if ok:
        assert w3c.parse_traceparent(value)[0] == "0af7651916cd43dd8448eb211c80319c"
    else:
        with pytest.raises(ValueError):
            w3c.parse_traceparent(value)


class Ctx:
    def __init__(self, runtime=None):
        self.stats = FakeStats()
        self.runtime = runtime
        self.node = None


class Driver:
    def configure(self, _t):
        pass

    def start(self, info, req, traced):
        return traced


def hcm_tracing(**kw):
    d = {"provider": {"name": "envoy.tracers.opentelemetry", "typed_config": {
        "@type": OTEL, "service_name": "s"}}}
    for k, v in kw.items():
        d[k] = {"value": v} if k.endswith("_sampling") else v
    return json_format.ParseDict(d, hcm_pb2.HttpConnectionManager.Tracing())


def decide(tracing, headers, runtime=None):
    info = make_info()
    for k, v in headers.items():
        info.request.headers.set(k, v)
    ctx = Ctx(runtime)
    t = hcm.HcmTracer(tracing, Driver(), ctx, "ing")
    return t.decide(info, info.request), info.request.headers.get("x-request-id"), ctx.stats


RID = "9b1deb4d-3b7d-4bad-9bdd-2b0d7b3dcb6d"   # first 8 hex digits % 10000 = 9261


def test_random_sampling_is_decided_on_the_request_id_and_written_into_it():
    assert int(RID[:8], 16) % 10000 == 9261
    traced, rid, stats = decide(hcm_tracing(random_sampling=92.62), {"x-request-id": RID})
    assert traced and rid[14] == "9" and stats["http.ing.tracing.random_sampling"] == 1
    traced, rid, stats = decide(hcm_tracing(random_sampling=92.61), {"x-request-id": RID})
    assert not traced and rid == RID and stats["http.ing.tracing.not_traceable"] == 1
    # a request already marked sampled upstream of us stays traced, whatever our sampling
    traced, _rid, _s = decide(hcm_tracing(random_sampling=0),
                              {"x-request-id": RID[:14] + "9" + RID[15:]})
    assert traced
    # not a UUID: never traced
    traced, rid, stats = decide(hcm_tracing(), {"x-request-id": "abcdef12-not-a-uuid"})
    assert not traced and rid == "abcdef12-not-a-uuid"


def test_runtime_keys_override_the_configured_sampling():
    rt = Runtime()
    rt.update(flatten({"tracing.random_sampling": 0}))
    traced, _rid, _s = decide(hcm_tracing(random_sampling=100), {"x-request-id": RID}, rt)
    assert not traced
    rt = Runtime()
    rt.update(flatten({"tracing.global_enabled": 0}))
    traced, rid, _s = decide(hcm_tracing(), {"x-request-id": RID, "x-envoy-force-trace": "1"},
                             rt)
    assert not traced and rid[14] == "4"
    traced, rid, stats = decide(hcm_tracing(random_sampling=0),
                                {"x-request-id": RID, "x-envoy-force-trace": "1"})
    assert traced and rid[14] == "a" and stats["http.ing.tracing.service_forced"] == 1
    traced, rid, stats = decide(hcm_tracing(random_sampling=0),
                                {"x-request-id": RID, "x-client-trace-id": "c"})
    assert traced and rid[14] == "b" and stats["http.ing.tracing.client_enabled"] == 1


def test_unsupported_settings_are_named_errors():
    t = hcm_tracing()
    t.provider.typed_config.Pack(json_format.ParseDict(
        {"grpc_service": {"google_grpc": {"target_uri": "otel:4317", "stat_prefix": "o"}}},
        opentelemetry_pb2.OpenTelemetryConfig()))
    errors = check_tracing(t, ("tracing",), {"otlp"})
    assert any("only envoy_grpc" in msg for _p, msg in errors), errors
    t.provider.typed_config.Pack(json_format.ParseDict(
        {"grpc_service": {"envoy_grpc": {"cluster_name": "nowhere"}}},
        opentelemetry_pb2.OpenTelemetryConfig()))
    errors = check_tracing(t, ("tracing",), {"otlp"})
    assert any("unknown collector cluster 'nowhere'" in msg for _p, msg in errors), errors
    t = json_format.ParseDict({"custom_tags": [{"tag": "x", "metadata": {
        "kind": {"route": {}}, "metadata_key": {"key": "ns", "path": [{"key": "k"}]}}}]},
        hcm_tracing())
    errors = check_tracing(t, ("tracing",), {"otlp"})
    assert errors and "only request" in errors[0][1]


def otel_tracing(collector_cluster="otlp", **extra):
    return dict({"random_sampling": {"value": 100},
                 "provider": {"name": "envoy.tracers.opentelemetry", "typed_config": {
                     "@type": OTEL, "service_name": "front-svc",
                     "resource_detectors": [{"name": "static", "typed_config": {
                         "@type": "type.googleapis.com/envoy.extensions.tracers.opentelemetry."
                                  "resource_detectors.v3.StaticConfigResourceDetectorConfig",
                         "attributes": {"deployment.environment": "test"}}}],
                     "http_service": {"http_uri": {"uri": "http://otelcol/v1/traces",
                                                   "cluster": collector_cluster,
                                                   "timeout": "2s"}}}}}, **extra)


def test_spans_go_through_a_real_opentelemetry_collector(upstream, proxyd_factory, tmp_path):
    rx = Receiver()
    col = Collector(tmp_path, f"http://127.0.0.1:{rx.port}")
    try:
        port = free_port()
        bs = bootstrap([listener(port, tracing=otel_tracing())],
                       [cluster("upstream", [("127.0.0.1", upstream.port)]),
                        cluster("otlp", [("127.0.0.1", col.http_port)])])
        bs["node"] = {"id": "front-1", "cluster": "front"}
        bs["layered_runtime"] = {"layers": [{"name": "s", "static_layer": {
            "tracing.opentelemetry.flush_interval_ms": 200}}]}
        proxyd_factory(bs)
        sent = []
        for i in range(3):
            r = http(port, path=f"/col/{i}", headers=[("tracestate", "vendor=1")] if i else [])
            assert r.status == 200
            sent.append({k.lower(): v for k, v in r.json()["headers"]})
        spans = rx.wait_spans(3, timeout=30)
        by_id = {s["span_id"]: s for s in spans}
        for i, h in enumerate(sent):
            _v, trace_id, span_id, _f = h["traceparent"].split("-")
            s = by_id[span_id]
            assert s["trace_id"] == trace_id and (s["name"], s["kind"]) == ("ingress", "SERVER")
            assert s["attributes"]["http.url"].endswith(f"/col/{i}")
            assert s["attributes"]["node_id"] == "front-1"
            assert s["resource"]["service.name"] == "front-svc"
            assert s["resource"]["deployment.environment"] == "test"
            assert s["end"] > s["start"] > (time.time() - 120) * 1e9
        # what reached the receiver came from the collector, which took proxyd's OTLP in
        assert all(h.get("user-agent", "").startswith("OpenTelemetry Collector for proxyd")
                   for _p, h, _m in rx.requests), [h for _p, h, _m in rx.requests]
    finally:
        col.stop()
        rx.close()


def test_spans_go_to_a_real_collector_over_otlp_grpc(upstream, proxyd_factory, tmp_path):
    """grpc_service (envoy_grpc): unary TraceService/Export calls through the internal
    gRPC client to the collector's OTLP/gRPC port, counted in its cluster's stats."""
    rx = Receiver()
    col = Collector(tmp_path, f"http://127.0.0.1:{rx.port}")
    try:
        port, admin = free_port(), free_port()
        tracing = otel_tracing()
        otel = tracing["provider"]["typed_config"]
        del otel["http_service"]
        otel["grpc_service"] = {"envoy_grpc": {"cluster_name": "otlp"}, "timeout": "2s",
                                "initial_metadata": [{"key": "x-tenant", "value": "t1"}]}
        bs = bootstrap([listener(port, tracing=tracing)],
                       [cluster("upstream", [("127.0.0.1", upstream.port)]),
                        cluster("otlp", [("127.0.0.1", col.grpc_port)],
                                typed_extension_protocol_options=H2_OPTIONS)], admin)
        bs["layered_runtime"] = {"layers": [{"name": "s", "static_layer": {
            "tracing.opentelemetry.flush_interval_ms": 200}}]}
        proxyd_factory(bs)
        sent = [http(port, path=f"/g/{i}").json()["headers"] for i in range(3)]
        spans = rx.wait_spans(3, timeout=30)
        ids = {s["span_id"] for s in spans}
        for h in sent:
            traceparent = {k.lower(): v for k, v in h}["traceparent"]
            assert traceparent.split("-")[2] in ids
        assert all(s["resource"]["service.name"] == "front-svc" for s in spans)
        st = admin_stats(admin)   # proxyd's admin /stats, read as Envoy's
        assert st["cluster.otlp.upstream_rq_200"] >= 1
        assert st["tracing.opentelemetry.spans_sent"] >= 3
    finally:
        col.stop()
        rx.close()


def test_hcm_zipkin_unsampled_request_tells_the_next_hop_not_to_sample():
    """Envoy 1.40's Zipkin tracer on an unsampled request (observed): x-b3-traceid,
    x-b3-spanid (the same 64-bit id) and x-b3-sampled: 0 go upstream; nothing is reported."""
    from envoy.config.trace.v3 import zipkin_pb2  # noqa: F401
    from proxyd.http.headers import Headers
    t = json_format.ParseDict({"random_sampling": {"value": 0}, "provider": {
        "name": "envoy.tracers.zipkin", "typed_config": {
            "@type": "type.googleapis.com/envoy.config.trace.v3.ZipkinConfig",
            "collector_cluster": "zipkin", "collector_endpoint": "/api/v2/spans",
            "collector_endpoint_version": "HTTP_JSON"}}},
        hcm_pb2.HttpConnectionManager.Tracing())
    tracer = hcm.build_tracer(t, Ctx(), "ing")
    info = make_info()
    span = tracer.start(info, info.request)
    up = Headers()
    tracer.inject(span, up)
    assert up.get("x-b3-sampled") == "0"
    assert up.get("x-b3-traceid") == up.get("x-b3-spanid") and len(up.get("x-b3-spanid")) == 16
    assert up.get("x-b3-parentspanid") is None
    tracer.finish(span, info)
    assert tracer.driver.reporter.pending == []


def test_custom_tags_path_length_and_operation_name_reach_the_span():
    class Exporter:
        def __init__(self):
            self.batches = []

        def add(self, spans):
            self.batches.append(spans)

    t = json_format.ParseDict({
        "random_sampling": {"value": 100}, "max_path_tag_length": 5,
        "operation": "op %REQ(:METHOD)%",
        "custom_tags": [{"tag": "lit", "literal": {"value": "v"}},
                        {"tag": "md", "metadata": {"kind": {"request": {}}, "metadata_key": {
                            "key": "ns", "path": [{"key": "a"}, {"key": "b"}]}}}],
        "provider": {"name": "envoy.tracers.opentelemetry", "typed_config": {
            "@type": OTEL, "service_name": "s"}}}, hcm_pb2.HttpConnectionManager.Tracing())
    tracer = hcm.build_tracer(t, Ctx(), "ing")
    tracer.driver.exporter = ex = Exporter()
    info = make_info()
    info.set_dynamic_metadata("ns", {"a": {"b": 7.0}})
    span = tracer.start(info, info.request)
    tracer.finish(span, info)
    [[raw]] = ex.batches
    [s] = flat(ExportTraceServiceRequest.FromString(
        otlp.export_request([], "proxyd", "1", [raw])))
    assert s["name"] == "op POST"
    assert s["attributes"]["http.url"] == "https://svc.example.com/api/"
    assert (s["attributes"]["lit"], s["attributes"]["md"]) == ("v", "7")


@pytest.mark.parametrize("spawn", [False, True])
def test_hcm_zipkin_upstream_span_id_as_envoy(spawn):
    """Envoy 1.40 (observed): without spawn_upstream_span the SERVER span's own id goes
    upstream; with it, a CLIENT child's id, its parent the SERVER span."""
    from envoy.config.trace.v3 import zipkin_pb2  # noqa: F401
    from proxyd.http.headers import Headers
    t = json_format.ParseDict({"random_sampling": {"value": 100}, "spawn_upstream_span": spawn,
                               "provider": {"name": "envoy.tracers.zipkin", "typed_config": {
                                   "@type": "type.googleapis.com/envoy.config.trace.v3."
                                            "ZipkinConfig",
                                   "collector_cluster": "zipkin",
                                   "collector_endpoint_version": "HTTP_JSON"}}},
                              hcm_pb2.HttpConnectionManager.Tracing())
    tracer = hcm.build_tracer(t, Ctx(), "ing")
    info = make_info()
    span = tracer.start(info, info.request)
    up = Headers()
    tracer.inject(span, up)
    assert up.get("x-b3-sampled") == "1" and up.get("x-b3-traceid") == span.trace_id
    if spawn:
        assert up.get("x-b3-spanid") != span.id and up.get("x-b3-parentspanid") == span.id
    else:
        assert up.get("x-b3-spanid") == span.id and up.get("x-b3-parentspanid") is None
    tracer.finish(span, info)
    kinds = [s["kind"] for s in tracer.driver.reporter.pending]
    assert kinds == (["SERVER", "CLIENT"] if spawn else ["SERVER"])
