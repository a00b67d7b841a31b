"""envoy.filters.network.tcp_proxy: connect to a cluster host and relay bytes both ways.

Plain sockets on both sides are relayed with splice (zero copy); TLS on either side
falls back to a buffered copy. Each direction half-closes its destination at end of
stream, and the connection ends when both directions have, when either side resets,
or when nothing moved for idle_timeout (default 1 h; 0 disables it).
"""
from __future__ import annotations

import random
import socket
import time

import gevent

from gevent.lock import Semaphore

from proxyd.http.message import StreamInfo
from proxyd.network.filter import FilterStatus
from proxyd.network.splice import PumpError, copy_pump, splice_pump
from proxyd.transport.tls import is_tls, shutdown_write
from proxyd.upstream.cluster import UpstreamConnectError
from proxyd.upstream.lb import LbContext
from proxyd.upstream.pool_http1 import UpstreamConnection

DEFAULT_IDLE_TIMEOUT = 3600.0


def _seconds(msg, field: str, default: float) -> float:
    if not msg.HasField(field):
        return default
    d = getattr(msg, field)
    return d.seconds + d.nanos / 1e9


class TcpProxyStats:
    _COUNTERS = ("downstream_cx_total", "downstream_cx_no_route", "downstream_cx_rx_bytes_total",
                 "downstream_cx_tx_bytes_total", "idle_timeout", "upstream_flush_total")
    _GAUGES = ("upstream_flush_active",)

    def __init__(self, store, prefix: str):
        p = "tcp.%s." % prefix
        for n in self._COUNTERS:
            setattr(self, n, store.counter(p + n))
        for n in self._GAUGES:
            setattr(self, n, store.gauge(p + n))


class TcpProxy:
    """One filter chain's tcp_proxy settings, shared by its connections."""

    def __init__(self, config, ctx):
        self.ctx = ctx
        self.stats = TcpProxyStats(ctx.stats, config.stat_prefix)
        if config.WhichOneof("cluster_specifier") == "weighted_clusters":
            wc = config.weighted_clusters.clusters
            self.cluster = None
            self.weighted = [(c.name, c.weight) for c in wc if c.weight]
            self.total_weight = sum(w for _, w in self.weighted)
        else:
            self.cluster = config.cluster
            self.weighted = []
        self.idle_timeout = _seconds(config, "idle_timeout", DEFAULT_IDLE_TIMEOUT) or None
        self.max_connect_attempts = (config.max_connect_attempts.value
                                     if config.HasField("max_connect_attempts") else 1)
        self.access_logs = []
        if config.access_log:
            from proxyd.observability.access_log import build_access_logs
            self.access_logs = build_access_logs(config.access_log, ctx)

    def pick_cluster(self) -> str:
        if self.cluster is not None:
            return self.cluster
        r = random.randrange(self.total_weight)
        for name, w in self.weighted:
            if r < w:
                return name
            r -= w
        return self.weighted[-1][0]

    def __call__(self, filter_manager) -> None:
        """The filter factory, for chains where tcp_proxy is the terminal filter behind
        others (a sniffing filter in front of it)."""
        filter_manager.add_read_filter(TcpProxyFilter(self))

    def on_connection(self, conn) -> None:
        """tcp_proxy alone in its chain: splice both directions (the fast path)."""
        self.stats.downstream_cx_total.inc()
        info = StreamInfo.for_connection(conn, None)
        try:
            up = self._connect(conn, info)
            if up is not None:
                try:
                    session = conn.protocol = _Session(self, conn, up, info)
                    session.run()
                finally:
                    up.close()
        finally:
            info.end_mono = time.monotonic()
            for lg in self.access_logs:
                lg.log(info)

    def _connect(self, conn, info):
        name = self.pick_cluster()
        cluster = self.ctx.cluster_manager.get(name)
        if cluster is None:
            self.stats.downstream_cx_no_route.inc()
            info.response_flags.append("NR")
            return None
        info.upstream_cluster = name
        ctx = LbContext(None, conn)
        for _ in range(self.max_connect_attempts):
            host = cluster.choose_host(ctx)
            if host is None:
                cluster.stats.upstream_cx_none_healthy.inc()
                info.response_flags.append("UH")
                return None
            info.upstream_host = host.addr_str
            try:
                sock = cluster.connect(host, final=True)
            except UpstreamConnectError:
                continue
            up = UpstreamConnection(sock, host, cluster)
            info.upstream_local_address = up.local_address
            info.upstream_start_mono = time.monotonic()
            return up
        cluster.stats.upstream_cx_connect_attempts_exceeded.inc()  # Envoy 1.40: a cluster stat
        info.response_flags.append("UF")
        info.response_flags.append("URX")   # Envoy 1.40 logs UF,URX: the attempts ran out
        return None


class _Session:
    """The two pumps of one proxied connection and the idle timer that watches them.

    It is the connection's `protocol` for the listener's drain, which closes idle
    protocols at once: a TCP session is never idle by that measure (Envoy leaves
    tcp_proxy connections alone until the drain deadline), and closing fds under the
    pumps' own watchers would be unsafe."""

    idle = False

    __slots__ = ("proxy", "down", "up", "info", "last", "timed_out", "aborted",
                 "upstream_eof_first", "_up_eof", "up_pending", "upward")

    def __init__(self, proxy, conn, up, info):
        self.proxy = proxy
        self.down = conn.sock
        self.up = up
        self.info = info
        self.last = time.monotonic()
        self.timed_out = False
        self.aborted = False
        self.upstream_eof_first = False
        self._up_eof = False
        self.up_pending = False  # bytes read from downstream not yet written upstream
        self.upward = None

    def run(self) -> None:
        proxy, up_sock = self.proxy, self.up.sock
        pump = copy_pump if (is_tls(self.down) or is_tls(up_sock)) else splice_pump
        cstats = self.up.cluster.stats
        pstats = proxy.stats
        info = self.info
        now = time.monotonic

        def from_down(n):
            pstats.downstream_cx_rx_bytes_total.inc(n)
            cstats.upstream_cx_tx_bytes_total.inc(n)
            info.bytes_received += n
            self.up_pending = True
            self.last = now()

        def down_written():
            self.up_pending = False

        def from_up(n):
            pstats.downstream_cx_tx_bytes_total.inc(n)
            cstats.upstream_cx_rx_bytes_total.inc(n)
            info.bytes_sent += n
            self.last = now()

        def up_written():
            pass

        timer = gevent.spawn(self._idle_watch) if proxy.idle_timeout else None
        self.upward = gevent.spawn(self._pump_upward, pump, from_down, down_written)
        try:
            self._pump_downward(pump, from_up, up_written)
            self.upward.join()
        finally:
            self.upward.kill()
            if timer is not None:
                timer.kill()
        if self.upstream_eof_first:
            cstats.upstream_cx_destroy_remote.inc()
        else:
            cstats.upstream_cx_destroy_local.inc()
        if self.timed_out:
            pstats.idle_timeout.inc()

    def _pump_upward(self, pump, on_bytes, on_written) -> None:
        try:
            pump(self.down, self.up.sock, on_bytes, on_written)
            self._up_eof = True
        except PumpError as e:
            self._failed("DC" if e.side == "src" else "UC")
            self.abort()

    def _pump_downward(self, pump, on_bytes, on_written) -> None:
        try:
            pump(self.up.sock, self.down, on_bytes, on_written)
            self.upstream_eof_first = not self._up_eof
        except PumpError as e:
            if e.side == "dst" and self.up_pending and not self.aborted:
                self._flush()
                return
            self._failed("UC" if e.side == "src" else "DC")
            self.abort()

    def _flush(self) -> None:
        """The downstream is gone but bytes it sent are still being written upstream:
        let that finish (Envoy's upstream flush), bounded by the idle timer."""
        pstats = self.proxy.stats
        pstats.upstream_flush_total.inc()
        pstats.upstream_flush_active.inc()
        try:
            try:
                getattr(self.down, "_sock", self.down).shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self.upward.join()
        finally:
            pstats.upstream_flush_active.dec()

    def _failed(self, flag: str) -> None:
        if not self.aborted and flag not in self.info.response_flags:
            self.info.response_flags.append(flag)

    def _idle_watch(self) -> None:
        timeout = self.proxy.idle_timeout
        while True:
            left = self.last + timeout - time.monotonic()
            if left <= 0:
                self.timed_out = True
                self.abort()
                return
            gevent.sleep(left)

    def abort(self) -> None:
        """Wake both pumps: shutting a socket down (not closing it) makes their waits
        return and their next syscall fail or see EOF, without invalidating the fds."""
        self.aborted = True
        for s in (self.down, self.up.sock):
            try:
                getattr(s, "_sock", s).shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class TcpProxyFilter:
    """tcp_proxy as the terminal read filter of a filter chain: downstream bytes reach it
    through the filters before it and go upstream; upstream bytes go downstream through
    the connection's write filters. Each side's end of stream half-closes the other."""

    def __init__(self, proxy: TcpProxy):
        self.proxy = proxy
        self.callbacks = None
        self.info = None
        self.up = None
        self.reader = None
        self.timer = None
        self.last = time.monotonic()
        self.upstream_eof_first = False
        self.timed_out = False
        self.closed = False
        self._read_ended = False
        self._wlock = Semaphore()

    def initialize_read_filter_callbacks(self, callbacks) -> None:
        self.callbacks = callbacks
        callbacks.connection.enable_half_close(True)
        callbacks.connection.add_connection_callbacks(self)
        # counted when the chain is built, as Envoy: also a connection an earlier filter
        # (local_ratelimit) then closes
        self.proxy.stats.downstream_cx_total.inc()

    def on_new_connection(self) -> FilterStatus:
        proxy, conn = self.proxy, self.callbacks.connection
        self.info = StreamInfo.for_connection(conn, None)
        self.up = proxy._connect(conn, self.info)
        if self.up is None:
            conn.close()
            return FilterStatus.STOP_ITERATION
        self.callbacks.upstream_host = self.up.host.addr_str
        self.reader = gevent.spawn(self._read_upstream)
        if proxy.idle_timeout:
            self.timer = gevent.spawn(self._idle_watch)
        return FilterStatus.CONTINUE

    def on_data(self, data: bytes, end_stream: bool) -> FilterStatus:
        up = self.up
        if up is None or up.sock is None:
            return FilterStatus.STOP_ITERATION
        n = len(data)
        try:
            with self._wlock:
                if n:
                    up.sock.sendall(data)
                if end_stream:
                    self._read_ended = True
                    shutdown_write(up.sock)
        except OSError:
            self._failed("UC")
            self.callbacks.connection.close()
            return FilterStatus.STOP_ITERATION
        if n:
            self.proxy.stats.downstream_cx_rx_bytes_total.inc(n)
            up.cluster.stats.upstream_cx_tx_bytes_total.inc(n)
            self.info.bytes_received += n
            self.last = time.monotonic()
        return FilterStatus.STOP_ITERATION

    def _read_upstream(self) -> None:
        try:
            self._relay_upstream()
        finally:
            if self.closed:  # the downstream closed while we read: the fd is ours to close
                self.up.close()

    def _relay_upstream(self) -> None:
        conn, up = self.callbacks.connection, self.up
        pstats, cstats = self.proxy.stats, up.cluster.stats
        while True:
            try:
                data = up.sock.recv(COPY_CHUNK)
            except (OSError, AttributeError):  # reset, or closed under us
                self._failed("UC")
                conn.close()
                return
            if not data:
                self.upstream_eof_first = not self._read_ended
                conn.write(b"", end_stream=True)
                return
            n = len(data)
            pstats.downstream_cx_tx_bytes_total.inc(n)
            cstats.upstream_cx_rx_bytes_total.inc(n)
            self.info.bytes_sent += n
            self.last = time.monotonic()
            conn.write(data)

    def _idle_watch(self) -> None:
        timeout = self.proxy.idle_timeout
        while True:
            left = self.last + timeout - time.monotonic()
            if left <= 0:
                self.timed_out = True
                self.callbacks.connection.close()
                return
            gevent.sleep(left)

    def _failed(self, flag: str) -> None:
        if flag not in self.info.response_flags:
            self.info.response_flags.append(flag)

    def on_event(self, event) -> None:
        """The downstream connection closed: close the upstream, count and log."""
        if self.timer is not None:
            self.timer.kill(block=False)
        self.closed = True
        up = self.up
        if up is not None:
            cstats = up.cluster.stats
            if self.upstream_eof_first:
                cstats.upstream_cx_destroy_remote.inc()
            else:
                cstats.upstream_cx_destroy_local.inc()
            if self.reader is None or self.reader.dead:
                up.close()
            else:  # wake the reader, which closes the fd (closing it under a waiter is unsafe)
                try:
                    getattr(up.sock, "_sock", up.sock).shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        if self.timed_out:
            self.proxy.stats.idle_timeout.inc()
        if self.info is not None:
            self.info.end_mono = time.monotonic()
            for lg in self.proxy.access_logs:
                lg.log(self.info)


COPY_CHUNK = 64 * 1024


def create(config, ctx) -> TcpProxy:
    return TcpProxy(config, ctx)
