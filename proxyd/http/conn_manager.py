"""envoy.filters.network.http_connection_manager: the network filter that turns a
connection into HTTP streams.

`create()` runs once per config snapshot and precomputes everything a request needs
(route table, HTTP filter objects, stat handles, timeouts); `on_connection()` picks the
codec for the connection and serves it until it closes.
"""
from __future__ import annotations

import ipaddress
import socket
import time
from random import getrandbits

import gevent

from proxyd import registry
from proxyd.proto import extension_config
from proxyd.observability.access_log import build_access_logs
from proxyd.observability.tracing.hcm import REASONS as TRACE_REASONS, build_tracer
from proxyd.http.codec.http2 import Http2Options
from proxyd.http.filter_manager import FilterSpec
from proxyd.http.per_filter_config import PerFilterCompiler
from proxyd.network.filter import ConnectionEvent, FilterStatus
from proxyd.router.route_table import RouteTable
from proxyd.stats.scope import Scope

DEFAULT_IDLE_TIMEOUT = 3600.0
DEFAULT_STREAM_IDLE_TIMEOUT = 300.0
DEFAULT_DRAIN_TIMEOUT = 5.0
# what codec AUTO looks for to pick HTTP/2 prior knowledge (Envoy's CLIENT_MAGIC_PREFIX)
H2_MAGIC_PREFIX = b"PRI * HTTP/2"
SNIFF_RECV_SIZE = 65536
# RFC 9562 version (4) and variant (10) bits of a UUID held as a 128-bit int
_UUID_CLEAR = ~((0xF << 76) | (0x3 << 62)) & ((1 << 128) - 1)
_UUID_SET = (0x4 << 76) | (0x2 << 62)


def _seconds(msg, field: str, default: float) -> float:
    if not msg.HasField(field):
        return default
    d = getattr(msg, field)
    return d.seconds + d.nanos / 1e9


def _opt_bool(msg, field: str, default: bool) -> bool:
    return getattr(msg, field).value if msg.HasField(field) else default


class HcmStats:
    _COUNTERS = ("downstream_cx_total", "downstream_cx_http1_total", "downstream_cx_http2_total",
                 "downstream_cx_destroy", "downstream_cx_destroy_remote",
                 "downstream_cx_destroy_local", "downstream_cx_drain_close",
                 "downstream_cx_idle_timeout", "downstream_cx_protocol_error",
                 "downstream_rq_total", "downstream_rq_http1_total", "downstream_rq_http2_total",
                 "downstream_rq_rx_reset", "downstream_rq_tx_reset", "downstream_rq_timeout",
                 "downstream_rq_idle_timeout", "downstream_rq_completed",
                 "downstream_rq_response_before_rq_complete", "rq_total",
                 "downstream_rq_header_timeout", "downstream_rq_too_many_premature_resets",
                 "downstream_rq_too_large", "rs_too_large", "no_route", "no_cluster", "rq_direct_response",
                 "rq_redirect", "downstream_cx_rx_bytes_total", "downstream_cx_tx_bytes_total",
                 "downstream_cx_upgrades_total", "downstream_rq_ws_on_non_ws_route",
                 "downstream_rq_max_duration_reached", "downstream_cx_max_duration_reached",
                 "downstream_cx_max_requests_reached")
    _GAUGES = ("downstream_cx_active", "downstream_cx_http1_active", "downstream_cx_http2_active",
               "downstream_rq_active", "downstream_cx_upgrades_active")

    def __init__(self, store, prefix: str):
        p = "http.%s." % prefix
        for n in self._COUNTERS:
            setattr(self, n, store.counter(p + n))
        for n in self._GAUGES:
            setattr(self, n, store.gauge(p + n))
        self.downstream_rq_xx = [None] + [store.counter("%sdownstream_rq_%dxx" % (p, i))
                                          for i in range(1, 6)]
        self.downstream_rq_time = store.histogram(p + "downstream_rq_time")
        self.downstream_cx_length_ms = store.histogram(p + "downstream_cx_length_ms")


class ServerHealth:
    """Whether the server's own health check failed (`POST /healthcheck/fail`: the master's
    `server.state` gauge reads DRAINING), read at most every 100 ms: Envoy's
    healthCheckFailed(), which the health_check filter and the drain close consult."""
    _DRAINING = 1
    _PERIOD = 0.1
    __slots__ = ("gauge", "checked", "value")

    def __init__(self, store):
        self.gauge = store.gauge("server.state")
        self.checked = -1.0
        self.value = False

    def failed(self) -> bool:
        now = time.monotonic()
        if now - self.checked > self._PERIOD:
            self.checked = now
            self.value = self.gauge.value() == self._DRAINING
        return self.value


_server_health: dict = {}


def server_health(store) -> ServerHealth:
    h = _server_health.get(id(store))
    if h is None:
        h = _server_health[id(store)] = ServerHealth(store)
    return h


class FactoryContext:
    """What an HTTP filter factory gets (Envoy's FactoryContext): the HCM's stats scope
    (`http.<stat_prefix>.`; a filter declares its own names under it), the runtime of the
    current snapshot, the cluster manager, and the worker's context."""

    def __init__(self, worker_ctx, stat_prefix: str, filter_name: str):
        self.worker = worker_ctx
        self.cluster_manager = worker_ctx.cluster_manager
        self.stats = Scope(worker_ctx.stats, "http.%s." % stat_prefix)
        self.filter_name = filter_name
        self.errors = None   # a factory may set the counter its filter's exceptions go to
        self.handles = None  # and the stat handles its filters see as callbacks.stats

    @property
    def runtime(self):
        return self.worker.runtime

    def scope(self, name: str, counters=(), gauges=(), histograms=()):
        """Declared handles under `http.<stat_prefix>.<name>` (give `name` its dot)."""
        return self.stats.scope(name).declare(counters, gauges, histograms)


class _LazyCounter:
    """A counter made on first use: a stat that only shows up once something happened."""
    __slots__ = ("store", "name", "handle")

    def __init__(self, store, name: str):
        self.store, self.name, self.handle = store, name, None

    def inc(self, n: int = 1) -> None:
        if self.handle is None:
            self.handle = self.store.counter(self.name)
        self.handle.inc(n)


class Http2Stats:
    """Envoy's downstream HTTP/2 codec stats (`http2.*`, shared by every listener)."""
    _COUNTERS = ("rx_reset", "outbound_flood",
                 "outbound_control_flood", "inbound_empty_frames_flood",
                 "inbound_priority_frames_flood", "inbound_window_update_frames_flood")

    def __init__(self, store):
        for n in self._COUNTERS:
            setattr(self, n, store.counter("http2." + n))


class HttpConnectionManager:
    """One listener filter chain's HTTP settings, shared by all its connections."""

    def __init__(self, config, ctx):
        self.ctx = ctx
        self.config = config
        self.stat_prefix = config.stat_prefix
        self.stats = HcmStats(ctx.stats, config.stat_prefix)
        self.http2_stats = Http2Stats(ctx.stats)
        # the filter chain: one FilterFactoryCb per http_filters entry (the router last)
        self.filters = []
        errors = _LazyCounter(ctx.stats, "http.%s.filter_errors" % config.stat_prefix)
        for f in config.http_filters:
            type_name, msg = extension_config(f.typed_config)
            fctx = FactoryContext(ctx, config.stat_prefix, f.name)
            factory = registry.factory(type_name).create(msg, fctx)
            self.filters.append(FilterSpec(f.name, factory, f.disabled, fctx.errors or errors,
                                           fctx.handles))
        self.route_table = RouteTable(config.route_config, PerFilterCompiler(
            {s.name: s.factory for s in self.filters}))
        self.codec_type = config.codec_type  # 0 AUTO, 1 HTTP1, 2 HTTP2
        self.http2_options = Http2Options(config.http2_protocol_options
                                          if config.HasField("http2_protocol_options") else None)
        self.idle_timeout = _seconds(config.common_http_protocol_options, "idle_timeout",
                                     DEFAULT_IDLE_TIMEOUT) or None
        common = config.common_http_protocol_options
        # the HCM's stream duration limit (a route's max_stream_duration replaces it)
        self.max_stream_duration = _seconds(common, "max_stream_duration", 0.0) or None
        self.max_connection_duration = _seconds(common, "max_connection_duration", 0.0) or None
        self.max_requests_per_connection = (common.max_requests_per_connection.value
                                            if common.HasField("max_requests_per_connection")
                                            else 0)
        self.request_timeout = _seconds(config, "request_timeout", 0.0) or None
        # from the first byte of a request's headers to the last (Envoy's default: off)
        self.request_headers_timeout = _seconds(config, "request_headers_timeout", 0.0) or None
        self.stream_idle_timeout = _seconds(config, "stream_idle_timeout",
                                            DEFAULT_STREAM_IDLE_TIMEOUT) or None
        # HTTP/2: time between the GOAWAY "shutdown notice" and the final GOAWAY
        self.drain_timeout = _seconds(config, "drain_timeout", DEFAULT_DRAIN_TIMEOUT)
        self.max_request_headers = (config.max_request_headers_kb.value
                                    if config.HasField("max_request_headers_kb") else 60) * 1024
        self.generate_request_id = _opt_bool(config, "generate_request_id", True)
        self.preserve_external_request_id = config.preserve_external_request_id
        self.always_set_request_id_in_response = config.always_set_request_id_in_response
        self.use_remote_address = _opt_bool(config, "use_remote_address", False)
        # Since Envoy 1.36 no address is internal unless these ranges say so
        self.internal_networks = tuple(
            ipaddress.ip_network("%s/%d" % (c.address_prefix, c.prefix_len.value), strict=False)
            for c in config.internal_address_config.cidr_ranges)
        self.server_name = config.server_name or "envoy"
        self.server_health = server_health(ctx.stats)
        self.via = config.via
        node = getattr(ctx, "node", None)
        # add_user_agent: the local cluster names this hop (Envoy's userAgent())
        self.user_agent = (node.cluster if node is not None else "") \
            if _opt_bool(config, "add_user_agent", False) else None
        self.node_id = node.id if node is not None else ""
        # upgrade_configs: {upgrade type (lower case): allowed}; routes may override
        self.upgrades = {u.upgrade_type.lower(): _opt_bool(u, "enabled", True)
                         for u in config.upgrade_configs}
        self.access_logs = build_access_logs(config.access_log, ctx) if config.access_log else []
        self.tracer = (build_tracer(config.tracing, ctx, config.stat_prefix, self)
                       if config.HasField("tracing") else None)
        if self.tracer is None:     # Envoy keeps http.<sp>.tracing.* on every HCM
            for reason in TRACE_REASONS:
                ctx.stats.counter("http.%s.tracing.%s" % (config.stat_prefix, reason))

    def is_internal(self, request, remote_ip: str) -> bool:
        """Envoy's internal request: the peer (use_remote_address) or else the only
        X-Forwarded-For address is in internal_address_config's ranges."""
        nets = self.internal_networks
        if not nets:
            return False
        if self.use_remote_address:
            addr = remote_ip
        else:
            xff = request.headers.get("x-forwarded-for")
            if xff is None or "," in xff:
                return False
            addr = xff.strip()
        try:
            ip = ipaddress.ip_address(addr)
        except ValueError:
            return False
        return any(ip in n for n in nets)

    @staticmethod
    def new_request_id() -> str:
        """A version-4 UUID from the fast PRNG: uuid.uuid4() (os.urandom plus a UUID
        object) cost 4% of a proxied request; request ids need uniqueness, not secrecy."""
        r = (getrandbits(128) & _UUID_CLEAR) | _UUID_SET
        h = "%032x" % r
        return "%s-%s-%s-%s-%s" % (h[:8], h[8:12], h[12:16], h[16:20], h[20:])

    def on_connection(self, conn) -> None:
        """The HCM alone in its chain: serve `conn` (a DownstreamConnection) until it
        closes, reading its socket directly (the fast path)."""
        stats = self.stats
        stats.downstream_cx_total.inc()
        stats.downstream_cx_active.inc()
        t0 = time.monotonic()
        duration = (_ConnectionDuration(self, conn, self.max_connection_duration)
                    if self.max_connection_duration else None)
        try:
            self.serve_codec(conn)
        finally:
            if duration is not None:
                duration.close()
            stats.downstream_cx_active.dec()
            stats.downstream_cx_destroy.inc()
            stats.downstream_cx_length_ms.record((time.monotonic() - t0) * 1000.0)

    # the listener serves a chain ending in the HCM with FilterChainConnection.serve_pulled
    pulls_from_chain = True

    def __call__(self, filter_manager) -> None:
        """The filter factory, for chains where other network filters (RBAC, rate
        limits, ext_authz) run in front of the HCM as the terminal filter."""
        filter_manager.add_read_filter(HcmReadFilter(self))

    def serve_codec(self, conn) -> None:
        """Pick the codec and run it until the connection closes."""
        stats = self.stats
        http2, first = self._pick_codec(conn)
        if http2 is None:
            return
        if http2:
            from proxyd.http.http2_connection import Http2Connection
            stats.downstream_cx_http2_total.inc()
            stats.downstream_cx_http2_active.inc()
            try:
                Http2Connection(self, conn, first).serve()
            finally:
                stats.downstream_cx_http2_active.dec()
            return
        from proxyd.http.http1_connection import Http1Connection
        stats.downstream_cx_http1_total.inc()
        stats.downstream_cx_http1_active.inc()
        try:
            Http1Connection(self, conn, first).serve()
        finally:
            stats.downstream_cx_http1_active.dec()

    def _pick_codec(self, conn) -> tuple[bool | None, bytes]:
        """(HTTP/2?, bytes already read): codec_type HTTP2 or HTTP1, ALPN on TLS, or
        (AUTO, plaintext) whether the client's first bytes start with the HTTP/2 magic.
        (None, b"") when the client left or stayed silent for idle_timeout first."""
        if self.codec_type == 2:
            return True, b""
        if self.codec_type == 1:
            return False, b""
        alpn = getattr(conn, "alpn", None)
        if alpn is not None or conn.scheme == "https":
            return alpn == "h2", b""
        try:
            first = _read_until_decided(conn.sock, self.idle_timeout)
        except socket.timeout:
            if not conn.hcm_draining:  # else max_connection_duration ended it
                self.stats.downstream_cx_idle_timeout.inc()
            self.stats.downstream_cx_destroy_local.inc()
            return None, b""
        if first is None:
            self.stats.downstream_cx_destroy_remote.inc()
            return None, b""
        return first.startswith(H2_MAGIC_PREFIX), first


class _ConnectionDuration:
    """HCM max_connection_duration, one loop timer per connection (Envoy's
    onConnectionDurationTimeout): downstream_cx_max_duration_reached, then the
    connection drains. HTTP/2: the GOAWAY notice, the final GOAWAY drain_timeout later.
    HTTP/1: every response from now on says Connection: close, and an idle connection
    closes drain_timeout later (Envoy's drain timer). No codec yet: it closes now."""
    __slots__ = ("hcm", "conn", "glet", "timer")

    def __init__(self, hcm, conn, seconds: float):
        self.hcm = hcm
        self.conn = conn
        self.glet = gevent.getcurrent()   # the connection's greenlet
        self.timer = gevent.get_hub().loop.timer(seconds)
        self.timer.start(self._reached)

    def close(self) -> None:
        self.timer.close()

    def _reached(self) -> None:
        self.timer.close()
        self.hcm.stats.downstream_cx_max_duration_reached.inc()
        conn = self.conn
        conn.hcm_draining = True
        proto = conn.protocol
        if proto is None:   # still choosing the codec
            self.glet.throw(socket.timeout("max connection duration"))
        elif getattr(proto, "on_drain", None) is not None:  # HTTP/2
            proto.on_drain(False)
        else:
            self.timer = gevent.get_hub().loop.timer(self.hcm.drain_timeout)
            self.timer.start(self._drain_timeout)

    def _drain_timeout(self) -> None:
        self.timer.close()
        proto = self.conn.protocol
        if proto is not None and proto.idle:  # blocked waiting for a next request
            self.glet.throw(socket.timeout("max connection duration"))


class HcmReadFilter:
    """The HCM as the terminal read filter of a chain (Envoy's ConnectionManagerImpl as a
    Network::ReadFilter): the filters in front see each byte first, and what they let
    through is delivered to the codec's socket (`proxyd.network.chain_socket`), which the
    codec loop (`serve`, run by the chain's driver) reads.

    As Envoy counts them: the connection is an HCM connection from the moment its
    filters are made (`downstream_cx_total/active`), also when a filter in front closes
    it before any byte reaches the HCM (then `downstream_cx_destroy_local`, or
    `_remote` when the peer left first); the codec is chosen on the first bytes that
    reach it."""
    __slots__ = ("hcm", "callbacks", "sink", "t0", "codec_ran", "done")

    def __init__(self, hcm: HttpConnectionManager):
        self.hcm = hcm
        self.sink = None
        self.codec_ran = False
        self.done = False

    def initialize_read_filter_callbacks(self, callbacks) -> None:
        self.callbacks = callbacks
        stats = self.hcm.stats
        stats.downstream_cx_total.inc()
        stats.downstream_cx_active.inc()
        self.t0 = time.monotonic()
        callbacks.connection.add_connection_callbacks(self)

    def attach(self, sink) -> None:
        self.sink = sink

    def on_new_connection(self):
        return FilterStatus.CONTINUE

    def on_data(self, data: bytes, end_stream: bool):
        self.sink.deliver(data, end_stream)
        return FilterStatus.STOP_ITERATION   # terminal, as Envoy's HCM

    def serve(self, conn) -> None:
        """The codec loop: waits (idle_timeout) for the first bytes the chain lets
        through, then runs the codec on them."""
        hcm = self.hcm
        try:
            if not self.sink.wait_data(hcm.idle_timeout):
                return
        except socket.timeout:
            hcm.stats.downstream_cx_idle_timeout.inc()
            return
        except OSError:           # reset before its first bytes: a remote close
            return
        self.codec_ran = True
        duration = (_ConnectionDuration(hcm, conn, hcm.max_connection_duration)
                    if hcm.max_connection_duration else None)
        try:
            hcm.serve_codec(conn)
        finally:
            if duration is not None:
                duration.close()

    def on_event(self, event) -> None:
        if self.done:
            return
        self.done = True
        stats = self.hcm.stats
        if not self.codec_ran:    # the codec counts how it ended itself
            (stats.downstream_cx_destroy_remote if event is ConnectionEvent.REMOTE_CLOSE
             else stats.downstream_cx_destroy_local).inc()
        # Envoy counts every byte read on the connection (the codec counts those it got)
        unreturned = self.sink.unreturned_bytes() if self.sink is not None else 0
        if unreturned:
            stats.downstream_cx_rx_bytes_total.inc(unreturned)
        stats.downstream_cx_active.dec()
        stats.downstream_cx_destroy.inc()
        stats.downstream_cx_length_ms.record((time.monotonic() - self.t0) * 1000.0)


def _read_until_decided(sock, timeout) -> bytes | None:
    """Read (consuming) until the bytes rule the HTTP/2 magic in or out; the codec then
    parses them first. A client that sends part of the magic and waits just blocks in
    recv (the old MSG_PEEK poll woke every millisecond per connection, as the data
    stayed readable). None at EOF; socket.timeout after `timeout` of silence."""
    n = len(H2_MAGIC_PREFIX)
    sock.settimeout(timeout)
    got = b""
    while True:
        try:
            data = sock.recv(SNIFF_RECV_SIZE)
        except socket.timeout:
            raise
        except OSError:
            return None
        if not data:
            return None
        got += data
        if len(got) >= n or not H2_MAGIC_PREFIX.startswith(got):
            sock.settimeout(None)
            return got


def create(config, ctx) -> HttpConnectionManager:
    return HttpConnectionManager(config, ctx)
