"""Upstream Redis connections: one pipelined connection per (worker, host, protocol), as
Envoy's redis conn pool keeps one client per host per worker.

Requests are queued with a callback and written in batches (`flush()`); replies are
matched to callbacks in order. `op_timeout` runs from the first request written while
none was outstanding and restarts on every reply; when it fires, or the connection
fails, every outstanding request fails (callback(None)) and the connection closes
(Envoy's `upstream failure`). The next request reconnects.
"""
from __future__ import annotations

import socket
import time
from collections import deque

import gevent
from gevent import get_hub
from gevent.lock import Semaphore

from proxyd.network.filters.redis_proxy import codec
from proxyd.network.io import WaitingReader, send_all
from proxyd.upstream.cluster import UpstreamConnectError
from proxyd.upstream.host import Host

READ_SIZE = 64 * 1024


def _discard(_reply) -> None:
    pass


class UpstreamClient:
    __slots__ = ("cluster", "host", "resp3", "auth", "op_timeout", "queue", "sent", "out", "sock",
                 "state", "_lock", "deadline", "_watching", "_flush_scheduled", "_loop",
                 "rq_time")

    def __init__(self, cluster, host, resp3: bool, auth, op_timeout: float):
        self.cluster = cluster
        self.host = host
        self.resp3 = resp3
        self.auth = auth               # (username or None, password) or None
        self.op_timeout = op_timeout
        self.queue: deque = deque()    # callbacks of requests written or waiting to be
        self.sent: deque = deque()     # when each of them was queued
        self.out: list[bytes] = []     # bytes not written yet
        self.sock = None
        self.state = "idle"            # idle -> connecting -> open -> idle (after a failure)
        self._lock = Semaphore()
        self.deadline = None            # op_timeout deadline while requests are outstanding
        self._watching = False
        self._flush_scheduled = False
        self._loop = get_hub().loop
        # Envoy's cluster.<name>.redis_cluster.upstream_commands.upstream_rq_time (us)
        self.rq_time = cluster._store.histogram(
            "cluster.%s.redis_cluster.upstream_commands.upstream_rq_time" % cluster.name)

    def request(self, raw: bytes, callback) -> None:
        """Queue `raw` (one encoded request); `callback(reply_bytes | None)` gets the reply.
        The write happens once the event loop has run every greenlet that is ready, so
        requests from all the downstream connections read in one loop iteration go in
        one write."""
        self.queue.append(callback)
        self.sent.append(time.monotonic())
        self.out.append(raw)
        stats = self.cluster.stats
        stats.upstream_rq_total.inc()
        stats.upstream_rq_active.inc()
        if self.state == "idle":
            self.state = "connecting"
            gevent.spawn(self._run)
        elif not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.run_callback(self._scheduled_flush)

    def _scheduled_flush(self) -> None:
        self._flush_scheduled = False
        self.flush()

    def flush(self) -> None:
        """Write what is queued (when connected; the connecting greenlet writes it otherwise)."""
        if self.state != "open" or not self.out:
            return
        data = b"".join(self.out) if len(self.out) > 1 else self.out[0]
        self.out = []
        if self.deadline is None and self.op_timeout:
            self.deadline = time.monotonic() + self.op_timeout
            if not self._watching:
                self._watching = True
                gevent.spawn(self._watch, self.sock)
        try:
            with self._lock:
                send_all(self.sock, data)
        except OSError:
            self._fail(local=False)

    def _run(self) -> None:
        try:
            sock = self.cluster.connect(self.host)
        except UpstreamConnectError:
            self._fail(local=False)
            return
        if self.state != "connecting":  # closed while connecting
            sock.close()
            return
        self.sock = sock
        hello = []
        if self.resp3:
            args = [b"HELLO", b"3"]
            if self.auth is not None:
                args += [b"AUTH", self.auth[0] or b"default", self.auth[1]]
            hello.append(codec.encode_command(args))
        elif self.auth is not None:
            user, password = self.auth
            hello.append(codec.encode_command([b"AUTH", user, password] if user
                                              else [b"AUTH", password]))
        for _ in hello:
            self.queue.appendleft(_discard)
            self.sent.appendleft(0.0)
        self.out[:0] = hello
        self.state = "open"
        self.flush()
        reader = WaitingReader(sock, READ_SIZE)
        try:
            self._read(sock, reader.recv)
        finally:
            reader.close()
            sock.close()  # only here: closing an fd another greenlet waits on is unsafe

    def _read(self, sock, recv) -> None:
        decoder = codec.Decoder()
        queue, sent, rq_time = self.queue, self.sent, self.rq_time
        stats = self.cluster.stats
        op_timeout = self.op_timeout
        touched = set()
        while True:
            try:
                data = recv()
            except OSError:
                data = b""
            if self.sock is not sock:
                return  # failed and closed under us (maybe reconnected since): not ours
            if not data:
                self._fail(local=False)
                return
            stats.upstream_cx_rx_bytes_total.inc(len(data))
            decoder.feed(data)
            try:
                while True:
                    raw = decoder.next_raw()
                    if raw is None:
                        break
                    cb = queue.popleft()
                    t0 = sent.popleft()
                    if cb is not _discard:
                        stats.upstream_rq_active.dec()
                        rq_time.record((time.monotonic() - t0) * 1e6)
                    done = cb(raw)
                    if done is not None:
                        touched.add(done)
            except (codec.ProtocolError, IndexError):
                self._fail(local=True)
                return
            if op_timeout:
                self.deadline = time.monotonic() + op_timeout if queue else None
            if touched:
                for flush in touched:
                    flush()
                touched.clear()

    def _watch(self, sock) -> None:
        """op_timeout: fail the connection when no reply came for that long while
        requests were outstanding."""
        try:
            while self.sock is sock:
                deadline = self.deadline
                if deadline is None:
                    return
                left = deadline - time.monotonic()
                if left <= 0:
                    self.cluster.stats.upstream_rq_timeout.inc()
                    self._fail(local=True)
                    return
                gevent.sleep(left)
        finally:
            self._watching = False

    def _fail(self, local: bool) -> None:
        """Fail everything outstanding and drop the connection; the next request reconnects."""
        if self.state == "idle":
            return
        self.state = "idle"
        self.deadline = None
        sock, self.sock = self.sock, None
        if sock is not None:
            stats = self.cluster.stats
            (stats.upstream_cx_destroy_local if local else stats.upstream_cx_destroy_remote).inc()
            stats.upstream_cx_active.dec()
            self.host.cx_active.dec()
            try:
                sock.shutdown(socket.SHUT_RDWR)  # the reader wakes, sees it, and closes it
            except OSError:
                pass
        queue, self.queue = self.queue, deque()
        self.sent = deque()
        self.out = []
        stats = self.cluster.stats
        touched = set()
        for cb in queue:
            if cb is not _discard:
                stats.upstream_rq_active.dec()
                done = cb(None)
                if done is not None:
                    touched.add(done)
        for flush in touched:
            flush()

    def close(self) -> None:
        self._fail(local=True)


class ClientPool:
    """A worker's upstream clients, shared by every redis_proxy filter of the same
    settings: by (cluster name, host address, protocol)."""

    def __init__(self, auth_by_cluster, op_timeout: float):
        self.auth_by_cluster = auth_by_cluster
        self.op_timeout = op_timeout
        self.clients: dict = {}
        self.extra_hosts: dict = {}

    def client(self, cluster, host, resp3: bool) -> UpstreamClient:
        key = (cluster.name, host.address, resp3)
        c = self.clients.get(key)
        if c is None or c.cluster is not cluster:
            if c is not None:
                c.close()
            c = self.clients[key] = UpstreamClient(cluster, host, resp3,
                                                   self.auth_by_cluster(cluster), self.op_timeout)
        return c

    def host_at(self, cluster, ip: str, port: int):
        """The cluster's host at (ip, port), or one made for an address a redirection or
        a Redis Cluster's slot map names."""
        for h in cluster.hosts:
            if h.address == (ip, port):
                return h
        key = (cluster.name, (ip, port))
        host = self.extra_hosts.get(key)
        if host is None:
            host = self.extra_hosts[key] = Host(ip, port, 1, "", cluster._store, cluster.name)
        return host
