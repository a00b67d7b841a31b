"""One attempt of a routed request on one upstream host (Envoy's `UpstreamRequest`).

It takes a stream from the host's connection pool of the protocol the cluster asks for
(HTTP/1.1 or HTTP/2, both behind the ConnPool interface of
`proxyd/upstream/conn_pool.py`), sends the request head and body, and relays the
response. The response head is committed downstream only once the router decided it is
final: a head the retry policy retries is dropped, never sent (`Retry` goes back to the
router's attempt loop in `proxyd/router/router.py`).

The exchange runs in the stream's greenlet: the response is relayed as it arrives, one
downstream write per upstream event, so a slow client slows the upstream read (HTTP/1)
or the upstream's window (HTTP/2) instead of growing a buffer. The request body goes
upstream inline before the response is read over HTTP/1, and from a helper greenlet over
HTTP/2, whose streaming calls interleave both directions (a gRPC bidi client may wait for
a response message before sending more).
"""
from __future__ import annotations

import socket
import time

import gevent

from proxyd.http import grpc, local_reply
from proxyd.http.headers import HOP_BY_HOP, Headers
from proxyd.http.message import ResponseHead
from proxyd.http.http2_transport import ConnectionClosed
from proxyd.http.stream_errors import DownstreamGone
from proxyd.router import upgrade as upgrades
from proxyd.router.retry_policy import (CONNECT_FAILURE, PER_TRY_TIMEOUT, REFUSED_STREAM,
                                        RESET, RetryState)
from proxyd.upstream import outlier
from proxyd.upstream.cluster import UpstreamConnectError
from proxyd.upstream.health import IMMEDIATE_FAIL_HEADER
from proxyd.upstream.conn_pool import (CONNECTION_GONE, DATA, HEAD, TRAILERS, StreamReset,
                                       UpstreamProtocolError)
from proxyd.upstream.resource_manager import Overflow

_REFUSED_STREAM = 0x7  # HTTP/2 REFUSED_STREAM
# a response without framing of its own is re-framed downstream, never by a stale length
_NOT_RELAYED_UNFRAMED = HOP_BY_HOP | {"content-length"}


class RouteTimeout(Exception):
    pass


class PerTryTimeout(RouteTimeout):
    """The policy's per_try_timeout ended one attempt."""


class UpstreamMaxDuration(RouteTimeout):
    """The cluster's common_http_protocol_options.max_stream_duration ended the attempt."""


class Retry(Exception):
    """This attempt failed and is retried; nothing of it went downstream."""


class _NoTimer:
    """Stands in for the timer of a route without a timeout."""
    __slots__ = ()

    def close(self) -> None:
        pass


_NO_TIMER = _NoTimer()


def cluster_local_reply(stream, cstats, reply) -> None:
    """A local reply to a request routed to a cluster. Envoy 1.40 charges its status to
    the cluster too (upstream_rq_<code>, _<N>xx, _completed), unless the response had
    started (then the stream is reset)."""
    if not stream.headers_sent:
        code, cls = cstats.response(reply[0])
        code.inc()
        cls.inc()
        cstats.upstream_rq_completed.inc()
        attempts = stream.info.attempt_count
        if attempts and stream.route.attempt_count_in_response:
            reply = reply[:4] + ([("x-envoy-attempt-count", str(attempts))],)
    stream.local_reply(*reply)


def should_retry(retry, would_retry: bool, stream, response: bool = False) -> bool:
    """Ask the retry state; a final answer marks the stream URX (retries used up) or
    UO (the retry circuit breaker refused) before any local reply adds its own flag, so
    they read "URX,UT" as in Envoy 1.40."""
    if retry is None:
        return False
    verdict = retry.decide(would_retry, stream.headers_sent, response)
    if verdict == RetryState.LIMIT:
        stream.info.response_flags.append("URX")
    elif verdict == RetryState.OVERFLOW:
        stream.info.response_flags.append("UO")
    return verdict == RetryState.YES


def _start_timer(seconds: float, exc):
    # A bare loop timer throwing into this greenlet is what gevent.Timeout does, at a
    # third of its cost (no BaseException subclass to build per request).
    timer = gevent.get_hub().loop.timer(seconds)
    timer.start(gevent.getcurrent().throw, exc, update=True)
    return timer


class UpstreamRequest:
    """One attempt: `run()` returns once the stream was answered (relayed, or a local
    reply), or raises Retry for the router to try again."""

    __slots__ = ("stream", "route", "cluster", "host", "timeout", "headers", "retry", "us",
                 "t0", "timer")

    def __init__(self, stream, route, cluster, host, timeout: float, headers, retry):
        self.stream = stream
        self.route = route
        self.cluster = cluster
        self.host = host
        self.timeout = timeout    # what is left of the route timeout (0: none)
        self.headers = headers    # the upstream request headers, shared by the attempts
        self.retry = retry        # RetryState, or None without a retry policy
        self.us = None            # the pool's UpstreamStream
        self.t0 = 0.0
        self.timer = _NO_TIMER    # the route timeout's

    def run(self) -> None:
        stream = self.stream
        route = self.route
        host = self.host
        retry = self.retry
        info = stream.info
        cstats = self.cluster.stats
        if retry is not None:
            retry.tried.add(host)
        req = stream.request
        # HTTP/2 when the cluster always speaks it, or mirrors the downstream protocol and
        # the request came over HTTP/2 (an upgrade goes over HTTP/1.1)
        # (an upgrade goes over HTTP/1.1, except a CONNECT, which HTTP/2 carries itself)
        pool = host.h2pool
        if pool is None or (req.upgrade is not None and req.upgrade != "CONNECT") or not (
                self.cluster.http2_mode == "h2" or req.version == "HTTP/2"):
            pool = host.pool
        # a CONNECT (or allow_post POST) the route's connect_config terminates: raw TCP
        terminate = route.connect_config is not None and upgrades.terminates(route, req)
        pump = None
        # counted as started (the `finally` ends it), then the route timeout armed; the
        # timer raises this very instance, so a nested one is told apart
        cstats.upstream_rq_total.inc()
        cstats.upstream_rq_active.inc()
        host.rq_total.inc()
        host.rq_active.inc()
        info.upstream_host = host.addr_str
        self.t0 = time.monotonic()
        expired = RouteTimeout()
        timer = self.timer = _start_timer(self.timeout, expired) if self.timeout else _NO_TIMER
        per_try = None
        try_timer = _NO_TIMER
        max_duration = None
        duration_timer = _NO_TIMER
        if retry is not None:
            per_try = PerTryTimeout()
            if retry.policy.per_try_timeout:
                try_timer = _start_timer(retry.policy.per_try_timeout, per_try)
            read_body = retry.body_reader(stream)
            info.attempt_count = retry.attempts
        else:
            read_body = stream.read_body
            info.attempt_count = 1
        try:
            if route.attempt_count_in_request:
                self.headers.set("x-envoy-attempt-count", str(info.attempt_count))
            for replay in (False, True):
                try:
                    us = self.us = (upgrades.TcpUpstream(self.cluster, host) if terminate
                                    else pool.new_stream())
                except UpstreamConnectError as e:
                    host.rq_error.inc()
                    if should_retry(retry, retry.policy.retry_failure(CONNECT_FAILURE)
                                    if retry else False, stream):
                        raise Retry() from None
                    cluster_local_reply(stream, cstats, local_reply.connect_failure(e.reason))
                    return
                except Overflow:
                    stream.local_reply(*local_reply.OVERFLOW)
                    return
                info.upstream_local_address = us.local_address
                info.upstream_start_mono = time.monotonic()
                if self.cluster.max_stream_duration and max_duration is None:
                    # from the stream's attach to a connection (Envoy's onPoolReady)
                    max_duration = UpstreamMaxDuration()
                    duration_timer = _start_timer(self.cluster.max_stream_duration,
                                                  max_duration)
                if terminate:  # Envoy's TcpUpstream: a 200 as soon as the connection is up
                    self._tunnel(us, ResponseHead(200, Headers([])))
                    return
                # whether the head is all there is to send (HTTP/2: a retry replays a
                # buffered body as DATA even when the downstream is done)
                if us.multiplexed:
                    end = stream.request_complete and (retry is None or not retry.chunks)
                    if req.upgrade is not None:  # a CONNECT: the tunnel sends and ends it
                        end = None
                else:
                    end = not req.has_body
                try:
                    us.encode_headers(req, self.headers, end)
                    if not us.multiplexed:
                        if not end:
                            self._send_body(us, read_body)
                        info.request_end_mono = time.monotonic()
                    elif end is False:
                        pump = gevent.spawn(_pump, stream, us, read_body)
                    self._relay(us)
                    return
                except StreamReset as e:
                    # A keep-alive connection the upstream closed just now, or a stream
                    # it refused (GOAWAY raced us, its stream limit): nothing was
                    # processed upstream, so a bodiless request goes to a fresh one.
                    if replay or not e.replayable or not end or stream.headers_sent:
                        raise
                    us.done()
                    self.us = None
        except Retry:
            raise
        except RouteTimeout as t:
            if self.us is not None and host.outlier is not None and (t is per_try or t is expired):
                host.outlier.result(outlier.TIMEOUT)
            if t is max_duration:
                # Envoy 1.40: a local reset of the upstream (retried as a reset), else
                # 504 (408 while the request still arrives) UMSDR, or a downstream
                # reset once the response started
                cstats.upstream_rq_max_duration_reached.inc()
                self._reset()
                host.rq_error.inc()
                if should_retry(retry, retry.policy.retry_failure(RESET) if retry else False,
                                stream):
                    raise Retry() from None
                if stream.headers_sent:  # Envoy charged the response's code at its head
                    code, cls = cstats.response(info.response_code)
                    code.inc()
                    cls.inc()
                    cstats.upstream_rq_completed.inc()
                # not charged to the cluster (unlike the route timeout's 504)
                stream.local_reply(*local_reply.upstream_max_duration(stream.request_complete))
                return
            if t is per_try:
                cstats.upstream_rq_per_try_timeout.inc()
                self._reset()
                host.rq_error.inc()
                if should_retry(retry, retry.policy.retry_failure(PER_TRY_TIMEOUT), stream):
                    raise Retry() from None
                cluster_local_reply(stream, cstats, local_reply.PER_TRY_TIMEOUT)
                return
            if t is not expired:
                raise
            cstats.upstream_rq_timeout.inc()
            host.rq_timeout.inc()
            self._reset()
            host.rq_error.inc()
            cluster_local_reply(stream, cstats, local_reply.ROUTE_TIMEOUT)
        except StreamReset as e:
            cstats.upstream_rq_rx_reset.inc()
            host.rq_error.inc()
            if host.outlier is not None:  # Envoy: any reset is a local-origin connect failure
                host.outlier.result(outlier.CONNECT_FAILED)
            if not stream.headers_sent:
                why = REFUSED_STREAM if e.code == _REFUSED_STREAM else RESET
                if should_retry(retry, retry.policy.retry_failure(why) if retry else False,
                                stream):
                    raise Retry() from None
                cluster_local_reply(stream, cstats, local_reply.upstream_reset())
            else:
                info.response_code_details = "upstream_reset_after_response_started"
                info.response_flags.append("UC" if e.code == CONNECTION_GONE else "UR")
                stream.reset(*((e.code,) if e.code > 0 and stream.request.version == "HTTP/2"
                               else ()))
        except UpstreamProtocolError:
            host.rq_error.inc()
            cluster_local_reply(stream, cstats, local_reply.upstream_protocol_error())
        except BaseException:
            # the client went away, or the stream was interrupted (request_timeout,
            # stream_idle_timeout): cancel the upstream request, the caller answers
            self._reset(True)
            raise
        finally:
            timer.close()
            try_timer.close()
            duration_timer.close()
            if pump is not None and not pump.dead:
                pump.kill(block=False)
            if self.us is not None:
                self.us.done()
            cstats.upstream_rq_active.dec()
            host.rq_active.dec()

    def _reset(self, cancel: bool = False) -> None:
        if self.us is not None:
            self.us.reset(cancel)

    def _send_body(self, us, read_body) -> None:
        """The request body, inline before the response is read (HTTP/1)."""
        while True:
            data = read_body()
            if data is None:
                us.encode_data(b"", True)
                break
            us.encode_data(data, False)

    def _relay(self, us) -> None:
        stream = self.stream
        retry = self.retry
        ended = False
        resp = None
        while True:
            ev = us.next_event()
            kind = ev[0]
            if kind == DATA:
                if not ended:
                    stream.send_data(ev[1], False)
            elif kind == HEAD:
                resp = ev[1]
                host = self.host
                if host.outlier is not None:
                    host.outlier.http_status(grpc.outlier_status(self.stream.request, resp))
                if host.hc_fail is not None and IMMEDIATE_FAIL_HEADER in resp.headers:
                    host.hc_fail.inc()  # Envoy: the host fails its active health check at once
                if retry is not None and self._retry_response(resp):
                    # Envoy resets the upstream request unless its response is complete
                    if ev[2] and us.events:
                        us.next_event()
                    else:
                        us.reset(False)
                    raise Retry()
                if stream.request.upgrade is not None and (resp.status == 101 or (
                        200 <= resp.status < 300 and stream.request.method == "CONNECT")):
                    self._tunnel(us, resp)
                    return
                ended = ev[2]
                self._send_response_head(resp, ended)
            elif kind == TRAILERS:
                if not ended:
                    ended = True
                    stream.send_trailers(ev[1])
            else:  # END
                if not ended:
                    stream.send_data(b"", True)
                stream.flush()
                self._complete(resp)
                return
            if not us.events:
                stream.flush()

    def _tunnel(self, us, resp) -> None:
        """The upstream accepted the upgrade (a 101, a 2xx to CONNECT, or the TCP
        connection of a terminated CONNECT): its head goes downstream, then both sides
        carry the tunnel until they close (neither connection goes back to a pool; an
        HTTP/1 downstream connection closes after it, an HTTP/2 stream ends)."""
        stream = self.stream
        self.timer.close()  # the route timeout ends with the response head, as in Envoy
        req = stream.request
        post = req.method == "POST"  # connect_config.allow_post: an ordinary response
        h = resp.headers
        self._send_response_head(resp, False, None if post else (h.get("upgrade"),
                                                                 h.get("connection")))
        stream.flush()
        if us.multiplexed:
            return self._tunnel_h2(us, resp)
        hcm = stream.hcm
        up_sock, up_rest = us.detach()
        cstats = self.cluster.stats
        hstats = hcm.stats
        info = stream.info
        h1 = None
        if req.version == "HTTP/2" or post:
            why = upgrades.relay_stream(stream, up_sock, up_rest,
                                        cstats.upstream_cx_tx_bytes_total.inc,
                                        cstats.upstream_cx_rx_bytes_total.inc,
                                        not isinstance(us, upgrades.TcpUpstream))
        else:
            down = stream.fm.stream       # the downstream HTTP/1 stream
            h1 = down.h1
            rest = h1.parser.upgrade_rest or b""
            h1.parser.upgrade_rest = b""
            down_sock = h1.sock
            down_sock.settimeout(None)    # the tunnel's own idle timer watches both sides

            def down_rx(n: int) -> None:
                hstats.downstream_cx_rx_bytes_total.inc(n)
                cstats.upstream_cx_tx_bytes_total.inc(n)
                info.bytes_received += n

            def up_rx(n: int) -> None:
                cstats.upstream_cx_rx_bytes_total.inc(n)
                hstats.downstream_cx_tx_bytes_total.inc(n)
                info.bytes_sent += n

            why = upgrades.tunnel(down_sock, rest, up_sock, up_rest, hcm.stream_idle_timeout,
                                  down_rx, up_rx)
        if why == "idle":
            hstats.downstream_rq_idle_timeout.inc()
            info.response_flags.append("SI")
        elif why == "upstream_closed" and h1 is not None:  # Envoy 1.40 logs it this way
            info.response_flags.append("UC")
        elif why == "downstream_closed" and h1 is not None and req.method == "CONNECT":
            info.response_flags.append("DC")
        if h1 is None and why != "error" and isinstance(us, upgrades.TcpUpstream):
            us.done(remote=True)  # the relay read the upstream's FIN
        else:
            us.done()
        if h1 is not None:
            down = stream.fm.stream
            down.closing = True
            # both FINs came (the client's too): Envoy counts a remote close
            down.peer_closed = why in ("downstream_closed", "upstream_closed")
            stream.send_data(b"", True)
        elif why == "upstream_reset":
            info.response_flags.append("UC")
            if stream.request_complete:  # else counted as answered before its end
                hstats.downstream_rq_rx_reset.inc()  # Envoy 1.40 counts the reset so
        self._complete(resp)
        if why == "upstream_reset" or (h1 is not None and why == "upstream_closed"):
            info.response_code_details = ("upstream_reset_after_response_started"
                                          "{connection_termination}")
        elif why == "downstream_closed" and h1 is not None and req.method == "CONNECT":
            info.response_code_details = "downstream_remote_disconnect"

    def _tunnel_h2(self, us, resp) -> None:
        """A CONNECT the HTTP/2 upstream answered 2xx: its stream is the tunnel's upstream
        side, the downstream HTTP/1 connection's socket or HTTP/2 stream the other."""
        stream = self.stream
        req = stream.request
        info = stream.info
        hstats = stream.hcm.stats
        h1 = None
        if req.version == "HTTP/2":
            def down_write(data):
                stream.send_data(data, False)
                stream.flush()

            def down_end():
                stream.send_data(b"", True)
                stream.flush()
            down_read = stream.read_body
        else:
            down = stream.fm.stream
            h1 = down.h1
            rest = [h1.parser.upgrade_rest or b""]
            h1.parser.upgrade_rest = b""
            sock = h1.sock
            sock.settimeout(stream.hcm.stream_idle_timeout or None)

            def down_read():
                data = rest.pop() if rest and rest[0] else sock.recv(upgrades.RECV_SIZE)
                rest.clear()
                if not data:
                    return None
                hstats.downstream_cx_rx_bytes_total.inc(len(data))
                info.bytes_received += len(data)
                return data

            def down_write(data):
                sock.sendall(data)
                hstats.downstream_cx_tx_bytes_total.inc(len(data))
                info.bytes_sent += len(data)

            def down_end():
                try:
                    sock.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
        why = upgrades.relay_upstream_stream(down_read, down_write, down_end, us)
        us.done()
        if h1 is not None:
            stream.fm.stream.closing = True
            stream.fm.stream.peer_closed = why != "upstream_reset"
            if why != "upstream_reset":
                stream.send_data(b"", True)  # the response's end (no bytes on the wire)
        if why == "upstream_reset":
            info.response_flags.append("UR")
            info.response_code_details = "upstream_reset_after_response_started"
            stream.reset(*((upgrades.CONNECT_ERROR,) if h1 is None else ()))
        elif h1 is not None and why == "downstream_closed":
            info.response_flags.append("DC")
        self._complete(resp)
        if why == "upstream_reset":
            info.response_code_details = "upstream_reset_after_response_started"
        elif h1 is not None and why == "downstream_closed":
            info.response_code_details = "downstream_remote_disconnect"

    def _retry_response(self, resp) -> bool:
        """Whether this response head is retried rather than sent downstream; a retried
        one is counted in the cluster's retry.upstream_rq_<code> tree only."""
        retry = self.retry
        if not should_retry(retry, retry.policy.retry_response(resp), self.stream, True):
            return False
        code, cls = self.cluster.stats.retried_response(resp.status)
        code.inc()
        cls.inc()
        if resp.status >= 500:
            self.host.rq_error.inc()
        return True

    def _send_response_head(self, resp, end_stream: bool, upgrade=None) -> None:
        stream = self.stream
        now = stream.info.response_start_mono = time.monotonic()  # first upstream byte
        h = resp.headers = resp.headers.without_hop_by_hop(
            HOP_BY_HOP if resp.content_length is not None else _NOT_RELAYED_UNFRAMED)
        if upgrade is not None:
            # a 101 keeps the upstream's Upgrade and Connection as they were, and gets
            # no x-envoy-upstream-service-time (Envoy 1.40)
            for name, value in zip(("upgrade", "connection"), upgrade):
                if value is not None:
                    h.add(name, value)
        elif stream.request.upgrade is None:
            # Envoy stamps it only once the downstream request is complete, which an
            # upgrade request never is (whatever the upstream answers)
            h.set("x-envoy-upstream-service-time", str(int((now - self.t0) * 1000)))
        if self.route.attempt_count_in_response:
            h.set("x-envoy-attempt-count", str(stream.info.attempt_count))
        lb_ctx = getattr(stream, "lb_context", None)
        if lb_ctx is not None and lb_ctx.set_cookies:  # a hash policy's generated cookie
            for cookie in lb_ctx.set_cookies:
                h.add("set-cookie", cookie)
        # The upstream's head goes on downstream; its framing fields described the
        # upstream hop.
        resp.version = "HTTP/1.1"
        resp.keep_alive = True
        resp.chunked = False
        stream.send_headers(resp, end_stream)

    def _complete(self, resp) -> None:
        cstats = self.cluster.stats
        status = resp.status
        code, cls = cstats.response(status)
        code.inc()
        cls.inc()
        cstats.upstream_rq_completed.inc()
        cstats.upstream_rq_time.record((time.monotonic() - self.t0) * 1000.0)
        if status >= 500:
            self.host.rq_error.inc()
        else:
            self.host.rq_success.inc()
        self.stream.info.response_code_details = "via_upstream"


def _pump(stream, us, read_body) -> None:
    """Downstream request body (and trailers) to a multiplexed upstream stream."""
    try:
        while True:
            data = read_body()
            if data is None:
                trailers = stream.trailers
                if trailers is not None and trailers.items:
                    us.encode_trailers(trailers)
                else:
                    us.encode_data(b"", True)
                stream.info.request_end_mono = time.monotonic()
                return
            us.encode_data(data, False)
    except DownstreamGone:
        us.interrupt(DownstreamGone())
    except ConnectionClosed:
        pass  # the upstream stream or connection ended; the relay sees why
