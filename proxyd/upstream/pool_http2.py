"""Per-worker, per-host multiplexed HTTP/2 upstream pool.

Streams share a connection up to the peer's SETTINGS_MAX_CONCURRENT_STREAMS (until a new
connection's SETTINGS arrive: the host's last advertised value, else 100, the RFC's
recommended floor) and while at least half of its receive window is free (a client
that stops reading holds what its stream took, so one stalled client cannot hold up
the others); a full pool opens another connection. A GOAWAY takes the connection out of the pool at once, so new streams go
to a fresh connection, while streams at or below its last_stream_id finish on it.

Each connection has a reader greenlet that feeds the codec and queues events on the
stream they belong to; the router's greenlet for a request consumes its stream's
queue. Response bytes are acknowledged (WINDOW_UPDATE) only after the router handed
them downstream, so a slow client stops the upstream at the window.
"""
from __future__ import annotations

import socket
import time
from collections import deque

import gevent
from gevent.event import AsyncResult, Event

from proxyd.http.codec import http2 as h2c
from proxyd.http.http2_connection import H2Transport

RECV_SIZE = 65536
CONNECTION_GONE = -1   # pseudo error code: the connection closed under the stream
DOWNSTREAM_GONE = 9    # event kind queued by the request pump when the client left
UNSETTLED_MAX_STREAMS = 100


# What one upstream stream may receive ahead of its client (its window) unless the
# cluster sets initial_stream_window_size: Envoy's per-stream buffer limit (the default
# per_connection_buffer_limit_bytes). The response DATA of a stream whose client stopped
# reading waits in the worker, so this bounds what each such stream costs; the
# connection window (16 MiB) stays, so such streams hold a share of it, not all of it.
UPSTREAM_STREAM_WINDOW = 1024 * 1024


def _upstream_options(msg) -> h2c.Http2Options:
    opts = h2c.Http2Options(msg)
    if msg is None or not msg.HasField("initial_stream_window_size"):
        opts.initial_stream_window_size = UPSTREAM_STREAM_WINDOW
    return opts


def cluster_http2_options(config):
    """(mode, Http2Options) from a Cluster's typed_extension_protocol_options
    (envoy.extensions.upstreams.http.v3.HttpProtocolOptions) or its deprecated
    http2_protocol_options: mode is "h2" (always), "downstream" (same protocol as the
    downstream request) or None (HTTP/1.1)."""
    from proxyd.config import unpack
    any_msg = config.typed_extension_protocol_options.get(
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions")
    if any_msg is not None:
        opts = unpack(any_msg)
        which = opts.WhichOneof("upstream_protocol_options")
        if which == "explicit_http_config":
            e = opts.explicit_http_config
            if e.WhichOneof("protocol_config") == "http2_protocol_options":
                return "h2", _upstream_options(e.http2_protocol_options)
        elif which == "use_downstream_protocol_config":
            d = opts.use_downstream_protocol_config
            return "downstream", _upstream_options(
                d.http2_protocol_options if d.HasField("http2_protocol_options") else None)
        return None, None
    if config.HasField("http2_protocol_options"):
        return "h2", _upstream_options(config.http2_protocol_options)
    return None, None


class UpstreamStream:
    """One request on an upstream HTTP/2 connection, as the router sees it."""

    __slots__ = ("conn", "sid", "events", "_evt", "closed")

    def __init__(self, conn, sid: int):
        self.conn = conn
        self.sid = sid
        self.events: deque = deque()
        self._evt = Event()
        self.closed = False

    def push(self, ev) -> None:
        self.events.append(ev)
        self._evt.set()

    def next_event(self):
        events = self.events
        while not events:
            self._evt.clear()
            self._evt.wait()
        return events.popleft()

    def _is_open(self) -> bool:
        return not self.closed

    def send_data(self, data: bytes, end_stream: bool) -> None:
        """Request body; waits for the upstream's windows (raises ConnectionClosed)."""
        conn = self.conn
        conn.send_body(self.sid, data, end_stream, self._is_open)
        conn.flush_wait()

    def send_trailers(self, trailers) -> None:
        drop = h2c.CONNECTION_SPECIFIC
        self.conn.codec.send_headers(self.sid, [kv for kv in trailers.items if kv[0] not in drop],
                                     True)
        self.conn.flush()

    def ack(self, n: int) -> None:
        if n and not self.closed:
            self.conn.codec.acknowledge(self.sid, n)
            self.conn.flush()

    def reset(self, code: int = h2c.CANCEL) -> bool:
        """RST_STREAM the upstream (the client went away, a timeout, ...)."""
        if self.closed:
            return False
        sent = self.conn.codec.reset(self.sid, code)
        self.conn.flush()
        self.done()
        return sent

    def done(self) -> None:
        if not self.closed:
            self.closed = True
            self.conn.stream_done(self)


class Http2ClientConnection(H2Transport):
    def __init__(self, sock, pool):
        super().__init__(sock, h2c.Http2Codec(True, pool.options))
        self.pool = pool
        self.host = pool.host
        self.cluster = pool.cluster
        self.streams: dict[int, UpstreamStream] = {}
        self.goaway = False
        # until its SETTINGS arrive: what this host said last time, else the RFC's floor
        self.max_streams = min(pool.peer_max_streams, pool.options.max_concurrent_streams)
        self.last_used = time.monotonic()
        try:
            ip, port = sock.getsockname()[:2]
            self.local_address = "%s:%d" % (ip, port)
        except OSError:
            self.local_address = None
        self._accounted = True
        self.flush()
        self._reader = gevent.spawn(self._read_loop)

    @property
    def available(self) -> bool:
        """Room for a new stream: not going away, under the peer's stream limit, and
        at least half of the connection receive window free (streams whose clients
        stopped reading hold the rest, and a new stream here would wait for them)."""
        return (not self.goaway and not self.closed and len(self.streams) < self.max_streams
                and self.codec.receive_window_held() <= 0.5)

    def open_stream(self, headers: list, end_stream: bool) -> UpstreamStream:
        codec = self.codec
        sid = codec.next_stream_id()
        s = UpstreamStream(self, sid)
        self.streams[sid] = s
        codec.send_headers(sid, headers, end_stream)
        self.flush()
        if sid >= 0x7FFFFFFF - 2:
            self.goaway = True  # stream ids exhausted: no new streams here
            self.pool.retire(self)
        return s

    def stream_done(self, s: UpstreamStream) -> None:
        if self.streams.pop(s.sid, None) is not None:
            self.forget(s.sid)
            self.last_used = time.monotonic()
            if self.goaway and not self.streams:
                self._shutdown()

    def on_tx(self, n: int) -> None:
        self.cluster.stats.upstream_cx_tx_bytes_total.inc(n)

    def _shutdown(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RD)
        except OSError:
            pass

    def close(self) -> None:
        self.goaway = True
        if not self.streams:
            self.codec.goaway(0)
            self.flush()
            self._shutdown()

    def _read_loop(self) -> None:
        codec = self.codec
        sock = self.sock
        cstats = self.cluster.stats
        remote = True
        try:
            while True:
                sock.settimeout(None if self.streams else self.cluster.idle_timeout)
                try:
                    data = sock.recv(RECV_SIZE)
                except socket.timeout:
                    remote = False
                    codec.goaway(0)
                    break
                except OSError:
                    break
                if not data:
                    remote = not self.goaway
                    break
                cstats.upstream_cx_rx_bytes_total.inc(len(data))
                try:
                    events = codec.receive(data)
                except h2c.H2ProtocolError:
                    remote = False
                    break
                for ev in events:
                    self._on_event(ev)
                self.flush()
                if self.goaway and not self.streams:
                    remote = False
                    break
        finally:
            self.goaway = True
            self.pool.retire(self)
            self.stop_writer()
            for s in list(self.streams.values()):
                s.push((h2c.RESET, s.sid, CONNECTION_GONE))
            self.streams.clear()
            try:
                sock.close()
            except OSError:
                pass
            (cstats.upstream_cx_destroy_remote if remote else cstats.upstream_cx_destroy_local).inc()
            self.cluster.disconnected(self.host)

    def _on_event(self, ev) -> None:
        kind = ev[0]
        if kind <= h2c.RESET or kind == h2c.INFO:
            s = self.streams.get(ev[1])
            if s is None:
                if kind == h2c.DATA:
                    self.codec.acknowledge(ev[1], ev[3])
                return
            s.push(ev)
            if kind == h2c.RESET:
                self.streams.pop(ev[1], None)
                self.forget(ev[1])
                self.wake(ev[1])
        elif kind == h2c.WINDOW:
            self.wake(ev[1])
        elif kind == h2c.SETTINGS:
            self.pool.peer_max_streams = ev[1]
            self.max_streams = min(ev[1], self.pool.options.max_concurrent_streams)
            self.wake(0)
        elif kind == h2c.GOAWAY:
            self.goaway = True
            self.pool.retire(self)
            last = ev[1]
            for sid in [sid for sid in self.streams if sid > last]:
                self.streams.pop(sid).push((h2c.RESET, sid, h2c.REFUSED_STREAM))
                self.forget(sid)


class Http2Pool:
    __slots__ = ("host", "cluster", "options", "conns", "_connecting", "peer_max_streams")

    def __init__(self, host, cluster, options: h2c.Http2Options):
        self.host = host
        self.cluster = cluster
        self.options = options
        self.conns: list[Http2ClientConnection] = []
        self._connecting: AsyncResult | None = None
        self.peer_max_streams = UNSETTLED_MAX_STREAMS

    def open_stream(self, headers: list, end_stream: bool) -> UpstreamStream:
        """A new stream on a connection with room (raises UpstreamConnectError)."""
        return self._pick().open_stream(headers, end_stream)

    def _pick(self) -> Http2ClientConnection:
        while True:
            for c in self.conns:
                if c.available:
                    return c
            pending = self._connecting
            if pending is not None:
                c = pending.get()  # re-raises the connect error for every waiter
                if c.available:
                    return c
                continue
            pending = self._connecting = AsyncResult()
            try:
                c = Http2ClientConnection(self.cluster.connect(self.host), self)
            except Exception as e:
                pending.set_exception(e)
                raise
            finally:
                self._connecting = None
            self.conns.append(c)
            pending.set(c)
            return c

    def retire(self, conn) -> None:
        """No new streams on `conn` (GOAWAY, closed, ids exhausted)."""
        try:
            self.conns.remove(conn)
        except ValueError:
            pass

    def close_idle(self) -> None:
        for c in list(self.conns):
            if not c.streams:
                self.retire(c)
                c.close()


def create(config, ctx):
    """Registry entry for HttpProtocolOptions: clusters read it through
    `cluster_http2_options`; this returns the HTTP/2 options it carries, if any."""
    e = config.explicit_http_config
    if e.HasField("http2_protocol_options"):
        return h2c.Http2Options(e.http2_protocol_options)
    return None
