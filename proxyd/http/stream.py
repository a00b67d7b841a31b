"""The protocol-neutral life of one request: request id, the filter chain (run by a
`FilterManager`), local replies, stats and the access log. Codecs subclass `Stream` and
supply the I/O (`read_body`, `send_headers`, `send_data`, `flush`, `reset`); those are
the ends of the filter chain, never called by filters directly."""
from __future__ import annotations

import time
from email.utils import formatdate

import gevent

from proxyd.http.filter_manager import FilterManager
from proxyd.http.headers import Headers
from proxyd.http.message import ResponseHead, StreamInfo
from proxyd.http import grpc
from proxyd.http.stream_errors import (DownstreamGone, LocalReplySent, MaxStreamDurationReached,
                                       RequestTimeout, StreamIdleTimeout)
from proxyd.http.stream_timers import StreamTimers

__all__ = ["Stream", "DownstreamGone", "RequestTimeout", "StreamIdleTimeout", "http_date"]

_date_cache = [0, ""]


def http_date() -> str:
    """RFC 9110 Date, formatted at most once a second."""
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache[0] = now
        _date_cache[1] = formatdate(now, usegmt=True)
    return _date_cache[1]


class Stream:
    __slots__ = ("hcm", "conn", "request", "info", "fm", "headers_sent", "closing",
                 "request_complete", "timers")

    def __init__(self, hcm, conn, request, protocol: str):
        self.hcm = hcm
        self.conn = conn
        self.request = request
        self.info = info = StreamInfo.for_connection(conn, protocol)
        info.request = request
        self.fm = None
        self.headers_sent = False
        self.closing = False
        self.request_complete = not request.has_body
        self.timers = None  # StreamTimers, once a duration or a route idle timeout applies
        if self.request_complete:
            info.request_end_mono = info.start_mono

    @property
    def route(self):
        return self.fm.route() if self.fm is not None else None

    def run(self) -> None:
        """Request id and forwarding headers, then the filter chain until the response
        ends; the router (the last filter) answers, or answers 404 when no route matched."""
        hcm = self.hcm
        stats = hcm.stats
        stats.downstream_rq_total.inc()
        stats.downstream_rq_active.inc()
        req = self.request
        info = self.info
        timer = None
        if hcm.request_timeout and not self.request_complete:
            # Fires only while the request is still arriving and no response started
            # (Envoy disarms it then), so a slow upstream or a long bidirectional
            # stream is never cut by this timer.
            glet = gevent.getcurrent()
            timer = gevent.get_hub().loop.timer(hcm.request_timeout)
            timer.start(lambda: self.request_complete or self.headers_sent
                        or glet.throw(RequestTimeout()))
        limit = hcm.max_requests_per_connection
        if limit:
            conn = self.conn
            n = conn.http_requests = conn.http_requests + 1
            if n >= limit:  # Envoy counts every stream from the limit on
                stats.downstream_cx_max_requests_reached.inc()
                self.drain_connection()
        fm = self.fm = FilterManager(self)
        if hcm.max_stream_duration:
            self.stream_timers().arm_duration(hcm.max_stream_duration)
        try:
            try:
                self._start(fm)
            finally:  # no timer may throw into the error handlers below
                if self.timers is not None:
                    self.timers.close()
        except LocalReplySent:
            pass
        except DownstreamGone:
            info.response_flags.append("DC")
            stats.downstream_rq_rx_reset.inc()
            self.closing = True
        except RequestTimeout:
            stats.downstream_rq_timeout.inc()
            self.closing = True
            try:
                self.local_reply(408, b"request timeout", "request_overall_timeout")
            except DownstreamGone:
                pass
        except StreamIdleTimeout:
            stats.downstream_rq_idle_timeout.inc()
            self.closing = True
            try:  # Envoy: 408 while the request is still arriving, else 504
                self.local_reply(504 if self.request_complete else 408, b"stream timeout",
                                 "stream_idle_timeout", "SI")
            except DownstreamGone:
                pass
        except MaxStreamDurationReached:
            stats.downstream_rq_max_duration_reached.inc()
            try:
                fm.send_local_reply(504 if self.request_complete else 408,
                                    b"downstream duration timeout", "max_duration_timeout",
                                    None, None, grpc.DEADLINE_EXCEEDED)
            except DownstreamGone:
                pass
        finally:
            if timer is not None:
                timer.close()
            fm.destroy()
            self._complete()
            self.fm = None

    def _start(self, fm) -> None:
        hcm = self.hcm
        req = self.request
        info = self.info
        headers = req.headers
        # Envoy regenerates x-request-id only for an external request at the edge
        looked_up = (hcm.preserve_external_request_id or not hcm.use_remote_address
                     or (hcm.internal_networks
                         and hcm.is_internal(req, self.conn.remote_ip)))
        rid = headers.get("x-request-id") if looked_up else None
        if rid is None and hcm.generate_request_id:
            rid = hcm.new_request_id()
            if looked_up:
                headers.add("x-request-id", rid)  # known absent: no second scan
            else:
                headers.set("x-request-id", rid)
        info.request_id = rid
        if hcm.use_remote_address:
            ip = self.conn.remote_ip
            xff = headers.get("x-forwarded-for")
            headers.set("x-forwarded-for", "%s, %s" % (xff, ip) if xff else ip)
            headers.set("x-forwarded-proto", req.scheme)
        elif "x-forwarded-proto" not in headers:
            headers.add("x-forwarded-proto", req.scheme)
        if hcm.user_agent is not None:   # HCM add_user_agent (Envoy's mutateRequestHeaders)
            headers.set("x-envoy-downstream-service-cluster", hcm.user_agent)
            if not headers.get("user-agent"):
                headers.set("user-agent", hcm.user_agent)
            if hcm.node_id:
                headers.set("x-envoy-downstream-service-node", hcm.node_id)
        if hcm.via:
            via = headers.get("via")
            headers.set("via", "%s, %s" % (via, hcm.via) if via else hcm.via)
        if hcm.tracer is not None:
            hcm.tracer.start(info, req)
            fm.decorate(info.trace)
        fm.create_filter_chain(hcm.filters)
        fm.start(req, self.request_complete)

    def stream_timers(self) -> StreamTimers:
        t = self.timers
        if t is None:
            t = self.timers = StreamTimers(self)
        return t

    def route_timeouts(self, route) -> None:
        """A route with idle_timeout or max_stream_duration was resolved (Envoy's
        refreshIdleTimeout and refreshDurationTimeout)."""
        if route.idle_timeout is not None:
            self.set_idle_timeout(route.idle_timeout)
        if route.stream_duration is not None:
            self.stream_timers().refresh_duration(route)

    def set_idle_timeout(self, seconds: float) -> None:
        """The route's idle_timeout replaces stream_idle_timeout (0: none). HTTP/1: one
        loop timer for the stream (StreamTimers), which the codec's reads and writes
        keep alive; HTTP/2 overrides this with its stream's own timer."""
        self.fm.idle_override = None  # the timer below watches the stream's waits too
        self.stream_timers().set_idle(seconds)
        self.idle_reads_untimed()

    def drain_connection(self) -> None:
        """The HCM drains the connection: HTTP/1 responses say Connection: close from
        now on (HTTP/2 overrides this: a GOAWAY notice, then the final one)."""
        self.conn.hcm_draining = True

    def idle_reads_untimed(self) -> None:
        """HTTP/1: the stream's timer, not a socket timeout, bounds its reads."""

    def touch(self) -> None:
        """Activity on the stream (HTTP/1 reads and writes keep a route idle timer alive)."""
        t = self.timers
        if t is not None and t.idle is not None:
            t.last_active = t.loop.now()

    def _complete(self) -> None:
        hcm = self.hcm
        stats = hcm.stats
        info = self.info
        info.end_mono = now = time.monotonic()
        stats.downstream_rq_active.dec()
        code = info.response_code
        if code:
            stats.downstream_rq_xx[code // 100 if 1 <= code // 100 <= 5 else 5].inc()
            stats.downstream_rq_completed.inc()
            req = self.request
            # Envoy 1.40: a request answered before its end is reset (HTTP/1: by the
            # close; HTTP/2: RST_STREAM NO_ERROR) and counted so; an HTTP/1 upgrade never
            # ends (its body is the tunnel), and any upgrade or CONNECT counts as answered
            # before its end
            incomplete = not self.request_complete or (
                req.upgrade is not None and req.version != "HTTP/2")
            if incomplete or req.upgrade is not None:
                stats.downstream_rq_response_before_rq_complete.inc()
            if incomplete:
                stats.downstream_rq_rx_reset.inc()
        stats.downstream_rq_time.record((now - info.start_mono) * 1000.0)
        if info.trace is not None:
            hcm.tracer.finish(info.trace, info)
        for log in hcm.access_logs:
            log.log(info)

    def local_reply(self, status: int, body: bytes | None, details: str, flag: str | None = None,
                    headers: list | None = None) -> None:
        """Answer the request from proxyd itself (Envoy's local reply, through the
        encoder filters when no response started yet)."""
        self.fm.send_local_reply(status, body, details, flag, headers)

    def finalize_response_headers(self, resp: ResponseHead) -> None:
        """What every response gets past the encoder filters: request id echo, Date and
        Server (route header mutations were applied before the filters)."""
        info = self.info
        info.response = resp
        info.response_code = resp.status
        h = resp.headers
        hcm = self.hcm
        if hcm.always_set_request_id_in_response and info.request_id:
            h.set("x-request-id", info.request_id)
        if "date" not in h:
            h.add("date", http_date())
        h.set("server", hcm.server_name)

    # codec hooks
    def read_body(self):
        raise NotImplementedError

    def send_headers(self, resp: ResponseHead, end_stream: bool) -> None:
        raise NotImplementedError

    def send_data(self, data: bytes, end_stream: bool) -> None:
        raise NotImplementedError

    def send_trailers(self, trailers: Headers) -> None:
        """End the response with trailers (gRPC's grpc-status)."""
        raise NotImplementedError

    def flush(self) -> None:
        raise NotImplementedError

    def reset(self) -> None:
        raise NotImplementedError
