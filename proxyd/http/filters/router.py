"""envoy.filters.http.router: the terminal filter that forwards a request upstream.

Direct responses and redirects are answered here too, as in Envoy. The exchange runs in
the stream's greenlet: the request is written upstream as it is read, the response is
relayed as it arrives, and each upstream read is followed by one downstream write, so a
slow client slows the upstream read instead of growing a buffer.
"""
from __future__ import annotations

import time

import gevent

from proxyd.http import grpc, local_reply
from proxyd.http.codec.http1 import (DATA, HEAD, LAST_CHUNK, ProtocolError,
                                     ResponseParser, encode_chunk, encode_request_head)
from proxyd.http.blocking_terminal import BlockingTerminalFilter
from proxyd.http.headers import HOP_BY_HOP
from proxyd.http.message import ResponseHead
from proxyd.network.io import send_all
from proxyd.router.retry_policy import (CONNECT_FAILURE, PER_TRY_TIMEOUT, RESET,
                                        RetryState, request_policy)
from proxyd.upstream import outlier
from proxyd.upstream.health import IMMEDIATE_FAIL_HEADER
from proxyd.upstream.cluster import UpstreamConnectError
from proxyd.upstream.resource_manager import Overflow

RECV_SIZE = 65536
# proxyd answers 100-continue itself, as Envoy does by default: Expect is not forwarded
_NOT_FORWARDED = HOP_BY_HOP | {"expect"}
# a response without framing of its own is re-framed downstream, never by a stale length
_NOT_RELAYED_UNFRAMED = HOP_BY_HOP | {"content-length"}
_timeout_ms: dict = {}  # route timeout (s) -> its x-envoy-expected-rq-timeout-ms value


class RouteTimeout(Exception):
    pass


class PerTryTimeout(RouteTimeout):
    """The policy's per_try_timeout ended one attempt."""


class UpstreamReset(Exception):
    pass


class Router(BlockingTerminalFilter):
    """One per stream. `serve` runs in the stream's greenlet once the request headers
    passed every filter before it; a missing route is answered here (404 NR), so a
    filter may answer or re-route an unrouted request first."""

    def __init__(self, ctx):
        self.ctx = ctx

    def serve(self) -> None:
        stream = self
        stream.hcm.stats.rq_total.inc()  # every request that reaches the router (Envoy)
        route = stream.route
        if route is None:
            stream.hcm.stats.no_route.inc()
            stream.local_reply(*local_reply.NO_ROUTE)
            return
        kind = route.kind
        if kind == "direct":
            stream.hcm.stats.rq_direct_response.inc()
            location = route.direct_location(stream.request)
            stream.local_reply(route.direct_status, route.direct_body, "direct_response", None,
                               [("location", location)] if location else None)
            return False
        if kind == "redirect":  # Envoy 1.40 counts a route's redirect as a direct response
            stream.hcm.stats.rq_direct_response.inc()
            status, location = route.redirect(stream.request)
            stream.local_reply(status, None, "direct_response", None,  # Envoy's details
                               [("location", location)])
            return False
        req = stream.request
        info = stream.info
        cluster = self.ctx.cluster_manager.get(route.cluster_for(req))
        if cluster is None:  # %UPSTREAM_CLUSTER% stays unset, as in Envoy
            stream.hcm.stats.no_cluster.inc()
            stream.local_reply(*local_reply.NO_CLUSTER)
            return False
        info.upstream_cluster = cluster.name
        host = cluster.choose_host()
        if host is None:
            cluster.stats.upstream_cx_none_healthy.inc()
            cluster_local_reply(stream, cluster.stats, local_reply.NO_HEALTHY_UPSTREAM)
            return False
        forward(stream, route, cluster, host)
        return False


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


def _upstream_headers(stream, route, host):
    req = stream.request
    route.finalize_request(req, stream.info)
    h = req.headers.without_hop_by_hop(_NOT_FORWARDED)
    if stream.info.trace is not None:
        stream.hcm.tracer.inject(stream.info.trace, h)
    if route.auto_host_rewrite and host.hostname:
        req.authority = host.hostname
        h.set("host", host.hostname)
    elif "host" not in h:
        h.items.insert(0, ("host", req.authority))  # HTTP/2 downstream: from :authority
    if req.chunked:
        h.add("transfer-encoding", "chunked")
    timeout = route.timeout
    if timeout:
        ms = _timeout_ms.get(timeout)
        if ms is None:
            if len(_timeout_ms) > 256:  # config churn: stay bounded
                _timeout_ms.clear()
            ms = _timeout_ms[timeout] = str(int(timeout * 1000))
        h.set("x-envoy-expected-rq-timeout-ms", ms)
    return h


def begin_upstream_request(info, cstats, host, timeout):
    """Count the request as started (the caller's `finally` ends it) and arm the route
    timeout; returns (start time, the exception the timer raises, the timer)."""
    cstats.upstream_rq_total.inc()
    cstats.upstream_rq_active.inc()
    host.rq_total.inc()
    host.rq_active.inc()
    info.upstream_host = host.addr_str
    expired = RouteTimeout()  # the timer raises this instance, so a nested one is told apart
    if timeout:
        # A bare loop timer throwing into this greenlet is what gevent.Timeout does,
        # at a third of its cost (no BaseException subclass to build per request).
        timer = gevent.get_hub().loop.timer(timeout)
        timer.start(gevent.getcurrent().throw, expired, update=True)
    else:
        timer = _NO_TIMER
    return time.monotonic(), expired, timer


class _NoTimer:
    """Stands in for the timer of a route without a timeout."""
    __slots__ = ()

    def close(self) -> None:
        pass


_NO_TIMER = _NoTimer()


def forward(stream, route, cluster, host) -> None:
    """Proxy one request to `host` over a pooled HTTP/1.1 connection (or HTTP/2 when
    the cluster's protocol options say so), retrying as the route's retry policy says
    on another host chosen by the load balancer. The route timeout spans every attempt
    and back-off, as in Envoy."""
    req = stream.request
    timeout = grpc.effective_timeout(route, req)
    policy = route.retry_policy
    if stream.hcm.internal_networks:
        internal = stream.hcm.is_internal(req, stream.fm.stream.conn.remote_ip)
        policy = request_policy(policy, req.headers, internal, timeout)
    headers = _upstream_headers(stream, route, host)
    if policy is None:
        _attempt(stream, route, cluster, host, timeout, headers, None)
        return
    per_try = policy.per_try_timeout
    if per_try and (not timeout or per_try < timeout):  # the upstream expects one try
        headers.set("x-envoy-expected-rq-timeout-ms", str(int(per_try * 1000)))
    retry = RetryState(policy, cluster)
    start = time.monotonic()
    remaining = timeout
    try:
        while True:
            try:
                _attempt(stream, route, cluster, host, remaining, headers, retry)
                return
            except _Retry:
                pass
            delay = retry.backoff()
            if timeout:
                remaining = timeout - (time.monotonic() - start) - delay
                if remaining <= 0:  # the back-off outlasts the route timeout
                    gevent.sleep(max(0.0, remaining + delay))
                    cluster.stats.upstream_rq_timeout.inc()
                    cluster_local_reply(stream, cluster.stats, local_reply.ROUTE_TIMEOUT)
                    return
            gevent.sleep(delay)
            host = retry.choose_host(cluster)
            if host is None:
                cluster.stats.upstream_cx_none_healthy.inc()
                cluster_local_reply(stream, cluster.stats, local_reply.NO_HEALTHY_UPSTREAM)
                return
    finally:
        retry.release()


class _Retry(Exception):
    """This attempt failed and is retried; nothing of it went downstream."""


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


def start_per_try_timer(retry, expired):
    """Arm the policy's per-try timeout for one attempt (or nothing)."""
    if retry is None or not retry.policy.per_try_timeout:
        return _NO_TIMER
    timer = gevent.get_hub().loop.timer(retry.policy.per_try_timeout)
    timer.start(gevent.getcurrent().throw, expired, update=True)
    return timer


def attempt_count(stream, route, retry) -> int:
    """Note this attempt's number; returns the x-envoy-attempt-count value, or 0 when
    the route does not send it."""
    n = stream.info.attempt_count = retry.attempts if retry is not None else 1
    return n if route.attempt_count_in_response else 0


def _attempt(stream, route, cluster, host, timeout, headers, retry) -> None:
    req = stream.request
    if retry is not None:
        retry.tried.add(host)
    if host.h2pool is not None and (cluster.http2_mode == "h2" or req.version == "HTTP/2"):
        from proxyd.http.filters.router_http2 import forward_http2
        return forward_http2(stream, route, cluster, host, timeout, headers, retry)
    info = stream.info
    cstats = cluster.stats
    conn = None
    requests = None  # the circuit breaker's request count, once attached to a connection
    t0, expired, timer = begin_upstream_request(info, cstats, host, timeout)
    per_try = PerTryTimeout() if retry is not None else None
    try_timer = start_per_try_timer(retry, per_try)
    read_body = retry.body_reader(stream) if retry is not None else stream.read_body
    attempts = attempt_count(stream, route, retry)
    try:
        if route.attempt_count_in_request:
            headers.set("x-envoy-attempt-count", str(info.attempt_count))
        head_bytes = encode_request_head(req, headers)
        for attempt in (0, 1):
            try:
                conn = host.pool.acquire()
            except UpstreamConnectError as e:
                host.rq_error.inc()
                if should_retry(retry, retry.policy.retry_failure(CONNECT_FAILURE)
                                if retry else False, stream):
                    raise _Retry() from None
                cluster_local_reply(stream, cstats, local_reply.connect_failure(e.reason))
                return
            except Overflow:
                stream.local_reply(*local_reply.OVERFLOW)
                return
            if requests is None:
                if not cluster.resources.requests.can_create():
                    cstats.upstream_rq_active_overflow.inc()
                    host.pool.release(conn)
                    conn = None
                    stream.local_reply(*local_reply.OVERFLOW)
                    return
                requests = cluster.resources.requests
                requests.inc()
            info.upstream_local_address = conn.local_address
            info.upstream_start_mono = time.monotonic()
            try:
                _exchange(stream, conn, head_bytes, cstats, host, t0, read_body, retry,
                          attempts)
                return
            except UpstreamReset:
                # A reused keep-alive connection the upstream closed just now: retry a
                # bodiless request once on a fresh connection (nothing was sent downstream).
                conn.close()
                if attempt or not conn.reused or req.has_body or stream.headers_sent:
                    raise
                conn = None
    except _Retry:
        raise
    except RouteTimeout as t:
        if conn is not None and host.outlier is not None and (t is per_try or t is expired):
            host.outlier.result(outlier.TIMEOUT)
        if t is per_try:
            cstats.upstream_rq_per_try_timeout.inc()
            _close(conn, cstats)
            if should_retry(retry, retry.policy.retry_failure(PER_TRY_TIMEOUT), stream):
                raise _Retry() from None
            _abort(stream, conn, cstats, local_reply.PER_TRY_TIMEOUT)
            return
        if t is not expired:
            raise
        cstats.upstream_rq_timeout.inc()
        host.rq_timeout.inc()
        _abort(stream, conn, cstats, local_reply.ROUTE_TIMEOUT)
    except UpstreamReset:
        cstats.upstream_rq_rx_reset.inc()
        if host.outlier is not None:  # Envoy: any reset is a local-origin connect failure
            host.outlier.result(outlier.CONNECT_FAILED)
        if should_retry(retry, retry.policy.retry_failure(RESET) if retry else False, stream):
            _close(conn, cstats)
            host.rq_error.inc()
            raise _Retry() from None
        _abort(stream, conn, cstats, local_reply.upstream_reset())
    except ProtocolError:
        _abort(stream, conn, cstats, local_reply.upstream_protocol_error())
    except BaseException:
        # the client went away, or the stream was interrupted (request_timeout): the
        # upstream connection is mid-exchange and cannot be reused
        if conn is not None and conn.sock is not None:
            conn.close()
            cstats.upstream_cx_destroy_local.inc()
            cstats.upstream_rq_tx_reset.inc()  # HTTP/1 resets a request by closing
        raise
    finally:
        timer.close()
        try_timer.close()
        if requests is not None:
            requests.dec()
        cstats.upstream_rq_active.dec()
        host.rq_active.dec()


def _close(conn, cstats) -> None:
    """Drop the connection of an abandoned attempt (HTTP/1 cannot cancel otherwise)."""
    if conn is not None and conn.sock is not None:
        conn.close()
        cstats.upstream_cx_destroy_local.inc()


def _abort(stream, conn, cstats, reply) -> None:
    """The exchange failed: a local reply if nothing was sent yet, else a reset (both
    are what Stream.local_reply does)."""
    if conn is not None:
        conn.close()
        conn.host.rq_error.inc()
    cluster_local_reply(stream, cstats, reply)


def _exchange(stream, conn, head_bytes: bytes, cstats, host, t0: float, read_body, retry,
              attempts: int) -> None:
    req = stream.request
    info = stream.info
    sock = conn.sock
    # request
    sent = 0
    try:
        if req.has_body:
            send_all(sock, head_bytes)
            sent = len(head_bytes)
            chunked = req.chunked
            while True:
                data = read_body()
                if data is None:
                    if chunked:
                        send_all(sock, LAST_CHUNK)
                        sent += 5
                    break
                if chunked:
                    data = encode_chunk(data)
                send_all(sock, data)
                sent += len(data)
        else:
            send_all(sock, head_bytes)
            sent = len(head_bytes)
    except OSError:
        raise UpstreamReset() from None
    finally:  # also what went out before a timeout or reset cut the request short
        cstats.upstream_cx_tx_bytes_total.inc(sent)
    info.request_end_mono = time.monotonic()
    # response
    parser = ResponseParser(head_only=req.method == "HEAD")
    events = parser.events
    resp = None
    keep_alive = False
    rx = 0
    try:
        while True:
            try:
                data = sock.recv(RECV_SIZE)
            except OSError:
                data = b""
            if data:
                rx += len(data)
                parser.feed(data)
            elif not parser.feed_eof():
                cstats.upstream_cx_rx_bytes_total.inc(rx)
                cstats.upstream_cx_destroy_remote.inc()
                raise UpstreamReset()
            while events:
                kind, payload = events.popleft()
                if kind == DATA:
                    stream.send_data(payload, False)
                elif kind == HEAD:
                    if payload.status < 200:
                        continue  # interim 1xx: proxyd sent its own 100 Continue
                    resp = payload
                    if host.outlier is not None:
                        host.outlier.http_status(grpc.outlier_status(req, resp))
                    if host.hc_fail is not None and IMMEDIATE_FAIL_HEADER in resp.headers:
                        host.hc_fail.inc()  # Envoy: the host fails its active health check at once
                    if retry is not None and retry_response(retry, stream, cstats, host, resp):
                        cstats.upstream_cx_rx_bytes_total.inc(rx)
                        _close(conn, cstats)
                        raise _Retry()
                    keep_alive = resp.keep_alive
                    _send_response_head(stream, resp, t0, parser.done and len(events) == 1,
                                        attempts)
                else:  # END
                    stream.send_data(b"", True)
                    stream.flush()
                    cstats.upstream_cx_rx_bytes_total.inc(rx)
                    _complete(cstats, host, resp, info, t0)
                    if parser.extra:
                        # bytes past the end of the response (a wrong Content-Length, a
                        # body after HEAD) would be read as the next request's answer
                        cstats.upstream_cx_protocol_error.inc()
                        conn.close()
                        cstats.upstream_cx_destroy_local.inc()
                    elif keep_alive and parser.done:
                        host.pool.release(conn)
                    else:
                        conn.close()
                        cstats.upstream_cx_destroy_local.inc()
                    return
            stream.flush()
    except ProtocolError:
        cstats.upstream_cx_rx_bytes_total.inc(rx)
        raise


def retry_response(retry, stream, cstats, host, resp) -> bool:
    """Whether this response head is retried rather than sent downstream; a retried one
    is counted in the cluster's retry.upstream_rq_<code> tree only."""
    if not should_retry(retry, retry.policy.retry_response(resp), stream, True):
        return False
    code, cls = cstats.retried_response(resp.status)
    code.inc()
    cls.inc()
    if resp.status >= 500:
        host.rq_error.inc()
    return True


def _send_response_head(stream, resp: ResponseHead, t0: float, end_stream: bool,
                        attempts: int = 0) -> None:
    stream.info.response_start_mono = time.monotonic()  # %RESPONSE_DURATION%: first upstream byte
    h = resp.headers = resp.headers.without_hop_by_hop(
        HOP_BY_HOP if resp.content_length is not None else _NOT_RELAYED_UNFRAMED)
    h.set("x-envoy-upstream-service-time", str(int((time.monotonic() - t0) * 1000)))
    if attempts:
        h.set("x-envoy-attempt-count", str(attempts))
    # The upstream's head goes on downstream; its framing fields described the upstream hop.
    resp.version = "HTTP/1.1"
    resp.keep_alive = True
    resp.chunked = False
    stream.send_headers(resp, end_stream)


def _complete(cstats, host, resp, info, t0: float) -> None:
    status = resp.status
    code, cls = cstats.response(status)
    code.inc()
    cls.inc()
    cstats.upstream_rq_completed.inc()
    cstats.upstream_rq_time.record((time.monotonic() - t0) * 1000.0)
    if status >= 500:
        host.rq_error.inc()
    else:
        host.rq_success.inc()
    info.response_code_details = "via_upstream"


def create(config, ctx):
    """The FilterFactoryCb: a Router for each stream."""
    def factory(chain) -> None:
        chain.add_stream_decoder_filter(Router(ctx))
    return factory
