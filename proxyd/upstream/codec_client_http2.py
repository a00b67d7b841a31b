"""HTTP/2 codec client: upstream connections multiplexing request streams, each an
`UpstreamStream` of `proxyd/upstream/conn_pool.py`.

Each connection has a reader greenlet that feeds the codec and queues events on the
stream they belong to; the router's greenlet for a request consumes its stream's
queue (`next_event`). Response bytes are acknowledged (WINDOW_UPDATE) only when the next
event is asked for, i.e. after the router handed them downstream, so a slow client stops
the upstream at the window.
"""
from __future__ import annotations

import socket
import time
from collections import deque

import gevent
from gevent.event import Event

from proxyd.http.codec import http2 as h2c
from proxyd.http.headers import Headers
from proxyd.http.http2_transport import H2Transport
from proxyd.http.message import ResponseHead
from proxyd.upstream.conn_pool import (CONNECTION_GONE, DATA, END, HEAD, TRAILERS,
                                       StreamReset)

RECV_SIZE = 65536
UNSETTLED_MAX_STREAMS = 100
_INTERRUPT = 99  # event kind: raise the exception it carries in the stream's reader
_END = (END, None)


class Http2Stream:
    """One request on an upstream HTTP/2 connection."""

    __slots__ = ("conn", "sid", "events", "_evt", "closed", "local_address", "_unacked",
                 "_no_body", "_head", "_requests")
    multiplexed = True

    def __init__(self, conn, requests=None):
        self.conn = conn
        self.sid = None
        self.events: deque = deque()
        self._evt = Event()
        self.closed = False
        self.local_address = conn.local_address
        self._unacked = 0
        self._no_body = False
        self._head = False
        self._requests = requests  # the cluster's request count this stream holds

    # -- request ---------------------------------------------------------------------------

    def encode_headers(self, request, headers, end_stream: bool) -> None:
        """HTTP/2 request head from the upstream headers: pseudo-headers from the
        request, Host folded into :authority, hop-by-hop fields dropped except
        `te: trailers` (gRPC servers require it)."""
        conn = self.conn
        authority = request.authority or headers.get("host") or ""
        if request.method == "CONNECT":  # RFC 9113 8.5: no :scheme, no :path
            out = [(":method", "CONNECT"), (":authority", authority)]
        else:
            out = [(":method", request.method),
                   (":scheme", "https" if getattr(conn.cluster, "tls", None) is not None
                    else "http"),
                   (":authority", authority), (":path", request.path)]
        drop = h2c.CONNECTION_SPECIFIC
        out.extend(kv for kv in headers.items if kv[0] not in drop)
        te = request.headers.get("te")
        if te is not None and "trailers" in te.lower():
            out.append(("te", "trailers"))
        self._no_body = request.method == "HEAD"
        conn.open_stream(self, out, end_stream)

    def _is_open(self) -> bool:
        return not self.closed

    def encode_data(self, data: bytes, end_stream: bool) -> None:
        """Request body; waits for the upstream's windows (raises ConnectionClosed)."""
        conn = self.conn
        conn.send_body(self.sid, data, end_stream, self._is_open)
        conn.flush_wait()

    def encode_trailers(self, trailers) -> None:
        drop = h2c.CONNECTION_SPECIFIC
        if not trailers.items:
            return self.encode_data(b"", True)
        self.conn.codec.send_headers(self.sid, [kv for kv in trailers.items if kv[0] not in drop],
                                     True)
        self.conn.flush()

    # -- response --------------------------------------------------------------------------

    def push(self, ev) -> None:
        self.events.append(ev)
        self._evt.set()

    def interrupt(self, exc: BaseException) -> None:
        self.push((_INTERRUPT, exc))

    def pending(self) -> bool:
        return bool(self.events)

    def _ack(self, n: int) -> None:
        if n and not self.closed:
            self.conn.codec.acknowledge(self.sid, n)
            self.conn.flush()

    def next_event(self) -> tuple:
        if self._unacked:
            self._ack(self._unacked)
            self._unacked = 0
        events = self.events
        while True:
            while not events:
                self._evt.clear()
                self._evt.wait()
            ev = events.popleft()
            kind = ev[0]
            if kind == h2c.DATA:
                if self._no_body:
                    self._ack(ev[3])
                    continue
                self._unacked = ev[3]
                return (DATA, ev[2])
            if kind == h2c.HEADERS:
                resp = _response_head(ev[2])
                self._head = True
                self._no_body = self._no_body or resp.status in (204, 304)
                return (HEAD, resp, ev[3])
            if kind == h2c.TRAILERS:
                return (TRAILERS, Headers(ev[2]))
            if kind == h2c.END:
                self.done()  # free the stream's slot before the downstream write yields
                if not self._head:
                    raise StreamReset(h2c.PROTOCOL_ERROR)
                return _END
            if kind == h2c.RESET:
                self.done()
                code = ev[2]
                raise StreamReset(code, code == h2c.REFUSED_STREAM)
            if kind == _INTERRUPT:
                raise ev[1]
            # h2c.INFO (an interim 1xx head): proxyd answered 100-continue itself

    # -- ending ----------------------------------------------------------------------------

    def reset(self, cancel: bool = True) -> None:
        """RST_STREAM (CANCEL) the upstream: the client went away, a timeout, ..."""
        if self.closed or self.sid is None:
            return self.done()
        if self.conn.codec.reset(self.sid, h2c.CANCEL):
            self.conn.cluster.stats.upstream_rq_tx_reset.inc()
        self.conn.flush()
        self.done()

    def done(self) -> None:
        if not self.closed:
            self.closed = True
            if self.sid is not None:
                self.conn.stream_done(self)
        if self._requests is not None:
            self._requests.dec()
            self._requests = None


def _response_head(raw: list) -> ResponseHead:
    status = 502
    items = []
    for n, v in raw:
        if n == ":status":
            status = int(v)
        elif n[0] != ":":
            items.append((n, v))
    resp = ResponseHead(status, Headers(items), "", "HTTP/2")
    cl = resp.headers.get("content-length")
    if cl is not None and cl.isdigit():
        resp.content_length = int(cl)
    return resp


class Http2ClientConnection(H2Transport):
    def __init__(self, sock, pool):
        super().__init__(sock, h2c.Http2Codec(True, pool.options))
        self.pool = pool
        self.host = pool.host
        self.cluster = pool.cluster
        self.streams: dict[int, Http2Stream] = {}
        self.goaway = False
        self.opened = 0     # streams it carried (the cluster's max_requests_per_connection)
        # until its SETTINGS arrive: what this host said last time, else the RFC's floor
        self.max_streams = min(pool.peer_max_streams, pool.options.max_concurrent_streams)
        self.last_used = time.monotonic()
        try:
            ip, port = sock.getsockname()[:2]
            self.local_address = "%s:%d" % (ip, port)
        except OSError:
            self.local_address = None
        self._accounted = True
        self._duration = None
        if self.cluster.max_connection_duration:  # then it drains: no new streams
            self._duration = gevent.get_hub().loop.timer(self.cluster.max_connection_duration)
            self._duration.start(self._duration_reached)
        self.flush()
        self._reader = gevent.spawn(self._read_loop)

    @property
    def available(self) -> bool:
        """Room for a new stream: not going away, under the peer's stream limit, and
        at least half of the connection receive window free (streams whose clients
        stopped reading hold the rest, and a new stream here would wait for them)."""
        return (not self.goaway and not self.closed and len(self.streams) < self.max_streams
                and self.codec.receive_window_held() <= 0.5)

    def open_stream(self, s: Http2Stream, headers: list, end_stream: bool) -> None:
        """Give `s` the next stream id and send its request head."""
        codec = self.codec
        sid = s.sid = codec.next_stream_id()
        self.streams[sid] = s
        codec.send_headers(sid, headers, end_stream)
        self.flush()
        self.opened += 1
        limit = self.cluster.max_requests_per_connection
        if limit and self.opened >= limit:  # no new streams here; it closes when done
            self.cluster.stats.upstream_cx_max_requests.inc()
            self.goaway = True
            self.pool.retire(self)
        elif sid >= 0x7FFFFFFF - 2:
            self.goaway = True  # stream ids exhausted: no new streams here
            self.pool.retire(self)

    def stream_done(self, s: Http2Stream) -> None:
        if self.streams.pop(s.sid, None) is not None:
            self.forget(s.sid)
            self.last_used = time.monotonic()
            if self.goaway and not self.streams:
                self._shutdown()

    def _duration_reached(self) -> None:
        self._duration.close()
        self._duration = None
        if self.goaway or self.closed:
            return
        self.cluster.stats.upstream_cx_max_duration_reached.inc()
        self.pool.retire(self)
        self.close()

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
                    cstats.upstream_cx_idle_timeout.inc()
                    codec.goaway(0)
                    break
                except OSError:  # gevent's shutdown(SHUT_RD) cancels the recv
                    remote = not self.goaway
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
            if self._duration is not None:
                self._duration.close()
                self._duration = None
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
