"""envoy.tracers.zipkin: B3 in, B3 out, Zipkin v2 JSON spans POSTed off the request path.

The HCM calls `tracer.start(info, request_head)` when a request's headers are complete
(None: not traced), the router calls `tracer.inject(span, upstream_headers)` before
each upstream attempt, and the HCM calls `tracer.finish(span, info)` when the stream
ends. Each traced request yields a SERVER span (the downstream request as this proxy
saw it) and one CLIENT child per upstream attempt, whose id is what the next hop
receives in x-b3-spanid. With `shared_span_context` (default true) a proxy continuing
an incoming trace reuses the caller's span id for its SERVER span (Zipkin's "shared"
span, merged with the caller's CLIENT side); without it the SERVER span gets a new id
whose parent is the caller's span.

Finished spans go to a per-process Reporter (one per collector cluster + endpoint),
which a background greenlet drains: every `flush_interval` or once `min_flush_spans`
are waiting, it POSTs one JSON array through the async client
(`proxyd/upstream/async_client.py`: the collector cluster's pool, TLS and stats). A dead or slow
collector only moves counters under `tracing.zipkin.`; the buffer is bounded and the
request path never waits for it.
"""
from __future__ import annotations

import random
import time

import gevent
import gevent.event
import orjson

from proxyd.proto import unpack
from proxyd.observability.tracing import b3

FLUSH_INTERVAL = 5.0        # Envoy's tracing.zipkin.flush_interval_ms default
MIN_FLUSH_SPANS = 5         # Envoy's tracing.zipkin.min_flush_spans default
MAX_PENDING_SPANS = 10_000
REPORT_TIMEOUT = 5.0

_getrandbits = random.getrandbits
_random = random.random


def _new_id() -> str:
    return "%016x" % (_getrandbits(64) or 1)


def _endpoint(addr: str | None, service: str | None = None) -> dict | None:
    """A Zipkin endpoint from "ip:port" / "[v6]:port"."""
    ep = {}
    if service:
        ep["serviceName"] = service
    if addr:
        if addr.startswith("["):
            ip, _, port = addr[1:].partition("]:")
        else:
            ip, _, port = addr.rpartition(":")
            if not ip:
                ip, port = port, ""
        if ip:
            ep["ipv6" if ":" in ip else "ipv4"] = ip
        if port.isdigit():
            ep["port"] = int(port)
    return ep or None


class Span:
    """A span being recorded; `trace_id` is also what %TRACE_ID% prints."""

    __slots__ = ("trace_id", "id", "parent_id", "shared", "debug", "start_mono",
                 "clients", "name", "sampled")

    def __init__(self, trace_id, span_id, parent_id, shared, debug, start_mono, name):
        self.trace_id = trace_id
        self.id = span_id
        self.parent_id = parent_id
        self.shared = shared
        self.debug = debug
        self.start_mono = start_mono
        self.clients: list[list] = []   # [span id, start mono, end mono | None]
        self.name = name
        self.sampled = True             # False: only propagates `x-b3-sampled: 0`

    @property
    def context(self) -> b3.SpanContext:
        return b3.SpanContext(self.trace_id, self.id, self.parent_id, True, self.debug)


def _percent(tracing, field: str) -> float:
    return getattr(tracing, field).value if tracing.HasField(field) else 100.0


class ZipkinTracer:
    def __init__(self, config, hcm_tracing, ctx):
        version = config.collector_endpoint_version
        if version not in (0, 1):   # 0 is the removed v1 API, treated as v2 JSON like HTTP_JSON
            raise ValueError("collector_endpoint_version: only HTTP_JSON is supported")
        if config.trace_context_option:
            raise ValueError("trace_context_option: only USE_B3 is supported")
        if not config.collector_cluster:
            raise ValueError("collector_cluster: required")
        self.trace_id_128bit = config.trace_id_128bit
        self.shared_span_context = (config.shared_span_context.value
                                    if config.HasField("shared_span_context") else True)
        self.random_sampling = _percent(hcm_tracing, "random_sampling")
        self.client_sampling = _percent(hcm_tracing, "client_sampling")
        self.overall_sampling = _percent(hcm_tracing, "overall_sampling")
        node = getattr(ctx, "node", None)
        self.service_name = (node.cluster if node is not None and node.cluster else "proxyd")
        self.node_id = node.id if node is not None else ""
        self.reporter = get_reporter(config.collector_cluster,
                                     config.collector_endpoint or "/api/v2/spans",
                                     config.collector_hostname or config.collector_cluster, ctx)

    max_path_tag_length = 0         # 0: http.url carries the whole path
    upstream_operation = None       # HCM tracing.upstream_operation, compiled
    # A CLIENT span per upstream attempt, its id sent upstream. Through the HCM this is
    # its spawn_upstream_span (Envoy's default: false, the SERVER span's own id goes
    # upstream); a tracer used on its own keeps the child spans.
    spawn_upstream_span = True

    def configure(self, hcm_tracer) -> None:
        """Called by the HCM side (hcm.HcmTracer), which decides and supplies custom tags."""
        self.max_path_tag_length = hcm_tracer.max_path_tag_length
        self.upstream_operation = hcm_tracer.upstream_operation
        self.spawn_upstream_span = hcm_tracer.spawn_upstream_span

    # -- request path ---------------------------------------------------------------
    def _decide(self, headers) -> bool:
        if "x-envoy-force-trace" in headers:
            decided = True
        elif "x-client-trace-id" in headers:
            decided = _random() * 100.0 < self.client_sampling
        else:
            decided = _random() * 100.0 < self.random_sampling
        return decided and (self.overall_sampling >= 100.0
                            or _random() * 100.0 < self.overall_sampling)

    def start(self, info, request_head, traced: bool | None = None) -> Span | None:
        """The SERVER span for this request, or None when it is not sampled (incoming B3
        headers are then forwarded untouched, so `x-b3-sampled: 0` still propagates). With
        the HCM's decision (`traced`) and no incoming B3, an unsampled request gets an
        unsampled span that sends `x-b3-sampled: 0` (and ids) upstream, as Envoy does."""
        headers = request_head.headers
        incoming = b3.extract(headers) if ("b3" in headers or "x-b3-traceid" in headers
                                           or "x-b3-sampled" in headers
                                           or "x-b3-flags" in headers) else None
        if incoming is not None and incoming.sampled is not None:
            sampled = incoming.sampled
        elif traced is not None:
            sampled = traced        # the HCM's decision (hcm.py)
        else:
            sampled = self._decide(headers)
        if not sampled:
            if traced is not None and incoming is None:
                # Envoy (HCM decision, nothing came in): the next hop is told not to sample
                span_id = _new_id()
                trace_id = _new_id() + span_id if self.trace_id_128bit else span_id
                span = Span(trace_id, span_id, None, False, False, info.start_mono, "ingress")
                span.sampled = False
                info.trace = span
                return span
            return None
        debug = incoming.debug if incoming is not None else False
        if incoming is not None and incoming.trace_id is not None:
            if self.shared_span_context:
                span = Span(incoming.trace_id, incoming.span_id, incoming.parent_id, True, debug,
                            info.start_mono, "ingress")
            else:
                span = Span(incoming.trace_id, _new_id(), incoming.span_id, False, debug,
                            info.start_mono, "ingress")
        else:
            span_id = _new_id()
            trace_id = _new_id() + span_id if self.trace_id_128bit else span_id
            span = Span(trace_id, span_id, None, False, debug, info.start_mono, "ingress")
        info.trace = span
        return span

    def inject(self, span: Span | None, headers) -> None:
        """Start a CLIENT child for this upstream attempt and put its B3 context in
        `headers` (replacing any incoming B3 headers)."""
        if span is None:
            return
        if not span.sampled:
            b3.inject(b3.SpanContext(span.trace_id, span.id, None, False), headers)
            return
        if not self.spawn_upstream_span:
            b3.inject(b3.SpanContext(span.trace_id, span.id, span.parent_id, True, span.debug),
                      headers)
            return
        now = time.monotonic()
        if span.clients and span.clients[-1][2] is None:
            span.clients[-1][2] = now            # the previous attempt ended here
        child = _new_id()
        span.clients.append([child, now, None])
        b3.inject(b3.SpanContext(span.trace_id, child, span.id, True, span.debug), headers)

    def finish(self, span: Span | None, info, custom_tags=()) -> None:
        if span is None or not span.sampled:
            return
        end = info.end_mono if info.end_mono is not None else time.monotonic()
        start_us = int(info.start_time * 1e6)
        code = info.response_code
        error = code == 0 or code >= 500
        req = info.request
        flags = ",".join(info.response_flags) or "-"
        cluster = info.upstream_cluster or "-"
        local = _endpoint(info.downstream_local_address, self.service_name)
        tags = {
            "component": "proxy",
            "node_id": self.node_id,
            "http.status_code": str(code),
            "response_flags": flags,
            "upstream_cluster": cluster,
            "request_size": str(info.bytes_received),
            "response_size": str(info.bytes_sent),
        }
        if req is not None:
            path = req.path
            if self.max_path_tag_length and len(path) > self.max_path_tag_length:
                path = path[:self.max_path_tag_length]
            url = f"{req.scheme}://{req.authority}{path}"
            tags["http.method"] = req.method
            tags["http.url"] = url
            tags["http.protocol"] = info.protocol or req.version
            tags["user_agent"] = req.headers.get("user-agent") or "-"
            tags["downstream_cluster"] = req.headers.get(
                "x-envoy-downstream-service-cluster") or "-"
            rid = info.request_id or req.headers.get("x-request-id")
            if rid:
                tags["guid:x-request-id"] = rid
        if error:
            tags["error"] = "true"
        tags.update(custom_tags)
        server = {
            "traceId": span.trace_id,
            "id": span.id,
            "name": span.name,
            "kind": "SERVER",
            "timestamp": start_us,
            "duration": max(1, round((end - span.start_mono) * 1e6)),
            "localEndpoint": local,
            "tags": tags,
        }
        if span.parent_id:
            server["parentId"] = span.parent_id
        remote = _endpoint(info.downstream_remote_address)
        if remote:
            server["remoteEndpoint"] = remote
        if span.shared:
            server["shared"] = True
        if span.debug:
            server["debug"] = True
        spans = [server]
        n = len(span.clients)
        for i, (child, c_start, c_end) in enumerate(span.clients):
            last = i == n - 1
            if c_end is None:
                c_end = end
            ctags = {"component": "proxy", "upstream_cluster": cluster,
                     "http.status_code": str(code) if last else "-"}
            if req is not None:
                ctags["http.method"] = req.method
                ctags["http.url"] = tags["http.url"]
            if last and info.upstream_host:
                ctags["upstream_address"] = info.upstream_host
            if error or not last:
                ctags["error"] = "true"
            cs = {
                "traceId": span.trace_id,
                "id": child,
                "parentId": span.id,
                "name": (self.upstream_operation(info) if self.upstream_operation
                         else f"router {cluster} egress"),
                "kind": "CLIENT",
                "timestamp": start_us + round((c_start - info.start_mono) * 1e6),
                "duration": max(1, round((c_end - c_start) * 1e6)),
                "localEndpoint": local,
                "tags": ctags,
            }
            if last:
                remote = _endpoint(info.upstream_host, info.upstream_cluster)
                if remote:
                    cs["remoteEndpoint"] = remote
            if span.debug:
                cs["debug"] = True
            spans.append(cs)
        self.reporter.add(spans)


class Reporter:
    """Batches spans for one collector and POSTs them from a background greenlet."""

    def __init__(self, cluster: str, endpoint: str, hostname: str, ctx,
                 flush_interval: float = FLUSH_INTERVAL, min_flush_spans: int = MIN_FLUSH_SPANS,
                 max_pending: int = MAX_PENDING_SPANS, timeout: float = REPORT_TIMEOUT):
        self.cluster = cluster
        self.endpoint = endpoint
        self.hostname = hostname
        self.ctx = ctx
        self.flush_interval = flush_interval
        self.min_flush_spans = min_flush_spans
        self.max_pending = max_pending
        self.timeout = timeout
        stats = ctx.stats
        self.c_spans_sent = stats.counter("tracing.zipkin.spans_sent")
        self.c_spans_dropped = stats.counter("tracing.zipkin.spans_dropped")
        self.c_reports_sent = stats.counter("tracing.zipkin.reports_sent")
        self.c_reports_dropped = stats.counter("tracing.zipkin.reports_dropped")
        self.c_reports_failed = stats.counter("tracing.zipkin.reports_failed")
        self.c_skipped = stats.counter("tracing.zipkin.reports_skipped_no_cluster")
        self.c_timer = stats.counter("tracing.zipkin.timer_flushed")
        self.pending: list[dict] = []
        self._wake = gevent.event.Event()
        self._greenlet: gevent.Greenlet | None = None
        self._client = None   # the async client over the worker's cluster manager

    def add(self, spans: list[dict]) -> None:
        if len(self.pending) + len(spans) > self.max_pending:
            self.c_spans_dropped.inc(len(spans))
            return
        self.pending.extend(spans)
        if len(self.pending) >= self.min_flush_spans:
            self._wake.set()
        if self._greenlet is None:
            self._greenlet = gevent.spawn(self._run)

    def _run(self) -> None:
        while True:
            woken = self._wake.wait(self.flush_interval)
            self._wake.clear()
            if self.pending:
                if not woken:
                    self.c_timer.inc()
                self.flush()

    def flush(self) -> None:
        """POST what is pending through the async client: the collector cluster's own
        pool, TLS and `cluster.<collector>.*` stats, as Envoy's reporter does."""
        batch, self.pending = self.pending, []
        if not batch:
            return
        cm = getattr(self.ctx, "cluster_manager", None)
        if cm is None or cm.get(self.cluster) is None:
            self.c_skipped.inc()
            return
        from proxyd.upstream.async_client import (NO_HEALTHY_UPSTREAM, AsyncClient,
                                                  AsyncClientError)
        client = self._client
        if client is None or client.cluster_manager is not cm:
            client = self._client = AsyncClient(cm)
        try:
            resp = client.send(self.cluster, "POST", self.endpoint, _REPORT_HEADERS,
                               orjson.dumps(batch), self.timeout, self.hostname)
        except AsyncClientError as e:
            if e.reason == NO_HEALTHY_UPSTREAM:
                self.c_skipped.inc()
            else:
                self.c_reports_failed.inc()
            return
        if 200 <= resp.status < 300:
            self.c_reports_sent.inc()
            self.c_spans_sent.inc(len(batch))
        else:
            self.c_reports_dropped.inc()


_REPORT_HEADERS = (("content-type", "application/json"), ("user-agent", "proxyd"))
_reporters: dict[tuple, Reporter] = {}


def get_reporter(cluster: str, endpoint: str, hostname: str, ctx) -> Reporter:
    """One reporter per collector per process, kept across config versions."""
    key = (cluster, endpoint, hostname, id(ctx))
    rep = _reporters.get(key)
    if rep is None:
        rep = _reporters[key] = Reporter(cluster, endpoint, hostname, ctx)
    return rep


def flush_all(timeout: float = 2.0) -> None:
    """Send what is pending (worker shutdown); bounded by `timeout` per collector."""
    for rep in list(_reporters.values()):
        with gevent.Timeout(timeout, False):
            rep.flush()


def create(config, ctx, hcm_tracing=None) -> ZipkinTracer:
    """Registry entry for envoy.config.trace.v3.ZipkinConfig."""
    from envoy.extensions.filters.network.http_connection_manager.v3 import (
        http_connection_manager_pb2 as hcm)
    return ZipkinTracer(config, hcm_tracing if hcm_tracing is not None
                        else hcm.HttpConnectionManager.Tracing(), ctx)


def build_tracer(hcm_tracing, ctx) -> ZipkinTracer | None:
    """From HttpConnectionManager.tracing; None when no provider is configured."""
    if hcm_tracing is None or not hcm_tracing.HasField("provider"):
        return None
    provider = hcm_tracing.provider
    from envoy.config.trace.v3.zipkin_pb2 import ZipkinConfig
    if not provider.HasField("typed_config"):
        raise ValueError("tracing.provider.typed_config: required")
    msg = unpack(provider.typed_config)
    if not isinstance(msg, ZipkinConfig):
        raise ValueError(f"tracing.provider: unsupported tracer {provider.typed_config.type_url}")
    try:
        return ZipkinTracer(msg, hcm_tracing, ctx)
    except ValueError as e:
        raise ValueError(f"tracing.provider.typed_config.{e}") from None
