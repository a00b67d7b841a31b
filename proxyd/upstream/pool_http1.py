"""Per-worker, per-host pool of idle HTTP/1.1 upstream connections (keep-alive).

An idle connection owes nothing: any byte or FIN that arrives on it means it cannot
carry another exchange (stray bytes would be read as the next request's answer). As in
Envoy, whose codec keeps the read side armed while a connection is idle, the pool
watches each idle socket and drops it the moment it turns readable, and checks it once
more when it is taken for reuse.
"""
from __future__ import annotations

import fcntl
import socket
import ssl
import termios
import time
from collections import deque

from gevent import get_hub
from gevent import ssl as gssl
from gevent.event import AsyncResult

from proxyd.upstream.codec_client_http1 import Http1Stream
from proxyd.upstream.resource_manager import Overflow

QUIET, EOF, DATA = 0, 1, 2
_TLS_SOCKETS = (gssl.SSLSocket, ssl.SSLSocket)
_ZERO = bytearray(4)


class UpstreamConnection:
    __slots__ = ("sock", "host", "cluster", "pool", "last_used", "local_address", "reused",
                 "_watch", "_fionread", "requests", "expired", "_duration", "_idle_timer")

    def __init__(self, sock, host, cluster, pool=None):
        self.sock = sock
        self.host = host
        self.cluster = cluster
        self.pool = pool  # the Http1Pool it belongs to (None for tcp_proxy's)
        self.last_used = time.monotonic()
        self.reused = False
        self.requests = 0   # exchanges it carried (the cluster's max_requests_per_connection)
        self.expired = False  # the cluster's max_connection_duration passed: no reuse
        self._duration = None
        self._idle_timer = None   # a configured idle_timeout, armed while idle in the pool
        self._watch = None  # read watcher while idle in a pool
        self._fionread = bytearray(4)
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

    def reuse_state(self) -> int:
        """QUIET, EOF or DATA, cheaply: the watcher's pending event, else the bytes
        waiting (FIONREAD: a third of a failing MSG_PEEK, which raises). A FIN that came
        after the loop's last poll is not seen here; the router retries a bodiless
        request on a fresh connection then."""
        sock = self.sock
        if (self._watch is not None and self._watch.pending) or isinstance(sock, _TLS_SOCKETS):
            return idle_state(sock)
        buf = self._fionread
        fcntl.ioctl(sock.fileno(), termios.FIONREAD, buf)
        return DATA if buf != _ZERO else QUIET

    def limit_duration(self, seconds: float) -> None:
        """The cluster's max_connection_duration: past it the connection is not reused;
        an idle one closes then (Envoy: upstream_cx_max_duration_reached)."""
        t = self._duration = get_hub().loop.timer(seconds)
        t.start(self._duration_reached)

    def _duration_reached(self) -> None:
        self._duration.close()
        self._duration = None
        if self.sock is None:
            return
        self.expired = True
        stats = self.cluster.stats
        stats.upstream_cx_max_duration_reached.inc()
        pool = self.pool
        if pool is not None and self in pool._idle:
            pool._idle.remove(self)
            self.close()
            stats.upstream_cx_destroy_local.inc()

    def arm_idle(self, seconds: float) -> None:
        t = self._idle_timer
        if t is None:
            t = self._idle_timer = get_hub().loop.timer(seconds)
        else:
            t.stop()
        t.start(self._idle_expired)

    def disarm_idle(self) -> None:
        if self._idle_timer is not None:
            self._idle_timer.stop()

    def _idle_expired(self) -> None:
        """The cluster's idle_timeout passed with the connection idle in its pool."""
        pool = self.pool
        if self.sock is None or pool is None or self not in pool._idle:
            return
        pool._idle.remove(self)
        self.close()
        stats = self.cluster.stats
        stats.upstream_cx_idle_timeout.inc()
        stats.upstream_cx_destroy_local.inc()

    def close(self) -> None:
        """Close and account for it; idempotent."""
        if self._idle_timer is not None:
            self._idle_timer.close()
            self._idle_timer = None
        if self._duration is not None:
            self._duration.close()
            self._duration = None
        if self._watch is not None:
            self._watch.close()  # before the fd can be reused by another socket
            self._watch = None
        if self.sock is not None:
            try:
                self.sock.close()
            finally:
                self.sock = None
                self.cluster.disconnected(self.host)
                if self.pool is not None:
                    self.pool.closed(self)


class Http1Pool:
    """Idle connections, the connections open, and the requests waiting for one.

    Envoy's HTTP/1 pool semantics: a request with no idle connection is pending (within
    the cluster's max_pending_requests) until a connection is free; a new connection is
    made only within max_connections, except that a pool with no connection at all may
    always make one, so that its pending requests can be served."""

    __slots__ = ("host", "cluster", "_idle", "idle_timeout", "max_idle", "_open", "_waiters",
                 "_counted")

    def __init__(self, host, cluster, idle_timeout: float, max_idle: int = 256):
        self.host = host
        self.cluster = cluster
        self._idle: deque = deque()
        self.idle_timeout = idle_timeout
        self.max_idle = max_idle
        self._open = 0                  # connections of this pool, idle or busy
        self._waiters: deque = deque()  # pending requests: AsyncResults waiting for one
        self._counted = False           # counted in the cluster's connection pools

    def new_stream(self) -> Http1Stream:
        """The ConnPool interface (`proxyd/upstream/conn_pool.py`): a connection as in
        `acquire`, attached to one request within the cluster's max_requests."""
        conn = self.acquire()
        requests = self.cluster.resources.requests
        if not requests.can_create():
            self.cluster.stats.upstream_rq_active_overflow.inc()
            self.release(conn)
            raise Overflow()
        requests.inc()
        conn.requests += 1
        limit = self.cluster.max_requests_per_connection
        if limit and conn.requests == limit:  # Envoy counts it when the last one starts
            self.cluster.stats.upstream_cx_max_requests.inc()
        return Http1Stream(self, conn, requests)

    def acquire(self) -> UpstreamConnection:
        """An idle live connection, else a new one, else the next one released (raises
        UpstreamConnectError, or Overflow when a circuit breaker refuses)."""
        conn = self._idle_connection()
        if conn is not None:
            return conn
        cluster = self.cluster
        resources = cluster.resources
        stats = cluster.stats
        if not self._counted:
            if not resources.connection_pools.can_create():
                stats.upstream_cx_pool_overflow.inc()
                raise Overflow()
            resources.connection_pools.inc()
            self._counted = True
        pending = resources.pending_requests
        if not pending.can_create():
            stats.upstream_rq_pending_overflow.inc()
            raise Overflow()
        pending.inc()
        stats.upstream_rq_pending_total.inc()
        stats.upstream_rq_pending_active.inc()
        try:
            while True:
                if self._open == 0 or resources.connections.can_create():
                    self._open += 1
                    try:
                        sock = cluster.connect(self.host)
                    except BaseException:
                        self._open -= 1
                        raise
                    conn = UpstreamConnection(sock, self.host, cluster, self)
                    if cluster.max_connection_duration:
                        conn.limit_duration(cluster.max_connection_duration)
                    return conn
                stats.upstream_cx_overflow.inc()
                conn = self._wait()
                if conn is not None:
                    return conn
        finally:
            pending.dec()
            stats.upstream_rq_pending_active.dec()

    def _idle_connection(self):
        idle = self._idle
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            conn.disarm_idle()
            if self.idle_timeout is None or now - conn.last_used < self.idle_timeout:
                # bytes may have arrived since the loop last polled, or the watcher's
                # callback may still be pending
                state = conn.reuse_state()
                conn.unwatch()
                if state == QUIET:
                    conn.reused = True
                    return conn
                self._discard(conn, state)
            else:
                conn.close()
        return None

    def _wait(self):
        """Wait for a connection handed over by `release`, or None once one closed (so
        a new one may be made)."""
        waiter = AsyncResult()
        self._waiters.append(waiter)
        try:
            return waiter.get()
        except BaseException:  # the route timeout, or the client went away
            if not waiter.ready():
                self._waiters.remove(waiter)
            elif waiter.value is not None:
                self.release(waiter.value)  # handed over just as we were interrupted
            raise

    def release(self, conn: UpstreamConnection) -> None:
        if conn.sock is None:
            return
        if self.cluster.removed:
            conn.close()
            return
        if conn.expired:  # max_connection_duration passed while it was busy
            conn.close()
            self.cluster.stats.upstream_cx_destroy_local.inc()
            return
        conn.last_used = time.monotonic()
        if self._waiters:
            conn.reused = True
            self._waiters.popleft().set(conn)
            return
        if len(self._idle) >= self.max_idle:
            conn.close()
            return
        self._idle.append(conn)
        conn.watch(self._readable)
        if self.cluster.idle_timer:  # configured: closed when it passes (else when next seen)
            conn.arm_idle(self.idle_timeout)

    def closed(self, conn: UpstreamConnection) -> None:
        """One of this pool's connections closed: a pending request may make a new one."""
        self._open -= 1
        if self._waiters:
            self._waiters.popleft().set(None)

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
        if self._counted:
            self._counted = False
            self.cluster.resources.connection_pools.dec()


def idle_state(sock) -> int:
    """QUIET, EOF or DATA for a connection that owes nothing, without blocking: one
    non-blocking peek (a read for TLS, whose records may carry no application data)."""
    if isinstance(sock, _TLS_SOCKETS):
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
