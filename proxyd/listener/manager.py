"""A worker's listeners: accept on the inherited sockets, pick the filter chain, hand
the connection to its network filter. Config swaps are atomic per connection: a
connection keeps the filter chain it was accepted with."""
from __future__ import annotations

import itertools
import socket
import time

from gevent.server import StreamServer

from proxyd import registry
from proxyd.config import unpack

_conn_ids = itertools.count(1)
IDLE_GRACE = 1.0


def listener_stat_name(config) -> str:
    """Envoy's `listener.<address>.` scope: `127.0.0.1_10000`."""
    sa = config.address.socket_address
    return "listener.%s_%d." % (sa.address, sa.port_value)


class DownstreamConnection:
    __slots__ = ("sock", "id", "remote_address", "remote_ip", "local_address", "scheme",
                 "listener", "protocol")

    def __init__(self, sock, addr, listener):
        self.sock = sock
        self.id = next(_conn_ids)
        self.remote_ip = addr[0]
        self.remote_address = "%s:%d" % (addr[0], addr[1])
        self.local_address = listener.address
        self.scheme = "http"
        self.listener = listener
        self.protocol = None  # the codec connection, so draining can close it when idle

    @property
    def draining(self) -> bool:
        return self.listener.draining


class FilterChain:
    def __init__(self, config, ctx):
        self.filters = [registry.factory(f.typed_config.type_url).create(unpack(f.typed_config), ctx)
                        for f in config.filters]


class ActiveListener:
    def __init__(self, config, sock, ctx):
        self.name = config.name
        self.ctx = ctx
        sa = config.address.socket_address
        self.address = "%s:%d" % (sa.address, sa.port_value)
        self.draining = False
        self.connections: set[DownstreamConnection] = set()
        stats = ctx.stats
        p = listener_stat_name(config)
        self.cx_total = stats.counter(p + "downstream_cx_total")
        self.cx_destroy = stats.counter(p + "downstream_cx_destroy")
        self.cx_active = stats.gauge(p + "downstream_cx_active")
        self.cx_length = stats.histogram(p + "downstream_cx_length_ms")
        self.no_chain = stats.counter(p + "no_filter_chain_match")
        self.server_total = stats.counter("server.total_connections_accepted")
        self.config = None
        self.chains: list[FilterChain] = []
        self.update(config)
        self.server = StreamServer(sock, self._handle)
        if ctx.concurrency > 1:
            self.server.max_accept = 1  # share accepts fairly between worker processes
        self.server.start()

    def update(self, config) -> None:
        """New connections use the new filter chains; existing ones keep theirs."""
        self.config = config
        self.chains = [FilterChain(fc, self.ctx) for fc in config.filter_chains]

    def _handle(self, sock, addr) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        chains = self.chains
        if not chains:
            self.no_chain.inc()
            sock.close()
            return
        conn = DownstreamConnection(sock, addr, self)
        self.connections.add(conn)
        self.cx_total.inc()
        self.cx_active.inc()
        t0 = time.monotonic()
        try:
            for f in chains[0].filters:
                f.on_connection(conn)
        finally:
            self.connections.discard(conn)
            self.cx_active.dec()
            self.cx_destroy.inc()
            self.cx_length.record((time.monotonic() - t0) * 1000.0)
            try:
                sock.close()
            except OSError:
                pass

    def drain(self) -> None:
        """Stop accepting; idle connections close now, busy ones after their response."""
        self.draining = True
        self.server.close()

    def close_idle(self, min_idle: float = IDLE_GRACE) -> None:
        """Close keep-alive connections idle for `min_idle` seconds. A connection that
        just finished a response is not closed at once: its client may be sending the
        next request right now (a race that fails the request); it gets
        `Connection: close` on that response instead."""
        now = time.monotonic()
        for conn in list(self.connections):
            proto = conn.protocol
            if proto is None or (proto.idle and now - proto.idle_since >= min_idle):
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
