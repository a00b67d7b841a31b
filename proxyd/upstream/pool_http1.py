"""Per-worker, per-host pool of idle HTTP/1.1 upstream connections (keep-alive).

An idle connection owes nothing: any byte or FIN that arrives on it means it cannot
carry another exchange (stray bytes would be read as the next request's answer). As in
Envoy, whose codec keeps the read side armed while a connection is idle, the pool
watches each idle socket and drops it the moment it turns readable, and checks it once
more when it is taken for reuse.
"""
from __future__ import annotations

import socket
import ssl
import time
from collections import deque

from gevent import get_hub
from gevent import ssl as gssl

QUIET, EOF, DATA = 0, 1, 2


class UpstreamConnection:
    __slots__ = ("sock", "host", "cluster", "last_used", "local_address", "reused", "_watch")

    def __init__(self, sock, host, cluster):
        self.sock = sock
        self.host = host
        self.cluster = cluster
        self.last_used = time.monotonic()
        self.reused = False
        self._watch = None  # read watcher while idle in a pool
        try:
            ip, port = sock.getsockname()[:2]
            self.local_address = "%s:%d" % (ip, port)
        except OSError:
            self.local_address = None

    def watch(self, callback) -> None:
        """Call `callback(self)` from the loop when the socket turns readable."""
        w = self._watch
        if w is None:
            w = self._watch = get_hub().loop.io(self.sock.fileno(), 1)
        w.start(callback, self)

    def unwatch(self) -> None:
        if self._watch is not None:
            self._watch.stop()

    def close(self) -> None:
        """Close and account for it; idempotent."""
        if self._watch is not None:
            self._watch.close()  # before the fd can be reused by another socket
            self._watch = None
        if self.sock is not None:
            try:
                self.sock.close()
            finally:
                self.sock = None
                self.host.cx_active.dec()
                self.cluster.stats.upstream_cx_active.dec()


class Http1Pool:
    __slots__ = ("host", "cluster", "_idle", "idle_timeout", "max_idle")

    def __init__(self, host, cluster, idle_timeout: float, max_idle: int = 256):
        self.host = host
        self.cluster = cluster
        self._idle: deque = deque()
        self.idle_timeout = idle_timeout
        self.max_idle = max_idle

    def acquire(self) -> UpstreamConnection:
        """An idle live connection, else a new one (raises UpstreamConnectError)."""
        idle = self._idle
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            conn.unwatch()
            if now - conn.last_used < self.idle_timeout:
                # The watcher may not have run yet for bytes that arrived this loop turn.
                state = idle_state(conn.sock)
                if state == QUIET:
                    conn.reused = True
                    return conn
                self._discard(conn, state)
            else:
                conn.close()
        return UpstreamConnection(self.cluster.connect(self.host), self.host, self.cluster)

    def release(self, conn: UpstreamConnection) -> None:
        if conn.sock is None:
            return
        if len(self._idle) >= self.max_idle or self.cluster.removed:
            conn.close()
            return
        conn.last_used = time.monotonic()
        self._idle.append(conn)
        conn.watch(self._readable)

    def _readable(self, conn: UpstreamConnection) -> None:
        """Loop callback: an idle connection turned readable (FIN or stray bytes)."""
        state = idle_state(conn.sock)
        if state == QUIET:
            return  # e.g. a TLS record with no application data in it
        try:
            self._idle.remove(conn)
        except ValueError:
            pass
        self._discard(conn, state)

    def _discard(self, conn: UpstreamConnection, state: int) -> None:
        """Close a connection that cannot be reused, counted as Envoy counts it: the
        upstream closed it (`destroy_remote`), or sent bytes no request asked for
        (a codec protocol error, closed locally)."""
        stats = self.cluster.stats
        conn.close()
        if state == EOF:
            stats.upstream_cx_destroy_remote.inc()
        else:
            stats.upstream_cx_protocol_error.inc()
            stats.upstream_cx_destroy_local.inc()

    def close_idle(self) -> None:
        while self._idle:
            self._idle.pop().close()


def idle_state(sock) -> int:
    """QUIET, EOF or DATA for a connection that owes nothing, without blocking: one
    non-blocking peek (a read for TLS, whose records may carry no application data)."""
    if isinstance(sock, (gssl.SSLSocket, ssl.SSLSocket)):
        timeout = sock.gettimeout()
        sock.settimeout(0.0)
        try:
            return DATA if sock.recv(1) else EOF
        except (ssl.SSLWantReadError, BlockingIOError):
            return QUIET
        except OSError:
            return EOF
        finally:
            sock.settimeout(timeout)
    try:
        # the raw socket: gevent's wrapper would wait for readability instead
        data = getattr(sock, "_sock", sock).recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except BlockingIOError:
        return QUIET
    except OSError:
        return EOF
    return DATA if data else EOF
