"""envoy.tracers.opentelemetry: W3C trace context in and out, OTLP/HTTP protobuf export.

As Envoy 1.40 (observed on the wire):
- Every request on a traced HCM gets a span, sampled or not: an unsampled one is never
  exported but still propagates (`traceparent ...-00`). A request with an invalid
  traceparent gets no span at all (its headers pass untouched).
- Sampled = the HCM's decision (hcm.py), and the incoming traceparent's sampled flag when
  there is one; a configured sampler (`always_on`, `parent_based` over `always_on`)
  replaces both.
- Upstream: `traceparent: 00-<trace>-<span>-<01|00>` and always a `tracestate` header
  (empty when none came in). The span id sent is the HCM span's, or with
  spawn_upstream_span a CLIENT child per upstream attempt ("router <cluster> egress").
- The HCM span: name `ingress`, kind SERVER, Envoy's attributes (node_id, zone,
  guid:x-request-id, http.url, http.method, downstream_cluster, user_agent, http.protocol,
  peer.address, [guid:x-client-trace-id], request_size, response_size, component,
  upstream_cluster, upstream_cluster.name, http.status_code, response_flags, [error]) and
  the custom tags; with `verbose`, the stream's timing events.
- Resource: service.name (`service_name`, default `unknown_service:envoy`),
  telemetry.sdk.{name,language,version}, then the resource detectors (environment:
  OTEL_RESOURCE_ATTRIBUTES; static_config) in order.
- Export: spans batch per process; POST `/v1/traces` (the http_service's path) with
  `content-type: application/x-protobuf` once `tracing.opentelemetry.min_flush_spans`
  (5) are waiting or every `tracing.opentelemetry.flush_interval_ms` (5000); at most
  `max_cache_size` (1024) wait, the rest count `tracing.opentelemetry.spans_dropped`.
  Stats: `tracing.opentelemetry.{spans_sent,spans_dropped,timer_flushed}` (the ones
  Envoy 1.40 shows). With `grpc_service` (envoy_grpc) the same request goes as a unary
  `TraceService/Export` call through the internal gRPC client.
"""
from __future__ import annotations

import os
import random
import time
from urllib.parse import unquote, urlsplit

import gevent
import gevent.event

from proxyd.observability.tracing import otlp, w3c

FLUSH_INTERVAL_MS = 5000
MIN_FLUSH_SPANS = 5
MAX_CACHE_SIZE = 1024
DEFAULT_SERVICE_NAME = "unknown_service:envoy"
SCOPE_NAME = "proxyd"

_getrandbits = random.getrandbits

ENVIRONMENT_DETECTOR = ("envoy.extensions.tracers.opentelemetry.resource_detectors.v3."
                        "EnvironmentResourceDetectorConfig")
STATIC_DETECTOR = ("envoy.extensions.tracers.opentelemetry.resource_detectors.v3."
                   "StaticConfigResourceDetectorConfig")
ALWAYS_ON = "envoy.extensions.tracers.opentelemetry.samplers.v3.AlwaysOnSamplerConfig"
PARENT_BASED = "envoy.extensions.tracers.opentelemetry.samplers.v3.ParentBasedSamplerConfig"


def _version() -> str:
    try:
        from importlib.metadata import version
        return version("proxyd")
    except Exception:   # noqa: BLE001 - not installed (run from a checkout)
        return "dev"


def _new_span_id() -> str:
    return "%016x" % (_getrandbits(64) or 1)


def _new_trace_id() -> str:
    return "%032x" % (_getrandbits(128) or 1)


class Span:
    """One span; `children` are the CLIENT spans of upstream attempts (spawn_upstream_span):
    [span id, start unix ns, start mono, end mono | None, upstream host]."""

    __slots__ = ("trace_id", "span_id", "parent_id", "trace_state", "sampled", "remote_parent",
                 "name", "kind", "start_mono", "children", "upstream_cluster")

    def __init__(self, trace_id, span_id, parent_id, trace_state, sampled, remote_parent,
                 name, kind, start_mono):
        self.trace_id = trace_id
        self.span_id = span_id
        self.parent_id = parent_id
        self.trace_state = trace_state
        self.sampled = sampled
        self.remote_parent = remote_parent
        self.name = name
        self.kind = kind
        self.start_mono = start_mono
        self.children: list[list] = []
        self.upstream_cluster = None

    @property
    def id(self) -> str:
        return self.span_id


def _parse_env_attributes(value: str) -> list[tuple[str, str]]:
    """OTEL_RESOURCE_ATTRIBUTES: `k=v,k2=v2`, values percent-decoded."""
    out = []
    for item in value.split(","):
        key, sep, val = item.partition("=")
        if sep and key.strip():
            out.append((key.strip(), unquote(val.strip())))
    return out


def _sampler(config):
    """None (the HCM decides), or a function (parent: w3c.SpanContext | None) -> bool."""
    if not config.HasField("sampler"):
        return None
    from proxyd.config import unpack
    tc = config.sampler.typed_config
    name = tc.type_url.rpartition("/")[2]
    if name == ALWAYS_ON:
        return lambda parent: True
    if name == PARENT_BASED:
        msg = unpack(tc)
        inner = msg.wrapped_sampler.typed_config.type_url.rpartition("/")[2]
        if inner != ALWAYS_ON:
            raise ValueError("sampler.parent_based.wrapped_sampler: only always_on is "
                             "supported by proxyd")
        return lambda parent: parent.sampled if parent is not None else True
    raise ValueError(f"sampler: {name} is not supported by proxyd (always_on, parent_based)")


class OpenTelemetryTracer:
    def __init__(self, config, ctx):
        node = getattr(ctx, "node", None)
        self.node_id = node.id if node is not None else ""
        self.zone = node.locality.zone if node is not None and node.HasField("locality") else ""
        self.service_name = config.service_name or DEFAULT_SERVICE_NAME
        version = _version()
        resource = {"service.name": self.service_name, "telemetry.sdk.name": "proxyd",
                    "telemetry.sdk.language": "python", "telemetry.sdk.version": version}
        from proxyd.config import unpack
        for det in config.resource_detectors:
            name = det.typed_config.type_url.rpartition("/")[2]
            if name == ENVIRONMENT_DETECTOR:
                resource.update(_parse_env_attributes(
                    os.environ.get("OTEL_RESOURCE_ATTRIBUTES", "")))
            elif name == STATIC_DETECTOR:
                resource.update(unpack(det.typed_config).attributes)
            else:
                raise ValueError(f"resource_detectors[{det.name}]: {name} is not supported "
                                 "by proxyd (environment, static_config)")
        self.resource = list(resource.items())
        self.sampler = _sampler(config)
        self.max_path_tag_length = 256
        self.verbose = False
        self.spawn_upstream_span = False
        self.upstream_operation = None
        self.exporter = None
        cache = config.max_cache_size.value if config.HasField("max_cache_size") \
            else MAX_CACHE_SIZE
        if config.HasField("grpc_service"):
            gs = config.grpc_service
            if gs.WhichOneof("target_specifier") != "envoy_grpc":
                raise ValueError("grpc_service: only envoy_grpc is supported by proxyd")
            timeout = (gs.timeout.seconds + gs.timeout.nanos / 1e9
                       if gs.HasField("timeout") else 5.0)
            metadata = tuple((h.key.lower(), h.value) for h in gs.initial_metadata)
            eg = gs.envoy_grpc
            self.exporter = get_exporter(eg.cluster_name, None, eg.authority or eg.cluster_name,
                                         timeout, metadata, cache, self.resource, version, ctx)
        elif config.HasField("http_service"):
            hs = config.http_service
            uri = hs.http_uri
            if not uri.cluster:
                raise ValueError("http_service.http_uri.cluster: required")
            parts = urlsplit(uri.uri)
            path = parts.path or "/v1/traces"
            if parts.query:
                path += "?" + parts.query
            timeout = (uri.timeout.seconds + uri.timeout.nanos / 1e9
                       if uri.HasField("timeout") else 5.0)
            headers = []
            for h in hs.request_headers_to_add:
                headers.append((h.header.key, h.header.value))
            self.exporter = get_exporter(uri.cluster, path, parts.netloc or uri.cluster,
                                         timeout, tuple(headers), cache, self.resource,
                                         version, ctx)

    @staticmethod
    def check(config) -> None:
        """Raises ValueError for the samplers and resource detectors proxyd lacks."""
        _sampler(config)
        for det in config.resource_detectors:
            name = det.typed_config.type_url.rpartition("/")[2]
            if name not in (ENVIRONMENT_DETECTOR, STATIC_DETECTOR):
                raise ValueError(f"resource_detectors[{det.name}]: {name} is not supported "
                                 "by proxyd (environment, static_config)")

    def configure(self, hcm_tracer) -> None:
        self.max_path_tag_length = hcm_tracer.max_path_tag_length
        self.verbose = hcm_tracer.verbose
        self.spawn_upstream_span = hcm_tracer.spawn_upstream_span
        self.upstream_operation = hcm_tracer.upstream_operation

    # -- request path ---------------------------------------------------------------
    def start(self, info, req, traced: bool) -> Span | None:
        try:
            parent = w3c.extract(req.headers)
        except ValueError:
            return None                 # Envoy: an invalid traceparent gets a null span
        if self.sampler is not None:
            sampled = self.sampler(parent)
        elif parent is not None:
            sampled = traced and parent.sampled
        else:
            sampled = traced
        if parent is not None:
            span = Span(parent.trace_id, _new_span_id(), parent.span_id, parent.trace_state,
                        sampled, True, "ingress", otlp.KIND_SERVER, info.start_mono)
        else:
            span = Span(_new_trace_id(), _new_span_id(), None, "", sampled, False,
                        "ingress", otlp.KIND_SERVER, info.start_mono)
        info.trace = span
        return span

    def inject(self, span: Span | None, headers) -> None:
        if span is None:
            return
        span_id = span.span_id
        if self.spawn_upstream_span:
            now = time.monotonic()
            if span.children and span.children[-1][3] is None:
                span.children[-1][3] = now
            span_id = _new_span_id()
            span.children.append([span_id, time.time_ns(), now, None])
        w3c.inject(headers, span.trace_id, span_id, span.sampled, span.trace_state)

    def finish(self, span: Span | None, info, custom_tags=()) -> None:
        if span is None or not span.sampled or self.exporter is None:
            return
        end = info.end_mono if info.end_mono is not None else time.monotonic()
        start_ns = int(info.start_time * 1e9)

        def ns(mono):
            return start_ns + int((mono - info.start_mono) * 1e9)

        req = info.request
        code = info.response_code
        flags = ",".join(info.response_flags) or "-"
        attrs = [("node_id", self.node_id), ("zone", self.zone)]
        if req is not None:
            h = req.headers
            rid = info.request_id or h.get("x-request-id")
            if rid:
                attrs.append(("guid:x-request-id", rid))
            path = req.path
            if len(path) > self.max_path_tag_length:
                path = path[:self.max_path_tag_length]
            attrs += [("http.url", f"{req.scheme}://{req.authority}{path}"),
                      ("http.method", req.method),
                      ("downstream_cluster", h.get("x-envoy-downstream-service-cluster") or "-"),
                      ("user_agent", h.get("user-agent") or "-"),
                      ("http.protocol", info.protocol or req.version)]
            peer = info.downstream_remote_address or ""
            if peer:
                attrs.append(("peer.address", peer[1:].partition("]")[0]
                              if peer.startswith("[") else peer.rpartition(":")[0] or peer))
            ctid = h.get("x-client-trace-id")
            if ctid:
                attrs.append(("guid:x-client-trace-id", ctid))
        attrs += [("request_size", str(info.bytes_received)),
                  ("response_size", str(info.bytes_sent)), ("component", "proxy")]
        cluster = info.upstream_cluster
        if cluster:
            attrs += [("upstream_cluster", cluster), ("upstream_cluster.name", cluster)]
        attrs += [("http.status_code", str(code)), ("response_flags", flags)]
        error = code == 0 or code >= 500
        if error:
            attrs.append(("error", "true"))
        attrs += list(custom_tags)
        events = self._events(info, ns) if self.verbose else ()
        trace_id = bytes.fromhex(span.trace_id)
        span_id = bytes.fromhex(span.span_id)
        flags_field = 0x01 | otlp.FLAG_HAS_IS_REMOTE | (
            otlp.FLAG_IS_REMOTE if span.remote_parent else 0)
        out = [otlp.span(trace_id, span_id,
                         bytes.fromhex(span.parent_id) if span.parent_id else None,
                         span.trace_state, span.name, span.kind, start_ns, ns(end), attrs,
                         events, status=otlp.STATUS_ERROR if error else otlp.STATUS_UNSET,
                         flags=flags_field)]
        n = len(span.children)
        for i, (child, c_start_ns, c_start, c_end) in enumerate(span.children):
            last = i == n - 1
            if c_end is None:
                c_end = end
            cattrs = [("http.protocol", info.protocol or (req.version if req else ""))]
            if last and info.upstream_host:
                cattrs += [("upstream_address", info.upstream_host),
                           ("peer.address", info.upstream_host)]
            cattrs.append(("component", "proxy"))
            if cluster:
                cattrs += [("upstream_cluster", cluster), ("upstream_cluster.name", cluster)]
            cattrs += [("http.status_code", str(code) if last else "-"),
                       ("response_flags", flags)]
            if error or not last:
                cattrs.append(("error", "true"))
            cattrs += list(custom_tags)
            out.append(otlp.span(trace_id, bytes.fromhex(child), span_id, span.trace_state,
                                 self.upstream_operation(info) if self.upstream_operation
                                 else f"router {cluster or '-'} egress", otlp.KIND_CLIENT,
                                 c_start_ns, c_start_ns + int((c_end - c_start) * 1e9), cattrs,
                                 status=otlp.STATUS_ERROR if error or not last
                                 else otlp.STATUS_UNSET,
                                 flags=0x01 | otlp.FLAG_HAS_IS_REMOTE))
        self.exporter.add(out)

    @staticmethod
    def _events(info, ns):
        """Envoy's verbose stream events, from the times proxyd stamps."""
        ev = []
        if info.request_end_mono is not None:
            ev.append((ns(info.request_end_mono), "last_downstream_rx_byte_received"))
        if info.upstream_start_mono is not None:
            ev.append((ns(info.upstream_start_mono), "first_upstream_tx_byte_sent"))
            ev.append((ns(info.upstream_start_mono), "last_upstream_tx_byte_sent"))
        if info.response_start_mono is not None:
            ev.append((ns(info.response_start_mono), "first_upstream_rx_byte_received"))
            ev.append((ns(info.response_start_mono), "first_downstream_tx_byte_sent"))
        if info.end_mono is not None:
            ev.append((ns(info.end_mono), "last_downstream_tx_byte_sent"))
        return ev


class Exporter:
    """Batches encoded spans for one collector and sends ExportTraceServiceRequests from a
    background greenlet, POSTed to `path` (OTLP/HTTP) or, with `path` None, as gRPC
    `TraceService/Export` calls (`headers`: the call's initial metadata); a dead or slow
    collector never holds a request up."""

    def __init__(self, cluster, path, hostname, timeout, headers, max_cache_size, resource,
                 version, ctx):
        self.cluster = cluster
        self.path = path
        self.hostname = hostname
        self.timeout = timeout
        self.headers = headers
        self.max_cache_size = max_cache_size
        self.resource = resource
        self.version = version
        self.ctx = ctx
        stats = ctx.stats
        self.c_spans_sent = stats.counter("tracing.opentelemetry.spans_sent")
        self.c_spans_dropped = stats.counter("tracing.opentelemetry.spans_dropped")
        self.c_timer = stats.counter("tracing.opentelemetry.timer_flushed")
        self.pending: list[bytes] = []
        self._wake = gevent.event.Event()
        self._greenlet = None
        self._client = None   # AsyncClient, made on the first flush

    def _runtime_int(self, key: str, default: int) -> int:
        rt = getattr(self.ctx, "runtime", None)
        return rt.get_int(key, default) if rt is not None else default

    def add(self, spans: list[bytes]) -> None:
        room = self.max_cache_size - len(self.pending)
        if room < len(spans):
            self.c_spans_dropped.inc(len(spans) - max(room, 0))
            spans = spans[:max(room, 0)]
        self.pending.extend(spans)
        if len(self.pending) >= self._runtime_int("tracing.opentelemetry.min_flush_spans",
                                                  MIN_FLUSH_SPANS):
            self._wake.set()
        if self._greenlet is None:
            self._greenlet = gevent.spawn(self._run)

    def _run(self) -> None:
        while True:
            interval = self._runtime_int("tracing.opentelemetry.flush_interval_ms",
                                         FLUSH_INTERVAL_MS) / 1000.0
            woken = self._wake.wait(interval)
            self._wake.clear()
            if self.pending:
                if not woken:
                    self.c_timer.inc()
                self.flush()

    def flush(self) -> None:
        """POST what is pending (OTLP/HTTP protobuf) through the async client: the
        collector cluster's own pool, TLS and `cluster.<collector>.*` stats."""
        batch, self.pending = self.pending, []
        if not batch:
            return
        cm = getattr(self.ctx, "cluster_manager", None)
        if cm is None or cm.get(self.cluster) is None:
            return
        body = otlp.export_request(self.resource, SCOPE_NAME, self.version, batch)
        if self.path is None:
            self._export_grpc(cm, body, len(batch))
            return
        from proxyd.upstream.async_client import AsyncClient, AsyncClientError
        client = self._client
        if client is None or client.cluster_manager is not cm:
            client = self._client = AsyncClient(cm)
        headers = (("content-type", "application/x-protobuf"),
                   ("user-agent", "OTel-OTLP-Exporter-proxyd/%s" % self.version)) + self.headers
        try:
            resp = client.send(self.cluster, "POST", self.path, headers, body, self.timeout,
                               self.hostname)
        except AsyncClientError:
            return
        if 200 <= resp.status < 300:
            self.c_spans_sent.inc(len(batch))

    def _export_grpc(self, cm, body: bytes, n: int) -> None:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceResponse)
        from proxyd.upstream.grpc_client import GrpcClient, GrpcError
        client = self._client
        if client is None or client.http.cluster_manager is not cm:
            client = self._client = GrpcClient(cm, self.cluster, self.hostname, self.timeout,
                                               self.headers)
        try:
            client.unary(EXPORT_METHOD, _Encoded(body), ExportTraceServiceResponse)
        except GrpcError:
            return
        self.c_spans_sent.inc(n)


EXPORT_METHOD = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"


class _Encoded:
    """An already encoded message, as the gRPC client's framing asks for one."""
    __slots__ = ("data",)

    def __init__(self, data: bytes):
        self.data = data

    def SerializeToString(self) -> bytes:  # noqa: N802 - protobuf's name
        return self.data


_exporters: dict[tuple, Exporter] = {}


def get_exporter(cluster, path, hostname, timeout, headers, max_cache_size, resource,
                 version, ctx) -> Exporter:
    """One exporter per collector and resource per process, kept across config versions."""
    key = (cluster, path, hostname, headers, tuple(resource), id(ctx))
    ex = _exporters.get(key)
    if ex is None:
        ex = _exporters[key] = Exporter(cluster, path, hostname, timeout, headers,
                                        max_cache_size, resource, version, ctx)
    return ex


def flush_all(timeout: float = 2.0) -> None:
    for ex in list(_exporters.values()):
        with gevent.Timeout(timeout, False):
            ex.flush()


def create(config, ctx, hcm_tracing=None) -> OpenTelemetryTracer:
    """Registry entry for envoy.config.trace.v3.OpenTelemetryConfig."""
    return OpenTelemetryTracer(config, ctx)
