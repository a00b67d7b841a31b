"""A cluster as a worker sees it: hosts, load balancer, per-host pools, Envoy's stats."""
from __future__ import annotations

import errno
import socket
import time

import gevent
from gevent import socket as gsocket

from proxyd.transport.tls import SecretsNotReady, client_tls
from proxyd.upstream.host import Host
from proxyd.upstream import health, lb, outlier
from proxyd.upstream.pool_http1 import Http1Pool
from proxyd.upstream.pool_http2 import Http2Pool, cluster_common_http_options, cluster_http2_options
from proxyd.upstream.resource_manager import resource_managers

DEFAULT_CONNECT_TIMEOUT = 5.0
DEFAULT_IDLE_TIMEOUT = 3600.0


class UpstreamConnectError(Exception):
    def __init__(self, host, timeout: bool, reason: str):
        super().__init__(reason)
        self.host = host
        self.timeout = timeout
        self.reason = reason


class ClusterStats:
    """`cluster.<name>.*` handles; response-code counters are created on first use."""

    _COUNTERS = ("upstream_cx_total", "upstream_cx_connect_fail", "upstream_cx_connect_timeout",
                 "upstream_cx_destroy_local", "upstream_cx_destroy_remote",
                 "upstream_cx_protocol_error", "upstream_cx_overflow",
                 "upstream_cx_pool_overflow", "upstream_rq_pending_total",
                 "upstream_rq_pending_overflow", "upstream_rq_active_overflow",
                 "upstream_rq_retry_overflow", "upstream_rq_total", "upstream_rq_completed", "upstream_rq_timeout",
                 "upstream_rq_rx_reset", "upstream_rq_tx_reset", "upstream_rq_retry",
                 "upstream_rq_retry_success", "upstream_rq_retry_limit_exceeded",
                 "upstream_rq_retry_backoff_exponential", "upstream_rq_per_try_timeout",
                 "retry_or_shadow_abandoned",
                 "upstream_cx_rx_bytes_total", "upstream_cx_tx_bytes_total",
                 "membership_change", "upstream_cx_none_healthy",
                 "upstream_cx_connect_attempts_exceeded", "original_dst_host_invalid",
                 "upstream_rq_max_duration_reached", "upstream_cx_max_requests",
                 "upstream_cx_max_duration_reached", "upstream_cx_idle_timeout",
                 # Envoy's load-balancer counters (zone-aware routing needs a local cluster,
                 # which proxyd has not: those stay 0, as in Envoy without one)
                 "lb_healthy_panic", "lb_local_cluster_not_ok", "lb_recalculate_zone_structures",
                 "lb_zone_cluster_too_small", "lb_zone_no_capacity_left",
                 "lb_zone_routing_all_directly",
                 "lb_zone_routing_cross_zone", "lb_zone_routing_sampled")
    _GAUGES = ("upstream_cx_active", "upstream_rq_active", "upstream_rq_pending_active",
               "membership_total",
               "membership_healthy")

    def __init__(self, store, name: str):
        self._store = store
        self._prefix = prefix = "cluster.%s." % name
        for n in self._COUNTERS:
            setattr(self, n, store.counter(prefix + n))
        for n in self._GAUGES:
            setattr(self, n, store.gauge(prefix + n))
        self.upstream_cx_connect_ms = store.histogram(prefix + "upstream_cx_connect_ms")
        self.upstream_rq_time = store.histogram(prefix + "upstream_rq_time")
        self._codes: dict = {}

    def response(self, status: int):
        """Counters for `upstream_rq_<code>` and `upstream_rq_<N>xx`."""
        pair = self._codes.get(status)
        if pair is None:
            c = self._store.counter
            pair = self._codes[status] = (c("%supstream_rq_%d" % (self._prefix, status)),
                                          c("%supstream_rq_%dxx" % (self._prefix, status // 100)))
        return pair

    def retried_response(self, status: int):
        """Counters for `retry.upstream_rq_<code>` and `retry.upstream_rq_<N>xx`: responses
        that were retried instead of sent downstream."""
        key = -status
        pair = self._codes.get(key)
        if pair is None:
            c = self._store.counter
            pair = self._codes[key] = (
                c("%sretry.upstream_rq_%d" % (self._prefix, status)),
                c("%sretry.upstream_rq_%dxx" % (self._prefix, status // 100)))
        return pair


class Cluster:
    def __init__(self, config, endpoints: list, store, membership: bool = True):
        """`config`: envoy.config.cluster.v3.Cluster; `endpoints`: resolved
        [(ip, port, weight, hostname)] (the master resolves STRICT_DNS). `membership`:
        whether this process reports membership_{total,healthy,change}; every worker holds
        the same hosts, and the stats sum over processes, so only one worker may."""
        self.name = config.name
        self.membership = membership
        self.config = config
        self.removed = False
        self._store = store
        self.stats = ClusterStats(store, self.name)
        managers = resource_managers(config, store)
        self.resources = managers["default"]  # routes cannot ask for the high priority
        self._resource_managers = managers.values()
        ct = config.connect_timeout
        self.connect_timeout = (ct.seconds + ct.nanos / 1e9) if config.HasField("connect_timeout") \
            else DEFAULT_CONNECT_TIMEOUT
        self.idle_timeout = DEFAULT_IDLE_TIMEOUT   # None: idle connections never expire
        self.idle_timer = False   # a configured idle_timeout: HTTP/1 idle connections get a timer
        self.max_stream_duration = None           # per upstream request (UMSDR)
        self.max_requests_per_connection = 0      # 0: no limit
        self.max_connection_duration = None
        common = cluster_common_http_options(config)
        if common is not None:  # HttpProtocolOptions.common_http_protocol_options
            if common.HasField("idle_timeout"):
                t = common.idle_timeout
                self.idle_timeout = (t.seconds + t.nanos / 1e9) or None
                self.idle_timer = self.idle_timeout is not None
            if common.HasField("max_stream_duration"):
                t = common.max_stream_duration
                self.max_stream_duration = (t.seconds + t.nanos / 1e9) or None
            if common.HasField("max_connection_duration"):
                t = common.max_connection_duration
                self.max_connection_duration = (t.seconds + t.nanos / 1e9) or None
            if common.HasField("max_requests_per_connection"):
                self.max_requests_per_connection = common.max_requests_per_connection.value
        self.http2_mode, self.http2_options = cluster_http2_options(config)
        self.tls = client_tls(config)
        if self.tls is not None:
            self.ssl_handshake = store.counter("cluster.%s.ssl.handshake" % self.name)
            self.ssl_connection_error = store.counter("cluster.%s.ssl.connection_error" % self.name)
            f = "cluster.%s.client_ssl_socket_factory." % self.name
            self.secrets_not_ready = store.counter(f + "upstream_context_secrets_not_ready")
            store.counter(f + "downstream_context_secrets_not_ready")
            store.counter(f + "ssl_context_update_by_sds")   # counted by the master (dynamic.py)
        # health words are the master's (proxyd/master/health.py); a tracked cluster's
        # membership_healthy is the master's too, since its hosts' health changes
        # between snapshots
        self.tracked = health.tracks_health(config)
        self.outlier = (outlier.Config(config.outlier_detection)
                        if config.HasField("outlier_detection") else None)
        self.hosts: list[Host] = []
        self.lb = lb.ClusterLb(config, [], store, self.stats, membership)
        self.original_dst = None
        if config.type == config.ORIGINAL_DST:
            from proxyd.upstream.original_dst import OriginalDstHosts
            self.original_dst = OriginalDstHosts(self, config)
        self.update_hosts(endpoints)

    def new_host(self, ip: str, port: int, weight: int, hostname: str) -> Host:
        h = Host(ip, port, weight, hostname, self._store, self.name)
        h.pool = Http1Pool(h, self, self.idle_timeout)
        if self.http2_mode is not None:
            h.h2pool = Http2Pool(h, self, self.http2_options)
        if self.config.health_checks:
            h.hc_fail = self._store.counter(health.passive_fail_name(self.name, h.addr_str))
        if self.outlier is not None:
            h.outlier = outlier.HostReporter(self._store, self.name, h.addr_str, self.outlier)
        return h

    def set_hosts(self, hosts: list, changed: bool, placed: list | None = None) -> None:
        """`placed`: (host, priority, locality) of each host, all priority 0 if None."""
        if self.membership:
            if changed:
                self.stats.membership_change.inc()
            self.stats.membership_total.set(len(hosts))
            if not self.tracked:
                self.stats.membership_healthy.set(
                    sum(1 for h in hosts if not h.health_flags() & health.NOT_COUNTED_HEALTHY))
        self.hosts = hosts
        self.lb.update(placed if placed is not None else [(h, 0, None) for h in hosts])

    def update_hosts(self, endpoints: list) -> None:
        """Swap membership; pools of hosts that stay are kept, removed hosts' idle
        connections close (in-flight ones finish on their own). An endpoint is
        (ip, port, weight, hostname[, priority, locality]): see proxyd.master.endpoints."""
        if self.original_dst is not None:
            return          # its hosts come from connections, not from endpoints
        old = {h.key: h for h in self.hosts}
        hosts = []
        placed = []
        for ep in endpoints:
            ip, port, weight, hostname = ep[:4]
            key = ((ip, port), weight, hostname)
            h = old.pop(key, None)
            if h is None:
                h = self.new_host(ip, port, weight, hostname)
            if h.health is None:  # the master made it before sending this snapshot, if any
                h.health = health.find(self._store, self.name, h.addr_str, create=False)
            hosts.append(h)
            placed.append((h, ep[4] if len(ep) > 4 else 0, ep[5] if len(ep) > 5 else None))
        for h in old.values():
            h.pool.close_idle()
            if h.h2pool is not None:
                h.h2pool.close_idle()
        self.set_hosts(hosts, bool(old) or len(hosts) != len(self.hosts), placed)

    def choose_host(self, ctx=None):
        """The load balancer's pick for a request (`ctx`: its lb.LbContext: hash key,
        hosts a retry predicate rejects, the downstream connection and request headers),
        or None (503 UH). An ORIGINAL_DST cluster picks from the downstream connection
        (its restored local address) or the request headers."""
        if self.original_dst is not None:
            return self.original_dst.choose(ctx.downstream if ctx else None,
                                            ctx.headers if ctx else None)
        return self.lb.choose(ctx)

    def connect(self, host, final: bool = False):
        """A new TCP connection to `host` within connect_timeout; counts Envoy's stats.
        `final`: the connection is the whole exchange (tcp_proxy), so its success is
        what the outlier detector hears (Envoy's LocalOriginConnectSuccessFinal)."""
        stats = self.stats
        stats.upstream_cx_total.inc()
        host.cx_total.inc()
        # counted from the start, as in Envoy: a caller's circuit-breaker check and this
        # increment happen with no switch between them
        self.resources.connections.inc()
        try:
            sock = self._connect(host)
        except UpstreamConnectError as e:
            self.resources.connections.dec()
            if host.outlier is not None:
                host.outlier.result(outlier.TIMEOUT if e.timeout else outlier.CONNECT_FAILED)
            raise
        except BaseException:
            self.resources.connections.dec()
            raise
        if host.outlier is not None:
            host.outlier.result(outlier.CONNECT_SUCCESS_FINAL if final else outlier.CONNECT_SUCCESS)
        stats.upstream_cx_active.inc()
        host.cx_active.inc()
        return sock

    def _connect(self, host):
        stats = self.stats
        t0 = time.monotonic()
        ip, port = host.address
        sock = gsocket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET, socket.SOCK_STREAM)
        try:
            # Addresses are IPs (the master resolves names), so no getaddrinfo and no
            # resolver thread in the worker, unlike create_connection.
            sock.settimeout(self.connect_timeout)
            sock.connect((ip, port))
        except (socket.timeout, gevent.Timeout):
            sock.close()
            stats.upstream_cx_connect_fail.inc()
            stats.upstream_cx_connect_timeout.inc()
            host.cx_connect_fail.inc()
            raise UpstreamConnectError(host, True, "connection timeout") from None
        except OSError as e:
            sock.close()
            stats.upstream_cx_connect_fail.inc()
            host.cx_connect_fail.inc()
            reason = "connection refused" if e.errno == errno.ECONNREFUSED else "connection failure"
            raise UpstreamConnectError(host, False, reason) from None
        sock.settimeout(None)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.tls is not None:
            sock = self._tls_handshake(sock, host)
        stats.upstream_cx_connect_ms.record((time.monotonic() - t0) * 1000.0)
        return sock

    def disconnected(self, host) -> None:
        """A connection made by `connect` is closed: the counts it held are released."""
        self.stats.upstream_cx_active.dec()
        host.cx_active.dec()
        self.resources.connections.dec()

    def _tls_handshake(self, sock, host):
        """UpstreamTlsContext handshake within connect_timeout; a failure is a connect
        failure to the caller (503 UF), counted under cluster.<name>.ssl.connection_error."""
        try:
            ssock = self.tls.wrap(sock, self.connect_timeout)
        except SecretsNotReady:
            self.secrets_not_ready.inc()
            raise UpstreamConnectError(host, False, "TLS error: Secret is not supplied by SDS") \
                from None
        except Exception as e:  # noqa: BLE001 - ssl, socket and timeout errors alike
            self.ssl_connection_error.inc()
            raise UpstreamConnectError(host, False, "TLS handshake failed: %s" % e) from None
        self.ssl_handshake.inc()
        return ssock

    def close(self) -> None:
        self.removed = True
        for m in self._resource_managers:
            m.close()
        for h in self.hosts:
            h.pool.close_idle()
            if h.h2pool is not None:
                h.h2pool.close_idle()
