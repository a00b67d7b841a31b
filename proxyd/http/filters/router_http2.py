"""The router's HTTP/2 upstream path: one stream on a multiplexed connection.

The request body is pumped upstream by a helper greenlet while the stream's own
greenlet relays the response, because gRPC's streaming calls interleave both
directions (a bidi client may wait for a response message before sending more).
Response DATA is acknowledged upstream only after it was handed downstream, so a slow
client throttles the upstream at its flow-control window.
"""
from __future__ import annotations

import time

import gevent

from proxyd.http import grpc, local_reply
from proxyd.http.codec import http2 as h2c
from proxyd.http.filters.router import (PerTryTimeout, RouteTimeout, _complete, _Retry,
                                        _send_response_head, attempt_count,
                                        begin_upstream_request, cluster_local_reply,
                                        retry_response, should_retry, start_per_try_timer)
from proxyd.http.headers import Headers
from proxyd.http.http2_connection import ConnectionClosed
from proxyd.http.message import ResponseHead
from proxyd.http.stream import DownstreamGone
from proxyd.router.retry_policy import (CONNECT_FAILURE, PER_TRY_TIMEOUT, REFUSED_STREAM,
                                        RESET)
from proxyd.upstream import outlier
from proxyd.upstream.health import IMMEDIATE_FAIL_HEADER
from proxyd.upstream.cluster import UpstreamConnectError
from proxyd.upstream.pool_http2 import CONNECTION_GONE, DOWNSTREAM_GONE


class UpstreamStreamReset(Exception):
    def __init__(self, code: int):
        super().__init__(code)
        self.code = code


def request_headers(stream, h, cluster) -> list:
    """HTTP/2 request head for the upstream from the upstream headers `h`:
    pseudo-headers from the request, Host folded into :authority, hop-by-hop fields
    dropped except `te: trailers` (gRPC servers require it)."""
    req = stream.request
    out = [(":method", req.method),
           (":scheme", "https" if getattr(cluster, "tls", None) is not None else "http"),
           (":authority", req.authority or h.get("host") or ""), (":path", req.path)]
    drop = h2c.CONNECTION_SPECIFIC
    out.extend(kv for kv in h.items if kv[0] not in drop)
    te = req.headers.get("te")
    if te is not None and "trailers" in te.lower():
        out.append(("te", "trailers"))
    return out


def forward_http2(stream, route, cluster, host, timeout, h, retry) -> None:
    """One attempt over HTTP/2; raises _Retry when the retry policy retries it."""
    info = stream.info
    cstats = cluster.stats
    us = None
    pump = None
    requests = cluster.resources.requests
    if not requests.can_create():
        cstats.upstream_rq_active_overflow.inc()
        stream.local_reply(*local_reply.OVERFLOW)
        return
    requests.inc()
    t0, expired, timer = begin_upstream_request(info, cstats, host, timeout)
    per_try = PerTryTimeout() if retry is not None else None
    try_timer = start_per_try_timer(retry, per_try)
    read_body = retry.body_reader(stream) if retry is not None else stream.read_body
    attempts = attempt_count(stream, route, retry)
    try:
        if route.attempt_count_in_request:
            h.set("x-envoy-attempt-count", str(info.attempt_count))
        headers = request_headers(stream, h, cluster)
        # a retry replays a buffered body as DATA even when the downstream is done
        end = stream.request_complete and (retry is None or not retry.chunks)
        for attempt in (0, 1):
            try:
                us = host.h2pool.open_stream(headers, end)
            except UpstreamConnectError as e:
                host.rq_error.inc()
                if should_retry(retry, retry.policy.retry_failure(CONNECT_FAILURE)
                                if retry else False, stream):
                    raise _Retry() from None
                cluster_local_reply(stream, cstats, local_reply.connect_failure(e.reason))
                return
            info.upstream_local_address = us.conn.local_address
            info.upstream_start_mono = time.monotonic()
            if not end:
                pump = gevent.spawn(_pump_request, stream, us, read_body)
            try:
                _relay_response(stream, us, cstats, host, t0, retry, attempts)
                return
            except UpstreamStreamReset as e:
                # Refused (GOAWAY raced us, or the peer's stream limit): nothing was
                # processed upstream, so a bodiless request may go to a fresh connection.
                if (attempt or e.code != h2c.REFUSED_STREAM or not end
                        or stream.headers_sent):
                    raise
                us = None
    except _Retry:
        _reset_upstream(us, cstats)
        raise
    except RouteTimeout as t:
        if us is not None and host.outlier is not None and (t is per_try or t is expired):
            host.outlier.result(outlier.TIMEOUT)
        if t is per_try:
            cstats.upstream_rq_per_try_timeout.inc()
            _reset_upstream(us, cstats)
            host.rq_error.inc()
            if should_retry(retry, retry.policy.retry_failure(PER_TRY_TIMEOUT), stream):
                raise _Retry() from None
            cluster_local_reply(stream, cstats, local_reply.PER_TRY_TIMEOUT)
            return
        if t is not expired:
            raise
        cstats.upstream_rq_timeout.inc()
        host.rq_timeout.inc()
        _reset_upstream(us, cstats)
        _fail(stream, host, cstats, local_reply.ROUTE_TIMEOUT)
    except UpstreamStreamReset as e:
        cstats.upstream_rq_rx_reset.inc()
        if host.outlier is not None:
            host.outlier.result(outlier.CONNECT_FAILED)
        if retry is not None and not stream.headers_sent:
            why = REFUSED_STREAM if e.code == h2c.REFUSED_STREAM else RESET
            if should_retry(retry, retry.policy.retry_failure(why), stream):
                host.rq_error.inc()
                raise _Retry() from None
        if not stream.headers_sent:
            _fail(stream, host, cstats, local_reply.upstream_reset())
        else:
            host.rq_error.inc()
            info.response_code_details = "upstream_reset_after_response_started"
            info.response_flags.append("UR")
            stream.reset(*((e.code,) if e.code > 0 and _is_h2(stream) else ()))
    except BaseException:
        # the client went away, or the stream was interrupted (request_timeout,
        # stream_idle_timeout): cancel the upstream stream, the caller answers
        _reset_upstream(us, cstats)
        raise
    finally:
        timer.close()
        try_timer.close()
        if pump is not None and not pump.dead:
            pump.kill(block=False)
        if us is not None:
            us.done()
        requests.dec()
        cstats.upstream_rq_active.dec()
        host.rq_active.dec()


def _is_h2(stream) -> bool:
    return stream.request.version == "HTTP/2"


def _reset_upstream(us, cstats) -> None:
    if us is not None and not us.closed and us.reset(h2c.CANCEL):
        cstats.upstream_rq_tx_reset.inc()


def _fail(stream, host, cstats, reply) -> None:
    """A local reply if nothing was sent yet, else a reset (Stream.local_reply does both)."""
    host.rq_error.inc()
    cluster_local_reply(stream, cstats, reply)


def _pump_request(stream, us, read_body) -> None:
    """Downstream request body (and trailers) to the upstream stream."""
    try:
        while True:
            data = read_body()
            if data is None:
                trailers = getattr(stream, "trailers", None)
                if trailers is not None and trailers.items:
                    us.send_trailers(trailers)
                else:
                    us.send_data(b"", True)
                stream.info.request_end_mono = time.monotonic()
                return
            us.send_data(data, False)
    except DownstreamGone:
        us.push((DOWNSTREAM_GONE,))
    except ConnectionClosed:
        pass  # the upstream stream or connection ended; the relay sees why


def _relay_response(stream, us, cstats, host, t0: float, retry, attempts: int) -> None:
    ended = False
    resp = None
    events = us.events
    no_body = stream.request.method == "HEAD"
    while True:
        ev = us.next_event()
        kind = ev[0]
        if kind == h2c.DATA:
            if not ended and not no_body:
                stream.send_data(ev[2], False)
            us.ack(ev[3])
        elif kind == h2c.HEADERS:
            resp = _response_head(ev[2])
            if host.outlier is not None:
                host.outlier.http_status(grpc.outlier_status(stream.request, resp))
            if host.hc_fail is not None and IMMEDIATE_FAIL_HEADER in resp.headers:
                host.hc_fail.inc()  # Envoy: the host fails its active health check at once
            if retry is not None and retry_response(retry, stream, cstats, host, resp):
                raise _Retry()
            ended = ev[3]
            no_body = no_body or resp.status in (204, 304)
            _send_response_head(stream, resp, t0, ended, attempts)
        elif kind == h2c.TRAILERS:
            trailers = Headers(ev[2])
            if not ended:
                ended = True
                stream.send_trailers(trailers)
        elif kind == h2c.END:
            us.done()  # the upstream stream is over: free its slot before the downstream
            if not ended:  # write yields (its client may already send the next request)
                stream.send_data(b"", True)
            stream.flush()
            if resp is None:
                raise UpstreamStreamReset(h2c.PROTOCOL_ERROR)
            _complete(cstats, host, resp, stream.info, t0)
            return
        elif kind == h2c.RESET:
            us.done()
            raise UpstreamStreamReset(ev[2] if ev[2] != CONNECTION_GONE else -1)
        elif kind == DOWNSTREAM_GONE:
            raise DownstreamGone()
        if not events:
            stream.flush()


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
