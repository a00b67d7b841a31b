"""Envoy's AsyncClient: requests proxyd itself makes to a named cluster (a tracer's
reports, ext_authz checks, rate-limit calls, gRPC side calls).

They go through the same per-host pools as proxied traffic (`host.pool`, HTTP/1.1, or
`host.h2pool` when the cluster's protocol options say HTTP/2), so they get the cluster's
TLS, circuit breakers and `cluster.<name>.*` stats (`upstream_rq_total`,
`upstream_rq_<code>`, `upstream_rq_timeout`, ...), counted as Envoy's router counts the
requests its AsyncClient sends: a timeout is also a 504, a connect failure a 503.

Everything here blocks only the calling greenlet; a timeout covers the whole exchange
(connecting, sending, the response). Two shapes:

- `send(...)`: one buffered request and its buffered response (`Response`);
- `start_stream(...)`: an HTTP/2 stream (`AsyncStream`) whose body goes out and comes in
  piece by piece, what the gRPC client (`proxyd/upstream/grpc_client.py`) builds on.

Failures raise `AsyncClientError` with a `reason` (`no_cluster`, `no_healthy_upstream`,
`overflow`, `connect_failure`, `timeout`, `reset`, `protocol_error`, `too_large`).
"""
from __future__ import annotations

import time

import gevent

from proxyd.http.codec import http1 as h1c
from proxyd.http.codec.http1 import ProtocolError, ResponseParser
from proxyd.http.headers import Headers
from proxyd.http.http2_transport import ConnectionClosed
from proxyd.network.io import send_all
from proxyd.upstream import conn_pool
from proxyd.upstream.cluster import UpstreamConnectError
from proxyd.upstream.conn_pool import CONNECTION_GONE, StreamReset
from proxyd.upstream.resource_manager import Overflow

RECV_SIZE = 65536
MAX_RESPONSE_BYTES = 4 * 1024 * 1024   # a buffered response beyond this is an error
NO_CLUSTER = "no_cluster"
NO_HEALTHY_UPSTREAM = "no_healthy_upstream"
OVERFLOW = "overflow"
CONNECT_FAILURE = "connect_failure"
TIMEOUT = "timeout"
RESET = "reset"
PROTOCOL_ERROR = "protocol_error"
TOO_LARGE = "too_large"
# the status Envoy's router answers an AsyncClient request with for each failure
_LOCAL_STATUS = {NO_HEALTHY_UPSTREAM: 503, OVERFLOW: 503, CONNECT_FAILURE: 503, TIMEOUT: 504,
                 RESET: 503, PROTOCOL_ERROR: 502}
_NOT_SENT = frozenset(("host", "content-length", "transfer-encoding", "connection"))


class AsyncClientError(Exception):
    def __init__(self, reason: str, detail: str = ""):
        super().__init__("%s%s" % (reason, ": " + detail if detail else ""))
        self.reason = reason
        self.detail = detail


class Response:
    __slots__ = ("status", "headers", "body", "trailers")

    def __init__(self, status: int, headers: Headers, body: bytes, trailers=None):
        self.status = status
        self.headers = headers
        self.body = body
        self.trailers = trailers

    def __repr__(self) -> str:
        return "Response(%d, %d bytes)" % (self.status, len(self.body))


class _Timeout(Exception):
    """The request's own deadline (told apart from a caller's gevent.Timeout)."""


class _Accounting:
    """One request's share of the cluster's and host's stats and of its circuit breaker."""
    __slots__ = ("cluster", "host", "t0", "done", "requests")

    def __init__(self, cluster, host):
        self.cluster = cluster
        self.host = host
        requests = cluster.resources.requests
        if not requests.can_create():
            cluster.stats.upstream_rq_active_overflow.inc()
            raise AsyncClientError(OVERFLOW, "max_requests")
        requests.inc()
        self.requests = requests
        s = cluster.stats
        s.upstream_rq_total.inc()
        s.upstream_rq_active.inc()
        host.rq_total.inc()
        host.rq_active.inc()
        self.t0 = time.monotonic()
        self.done = False

    def finish(self, status: int | None = None, reason: str | None = None) -> None:
        """Once: a response with `status`, or the failure `reason` (charged as the local
        reply Envoy's router would have made)."""
        if self.done:
            return
        self.done = True
        s = self.cluster.stats
        host = self.host
        self.requests.dec()
        s.upstream_rq_active.dec()
        host.rq_active.dec()
        if reason == TIMEOUT:
            s.upstream_rq_timeout.inc()
            host.rq_timeout.inc()
        elif reason == RESET:
            s.upstream_rq_rx_reset.inc()
        if status is None:
            status = _LOCAL_STATUS.get(reason)
            host.rq_error.inc()
            if status is None:
                return
        else:
            s.upstream_rq_time.record((time.monotonic() - self.t0) * 1000.0)
            (host.rq_error if status >= 500 else host.rq_success).inc()
        code, cls = s.response(status)
        code.inc()
        cls.inc()
        s.upstream_rq_completed.inc()


class AsyncClient:
    """The worker's client over its cluster manager (one per worker, cheap to make)."""

    def __init__(self, cluster_manager, max_response_bytes: int = MAX_RESPONSE_BYTES):
        self.cluster_manager = cluster_manager
        self.max_response_bytes = max_response_bytes

    def _target(self, cluster_name: str):
        cluster = self.cluster_manager.get(cluster_name) if self.cluster_manager else None
        if cluster is None:
            raise AsyncClientError(NO_CLUSTER, cluster_name)
        host = cluster.choose_host()
        if host is None:
            cs = cluster.stats
            cs.upstream_cx_none_healthy.inc()
            code, cls = cs.response(503)   # the router's 503 UH, charged to the cluster
            code.inc()
            cls.inc()
            cs.upstream_rq_completed.inc()
            raise AsyncClientError(NO_HEALTHY_UPSTREAM, cluster_name)
        return cluster, host

    def send(self, cluster_name: str, method: str, path: str, headers=(), body: bytes = b"",
             timeout: float | None = None, authority: str | None = None) -> Response:
        """One request to `cluster_name`, its response buffered. `headers`: (name, value)
        pairs, lower-case; Host is `authority` (the cluster's name by default, as in
        Envoy) and Content-Length is set from `body`. `timeout` (seconds; None or 0:
        none) spans the whole exchange."""
        cluster, host = self._target(cluster_name)
        authority = authority or cluster_name
        hdrs = [(k.lower(), v) for k, v in headers if k.lower() not in _NOT_SENT]
        if host.h2pool is not None and cluster.http2_mode is not None:
            return self._send_h2(cluster, host, method, path, authority, hdrs, body, timeout)
        acct = _Accounting(cluster, host)
        timer = _arm(timeout)
        try:
            resp = self._send_h1(cluster, host, method, path, authority, hdrs, body)
        except _Timeout:
            acct.finish(reason=TIMEOUT)
            raise AsyncClientError(TIMEOUT, "%.3fs" % timeout) from None
        except AsyncClientError as e:
            acct.finish(reason=e.reason)
            raise
        except BaseException:
            acct.finish(reason="cancelled")
            raise
        finally:
            timer.close()
        acct.finish(resp.status)
        return resp

    # -- HTTP/1.1 ---------------------------------------------------------------------------

    def _send_h1(self, cluster, host, method, path, authority, hdrs, body) -> Response:
        lines = ["%s %s HTTP/1.1" % (method, path), "host: " + authority]
        lines.extend("%s: %s" % kv for kv in hdrs)
        if body or method in ("POST", "PUT", "PATCH"):
            lines.append("content-length: %d" % len(body))
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        for attempt in (0, 1):
            try:
                conn = host.pool.acquire()
            except UpstreamConnectError as e:
                raise AsyncClientError(CONNECT_FAILURE, e.reason) from None
            except Overflow:
                raise AsyncClientError(OVERFLOW, "pending") from None
            try:
                return self._exchange_h1(cluster, host, conn, head + body, method == "HEAD")
            except _StaleConnection:
                conn.close()
                if attempt or not conn.reused:
                    raise AsyncClientError(RESET, "upstream closed the connection") from None
            except BaseException:
                if conn.sock is not None:
                    conn.close()
                    cluster.stats.upstream_cx_destroy_local.inc()
                raise
        raise AsyncClientError(RESET)

    def _exchange_h1(self, cluster, host, conn, data: bytes, head_only: bool) -> Response:
        cstats = cluster.stats
        sock = conn.sock
        try:
            send_all(sock, data)
        except OSError:
            raise _StaleConnection() from None
        cstats.upstream_cx_tx_bytes_total.inc(len(data))
        parser = ResponseParser(head_only=head_only)
        events = parser.events
        resp = None
        body = bytearray()
        limit = self.max_response_bytes
        while True:
            try:
                chunk = sock.recv(RECV_SIZE)
            except OSError:
                chunk = b""
            if chunk:
                cstats.upstream_cx_rx_bytes_total.inc(len(chunk))
                try:
                    parser.feed(chunk)
                except ProtocolError as e:
                    cstats.upstream_cx_protocol_error.inc()
                    raise AsyncClientError(PROTOCOL_ERROR, e.details) from None
            elif not parser.feed_eof():
                cstats.upstream_cx_destroy_remote.inc()
                if resp is None and not parser.events:
                    raise _StaleConnection()
                raise AsyncClientError(RESET, "upstream closed mid-response")
            while events:
                kind, payload = events.popleft()
                if kind == h1c.HEAD:
                    if payload.status >= 200:
                        resp = payload
                elif kind == h1c.DATA:
                    body += payload
                    if len(body) > limit:
                        raise AsyncClientError(TOO_LARGE, "response over %d bytes" % limit)
                else:  # END
                    if parser.extra:
                        cstats.upstream_cx_protocol_error.inc()
                        conn.close()
                        cstats.upstream_cx_destroy_local.inc()
                    elif resp.keep_alive and parser.done:
                        host.pool.release(conn)
                    else:
                        conn.close()
                        cstats.upstream_cx_destroy_local.inc()
                    return Response(resp.status, resp.headers, bytes(body))

    # -- HTTP/2 -----------------------------------------------------------------------------

    def _send_h2(self, cluster, host, method, path, authority, hdrs, body, timeout) -> Response:
        if body or method in ("POST", "PUT", "PATCH"):
            hdrs = hdrs + [("content-length", str(len(body)))]
        s = AsyncStream._open(cluster, host, method, path, authority, hdrs, not body, timeout)
        try:
            if body:
                s.send(body, True)
            status, headers = s.response_headers()
            out = bytearray()
            limit = self.max_response_bytes
            while True:
                data = s.recv_data()
                if data is None:
                    break
                out += data
                if len(out) > limit:
                    raise AsyncClientError(TOO_LARGE, "response over %d bytes" % limit)
            return Response(status, headers, bytes(out), s.trailers)
        finally:
            s._close()

    def start_stream(self, cluster_name: str, path: str, headers=(), timeout: float | None = None,
                     authority: str | None = None, method: str = "POST") -> "AsyncStream":
        """An HTTP/2 stream to `cluster_name` (which must speak HTTP/2: its protocol
        options say so). The caller sends with `send`, reads with `response_headers`,
        `recv_data` and `trailers`, and ends with `close` (or `reset`). `timeout` spans the
        stream's life, checked in every blocking call."""
        cluster, host = self._target(cluster_name)
        if host.h2pool is None or cluster.http2_mode is None:
            raise AsyncClientError(PROTOCOL_ERROR, "cluster %s is not configured for HTTP/2"
                                   % cluster_name)
        hdrs = [(k.lower(), v) for k, v in headers if k.lower() not in _NOT_SENT]
        return AsyncStream._open(cluster, host, method, path, authority or cluster_name, hdrs,
                                 False, timeout)


class _StaleConnection(Exception):
    """A kept-alive connection turned out closed before any response byte."""


class AsyncStream:
    """One HTTP/2 stream of the async client (Envoy's AsyncClient::Stream)."""

    def __init__(self, cluster, host, us, acct, deadline):
        self.cluster = cluster
        self.host = host
        self._us = us
        self._acct = acct
        self._deadline = deadline
        self.status: int | None = None
        self.headers: Headers | None = None
        self.trailers: Headers | None = None
        self.ended = False          # the response ended (END_STREAM received)
        self._sent_end = False

    @classmethod
    def _open(cls, cluster, host, method, path, authority, hdrs, end_stream, timeout):
        acct = _Accounting(cluster, host)
        deadline = time.monotonic() + timeout if timeout else None
        head = [(":method", method),
                (":scheme", "https" if getattr(cluster, "tls", None) is not None else "http"),
                (":authority", authority), (":path", path)] + hdrs
        try:
            with _Within(deadline):
                us = host.h2pool.new_stream()   # the ConnPool interface
                us.conn.open_stream(us, head, end_stream)
        except UpstreamConnectError as e:
            acct.finish(reason=CONNECT_FAILURE)
            raise AsyncClientError(CONNECT_FAILURE, e.reason) from None
        except _Timeout:
            acct.finish(reason=TIMEOUT)
            raise AsyncClientError(TIMEOUT) from None
        except BaseException:
            acct.finish(reason="cancelled")
            raise
        s = cls(cluster, host, us, acct, deadline)
        s._sent_end = end_stream
        return s

    def _fail(self, reason: str, detail: str = "") -> AsyncClientError:
        self._acct.finish(reason=reason)
        self.reset()
        return AsyncClientError(reason, detail)

    def send(self, data: bytes, end_stream: bool = False) -> None:
        """Request body; waits for the peer's flow-control windows."""
        if self._sent_end:
            raise AsyncClientError(PROTOCOL_ERROR, "request already ended")
        self._sent_end = end_stream
        try:
            with _Within(self._deadline):
                self._us.encode_data(data, end_stream)
        except ConnectionClosed:
            pass  # the stream ended under us: the response side says why
        except _Timeout:
            raise self._fail(TIMEOUT) from None

    def _next(self):
        """The next event for this stream, within the deadline."""
        us = self._us
        try:
            with _Within(self._deadline):
                return us.next_event()
        except _Timeout:
            raise self._fail(TIMEOUT) from None
        except StreamReset as e:
            raise self._fail(RESET, "connection closed" if e.code == CONNECTION_GONE
                             else "RST_STREAM %d" % e.code) from None
        except BaseException:
            self._acct.finish(reason="cancelled")
            self.reset()
            raise

    def response_headers(self):
        """(status, Headers) of the response; a trailers-only response (gRPC errors)
        ends the stream here (`ended`, and `trailers` hold the same headers)."""
        while self.status is None:
            ev = self._next()
            self._on(ev)
        return self.status, self.headers

    def recv_data(self) -> bytes | None:
        """The next body bytes, or None at the end of the response."""
        self.response_headers()
        while True:
            if self.ended:
                return None
            ev = self._next()
            if ev[0] == conn_pool.DATA:
                if ev[1]:
                    return ev[1]
                continue
            self._on(ev)

    def _on(self, ev) -> None:
        """A ConnPool response event (the stream acknowledges DATA as it is read)."""
        kind = ev[0]
        if kind == conn_pool.HEAD:
            resp = ev[1]
            self.status, self.headers = resp.status, resp.headers
            if ev[2]:
                self.trailers = self.headers
                self._end()
        elif kind == conn_pool.TRAILERS:
            self.trailers = ev[1]
        elif kind == conn_pool.END:
            self._end()

    def _end(self) -> None:
        self.ended = True
        self._us.done()
        if self.status is None:
            raise self._fail(PROTOCOL_ERROR, "no response head")
        self._acct.finish(self.status)

    def reset(self) -> None:
        """Cancel the stream (RST_STREAM CANCEL) unless it is over."""
        self._us.reset()   # counts upstream_rq_tx_reset when it sends RST_STREAM
        self._acct.finish(reason="cancelled")

    def _close(self) -> None:
        if not self.ended:
            self.reset()

    close = _close


class _Within:
    """Raise _Timeout in this greenlet at `deadline` (monotonic; None: never)."""
    __slots__ = ("deadline", "timer")

    def __init__(self, deadline):
        self.deadline = deadline
        self.timer = None

    def __enter__(self):
        if self.deadline is not None:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise _Timeout()
            self.timer = _arm(left)
        return self

    def __exit__(self, *exc):
        if self.timer is not None:
            self.timer.close()
        return False


class _Timer:
    __slots__ = ("t",)

    def __init__(self, t):
        self.t = t

    def close(self) -> None:
        if self.t is not None:
            self.t.close()
            self.t = None


def _arm(timeout):
    if not timeout:
        return _Timer(None)
    t = gevent.get_hub().loop.timer(timeout)
    t.start(gevent.getcurrent().throw, _Timeout(), update=True)
    return _Timer(t)
