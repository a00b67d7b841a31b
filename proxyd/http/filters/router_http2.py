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

from proxyd.http import local_reply
from proxyd.http.codec import http2 as h2c
from proxyd.http.filters.router import (RouteTimeout, _complete, _send_response_head,
                                        _upstream_headers, begin_upstream_request,
                                        cluster_local_reply)
from proxyd.http.headers import Headers
from proxyd.http.http2_connection import ConnectionClosed
from proxyd.http.message import ResponseHead
from proxyd.http.stream import DownstreamGone
from proxyd.upstream.cluster import UpstreamConnectError
from proxyd.upstream.pool_http2 import CONNECTION_GONE, DOWNSTREAM_GONE


class UpstreamStreamReset(Exception):
    def __init__(self, code: int):
        super().__init__(code)
        self.code = code


def request_headers(stream, route, host, cluster) -> list:
    """HTTP/2 request head for the upstream: pseudo-headers from the request, Host
    folded into :authority, hop-by-hop fields dropped except `te: trailers` (gRPC
    servers require it)."""
    req = stream.request
    h = _upstream_headers(stream, route, host)
    out = [(":method", req.method),
           (":scheme", "https" if getattr(cluster, "tls", None) is not None else "http"),
           (":authority", req.authority or h.get("host") or ""), (":path", req.path)]
    drop = h2c.CONNECTION_SPECIFIC
    out.extend(kv for kv in h.items if kv[0] not in drop)
    te = req.headers.get("te")
    if te is not None and "trailers" in te.lower():
        out.append(("te", "trailers"))
    return out


def forward_http2(stream, route, cluster, host, timeout) -> None:
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
    try:
        headers = request_headers(stream, route, host, cluster)
        end = stream.request_complete
        for attempt in (0, 1):
            try:
                us = host.h2pool.open_stream(headers, end)
            except UpstreamConnectError as e:
                host.rq_error.inc()
                cluster_local_reply(stream, cstats, local_reply.connect_failure(e.reason))
                return
            info.upstream_local_address = us.conn.local_address
            info.upstream_start_mono = time.monotonic()
            if not end:
                pump = gevent.spawn(_pump_request, stream, us)
            try:
                _relay_response(stream, us, cstats, host, t0)
                return
            except UpstreamStreamReset as e:
                # Refused (GOAWAY raced us, or the peer's stream limit): nothing was
                # processed upstream, so a bodiless request may go to a fresh connection.
                if (attempt or e.code != h2c.REFUSED_STREAM or not end
                        or stream.headers_sent):
                    raise
                us = None
    except RouteTimeout as t:
        if t is not expired:
            raise
        cstats.upstream_rq_timeout.inc()
        host.rq_timeout.inc()
        _reset_upstream(us, cstats)
        _fail(stream, host, cstats, local_reply.ROUTE_TIMEOUT)
    except UpstreamStreamReset as e:
        cstats.upstream_rq_rx_reset.inc()
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


def _pump_request(stream, us) -> None:
    """Downstream request body (and trailers) to the upstream stream."""
    try:
        while True:
            data = stream.read_body()
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


def _relay_response(stream, us, cstats, host, t0: float) -> None:
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
            ended = ev[3]
            no_body = no_body or resp.status in (204, 304)
            _send_response_head(stream, resp, t0, ended)
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
