"""One downstream HTTP/1.1 connection: reads requests in order (keep-alive and
pipelining), runs each as a Stream, writes responses with HTTP/1.1 framing."""
from __future__ import annotations

import socket
import time

import gevent

from proxyd.http import local_reply
from proxyd.http.codec.http1 import (DATA, END, HEAD, LAST_CHUNK, ProtocolError,
                                     RequestParser, encode_chunk, encode_response_head)
from proxyd.http.headers import Headers
from proxyd.http.message import ResponseHead, StreamInfo
from proxyd.http.stream import DownstreamGone, Stream, http_date
from proxyd.network.io import send_all

RECV_SIZE = 65536
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
DRAIN_GRACE = 2.5  # as listener.manager.IDLE_GRACE (why: see there)


class RequestHeadersTimeout(Exception):
    """request_headers_timeout passed with a request's headers still incomplete."""


class Http1Connection:
    __slots__ = ("hcm", "conn", "sock", "parser", "stream", "idle", "idle_since", "first")

    def __init__(self, hcm, conn, first: bytes = b""):
        self.hcm = hcm
        self.conn = conn
        self.sock = conn.sock
        self.parser = RequestParser(hcm.max_request_headers, scheme=conn.scheme)
        self.stream = None
        self.idle = True
        self.idle_since = time.monotonic()
        self.first = first  # bytes codec AUTO read while choosing the codec
        conn.protocol = self

    def recv_into_parser(self) -> bool:
        """Read once and parse; False when the client closed. Raises ProtocolError."""
        if self.parser.error is not None:
            raise self.parser.error
        try:
            data = self.sock.recv(RECV_SIZE)
        except socket.timeout:
            raise
        except OSError:
            return False
        if not data:
            return False
        self.hcm.stats.downstream_cx_rx_bytes_total.inc(len(data))
        self.parser.feed(data)
        return True

    def serve(self) -> None:
        hcm = self.hcm
        stats = hcm.stats
        conn = self.conn
        events = self.parser.events
        sock = self.sock
        closed_by = "remote"
        # The wait for a next request is bounded by this connection's own loop timer,
        # re-armed per wait, with the socket's timeout off: a socket timeout costs a
        # gevent.Timeout and a new exception per blocking recv (about 3 us a request).
        idle_timer = None
        idle_timer_wait = None
        expired = None
        # request_headers_timeout: from the first byte of a request head to its end
        headers_timeout = hcm.request_headers_timeout
        headers_timer = None
        try:
            if self.first:
                stats.downstream_cx_rx_bytes_total.inc(len(self.first))
                self.parser.feed(self.first)
                self.first = b""
            while True:
                if headers_timeout:
                    if self.parser.in_head:
                        if headers_timer is None:
                            headers_timer = gevent.get_hub().loop.timer(headers_timeout)
                            headers_timer.start(gevent.getcurrent().throw, RequestHeadersTimeout)
                    elif headers_timer is not None:
                        headers_timer.close()
                        headers_timer = None
                if not events:
                    # Draining after a keep-alive response: the client may be sending its
                    # next request right now, and closing would fail it. Wait DRAIN_GRACE
                    # for it (its response says Connection: close), then close.
                    draining = conn.draining
                    self.idle = True
                    self.idle_since = time.monotonic()
                    wait = DRAIN_GRACE if draining else hcm.idle_timeout
                    sock.settimeout(None)
                    if wait:
                        if wait != idle_timer_wait:
                            if idle_timer is not None:
                                idle_timer.close()
                            idle_timer = gevent.get_hub().loop.timer(wait)
                            idle_timer_wait = wait
                            expired = socket.timeout("timed out")
                        idle_timer.start(gevent.getcurrent().throw, expired, update=True)
                    try:
                        if not self.recv_into_parser():
                            break
                    except socket.timeout:
                        if not draining and not conn.hcm_draining:
                            stats.downstream_cx_idle_timeout.inc()
                        closed_by = "local"
                        break
                    finally:
                        if wait:
                            idle_timer.stop()
                        self.idle = False
                    sock.settimeout(hcm.stream_idle_timeout)
                    continue
                kind, head = events.popleft()
                if kind != HEAD:
                    continue
                if headers_timer is not None:  # never thrown into a running stream
                    headers_timer.close()
                    headers_timer = None
                # busy, whoever read the bytes: the first request may come from the
                # codec sniff's read, with no recv here (a drain closes idle connections)
                self.idle = False
                stats.downstream_rq_http1_total.inc()
                stream = self.stream = Http1Stream(hcm, conn, head, self)
                stream.run()
                self.stream = None
                if stream.closing or not stream.request_complete:
                    closed_by = "remote" if stream.peer_closed else "local"
                    break
        except ProtocolError as e:
            closed_by = "local"
            stats.downstream_cx_protocol_error.inc()
            if headers_timer is not None:  # not thrown into the 400's write
                headers_timer.close()
                headers_timer = None
            self._codec_error(e)
        except socket.timeout:
            stats.downstream_rq_timeout.inc()
            closed_by = "local"
        except RequestHeadersTimeout:
            closed_by = "local"
            stats.downstream_rq_header_timeout.inc()
            self._reply_and_close(408, b"request header timeout", "request_header_timeout")
        finally:
            if idle_timer is not None:
                idle_timer.close()
            if headers_timer is not None:
                headers_timer.close()
            if closed_by == "remote":
                stats.downstream_cx_destroy_remote.inc()
            else:
                stats.downstream_cx_destroy_local.inc()

    def _codec_error(self, e: ProtocolError) -> None:
        """400/431 for a request we refuse; the connection closes after it. Counted as a
        request (not rq_too_large) and logged as Envoy 1.40 does: no request fields,
        flag DPE, the codec's details."""
        stats = self.hcm.stats
        for c in (stats.downstream_rq_total, stats.downstream_rq_http1_total,
                  stats.downstream_rq_xx[e.status // 100], stats.downstream_rq_completed,
                  stats.downstream_rq_response_before_rq_complete, stats.downstream_rq_rx_reset):
            c.inc()
        self._reply_and_close(e.status, local_reply.CODEC_BODIES.get(e.status, b"Bad Request"),
                              e.details.split(":", 1)[0], "DPE")

    def _reply_and_close(self, status: int, body: bytes, details: str,
                         flag: str | None = None) -> None:
        """A local reply before any stream exists, with Connection: close (as Envoy),
        access-logged."""
        h = Headers([("content-length", str(len(body))), ("content-type", "text/plain"),
                     ("date", http_date()), ("server", self.hcm.server_name),
                     ("connection", "close")])
        conn = self.conn
        info = StreamInfo.for_connection(conn, "HTTP/1.1")
        info.response = ResponseHead(status, h)
        info.response_code = status
        info.response_code_details = details
        if flag:
            info.response_flags.append(flag)
        data = encode_response_head(status, h) + body
        try:
            send_all(self.sock, data)
            info.bytes_sent = len(body)
            self.hcm.stats.downstream_cx_tx_bytes_total.inc(len(data))
        except OSError:
            pass
        info.end_mono = time.monotonic()
        for log in self.hcm.access_logs:
            log.log(info)


class Http1Stream(Stream):
    __slots__ = ("h1", "_out", "_chunked", "_no_body", "_keep_alive", "_continue_sent",
                 "peer_closed")

    def __init__(self, hcm, conn, request, h1: Http1Connection):
        super().__init__(hcm, conn, request, request.version)
        self.h1 = h1
        self._out: list = []
        self._chunked = False
        self._no_body = False
        self._keep_alive = request.keep_alive
        self._continue_sent = False
        self.peer_closed = False  # a tunnel the client's FIN ended: a remote close

    def read_body(self):
        """The next request body chunk, or None at the end of the request."""
        if self.request_complete:
            return None
        if self.request.expect_continue and not self._continue_sent:
            self._continue_sent = True
            self._write(CONTINUE)
        events = self.h1.parser.events
        while True:
            while not events:
                try:
                    ok = self.h1.recv_into_parser()
                except ProtocolError:
                    ok = False
                if not ok:
                    self.hcm.stats.downstream_rq_rx_reset.inc()
                    self.closing = True
                    raise DownstreamGone()
            kind, data = events.popleft()
            if kind == DATA:
                self.info.bytes_received += len(data)
                if self.timers is not None:
                    self.touch()
                return data
            if kind == END:
                self.request_complete = True
                return None

    def send_headers(self, resp: ResponseHead, end_stream: bool) -> None:
        self.finalize_response_headers(resp)
        req = self.request
        h = resp.headers
        status = resp.status
        no_body = self._no_body = (req.method == "HEAD" or status in (204, 304)
                                   or 100 <= status < 200)
        if req.upgrade is not None:
            # the bytes after an upgrade request are not HTTP/1: the connection ends with
            # this response (or, after a 101, with the tunnel)
            self._keep_alive = False
            self.closing = True
            if status == 101 or (200 <= status < 300 and req.method == "CONNECT"):
                # the tunnel's head: no framing, the bytes after it are the tunnel's
                self._out.append(encode_response_head(status, h, "HTTP/1.1"))
                self.headers_sent = True
                return
        if self.conn.draining or self.hcm.server_health.failed():   # Envoy's drainClose()
            self.hcm.stats.downstream_cx_drain_close.inc()
            self._keep_alive = False
        elif self.conn.hcm_draining:  # max_requests_per_connection, max_connection_duration
            self._keep_alive = False
        if not no_body and resp.content_length is None:
            if end_stream:
                h.set("content-length", "0")
            elif req.version == "HTTP/1.1":
                h.set("transfer-encoding", "chunked")
                self._chunked = True
            else:
                self._keep_alive = False  # HTTP/1.0: the body ends when we close
        if not self._keep_alive or not self.request_complete:
            h.set("connection", "close")
            self.closing = True
        elif req.version == "HTTP/1.0":
            h.set("connection", "keep-alive")
        self._out.append(encode_response_head(status, h, "HTTP/1.1"))
        self.headers_sent = True

    def send_data(self, data: bytes, end_stream: bool) -> None:
        out = self._out
        if data and not self._no_body:
            self.info.bytes_sent += len(data)
            out.append(encode_chunk(data) if self._chunked else data)
        if end_stream and self._chunked:
            out.append(LAST_CHUNK)
        if len(out) > 16:
            self.flush()

    def send_trailers(self, trailers: Headers) -> None:
        """HTTP/1.1 carries trailers only in a chunked body, and only to a client that
        said `TE: trailers`; otherwise they are dropped (Envoy's default)."""
        self.info.response_trailers = trailers
        if not self._chunked:
            return
        te = self.request.headers.get("te")
        if te and "trailers" in te.lower() and trailers.items and not self._no_body:
            self._out.append(b"0\r\n" + "".join("%s: %s\r\n" % kv for kv in trailers.items)
                             .encode("latin-1") + b"\r\n")
        else:
            self._out.append(LAST_CHUNK)

    def flush(self) -> None:
        out = self._out
        if out:
            data = out[0] if len(out) == 1 else b"".join(out)
            out.clear()
            self._write(data)

    def _write(self, data: bytes) -> None:
        try:
            send_all(self.h1.sock, data)
        except OSError:
            self.closing = True
            raise DownstreamGone() from None
        self.hcm.stats.downstream_cx_tx_bytes_total.inc(len(data))
        if self.timers is not None:
            self.touch()

    def idle_reads_untimed(self) -> None:
        self.h1.sock.settimeout(None)  # a route's idle_timeout timer bounds them

    def reset(self) -> None:
        """Abort: the response cannot be completed (HTTP/1 has no stream reset)."""
        self.closing = True
        self._out.clear()
        self.hcm.stats.downstream_rq_tx_reset.inc()
        if self.request_complete:  # Envoy's codec reports the reset back (else _complete does)
            self.hcm.stats.downstream_rq_rx_reset.inc()
        try:
            self.h1.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
