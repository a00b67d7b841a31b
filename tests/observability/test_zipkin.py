"""Zipkin tracer: sampling, B3 continuation, span shape against the v2 schema, reporting
to a real collector (and to dead or failing ones)."""
from __future__ import annotations

import http.server
import re
import threading
import time

import gevent
import orjson
import pytest
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2)
from envoy.config.trace.v3 import zipkin_pb2  # noqa: F401  (registers ZipkinConfig for Any)
from google.protobuf import json_format

from proxyd.http.headers import Headers
from proxyd.observability.tracing import b3, zipkin
from proxyd.observability.tracing.zipkin import build_tracer

from side_services import Worker, cluster_config

from .conftest import FakeStats, make_info

ZIPKIN_TYPE = "type.googleapis.com/envoy.config.trace.v3.ZipkinConfig"


class Node:
    id = "front-1"
    cluster = "front"


class Ctx:
    """Zipkin counters in a dict; the collector cluster is a real one (a real cluster
    manager over a real stats file: the reporter posts through the async client)."""
    _workers: list = []

    def __init__(self, collector=None):
        self.stats = FakeStats()
        self.node = Node()
        w = Worker()
        Ctx._workers.append(w)
        self.worker = w
        if collector:
            w.set_clusters(cluster_config("zipkin", collector[1]))
        self.cluster_manager = w.cluster_manager


def tracing(**zk):
    sampling = {k: zk.pop(k) for k in list(zk) if k.endswith("_sampling")}
    cfg = {"collector_cluster": "zipkin", "collector_endpoint": "/api/v2/spans",
           "collector_endpoint_version": "HTTP_JSON", **zk}
    return json_format.ParseDict(
        {"provider": {"name": "envoy.tracers.zipkin",
                      "typed_config": {"@type": ZIPKIN_TYPE, **cfg}},
         **{k: {"value": v} for k, v in sampling.items()}},
        hcm_pb2.HttpConnectionManager.Tracing())


@pytest.fixture(autouse=True)
def fresh_reporters():
    zipkin._reporters.clear()
    yield
    zipkin._reporters.clear()
    while Ctx._workers:
        Ctx._workers.pop().close()


def test_no_provider_means_no_tracer():
    assert build_tracer(hcm_pb2.HttpConnectionManager.Tracing(), Ctx()) is None
    assert build_tracer(None, Ctx()) is None


def test_unsupported_options_are_config_errors():
    with pytest.raises(ValueError, match="collector_endpoint_version"):
        build_tracer(tracing(collector_endpoint_version="HTTP_PROTO"), Ctx())


def test_root_span_64_and_128_bit():
    info = make_info()
    span = build_tracer(tracing(), Ctx()).start(info, info.request)
    assert re.fullmatch(r"[0-9a-f]{16}", span.trace_id) and span.id == span.trace_id
    assert span.parent_id is None and info.trace is span
    span = build_tracer(tracing(trace_id_128bit=True), Ctx()).start(info, info.request)
    assert re.fullmatch(r"[0-9a-f]{32}", span.trace_id) and span.trace_id.endswith(span.id)


@pytest.mark.parametrize("settings, headers, traced", [
    ({"random_sampling": 0}, [], False),
    ({"random_sampling": 100}, [], True),
    ({"random_sampling": 0}, [("x-envoy-force-trace", "1")], True),
    ({"random_sampling": 0, "client_sampling": 100}, [("x-client-trace-id", "abc")], True),
    ({"random_sampling": 100, "client_sampling": 0}, [("x-client-trace-id", "abc")], False),
    ({"random_sampling": 100, "overall_sampling": 0}, [], False),
    ({"random_sampling": 100}, [("x-b3-sampled", "0")], False),
    ({"random_sampling": 0}, [("b3", "463ac35c9f6413ad-e457b5a2e4d86bd1-1")], True),
    ({"random_sampling": 0}, [("x-b3-flags", "1")], True),
])
def test_sampling_decision(settings, headers, traced):
    info = make_info()
    info.request.headers = Headers(list(headers))
    assert (build_tracer(tracing(**settings), Ctx()).start(info, info.request) is not None) \
        == traced


def test_random_sampling_percentage():
    tr = build_tracer(tracing(random_sampling=30), Ctx())
    info = make_info()
    n = sum(tr.start(info, info.request) is not None for _ in range(5000))
    assert 1200 < n < 1800


def test_shared_span_context_continues_the_callers_span_id():
    T, S, P = "463ac35c9f6413ad", "e457b5a2e4d86bd1", "05e3ac9a4f6e3b90"
    info = make_info()
    info.request.headers = Headers([("x-b3-traceid", T), ("x-b3-spanid", S),
                                    ("x-b3-parentspanid", P), ("x-b3-sampled", "1")])
    shared = build_tracer(tracing(), Ctx()).start(info, info.request)
    assert (shared.trace_id, shared.id, shared.parent_id, shared.shared) == (T, S, P, True)
    own = build_tracer(tracing(shared_span_context=False), Ctx()).start(info, info.request)
    assert (own.trace_id, own.parent_id, own.shared) == (T, S, False) and own.id != S


def test_two_hops_parent_child_ids_consistent():
    """hop1 starts the trace and injects; hop2 continues from hop1's upstream headers."""
    hop1, hop2 = build_tracer(tracing(), Ctx()), build_tracer(tracing(), Ctx())
    info1 = make_info()
    info1.request.headers = Headers([("user-agent", "client")])
    s1 = hop1.start(info1, info1.request)
    upstream = info1.request.headers.copy()
    hop1.inject(s1, upstream)
    info2 = make_info()
    info2.request.headers = upstream
    s2 = hop2.start(info2, info2.request)
    assert s2.trace_id == s1.trace_id
    assert s2.id == s1.clients[0][0]            # shared with hop1's CLIENT span
    assert s2.parent_id == s1.id
    down = upstream.copy()
    hop2.inject(s2, down)
    assert down.get("x-b3-parentspanid") == s2.id and down.get("x-b3-traceid") == s1.trace_id


class Collector:
    """A real HTTP collector on localhost recording every POSTed body."""

    def __init__(self, status=202):
        received = self.received = []
        self.paths = []
        paths = self.paths

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                paths.append((self.path, self.headers["Content-Type"], self.headers["Host"]))
                received.append(orjson.loads(body))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *a):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.address = self.server.server_address
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def spans(self):
        return [s for batch in self.received for s in batch]

    def close(self):
        self.server.shutdown()
        self.server.server_close()


HEX16 = re.compile(r"^[0-9a-f]{16}$")
TRACE = re.compile(r"^[0-9a-f]{16}([0-9a-f]{16})?$")
SPAN_KEYS = {"traceId", "name", "parentId", "id", "kind", "timestamp", "duration", "debug",
             "shared", "localEndpoint", "remoteEndpoint", "annotations", "tags"}
ENDPOINT_KEYS = {"serviceName", "ipv4", "ipv6", "port"}


def check_zipkin_v2(span, now_us):
    """The Span definition of zipkin2-api.yaml: names, types, enum, units."""
    assert set(span) <= SPAN_KEYS, set(span) - SPAN_KEYS
    assert TRACE.match(span["traceId"]) and HEX16.match(span["id"])
    if "parentId" in span:
        assert HEX16.match(span["parentId"])
    assert span["kind"] in ("CLIENT", "SERVER", "PRODUCER", "CONSUMER")
    assert isinstance(span["name"], str)
    assert type(span["timestamp"]) is int and type(span["duration"]) is int
    assert abs(span["timestamp"] - now_us) < 120 * 10 ** 6      # epoch microseconds
    assert span["duration"] >= 1
    for key in ("localEndpoint", "remoteEndpoint"):
        if key in span:
            ep = span[key]
            assert set(ep) <= ENDPOINT_KEYS
            assert all(isinstance(ep[k], str) for k in ("serviceName", "ipv4", "ipv6") if k in ep)
            assert "port" not in ep or type(ep["port"]) is int
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in span["tags"].items())
    for flag in ("debug", "shared"):
        assert flag not in span or type(span[flag]) is bool


def wait_for(cond, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        gevent.sleep(0.02)


def traced_request(tracer, code=200, flags=(), retries=0):
    now = time.time()
    info = make_info(start_time=now, response_code=code, response_flags=list(flags))
    info.start_mono = time.monotonic()
    span = tracer.start(info, info.request)
    up = info.request.headers.copy()
    for _ in range(retries + 1):
        tracer.inject(span, up)
    info.end_mono = info.start_mono + 0.0237
    tracer.finish(span, info)
    return span, up


def test_spans_reach_a_real_collector_in_zipkin_v2_shape():
    col = Collector()
    try:
        ctx = Ctx(col.address)
        tracer = build_tracer(tracing(), ctx)
        tracer.reporter.flush_interval = 0.05
        span, up = traced_request(tracer, 201)
        _, _ = traced_request(tracer, 503, flags=["UF", "URX"], retries=1)
        wait_for(lambda: len(col.spans()) == 5)
        assert col.paths[0] == ("/api/v2/spans", "application/json", "zipkin")
        now_us = int(time.time() * 1e6)
        spans = col.spans()
        for s in spans:
            check_zipkin_v2(s, now_us)
        server, client = spans[0], spans[1]
        assert server["kind"] == "SERVER" and client["kind"] == "CLIENT"
        assert server["name"] == "ingress" and client["name"] == "router backend egress"
        assert server["localEndpoint"] == {"serviceName": "front", "ipv4": "10.0.0.2",
                                           "port": 10000}
        assert server["remoteEndpoint"] == {"ipv4": "10.1.2.3", "port": 51234}
        assert client["remoteEndpoint"] == {"serviceName": "backend", "ipv4": "10.0.0.9",
                                            "port": 8080}
        assert server["duration"] == 23700
        assert client["traceId"] == server["traceId"] == span.trace_id
        assert client["parentId"] == server["id"] and "parentId" not in server
        assert up.get("x-b3-spanid") == client["id"]
        tags = server["tags"]
        assert tags["http.method"] == "POST"
        assert tags["http.url"] == "https://svc.example.com/api/v1?x=1"
        assert tags["http.status_code"] == "201" and tags["upstream_cluster"] == "backend"
        assert tags["response_flags"] == "-" and "error" not in tags
        assert tags["guid:x-request-id"] == "9b1deb4d-3b7d-4bad-9bdd-2b0d7b3dcb6d"
        failed = spans[2]
        assert failed["tags"]["error"] == "true"
        assert failed["tags"]["response_flags"] == "UF,URX"
        assert failed["tags"]["http.status_code"] == "503"
        # the retried request has one CLIENT span per attempt
        assert [s["kind"] for s in spans[2:]] == ["SERVER", "CLIENT", "CLIENT"]
        wait_for(lambda: ctx.stats["tracing.zipkin.spans_sent"] == 5)
        assert ctx.stats["tracing.zipkin.reports_failed"] == 0
    finally:
        col.close()


def test_batches_flush_at_min_flush_spans_on_one_kept_alive_connection():
    col = Collector()
    try:
        ctx = Ctx(col.address)
        tracer = build_tracer(tracing(), ctx)          # flush_interval stays 5 s
        for _ in range(3):
            traced_request(tracer)                     # 2 spans each: 6 >= 5 flushes now
        wait_for(lambda: len(col.spans()) >= 6, timeout=2.0)
        for _ in range(3):
            traced_request(tracer)
        wait_for(lambda: len(col.spans()) == 12, timeout=2.0)
        assert ctx.stats["tracing.zipkin.reports_sent"] == 2
        assert ctx.stats["tracing.zipkin.timer_flushed"] == 0
        # through the collector cluster's pool: its stats, one kept-alive connection
        assert ctx.worker.value("cluster.zipkin.upstream_rq_202") == 2
        assert ctx.worker.value("cluster.zipkin.upstream_cx_total") == 1
    finally:
        col.close()


def test_dead_collector_costs_only_counters():
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    dead = s.getsockname()
    s.close()
    ctx = Ctx(dead)
    tracer = build_tracer(tracing(), ctx)
    tracer.reporter.flush_interval = 0.02
    t0 = time.perf_counter()
    for _ in range(20):
        traced_request(tracer)
    assert time.perf_counter() - t0 < 0.05
    wait_for(lambda: ctx.stats["tracing.zipkin.reports_failed"] >= 1)
    assert ctx.stats["tracing.zipkin.spans_sent"] == 0


def test_collector_errors_and_missing_cluster_are_counted():
    col = Collector(status=500)
    try:
        ctx = Ctx(col.address)
        tracer = build_tracer(tracing(), ctx)
        traced_request(tracer)
        tracer.reporter.flush()
        assert ctx.stats["tracing.zipkin.reports_dropped"] == 1
    finally:
        col.close()
    ctx = Ctx(None)
    tracer = build_tracer(tracing(), ctx)
    traced_request(tracer)
    tracer.reporter.flush()
    assert ctx.stats["tracing.zipkin.reports_skipped_no_cluster"] == 1


def test_pending_spans_are_bounded():
    ctx = Ctx(None)
    tracer = build_tracer(tracing(), ctx)
    tracer.reporter.max_pending = 10
    tracer.reporter.min_flush_spans = 1000
    for _ in range(8):
        traced_request(tracer)
    assert len(tracer.reporter.pending) == 10
    assert ctx.stats["tracing.zipkin.spans_dropped"] == 6


def test_unsampled_requests_cost_nothing_downstream():
    tracer = build_tracer(tracing(random_sampling=0), Ctx())
    info = make_info()
    assert tracer.start(info, info.request) is None and info.trace is None
    tracer.inject(None, Headers())
    tracer.finish(None, info)
