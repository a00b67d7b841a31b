"""A worker's listeners: accept on the inherited sockets, pick the filter chain, hand
the connection to its network filter. Config swaps are atomic per connection: a
connection keeps the filter chain it was accepted with."""
from __future__ import annotations

import itertools
import socket
import time

import gevent

from proxyd import registry
from proxyd.proto import unpack
from proxyd.http.message import StreamInfo
from proxyd.listener.acceptor import RESOURCE_ERRORS, Acceptor
from proxyd.listener.filter_chain import Selector
from proxyd.listener.limits import ListenerLimits
from proxyd.listener.udp import UdpListener
from proxyd.master.sockets import is_udp
from proxyd.network.connection import FilterChainConnection
from proxyd.observability.access_log import build_access_logs
from proxyd.transport import secrets
from proxyd.transport.tls import (DEFAULT_HANDSHAKE_TIMEOUT, SecretsNotReady, peer_has_certificate,
                                  server_tls)

_conn_ids = itertools.count(1)
# A draining keep-alive connection is closed only after this long idle: its client may be
# sending the next request right now (closing would fail that request), and a client
# starved of CPU during a reload can take over a second (seen once in ~20k requests at 1 s).
IDLE_GRACE = 2.5


def listener_stat_name(config) -> str:
    """Envoy's `listener.<address>.` scope: `127.0.0.1_10000`."""
    sa = config.address.socket_address
    return "listener.%s_%d." % (sa.address, sa.port_value)


class DownstreamConnection:
    __slots__ = ("sock", "id", "remote_address", "remote_ip", "local_address", "scheme",
                 "listener", "protocol", "alpn", "transport_protocol", "requested_server_name",
                 "requested_alpn", "local_port", "generation", "direct_remote_address",
                 "original_dst", "dynamic_metadata", "http_requests", "hcm_draining")

    def __init__(self, sock, addr, listener):
        self.sock = sock
        self.id = next(_conn_ids)
        self.remote_ip = addr[0]
        self.remote_address = "%s:%d" % (addr[0], addr[1])
        # the physical peer; remote_address may be replaced (proxy_protocol) but not this
        self.direct_remote_address = self.remote_address
        self.local_address = listener.address
        # (ip, port) when a listener filter restored the local address (original_dst,
        # proxy_protocol): Envoy's localAddressRestored(), what ORIGINAL_DST clusters use
        self.original_dst = None
        self.dynamic_metadata = None      # set by listener filters (proxy_protocol rules)
        self.scheme = "http"
        self.listener = listener
        self.protocol = None  # the codec connection, so draining can close it when idle
        self.alpn = None                  # protocol negotiated by TLS ALPN ("h2", ...)
        self.transport_protocol = ""      # "tls" when tls_inspector saw a ClientHello
        self.requested_server_name = ""   # SNI, from tls_inspector
        self.requested_alpn = ()          # ALPN offered by the client, from tls_inspector
        self.local_port = listener.port
        self.generation = listener.generation  # the listener config it was accepted under
        self.http_requests = 0       # HCM: streams so far (max_requests_per_connection)
        # HCM: max_requests_per_connection / max_connection_duration reached: HTTP/1
        # responses say Connection: close (not a listener drain: no drain_close counted)
        self.hcm_draining = False

    def set_dynamic_metadata(self, namespace: str, values: dict) -> None:
        if self.dynamic_metadata is None:
            self.dynamic_metadata = {}
        self.dynamic_metadata.setdefault(namespace, {}).update(values)

    @property
    def draining(self) -> bool:
        """The listener drains, or its config changed since this connection came in."""
        listener = self.listener
        return listener.draining or self.generation != listener.generation


class FilterChain:
    """A filter chain's network filters, built through the registry. The HTTP connection
    manager or tcp_proxy alone serves the connection in its own loop (`on_connection`);
    any other chain runs through a `FilterManager`, each extension's `create()` having
    returned a factory that adds its filters to it. A chain ending in the HCM (filters in
    front of it) is driven by the HCM's codec loop reading through the chain
    (`serve_pulled`); the others by the manager's own read loop (`serve`)."""

    def __init__(self, config, ctx):
        self.filters = [registry.factory(f.typed_config.type_url).create(unpack(f.typed_config), ctx)
                        for f in config.filters]
        only = self.filters[0] if len(self.filters) == 1 else None
        self.on_connection = getattr(only, "on_connection", None)
        if self.on_connection is None:
            self.on_connection = self._serve_pulled \
                if self.filters and getattr(self.filters[-1], "pulls_from_chain", False) \
                else self._serve_managed
        self.tls = server_tls(config.transport_socket) if config.HasField("transport_socket") \
            else None
        t = config.transport_socket_connect_timeout
        self.handshake_timeout = (t.seconds + t.nanos / 1e9) \
            if config.HasField("transport_socket_connect_timeout") else DEFAULT_HANDSHAKE_TIMEOUT

    def _serve_managed(self, conn) -> None:
        FilterChainConnection(conn, self.filters).serve()

    def _serve_pulled(self, conn) -> None:
        FilterChainConnection(conn, self.filters).serve_pulled()


class SslStats:
    """`listener.<address>.ssl.*`, created only for listeners with a TLS chain."""

    def __init__(self, stats, prefix: str):
        p = prefix + "ssl."
        self.handshake = stats.counter(p + "handshake")
        self.connection_error = stats.counter(p + "connection_error")
        self.no_certificate = stats.counter(p + "no_certificate")
        self.fail_verify_no_cert = stats.counter(p + "fail_verify_no_cert")
        f = prefix + "server_ssl_socket_factory."
        self.secrets_not_ready = stats.counter(f + "downstream_context_secrets_not_ready")
        stats.counter(f + "upstream_context_secrets_not_ready")
        stats.counter(f + "ssl_context_update_by_sds")   # counted by the master (dynamic.py)


class ActiveListener:
    def __init__(self, config, sock, ctx):
        self.name = config.name
        self.ctx = ctx
        sa = config.address.socket_address
        self.address = "%s:%d" % (sa.address, sa.port_value)
        self.port = sa.port_value
        self.draining = False
        self.generation = 0
        self.connections: set[DownstreamConnection] = set()
        stats = ctx.stats
        p = listener_stat_name(config)
        self.cx_total = stats.counter(p + "downstream_cx_total")
        self.cx_destroy = stats.counter(p + "downstream_cx_destroy")
        self.cx_active = stats.gauge(p + "downstream_cx_active")
        self.cx_length = stats.histogram(p + "downstream_cx_length_ms")
        self.no_chain = stats.counter(p + "no_filter_chain_match")
        # Every accepted connection, on every listener (not an Envoy 1.40 stat: Envoy has
        # only the server.total_connections gauge, which admin sets from the listeners').
        self.server_total = stats.counter("server.total_connections_accepted")
        self.stat_prefix = p
        self.limits = ListenerLimits(ctx, config, p, self.cx_active)
        self.ssl_stats = None
        self.config = None
        self.chains: list[FilterChain] = []
        self.selector = None
        self.listener_filters: list = []
        self.listener_filters_timeout = 15.0
        self.continue_on_listener_filters_timeout = False
        self.update(config)
        self.server = Acceptor(sock, self._handle, self.name)
        if ctx.concurrency > 1:
            self.server.max_accept = 1  # share accepts fairly between worker processes
        self.server.start()

    def update(self, config) -> None:
        """New connections use the new filter chains; connections on the old ones drain
        (as Envoy does for a modified listener): Connection: close / GOAWAY on their next
        response, idle ones closed, the rest closed at the drain deadline.

        A change of SDS secrets alone (proxyd/transport/secrets.py) is no listener change:
        new connections handshake with the new certificates, open ones go on, as Envoy's
        ssl_context_update_by_sds."""
        if self.config is not None and secrets.uses_sds(config) and \
                secrets.strip_material(config) == secrets.strip_material(self.config):
            chains = list(config.filter_chains)
            if config.HasField("default_filter_chain"):
                chains.append(config.default_filter_chain)
            built = self.chains + ([self.selector.default] if self.selector.default else [])
            for fc, chain in zip(chains, built):
                chain.tls = server_tls(fc.transport_socket) if fc.HasField("transport_socket") \
                    else None
            self.config = config
            return
        if self.config is not None:
            self.generation += 1
            gevent.spawn(self._drain_generation, self.generation)
        self.config = config
        self.limits.update(config)
        self.chains = [FilterChain(fc, self.ctx) for fc in config.filter_chains]
        default = FilterChain(config.default_filter_chain, self.ctx) \
            if config.HasField("default_filter_chain") else None
        self.selector = Selector([(fc.filter_chain_match, c)
                                  for fc, c in zip(config.filter_chains, self.chains)], default)
        self.listener_filters = [registry.factory(f.typed_config.type_url)
                                 .create(unpack(f.typed_config), self.ctx)
                                 for f in config.listener_filters]
        t = config.listener_filters_timeout
        self.listener_filters_timeout = (t.seconds + t.nanos / 1e9) \
            if config.HasField("listener_filters_timeout") else 15.0
        self.continue_on_listener_filters_timeout = config.continue_on_listener_filters_timeout
        self.access_logs = build_access_logs(config.access_log, self.ctx) if config.access_log else []
        if self.ssl_stats is None and any(c.tls for c in self.chains + [default] if c):
            self.ssl_stats = SslStats(self.ctx.stats, self.stat_prefix)

    def _handle(self, sock, addr) -> None:
        self.server_total.inc()
        limits = self.limits
        if not limits.admit():
            sock.close()
            return
        counted_global = not limits.ignore_global
        try:
            self._serve(sock, addr)
        except OSError as e:
            if e.errno not in RESOURCE_ERRORS:
                raise
            self.server.exhausted(e, "connection")   # the connection is closed already
        finally:
            limits.release(counted_global)

    def _serve(self, sock, addr) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        selector = self.selector
        access_logs = self.access_logs
        if selector is None or (not self.chains and selector.default is None):
            self.no_chain.inc()
            sock.close()
            if access_logs:
                self._log_connection(access_logs, DownstreamConnection(sock, addr, self), None)
            return
        conn = DownstreamConnection(sock, addr, self)
        self.connections.add(conn)
        t0 = time.monotonic()
        chain = None
        counted = False
        try:
            chain = self._select_chain(conn, selector)
            if chain is None:
                return
            # Envoy counts a connection once its listener filters are done and a chain
            # is found (a connection they reject or that matches no chain is not one)
            counted = True
            self.cx_total.inc()
            self.cx_active.inc()
            if chain.tls is None or self._handshake(conn, chain):
                chain.on_connection(conn)
        finally:
            self.connections.discard(conn)
            if counted:
                self.cx_active.dec()
                self.cx_destroy.inc()
                self.cx_length.record((time.monotonic() - t0) * 1000.0)
            try:
                conn.sock.close()
            except OSError:
                pass
            if access_logs:
                self._log_connection(access_logs, conn, chain, t0)

    @staticmethod
    def _log_connection(access_logs, conn, chain, t0: float | None = None) -> None:
        """listener.access_log: one entry per downstream connection when it closes,
        flagged NR when no filter chain matched (as Envoy's listener logs)."""
        info = StreamInfo(conn.id, conn.remote_address, conn.local_address, "",
                          conn.direct_remote_address)
        if conn.dynamic_metadata:
            info._dynamic_metadata = {k: dict(v) for k, v in conn.dynamic_metadata.items()}
        info.end_mono = now = time.monotonic()
        if t0 is not None:  # the connection was accepted at t0, not now
            info.start_mono = t0
            info.start_time -= now - t0
        if chain is None:
            info.response_flags.append("NR")
            info.response_code_details = "filter_chain_not_found"
        for log in access_logs:
            log.log(info)

    def _select_chain(self, conn, selector):
        """Listener filters (bounded by listener_filters_timeout), then filter_chain_match."""
        if self.listener_filters:
            ok = True
            with gevent.Timeout(self.listener_filters_timeout or None, False):
                for lf in self.listener_filters:
                    if not lf.on_accept(conn):
                        return None
                ok = None
            if ok is not None and not self.continue_on_listener_filters_timeout:
                return None
        chain = selector.select(conn.local_port, conn.requested_server_name, conn.transport_protocol,
                                conn.requested_alpn)
        if chain is None:
            self.no_chain.inc()
        return chain

    def _handshake(self, conn, chain) -> bool:
        """TLS server handshake; on success conn.sock is the TLS socket."""
        ssl_stats = self.ssl_stats
        try:
            ssock = chain.tls.wrap(conn.sock, chain.handshake_timeout)
        except SecretsNotReady:
            ssl_stats.secrets_not_ready.inc()
            return False
        except Exception as e:  # noqa: BLE001 - ssl, socket and timeout errors alike
            ssl_stats.connection_error.inc()
            if "PEER_DID_NOT_RETURN_A_CERTIFICATE" in str(e) or \
                    "peer did not return a certificate" in str(e):
                ssl_stats.fail_verify_no_cert.inc()
            return False
        conn.sock = ssock
        conn.scheme = "https"
        conn.alpn = ssock.selected_alpn_protocol()
        ssl_stats.handshake.inc()
        if not peer_has_certificate(ssock):
            ssl_stats.no_certificate.inc()
        return True

    def drain(self) -> None:
        """Stop accepting; idle connections close now, busy ones after their response."""
        self.draining = True
        self.server.close()
        for conn in list(self.connections):
            on_drain = getattr(conn.protocol, "on_drain", None)
            if on_drain is not None:
                on_drain()  # HTTP/2: GOAWAY now, close after the streams in flight

    def _drain_generation(self, current: int) -> None:
        """Drain the connections accepted before config generation `current`."""
        old = [c for c in self.connections if c.generation < current]
        for conn in old:
            on_drain = getattr(conn.protocol, "on_drain", None)
            if on_drain is not None:
                on_drain()
        deadline = time.monotonic() + self.ctx.drain_time_s
        while time.monotonic() < deadline:
            self.close_idle(before=current)
            if not any(c.generation < current for c in self.connections):
                return
            gevent.sleep(0.1)
        for conn in list(self.connections):
            if conn.generation < current:
                try:
                    conn.sock.close()
                except OSError:
                    pass

    def close_idle(self, min_idle: float = IDLE_GRACE, before: int | None = None) -> None:
        """Close keep-alive connections idle for `min_idle` seconds (only those accepted
        before config generation `before`, if given). A connection that just finished a
        response is not closed at once: its client may be sending the next request right
        now (a race that fails the request); it gets `Connection: close` on that
        response instead. A connection with no codec yet (just accepted: listener
        filters, TLS, the h2 preface sniff) or none at all (tcp_proxy) is never idle:
        its client has just connected to send something, so it is answered or closed at
        the drain deadline, as Envoy does."""
        now = time.monotonic()
        for conn in list(self.connections):
            if before is not None and conn.generation >= before:
                continue
            proto = conn.protocol
            if proto is not None and proto.idle and now - proto.idle_since >= min_idle:
                try:
                    conn.sock.close()
                except OSError:
                    pass


class ListenerManager:
    def __init__(self, ctx):
        self.ctx = ctx
        self.listeners: dict[str, ActiveListener] = {}

    def apply(self, configs: list, sockets: dict) -> None:
        """`configs`: Listener messages now in force; `sockets`: listening sockets for
        listeners this worker has not seen before, by name."""
        seen = set()
        for cfg in configs:
            seen.add(cfg.name)
            cur = self.listeners.get(cfg.name)
            if cur is None:
                sock = sockets.get(cfg.name)
                if sock is None:
                    continue
                if is_udp(cfg.address.socket_address):
                    if self.ctx.worker_index != 0:   # listener/udp.py: one worker reads it
                        sock.close()
                        continue
                    self.listeners[cfg.name] = UdpListener(cfg, sock, self.ctx,
                                                           listener_stat_name(cfg))
                    continue
                self.listeners[cfg.name] = ActiveListener(cfg, sock, self.ctx)
            elif cur.config != cfg:
                cur.update(cfg)
        for name in list(self.listeners):
            if name not in seen:
                self.listeners.pop(name).drain()

    def drain(self) -> None:
        for al in self.listeners.values():
            al.drain()

    def active_connections(self) -> int:
        return sum(len(al.connections) for al in self.listeners.values())
