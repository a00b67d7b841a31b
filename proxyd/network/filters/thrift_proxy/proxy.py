"""envoy.filters.network.thrift_proxy with its router (envoy.filters.thrift.router).

The terminal filter of its chain: it decodes downstream Thrift messages, routes each
call by method name to a cluster, forwards it on an upstream connection held by this
downstream connection (one request at a time, as a Thrift client sends them, so the
sequence ids need no rewriting), and writes the reply back unchanged, or translated
when the cluster speaks another transport or protocol (options.py). Oneway calls get no
reply; request_mirror_policies send copies to shadow clusters (shadow.py). Local errors are TApplicationExceptions, after which the downstream connection
closes (Envoy's sendLocalReply with end_stream, and close_downstream_on_upstream_error).
Stats are Envoy's: a void reply and a reply whose result struct starts with field 0 are
`response_success`, a declared IDL exception is `response_reply` + `response_error`.
"""
from __future__ import annotations

import time

from proxyd import registry
from proxyd.proto import unpack
from proxyd.http.headers import Headers
from proxyd.http.message import RequestHead, StreamInfo
from proxyd.network.filter import ConnectionEvent, FilterStatus
from proxyd.upstream.cluster import UpstreamConnectError
from proxyd.upstream.pool_http1 import UpstreamConnection

from . import codec
from .options import PROTOCOLS, TRANSPORTS, upstream_payload, upstream_protocol
from .routes import RouteTable
from .shadow import ShadowWriter, count_upstream_response

READ_SIZE = 64 * 1024


class ThriftStats:
    COUNTERS = ("cx_destroy_local_with_active_rq", "cx_destroy_remote_with_active_rq",
                "downstream_cx_max_requests", "downstream_response_drain_close", "request",
                "request_call", "request_decoding_error", "request_invalid_type", "request_oneway",
                "request_passthrough", "request_internal_error", "response",
                "response_decoding_error", "response_error", "response_exception",
                "response_invalid_type", "response_passthrough", "response_reply",
                "response_success", "route_missing", "unknown_cluster",
                "upstream_rq_maintenance_mode", "no_healthy_upstream",
                "shadow_request_submit_failure")

    def __init__(self, store, prefix: str):
        p = "thrift.%s." % prefix
        for n in self.COUNTERS:
            setattr(self, n, store.counter(p + n))
        self.request_active = store.gauge(p + "request_active")
        self.request_time_ms = store.histogram(p + "request_time_ms")


class UpstreamThriftStats:
    """`cluster.<name>.thrift.*`: as in Envoy, each appears when first counted."""

    def __init__(self, store, cluster: str):
        self.store = store
        self.prefix = "cluster.%s.thrift." % cluster

    def inc(self, name: str) -> None:
        self.store.counter(self.prefix + name).inc()

    def record(self, name: str, value: float) -> None:
        self.store.histogram(self.prefix + name).record(value)


class ThriftProxyConfig:
    def __init__(self, config, ctx):
        self.ctx = ctx
        self.transport = TRANSPORTS[config.transport]
        self.protocol = PROTOCOLS[config.protocol]
        self.stats = ThriftStats(ctx.stats, config.stat_prefix)
        self.routes = RouteTable(config.route_config)
        self.passthrough = config.payload_passthrough
        self.max_requests = (config.max_requests_per_connection.value
                             if config.HasField("max_requests_per_connection") else 0)
        self._upstream_stats: dict[str, UpstreamThriftStats] = {}
        self.close_on_error = True
        self.access_logs = []
        if config.access_log:
            from proxyd.observability.access_log import build_access_logs
            self.access_logs = build_access_logs(config.access_log, ctx)
        for f in config.thrift_filters:         # only the router is registered
            self.close_on_error = registry.factory(f.typed_config.type_url).create(
                unpack(f.typed_config), ctx)

    def __call__(self, filter_manager) -> None:
        filter_manager.add_read_filter(ThriftProxyFilter(self))

    def upstream_stats(self, cluster: str) -> UpstreamThriftStats:
        s = self._upstream_stats.get(cluster)
        if s is None:
            s = self._upstream_stats[cluster] = UpstreamThriftStats(self.ctx.stats, cluster)
        return s


class _LocalError(Exception):
    def __init__(self, exc_type: int, message: str):
        super().__init__(message)
        self.exc_type = exc_type


class ThriftProxyFilter:
    def __init__(self, config: ThriftProxyConfig):
        self.config = config
        self.stats = config.stats
        self.decoder = codec.ThriftDecoder(config.transport, config.protocol)
        self.callbacks = None
        self.upstreams: dict[str, tuple] = {}   # cluster -> (connection, decoder, transport, protocol)
        self.shadows = ShadowWriter(config)
        self.active = False
        self.requests = 0
        self.closing = False

    def initialize_read_filter_callbacks(self, callbacks) -> None:
        self.callbacks = callbacks
        callbacks.connection.add_connection_callbacks(self)

    def on_new_connection(self) -> FilterStatus:
        return FilterStatus.CONTINUE

    def on_data(self, data: bytes, end_stream: bool) -> FilterStatus:
        if self.closing:
            return FilterStatus.STOP_ITERATION
        try:
            events = self.decoder.receive_data(data) if data else []
        except codec.DecodeError:
            self.stats.request_decoding_error.inc()
            self._close()
            return FilterStatus.STOP_ITERATION
        for ev in events:
            if isinstance(ev, codec.MessageEnd):
                self._request(ev)
                if self.closing:
                    return FilterStatus.STOP_ITERATION
        if end_stream:
            self._close()
        return FilterStatus.STOP_ITERATION

    def on_event(self, event) -> None:
        if self.active:
            if event is ConnectionEvent.REMOTE_CLOSE:
                self.stats.cx_destroy_remote_with_active_rq.inc()
            else:
                self.stats.cx_destroy_local_with_active_rq.inc()
        for up, *_ in self.upstreams.values():
            up.close()
        self.upstreams.clear()
        self.shadows.close()

    # --- one request ---------------------------------------------------------------
    def _request(self, req: codec.MessageEnd) -> None:
        s, begin = self.stats, req.begin
        s.request_active.inc()
        self.active = True
        t0 = time.monotonic()
        info = self._stream_info(begin) if self.config.access_logs else None
        try:
            sent = self._forward(req, info)
            if info is not None:
                info.bytes_received, info.bytes_sent = len(req.frame), sent
        except _LocalError as e:
            self._local_reply(begin, e)
            if info is not None and not self.closing:
                info.bytes_received = len(req.frame)
        finally:
            self.active = False
            s.request_active.dec()
            s.request_time_ms.record(int((time.monotonic() - t0) * 1000))
            if info is not None:
                info.end_mono = time.monotonic()
                for lg in self.config.access_logs:
                    lg.log(info)
        if self.closing:
            return          # Envoy counts a request at its end, which a closing local reply skips
        s.request.inc()
        if self.config.passthrough and begin.transport != codec.UNFRAMED:
            s.request_passthrough.inc()
        if begin.type == codec.CALL:
            s.request_call.inc()
        elif begin.type == codec.ONEWAY:
            s.request_oneway.inc()
        else:
            s.request_invalid_type.inc()
        self.requests += 1
        if self.config.max_requests and self.requests >= self.config.max_requests:
            s.downstream_cx_max_requests.inc()
            self._close()

    def _stream_info(self, begin: codec.MessageBegin) -> StreamInfo:
        """What the access log of one call reads: times, bytes, upstream host and, for
        %REQ(...)%, the header-transport headers (keys lower-cased)."""
        conn = self.callbacks.connection
        info = StreamInfo.for_connection(conn, None)
        info.request = RequestHead("", "", "", "", "",
                                   Headers([(k.lower(), v) for k, v in begin.headers.items()]))
        return info

    def _forward(self, req: codec.MessageEnd, info: StreamInfo | None) -> int:
        """Route, forward and answer one request; the bytes written downstream."""
        begin = req.begin
        route = self.config.routes.route(begin.name, begin.headers)
        if route is None:
            self.stats.route_missing.inc()
            raise _LocalError(codec.UNKNOWN_METHOD, "no route for method '%s'" % begin.name)
        name = route.pick_cluster()
        up, decoder, u_transport, u_protocol = self._upstream(name, begin)
        if info is not None:
            info.upstream_host = up.host.addr_str
        new_name = begin.name.split(":", 1)[1] if route.strip_service and ":" in begin.name else None
        payload = upstream_payload(req, u_transport, u_protocol, new_name)
        ustats = self.config.upstream_stats(name)
        if begin.type == codec.ONEWAY:
            ustats.inc("upstream_rq_oneway")
        elif begin.type == codec.CALL:
            ustats.inc("upstream_rq_call")
        else:
            ustats.inc("upstream_rq_invalid_type")
        ustats.record("upstream_rq_size", len(payload))
        for mirror, num, den, key in route.mirrors:
            if self.config.ctx.runtime.fractional_percent_enabled(key, num, den):
                self.shadows.submit(mirror, req, new_name)
        t0 = time.monotonic()
        try:
            up.sock.sendall(payload)
        except OSError:
            self._drop_upstream(name)
            raise _LocalError(codec.INTERNAL_ERROR, "connection failure '%s'" % up.host.addr_str) \
                from None
        if begin.type == codec.ONEWAY:
            ustats.record("upstream_rq_time", int((time.monotonic() - t0) * 1000))
            return 0
        reply = self._read_reply(name, up, decoder, ustats)
        ustats.record("upstream_rq_time", int((time.monotonic() - t0) * 1000))
        ustats.record("upstream_resp_size", len(reply.frame))
        self._count_response(reply, ustats)
        out = reply.frame
        if (u_transport, u_protocol) != (begin.transport, begin.protocol):
            out = codec.translate(reply, begin.transport, begin.protocol)
        self.callbacks.connection.write(out)
        return len(out)

    def _upstream(self, name: str, begin: codec.MessageBegin):
        held = self.upstreams.get(name)
        if held is not None:
            return held
        cluster = self.config.ctx.cluster_manager.get(name)
        if cluster is None:
            self.stats.unknown_cluster.inc()
            raise _LocalError(codec.INTERNAL_ERROR, "unknown cluster '%s'" % name)
        host = cluster.choose_host()
        if host is None:
            self.stats.no_healthy_upstream.inc()
            cluster.stats.upstream_cx_none_healthy.inc()
            raise _LocalError(codec.INTERNAL_ERROR, "no healthy upstream for '%s'" % name)
        try:
            sock = cluster.connect(host)
        except UpstreamConnectError as e:
            raise _LocalError(codec.INTERNAL_ERROR, "connection failure '%s'" % host.addr_str) from e
        up = UpstreamConnection(sock, host, cluster)
        self.callbacks.upstream_host = host.addr_str
        transport, protocol = upstream_protocol(cluster, begin)
        held = self.upstreams[name] = (up, codec.ThriftDecoder(transport, protocol), transport, protocol)
        return held

    def _read_reply(self, name, up, decoder, ustats) -> codec.MessageEnd:
        while True:
            try:
                data = up.sock.recv(READ_SIZE)
            except OSError:
                data = b""
            if not data:
                self._drop_upstream(name)
                raise _LocalError(codec.INTERNAL_ERROR, "connection reset")
            try:
                events = decoder.receive_data(data)
            except codec.DecodeError:
                self.stats.response_decoding_error.inc()
                ustats.inc("upstream_resp_decoding_error")
                self._drop_upstream(name)
                raise _LocalError(codec.PROTOCOL_ERROR, "upstream response decoding error") from None
            for ev in events:
                if isinstance(ev, codec.MessageEnd):
                    return ev

    def _drop_upstream(self, name: str) -> None:
        held = self.upstreams.pop(name, None)
        if held is not None:
            held[0].close()

    def _count_response(self, reply: codec.MessageEnd, ustats) -> None:
        s, t = self.stats, reply.begin.type
        s.response.inc()
        if self.config.passthrough and reply.begin.transport != codec.UNFRAMED:
            s.response_passthrough.inc()
        if t == codec.REPLY:
            s.response_reply.inc()
            if reply.reply_field_id in (None, 0):
                s.response_success.inc()
            else:
                s.response_error.inc()
        elif t == codec.EXCEPTION:
            s.response_exception.inc()
        else:
            s.response_invalid_type.inc()
        count_upstream_response(reply, ustats)

    def _local_reply(self, begin: codec.MessageBegin, e: _LocalError) -> None:
        """A TApplicationException to the client (none for a oneway, counted all the same,
        as Envoy's sendLocalReply), then close unless the router says otherwise."""
        self.stats.response_exception.inc()
        if begin.type != codec.ONEWAY:
            self.callbacks.connection.write(codec.app_exception(
                begin.transport, begin.protocol, begin.name, begin.seq_id, str(e), e.exc_type))
        if self.config.close_on_error:
            self.stats.downstream_response_drain_close.inc()    # as Envoy 1.40 counts it
            self._close()

    def _close(self) -> None:
        self.closing = True
        self.callbacks.connection.close()


def create(config, ctx) -> ThriftProxyConfig:
    return ThriftProxyConfig(config, ctx)
