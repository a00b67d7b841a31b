"""envoy.filters.udp_listener.udp_proxy: forward a UDP listener's datagrams to a cluster.

A session per downstream address (ip, port): its first datagram picks the cluster's host
and opens the session's own upstream socket (connected to the host, so the upstream sees
one source port per client); datagrams either way keep it alive, and it ends after
`idle_timeout` (default 60 s) without any. Upstream replies go back to the client from
the listener's socket. The route is `cluster`, or a `matcher` with only `on_no_match`
(Envoy's udp example); upstream datagrams longer than
`upstream_socket_config.max_rx_datagram_size`, when it is set, are dropped (unset, any
size passes, as observed in Envoy 1.40; downstream datagrams over 1500 bytes are dropped
by the listener).

Stats as Envoy 1.40 (observed): `udp.<stat_prefix>.downstream_sess_{total,active,
no_route,rx_bytes,rx_datagrams,rx_errors,tx_bytes,tx_datagrams,tx_errors}`, `idle_timeout`,
`session_filter_config_missing`; on the cluster `udp.sess_{rx,tx}_datagrams`,
`udp.sess_rx_datagrams_dropped`, `udp.sess_{rx,tx}_errors`, and the
`upstream_cx_{rx,tx}_bytes_total` byte counters (no upstream_cx_total: no connection).
"""
from __future__ import annotations

import socket
import time

import gevent
from gevent import socket as gsocket

from proxyd.config import unpack
from proxyd.listener.udp import max_rx_datagram_size

DEFAULT_IDLE_TIMEOUT = 60.0
_COUNTERS = ("downstream_sess_total", "downstream_sess_no_route", "downstream_sess_rx_bytes",
             "downstream_sess_rx_datagrams", "downstream_sess_rx_errors",
             "downstream_sess_tx_bytes", "downstream_sess_tx_datagrams",
             "downstream_sess_tx_errors", "idle_timeout", "session_filter_config_missing")
_CLUSTER_COUNTERS = ("sess_rx_datagrams", "sess_rx_datagrams_dropped", "sess_rx_errors",
                     "sess_tx_datagrams", "sess_tx_errors")


def route_cluster(config) -> str:
    if config.cluster:
        return config.cluster
    return unpack(config.matcher.on_no_match.action.typed_config).cluster


class _ClusterUdpStats:
    def __init__(self, cluster):
        store = cluster._store
        p = "cluster.%s.udp." % cluster.name
        for n in _CLUSTER_COUNTERS:
            setattr(self, n, store.counter(p + n))
        self.rx_bytes = cluster.stats.upstream_cx_rx_bytes_total
        self.tx_bytes = cluster.stats.upstream_cx_tx_bytes_total


class UdpProxy:
    def __init__(self, config, ctx):
        self.ctx = ctx
        self.cluster_name = route_cluster(config)
        t = config.idle_timeout
        self.idle_s = (t.seconds + t.nanos / 1e9) if config.HasField("idle_timeout") \
            else DEFAULT_IDLE_TIMEOUT
        # Envoy 1.40 reads upstream datagrams of any size unless the limit is set (observed:
        # 65000 bytes pass with the default config)
        self.max_rx = max_rx_datagram_size(config.upstream_socket_config) \
            if config.upstream_socket_config.HasField("max_rx_datagram_size") else 65535
        p = "udp.%s." % config.stat_prefix
        stats = ctx.stats
        for n in _COUNTERS:
            setattr(self, n, stats.counter(p + n))
        self.downstream_sess_active = stats.gauge(p + "downstream_sess_active")
        self.sessions: dict = {}
        self._cluster_stats: dict = {}

    def on_datagram(self, listener, data: bytes, addr) -> None:
        session = self.sessions.get(addr)
        if session is None:
            session = self._open(listener, addr)
            if session is None:
                return                    # not counted as received (Envoy 1.40, observed)
        self.downstream_sess_rx_datagrams.inc()
        self.downstream_sess_rx_bytes.inc(len(data))
        session.to_upstream(data)

    def _open(self, listener, addr):
        cluster = self.ctx.cluster_manager.get(self.cluster_name)
        if cluster is None:
            self.downstream_sess_no_route.inc()
            return None
        host = cluster.choose_host()
        if host is None:
            cluster.stats.upstream_cx_none_healthy.inc()
            return None
        cstats = self._cluster_stats.get(cluster.name)
        if cstats is None or cstats.rx_bytes is not cluster.stats.upstream_cx_rx_bytes_total:
            cstats = self._cluster_stats[cluster.name] = _ClusterUdpStats(cluster)
        ip, port = host.address
        sock = gsocket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.connect((ip, port))
        except OSError:
            sock.close()
            cstats.sess_tx_errors.inc()
            return None
        session = self.sessions[addr] = _Session(self, listener, addr, sock, cstats)
        self.downstream_sess_total.inc()
        self.downstream_sess_active.inc()
        return session

    def ended(self, session, idle: bool) -> None:
        if self.sessions.get(session.addr) is session:
            del self.sessions[session.addr]
            self.downstream_sess_active.dec()
            if idle:
                self.idle_timeout.inc()

    def close(self) -> None:
        for s in list(self.sessions.values()):
            s.close(idle=False)


class _Session:
    __slots__ = ("proxy", "listener", "addr", "sock", "stats", "last", "reader", "closed")

    def __init__(self, proxy, listener, addr, sock, stats):
        self.proxy = proxy
        self.listener = listener
        self.addr = addr
        self.sock = sock
        self.stats = stats
        self.last = time.monotonic()
        self.closed = False
        self.reader = gevent.spawn(self._read)

    def to_upstream(self, data: bytes) -> None:
        self.last = time.monotonic()
        try:
            self.sock.send(data)
        except OSError:
            self.stats.sess_tx_errors.inc()
            return
        self.stats.sess_tx_datagrams.inc()
        self.stats.tx_bytes.inc(len(data))

    def _read(self) -> None:
        proxy, stats, sock = self.proxy, self.stats, self.sock
        limit = proxy.max_rx
        while not self.closed:
            wait = self.last + proxy.idle_s - time.monotonic()
            if wait <= 0:
                self.close(idle=True)
                return
            sock.settimeout(wait)
            try:
                data = sock.recv(limit + 1)
            except (socket.timeout, TimeoutError):
                continue
            except OSError:              # ICMP port unreachable on a connected socket
                if self.closed:
                    return
                stats.sess_rx_errors.inc()
                continue
            self.last = time.monotonic()
            if len(data) > limit:
                stats.sess_rx_datagrams_dropped.inc()
                continue
            stats.sess_rx_datagrams.inc()
            stats.rx_bytes.inc(len(data))
            if self.listener.send(data, self.addr):
                proxy.downstream_sess_tx_datagrams.inc()
                proxy.downstream_sess_tx_bytes.inc(len(data))
            else:
                proxy.downstream_sess_tx_errors.inc()

    def close(self, idle: bool) -> None:
        if self.closed:
            return
        self.closed = True
        self.proxy.ended(self, idle)
        try:
            self.sock.close()
        except OSError:
            pass
        if gevent.getcurrent() is not self.reader:
            self.reader.kill(block=False)


def create(config, ctx) -> UdpProxy:
    return UdpProxy(config, ctx)
