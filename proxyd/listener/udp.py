"""A UDP listener (a Listener whose socket_address has `protocol: UDP`): the master binds
the socket, a worker reads datagrams from it and hands each, with its sender's address,
to the listener's UDP filter (envoy.filters.udp_listener.udp_proxy), which answers
through `send()` from the same socket.

Only worker 0 serves a UDP listener: every worker receives the socket, but datagrams of
one client must reach the one worker that holds its session (Envoy spreads them with
SO_REUSEPORT sockets per worker; proxyd's workers share the master's sockets). A
datagram longer than `udp_listener_config.downstream_socket_config.max_rx_datagram_size`
(default 1500) is dropped and counted in `listener.<address>.udp.downstream_rx_datagram_dropped`,
as in Envoy.
"""
from __future__ import annotations

import gevent
from gevent import socket as gsocket

from proxyd import registry
from proxyd.config import unpack

DEFAULT_MAX_RX_DATAGRAM = 1500


def max_rx_datagram_size(socket_config) -> int:
    v = socket_config.max_rx_datagram_size
    return v.value if socket_config.HasField("max_rx_datagram_size") and v.value \
        else DEFAULT_MAX_RX_DATAGRAM


class UdpListener:
    def __init__(self, config, sock, ctx, stat_prefix: str):
        self.name = config.name
        self.ctx = ctx
        self.sock = gsocket.socket(fileno=sock.detach())
        self.draining = False
        self.connections: set = set()          # none: a drain has nothing to wait for
        self.dropped = ctx.stats.counter(stat_prefix + "udp.downstream_rx_datagram_dropped")
        self.config = None
        self.filter = None
        self.update(config)
        self.reader = gevent.spawn(self._read)

    def update(self, config) -> None:
        """A changed listener: a new filter; the old one's sessions end."""
        old = self.filter
        self.config = config
        self.max_rx = max_rx_datagram_size(
            config.udp_listener_config.downstream_socket_config)
        f = config.listener_filters[0]
        self.filter = registry.factory(f.typed_config.type_url).create(
            unpack(f.typed_config), self.ctx)
        if old is not None:
            old.close()

    def _read(self) -> None:
        sock = self.sock
        while not self.draining:
            try:
                data, addr = sock.recvfrom(self.max_rx + 1)
            except OSError:
                if self.draining:
                    return
                gevent.sleep(0.01)
                continue
            if len(data) > self.max_rx:
                self.dropped.inc()
                continue
            self.filter.on_datagram(self, data, addr)

    def send(self, data: bytes, addr) -> bool:
        try:
            self.sock.sendto(data, addr)
            return True
        except OSError:
            return False

    def drain(self) -> None:
        """Stop reading; sessions end now (UDP has no connection to finish)."""
        self.draining = True
        self.reader.kill(block=False)
        if self.filter is not None:
            self.filter.close()
        try:
            self.sock.close()
        except OSError:
            pass

    def close_idle(self, *args, **kwargs) -> None:
        pass
