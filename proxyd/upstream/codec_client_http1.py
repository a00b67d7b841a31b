"""HTTP/1.1 codec client: one request/response exchange on a pooled keep-alive
connection (an `UpstreamStream` of `proxyd/upstream/conn_pool.py`).

The request goes out as it is given (the head, then each body chunk, chunked when the
downstream's length is unknown); the response is parsed as it is read, one recv per
`next_event()` that finds no parsed event waiting, so a slow client slows the upstream
read instead of growing a buffer. At the response's end the connection goes back to the
pool if it can carry another exchange, else it is closed and counted as Envoy counts it.
"""
from __future__ import annotations

from proxyd.http.codec.http1 import (LAST_CHUNK, ProtocolError, ResponseParser, encode_chunk,
                                     encode_request_head)
from proxyd.network.io import send_all
from proxyd.upstream.conn_pool import (CONNECTION_GONE, DATA, END, HEAD, StreamReset,
                                       UpstreamProtocolError)

RECV_SIZE = 65536


class Http1Stream:
    __slots__ = ("conn", "pool", "stats", "local_address", "events", "_parser", "_chunked",
                 "_keep_alive", "_rx", "_requests")
    multiplexed = False

    def __init__(self, pool, conn, requests):
        self.pool = pool
        self.conn = conn
        self.stats = pool.cluster.stats
        self.local_address = conn.local_address
        self._requests = requests  # the cluster's request count this stream holds
        self._parser = None
        self.events = None
        self._chunked = False
        self._keep_alive = False
        self._rx = 0

    # -- request ---------------------------------------------------------------------------

    def encode_headers(self, request, headers, end_stream: bool) -> None:
        self._chunked = request.chunked
        method = request.method
        p = self._parser = ResponseParser(head_only=method == "HEAD", connect=method == "CONNECT")
        self.events = p.events
        data = encode_request_head(request, headers)
        try:
            send_all(self.conn.sock, data)
        except OSError:
            raise self._gone() from None
        self.stats.upstream_cx_tx_bytes_total.inc(len(data))

    def encode_data(self, data: bytes, end_stream: bool) -> None:
        if self._chunked:
            if data:
                data = encode_chunk(data)
            if end_stream:
                data = data + LAST_CHUNK if data else LAST_CHUNK
        if data:
            self._send(data)

    def encode_trailers(self, trailers) -> None:
        self.encode_data(b"", True)  # Envoy's HTTP/1 codec drops request trailers

    def _send(self, data) -> None:
        conn = self.conn
        try:
            send_all(conn.sock, data)
        except OSError:
            raise self._gone() from None
        self.stats.upstream_cx_tx_bytes_total.inc(len(data))

    # -- response --------------------------------------------------------------------------

    def pending(self) -> bool:
        return bool(self.events)

    def next_event(self) -> tuple:
        events = self.events
        while True:
            while not events:
                # one recv, inline (the hot path): feed the parser
                parser = self._parser
                try:
                    data = self.conn.sock.recv(RECV_SIZE)
                except OSError:
                    data = b""
                if data:
                    n = len(data)
                    self._rx += n
                    self.stats.upstream_cx_rx_bytes_total.inc(n)
                    try:
                        parser.feed(data)
                    except ProtocolError as e:
                        self._close()
                        raise UpstreamProtocolError(str(e)) from None
                elif not parser.feed_eof():
                    raise self._gone()
            ev = events.popleft()
            kind = ev[0]
            if kind == DATA:
                return ev
            if kind == HEAD:
                resp = ev[1]
                if resp.status < 200 and resp.status != 101:
                    continue  # interim 1xx: proxyd sent its own 100 Continue
                self._keep_alive = resp.keep_alive
                return (HEAD, resp, self._parser.done and len(events) == 1)
            self._finish()
            return ev

    def _gone(self) -> StreamReset:
        """The upstream closed the connection under the exchange."""
        conn = self.conn
        replayable = conn.reused and self._rx == 0
        self._close()
        self.stats.upstream_cx_destroy_remote.inc()
        return StreamReset(CONNECTION_GONE, replayable)

    def _finish(self) -> None:
        conn = self.conn
        parser = self._parser
        self.conn = None
        if parser.extra:
            # bytes past the end of the response (a wrong Content-Length, a body after
            # HEAD) would be read as the next request's answer
            self.stats.upstream_cx_protocol_error.inc()
            conn.close()
            self.stats.upstream_cx_destroy_local.inc()
        elif self._keep_alive and parser.done and not (
                self.pool.cluster.max_requests_per_connection
                and conn.requests >= self.pool.cluster.max_requests_per_connection):
            self.pool.release(conn)
        else:
            conn.close()
            self.stats.upstream_cx_destroy_local.inc()
        self.done()

    def detach(self):
        """After a 101 (or a 2xx to CONNECT): (the connection's socket, the bytes that
        followed the head; none when no request was sent, as for a terminated CONNECT).
        The connection stays this stream's, and closes with `done()`."""
        p = self._parser
        return self.conn.sock, (p.upgrade_rest or b"") if p is not None else b""

    # -- ending ----------------------------------------------------------------------------

    def _close(self) -> None:
        conn = self.conn
        if conn is not None:
            self.conn = None
            conn.close()

    def interrupt(self, exc: BaseException) -> None:
        pass  # the request is written inline: its reader sees the error itself

    def reset(self, cancel: bool = True) -> None:
        """HTTP/1 cancels a request by closing its connection. Envoy 1.40 counts
        upstream_rq_tx_reset for a client that went away, not for a timeout."""
        if cancel and self.conn is not None and self.conn.sock is not None:
            self.stats.upstream_rq_tx_reset.inc()
        self.done()

    def done(self) -> None:
        conn = self.conn
        if conn is not None:  # abandoned mid-exchange: the connection cannot be reused
            self.conn = None
            if conn.sock is not None:
                conn.close()
                self.stats.upstream_cx_destroy_local.inc()
        if self._requests is not None:
            self._requests.dec()
            self._requests = None
