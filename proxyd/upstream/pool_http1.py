"""Per-worker, per-host pool of idle HTTP/1.1 upstream connections (keep-alive)."""
from __future__ import annotations

import socket
import time
from collections import deque


FRESH = 1.0


class UpstreamConnection:
    __slots__ = ("sock", "host", "cluster", "last_used", "local_address", "reused")

    def __init__(self, sock, host, cluster):
        self.sock = sock
        self.host = host
        self.cluster = cluster
        self.last_used = time.monotonic()
        self.reused = False
        try:
            ip, port = sock.getsockname()[:2]
            self.local_address = "%s:%d" % (ip, port)
        except OSError:
            self.local_address = None

    def close(self) -> None:
        """Close and account for it; idempotent."""
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
            age = now - conn.last_used
            # A connection used within the last second is taken on trust (saves a
            # syscall per request); if the upstream closed it anyway, the router
            # retries a bodiless request once on a fresh connection.
            if age < self.idle_timeout and (age < FRESH or _alive(conn.sock)):
                conn.reused = True
                return conn
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

    def close_idle(self) -> None:
        while self._idle:
            self._idle.pop().close()


def _alive(sock) -> bool:
    """An idle keep-alive connection is reusable only if the upstream has not closed it
    (or sent stray bytes): one non-blocking peek, cheaper than a failed request."""
    try:
        # the raw socket: gevent's wrapper would wait for readability instead
        getattr(sock, "_sock", sock).recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except BlockingIOError:
        return True
    except OSError:
        pass
    return False
