"""One downstream HTTP/2 connection: a reader greenlet feeds the codec and hands each
new stream to its own greenlet, which runs the HTTP filters and the router like an
HTTP/1 request does. A slow stream blocks only its own greenlet.

Flow control, both ways:
- sending: `Http2Stream.send_data` writes only what the peer's stream and connection
  windows allow and otherwise waits for a WINDOW_UPDATE, so a slow reader parks the
  stream's greenlet, which in turn stops reading the upstream;
- receiving: request body bytes are acknowledged (WINDOW_UPDATE) when the stream
  consumes them, not when they arrive, so what we buffer is bounded by the window we
  advertise.

Envoy's HCM `request_headers_timeout` bounds a header block from its first byte to its
last; as a block in progress holds up the whole connection (no other frame may come
between HEADERS and its last CONTINUATION), its expiry ends the connection with GOAWAY
(Envoy, which starts the stream at the first frame header, answers that stream 408).

Per stream, as Envoy's HCM: `stream_idle_timeout` (no frame in or out on the stream for
that long: 408, or RST_STREAM once the response started; the other streams go on), and
a stream-level protocol error resets that stream only (see the codec). Graceful drain
sends a GOAWAY notice (last stream id 2^31-1) first and the final GOAWAY `drain_timeout`
later.

`H2Transport` (socket writes, window waits: `proxyd/http/http2_transport.py`) is shared
with the upstream HTTP/2 codec client.
"""
from __future__ import annotations

import socket
import time
from collections import deque

import gevent
from gevent.event import Event

from proxyd.http.codec import http2 as h2c
from proxyd.http.headers import Headers
from proxyd.http.http2_transport import ConnectionClosed, H2Transport  # noqa: F401
from proxyd.http.message import RequestHead
from proxyd.http.stream import DownstreamGone, Stream, StreamIdleTimeout
from proxyd.http.stream_errors import MaxStreamDurationReached

RECV_SIZE = 65536
# Envoy's runtime keys and defaults for premature-reset accounting (CVE-2023-44487)
PREMATURE_RESET_LIFETIME_KEY = "overload.premature_reset_min_stream_lifetime_seconds"
PREMATURE_RESET_COUNT_KEY = "overload.premature_reset_total_stream_count"
MAX_REQUESTS_PER_IO_CYCLE_KEY = "http.max_requests_per_io_cycle"
MAX_STREAM_ID = 0x7FFFFFFF


class Http2Connection(H2Transport):
    """Server side of one HTTP/2 connection (h2c prior knowledge or TLS with ALPN h2)."""

    def __init__(self, hcm, conn, first: bytes = b""):
        super().__init__(conn.sock, h2c.Http2Codec(False, hcm.http2_options,
                                                   hcm.max_request_headers))
        self.hcm = hcm
        self.conn = conn
        self.first = first  # bytes codec AUTO read while choosing the codec
        self.streams: dict[int, Http2Stream] = {}
        self.last_stream_id = 0
        self.loop = gevent.get_hub().loop
        self.drain_notice = False  # the GOAWAY notice went out; new streams still served
        self.draining = False      # no new streams (final GOAWAY sent, or the client's)
        self._drain_timer = None
        self._shut = False         # we ended the read (_shutdown): a local close
        self.idle_since = time.monotonic()
        # premature-reset accounting, as Envoy's HCM: streams closed (not by the
        # connection's end), and those of them that ended early with no response
        self.closed_streams = 0
        self.premature_resets = 0
        self.abort = None  # why the connection must end now (a flood, too many resets)
        conn.protocol = self

    @property
    def idle(self) -> bool:
        """The listener may close us outright; not while a GOAWAY is on its way."""
        return not self.streams and not self.draining and not self.drain_notice

    def on_tx(self, n: int) -> None:
        self.hcm.stats.downstream_cx_tx_bytes_total.inc(n)

    def on_drain(self, count: bool = True) -> None:
        """Graceful close (drain, hot restart) as Envoy does it: a GOAWAY notice with
        the largest stream id now (streams the client already sent are still served),
        the final GOAWAY with the last stream id we took after HCM drain_timeout; the
        streams up to it finish, then the connection closes. `count`: a drain (not the
        HCM's max_requests_per_connection / max_connection_duration) counts drain_close."""
        if self.drain_notice or self.draining or self.closed:
            return
        self.drain_notice = True
        if count:  # not for the drain a refused upgrade starts (Envoy 1.40)
            self.hcm.stats.downstream_cx_drain_close.inc()
        self.codec.goaway(MAX_STREAM_ID)
        self.flush()
        self._drain_timer = gevent.spawn_later(self.hcm.drain_timeout, self._final_goaway)

    def _final_goaway(self) -> None:
        self._drain_timer = None
        if self.draining or self.closed:
            return
        self.draining = True
        self.codec.goaway(self.codec.highest_inbound_stream_id)
        self.flush()
        if not self.streams:
            self._shutdown()

    def _shutdown(self) -> None:
        """End the reader's recv (it then flushes what is queued and closes)."""
        self._shut = True
        try:
            self.sock.shutdown(socket.SHUT_RD)
        except OSError:
            pass

    def serve(self) -> None:
        hcm = self.hcm
        stats = hcm.stats
        codec = self.codec
        sock = self.sock
        headers_timeout = hcm.request_headers_timeout
        headers_deadline = None  # a header block has begun and must end by then
        resets_seen = 0  # RST_STREAM frames counted into http2.rx_reset so far
        self.flush()  # our SETTINGS (+ connection WINDOW_UPDATE) go first
        closed_by = "remote"
        data, self.first = self.first, b""
        try:
            while not self.closed:
                if not data:
                    timeout = None if self.streams else hcm.idle_timeout
                    if headers_deadline is not None:
                        left = max(headers_deadline - time.monotonic(), 0.0)
                        timeout = left if timeout is None else min(timeout, left)
                    sock.settimeout(timeout)
                    try:
                        data = sock.recv(RECV_SIZE)
                    except socket.timeout:
                        if headers_deadline is not None and time.monotonic() >= headers_deadline:
                            stats.downstream_rq_header_timeout.inc()
                        else:
                            stats.downstream_cx_idle_timeout.inc()
                        codec.goaway()
                        self.flush()
                        closed_by = "local"
                        break
                    except OSError:  # gevent's shutdown(SHUT_RD) cancels the recv
                        if self._shut:
                            closed_by = "local"
                        break
                    if not data:
                        if self._shut:
                            closed_by = "local"
                        break
                stats.downstream_cx_rx_bytes_total.inc(len(data))
                try:
                    events = codec.receive(data)
                except h2c.H2ProtocolError as e:
                    if isinstance(e, h2c.FloodError):  # Envoy counts only the flood
                        getattr(hcm.http2_stats, e.stat).inc()
                    else:
                        stats.downstream_cx_protocol_error.inc()
                    self.flush()
                    closed_by = "local"
                    break
                data = b""
                resets = codec.limits.resets_received
                if resets != resets_seen:
                    hcm.http2_stats.rx_reset.inc(resets - resets_seen)
                    resets_seen = resets
                self._dispatch(events)
                if codec.pending():
                    # a read that is always ready never yields: let the writer take
                    # what this one queued (PING and SETTINGS ACKs) before reading on
                    self.flush()
                    gevent.sleep(0)
                if self.writing:  # frames pile up only while the socket does not take them
                    try:
                        codec.check_outbound()
                    except h2c.Flood as e:
                        getattr(hcm.http2_stats, e.stat).inc()
                        self._abort(e.stat)
                self.flush()
                if self.abort is not None:
                    closed_by = "local"
                    break
                if self.draining and not self.streams:
                    closed_by = "local"
                    break
                if headers_timeout:
                    if not codec.header_block_pending():
                        headers_deadline = None
                    elif headers_deadline is None:
                        headers_deadline = time.monotonic() + headers_timeout
        finally:
            if self._drain_timer is not None:
                self._drain_timer.kill(block=False)
            self.stop_writer()
            if self.abort is not None:  # a stream's end may have ended the read
                closed_by = "local"
            if closed_by == "remote":
                stats.downstream_cx_destroy_remote.inc()
            else:
                stats.downstream_cx_destroy_local.inc()
            streams = list(self.streams.values())
            for s in streams:
                s.on_reset(h2c.CANCEL, connection=True)
            gevent.joinall([s.greenlet for s in streams if s.greenlet is not None], timeout=1.0)

    def _dispatch(self, events: list) -> None:
        """Handle one read's events. With Envoy's runtime `http.max_requests_per_io_cycle`
        set, the loop runs the streams started so far after every that many new ones."""
        per_cycle = self.hcm.ctx.runtime.get_int(MAX_REQUESTS_PER_IO_CYCLE_KEY, 0)
        started = 0
        for ev in events:
            if self.abort is not None:
                return
            if per_cycle and ev[0] == h2c.HEADERS and ev[1] not in self.streams:
                started += 1
                if started > per_cycle:
                    started = 1
                    self.flush()
                    gevent.sleep(0)
                    if self.abort is not None:
                        return
            self._on_event(ev)

    def _abort(self, reason: str) -> None:
        """End the connection now: GOAWAY ENHANCE_YOUR_CALM, then the reader stops."""
        if self.abort is not None:
            return
        self.abort = reason
        self.codec.goaway(code=h2c.ENHANCE_YOUR_CALM)
        self.flush()
        self._shutdown()

    def _on_event(self, ev) -> None:
        kind = ev[0]
        if kind == h2c.DATA:
            s = self.streams.get(ev[1])
            if s is None:
                self.codec.acknowledge(ev[1], ev[3])
            else:
                s.on_data(ev[2], ev[3])
        elif kind == h2c.HEADERS:
            self._on_request(ev[1], ev[2], ev[3])
        elif kind == h2c.END:
            s = self.streams.get(ev[1])
            if s is not None:
                s.on_end()
        elif kind == h2c.WINDOW:
            self.wake(ev[1])
        elif kind == h2c.TRAILERS:
            s = self.streams.get(ev[1])
            if s is not None:
                s.trailers = Headers(ev[2])
                s.last_active = self.loop.now()
        elif kind == h2c.RESET:
            s = self.streams.get(ev[1])
            if s is not None:
                s.on_reset(ev[2])
                if not s.started:
                    # reset before its greenlet ran (HEADERS and RST_STREAM in one
                    # read): it never will; done now, so a reset flood holds nothing
                    s.greenlet.kill(block=False)
                    self.hcm.stats.downstream_rq_rx_reset.inc()
                    self.stream_done(s)
        elif kind == h2c.SETTINGS:
            self.wake(0)
        elif kind == h2c.GOAWAY:
            # The client will open no more streams; finish ours, then close.
            self.draining = True

    def _on_request(self, sid: int, raw: list, end_stream: bool) -> None:
        hcm = self.hcm
        if self.draining:
            self.codec.reset(sid, h2c.REFUSED_STREAM)
            return
        method = path = authority = protocol = None
        scheme = self.conn.scheme
        items = []
        cookies = None
        for n, v in raw:
            if n[0] == ":":
                if n == ":method":
                    method = v
                elif n == ":path":
                    path = v
                elif n == ":authority":
                    authority = v
                elif n == ":scheme":
                    scheme = v
                elif n == ":protocol":
                    protocol = v
            elif n == "cookie":
                # RFC 9113 8.2.3: crumbs are joined for HTTP/1 and for our matchers
                cookies = v if cookies is None else cookies + "; " + v
            else:
                items.append((n, v))
        if cookies is not None:
            items.append(("cookie", cookies))
        headers = Headers(items)
        if authority is None:
            authority = headers.get("host") or ""
        upgrade = None
        if method == "CONNECT":  # its DATA is a tunnel's (proxyd/router/upgrade.py)
            if protocol is None:
                upgrade, path = "CONNECT", ""
            elif not hcm.http2_options.allow_connect:  # RFC 8441 3: not offered
                self.codec.reset(sid, h2c.PROTOCOL_ERROR)
                return
            else:  # extended CONNECT becomes an HTTP/1.1 Upgrade request, as in Envoy
                upgrade, method = protocol, "GET"
                headers.add("upgrade", protocol)
                headers.add("connection", "upgrade")
        req = RequestHead(method or "GET", "" if path == "" else (path or "/"), authority,
                          scheme, "HTTP/2", headers)
        req.upgrade = upgrade
        if not end_stream and upgrade is None:
            cl = headers.get("content-length")
            if cl is not None and cl.isdigit():
                req.content_length = int(cl)
            else:
                req.chunked = True  # length unknown: an HTTP/1 upstream gets it chunked
        hcm.stats.downstream_rq_http2_total.inc()
        s = Http2Stream(hcm, self.conn, req, self, sid)
        s.request_complete = end_stream
        self.streams[sid] = s
        self.last_stream_id = sid
        if hcm.stream_idle_timeout:
            s.arm_idle_timer(hcm.stream_idle_timeout)
        s.greenlet = gevent.spawn(s.serve)

    def stream_done(self, s: "Http2Stream") -> None:
        if self.streams.pop(s.sid, None) is None:
            return
        self.forget(s.sid)
        s.stop_idle_timer()
        if not self.streams:
            self.idle_since = time.monotonic()
        if not self.closed:
            self._count_closed(s)
        if self.draining and not self.streams:
            self._shutdown()

    def _count_closed(self, s: "Http2Stream") -> None:
        """Envoy's premature-reset rule: a stream closed within the minimum lifetime
        with no response is premature; once half of the closed streams (counted from
        the first `premature_reset_total_stream_count`, 500) are, the connection ends."""
        runtime = self.hcm.ctx.runtime
        self.closed_streams += 1
        lifetime = time.monotonic() - s.info.start_mono
        if not s.info.response_code and \
                int(lifetime) <= runtime.get_int(PREMATURE_RESET_LIFETIME_KEY, 1):
            self.premature_resets += 1
        limit = runtime.get_int(PREMATURE_RESET_COUNT_KEY, 500)
        # below `limit` closed streams, end as soon as the rest could not save it
        if self.premature_resets * 2 < max(self.closed_streams, limit):
            return
        self.hcm.stats.downstream_rq_too_many_premature_resets.inc()
        self._abort("too_many_premature_resets")


class Http2Stream(Stream):
    __slots__ = ("h2", "sid", "greenlet", "_body", "_body_evt", "trailers", "reset_code",
                 "response_complete", "started", "last_active", "_idle_timer", "idle_after")

    def __init__(self, hcm, conn, request, h2: Http2Connection, sid: int):
        super().__init__(hcm, conn, request, "HTTP/2")
        self.h2 = h2
        self.sid = sid
        self.greenlet = None
        self._body: deque = deque()
        self._body_evt = Event()
        self.trailers: Headers | None = None  # request trailers, once they arrived
        self.reset_code: int | None = None
        self.response_complete = False
        self.started = False
        self.last_active = 0.0  # loop time of the last frame in or out (stream_idle_timeout)
        self._idle_timer = None
        self.idle_after = hcm.stream_idle_timeout  # a route's idle_timeout may replace it

    # -- stream_idle_timeout ------------------------------------------------------------

    def arm_idle_timer(self, after: float) -> None:
        """Check for idleness in `after` seconds. Activity only stamps `last_active`;
        the check re-arms itself for what is left (Envoy's timer, without a reset per
        frame)."""
        if self._idle_timer is None:
            self.last_active = self.h2.loop.now()
        t = self._idle_timer = self.h2.loop.timer(after)
        t.start(self._idle_check)

    def set_idle_timeout(self, seconds: float) -> None:
        """A route's idle_timeout replaces stream_idle_timeout from now on (0: none)."""
        self.fm.idle_override = seconds or None
        self.stop_idle_timer()
        self.idle_after = seconds
        if seconds:
            self.arm_idle_timer(seconds)

    def drain_connection(self) -> None:
        self.h2.on_drain(False)

    def stop_idle_timer(self) -> None:
        t = self._idle_timer
        if t is not None:
            self._idle_timer = None
            t.close()

    def _idle_check(self) -> None:
        """Timer callback (in the hub): interrupt the stream's greenlet with
        StreamIdleTimeout (Stream.run answers 408, or resets a started response)."""
        self._idle_timer.close()
        if self.response_complete or self.reset_code is not None:
            self._idle_timer = None
            return
        left = self.last_active + self.idle_after - self.h2.loop.now()
        if left > 0.001:
            self.arm_idle_timer(left)
            return
        self._idle_timer = None
        g = self.greenlet
        if self.started and g is not None and not g.dead:
            g.kill(StreamIdleTimeout(), block=False)

    # -- reader side (called in the connection's greenlet) ------------------------------

    def on_data(self, data: bytes, flow_len: int) -> None:
        self._body.append((data, flow_len))
        self._body_evt.set()
        self.last_active = self.h2.loop.now()

    def on_end(self) -> None:
        self._body.append(None)
        self._body_evt.set()
        self.last_active = self.h2.loop.now()

    def on_reset(self, code: int, connection: bool = False) -> None:
        """The client reset the stream (or the connection went away): abort whatever
        the stream's greenlet is blocked in; the router then resets the upstream."""
        if self.reset_code is not None or self.response_complete:
            return
        self.reset_code = code
        self._body_evt.set()
        self.h2.wake(self.sid)
        g = self.greenlet
        # Not yet started: serve() sees reset_code (killing it would skip serve entirely).
        # Running: the DownstreamGone lands where it waits and Stream.run counts it.
        if self.started and g is not None and not g.dead and gevent.getcurrent() is not g:
            g.kill(DownstreamGone(), block=False)

    # -- stream greenlet ----------------------------------------------------------------

    def serve(self) -> None:
        h2 = self.h2
        self.started = True
        try:
            if self.reset_code is not None:
                self.hcm.stats.downstream_rq_rx_reset.inc()
                return
            self.run()
            if not self.response_complete and self.reset_code is None:
                self.reset()
            elif not self.request_complete and self.reset_code is None:
                # answered before the request ended: tell the client to stop sending
                h2.codec.reset(self.sid, h2c.NO_ERROR)
                self._drop_body()
            h2.flush()
        except DownstreamGone:
            pass
        except (StreamIdleTimeout, MaxStreamDurationReached):
            # landed outside Stream.run's handlers (say, in a local reply's write)
            if self.reset_code is None and not self.response_complete:
                self.reset()
        except Exception:
            if self.reset_code is None and not self.response_complete:
                self.reset()
            raise
        finally:
            h2.stream_done(self)

    def _drop_body(self) -> None:
        ack = self.h2.codec.acknowledge
        for item in self._body:
            if item is not None:
                ack(self.sid, item[1])
        self._body.clear()

    def read_body(self):
        if self.request_complete:
            return None
        body = self._body
        while not body:
            if self.reset_code is not None:
                raise DownstreamGone()
            self._body_evt.clear()
            self._body_evt.wait()
        if self.reset_code is not None:
            raise DownstreamGone()
        item = body.popleft()
        if item is None:
            self.request_complete = True
            return None
        data, flow_len = item
        self.h2.codec.acknowledge(self.sid, flow_len)
        self.info.bytes_received += len(data)
        if not data:
            return self.read_body()
        return data

    def _check(self) -> None:
        if self.reset_code is not None or self.h2.closed:
            self.closing = True
            raise DownstreamGone()

    def send_headers(self, resp, end_stream: bool) -> None:
        self._check()
        self.finalize_response_headers(resp)
        status = resp.status
        if status == 101 and self.request.upgrade is not None:
            status = 200  # RFC 8441 5: an extended CONNECT's upgrade succeeds with a 200
        out = [(":status", str(status))]
        drop = h2c.CONNECTION_SPECIFIC
        out.extend(kv for kv in resp.headers.items if kv[0] not in drop)
        if self.request.method == "HEAD" or resp.status in (204, 304):
            end_stream = True  # no body follows, whatever the upstream or a local reply has
        if end_stream:
            self.response_complete = True
        h2 = self.h2
        if not h2.drain_notice and self.hcm.server_health.failed():
            h2.on_drain()   # Envoy's drainClose(): the GOAWAY goes before the header block
        h2.codec.send_headers(self.sid, out, end_stream)
        self.headers_sent = True
        self.last_active = self.h2.loop.now()

    def send_data(self, data: bytes, end_stream: bool) -> None:
        if self.response_complete:
            return  # the head already ended the stream (HEAD, 204, empty body)
        self._check()
        if end_stream:
            self.response_complete = True
        if data:
            self.info.bytes_sent += len(data)
        try:
            self.h2.send_body(self.sid, data, end_stream, self._is_open)
        except ConnectionClosed:
            self.closing = True
            raise DownstreamGone() from None

    def _is_open(self) -> bool:
        """Asked before each DATA frame of a body: a frame going out is activity."""
        self.last_active = self.h2.loop.now()
        return self.reset_code is None

    def send_trailers(self, trailers: Headers) -> None:
        self._check()
        self.info.response_trailers = trailers
        drop = h2c.CONNECTION_SPECIFIC
        self.response_complete = True
        items = [kv for kv in trailers.items if kv[0] not in drop]
        if items:
            self.h2.codec.send_headers(self.sid, items, True)
        else:   # a filter emptied them (grpc_web): the stream ends with an empty DATA frame
            self.h2.codec.end_stream(self.sid)
        self.last_active = self.h2.loop.now()

    def flush(self) -> None:
        self.h2.flush_wait()
        if self.h2.closed:
            self.closing = True
            raise DownstreamGone()

    def reset(self, code: int = h2c.INTERNAL_ERROR) -> None:
        """Abort the response (RST_STREAM); the client sees the stream fail."""
        self.closing = True
        self.response_complete = True
        self.hcm.stats.downstream_rq_tx_reset.inc()
        if self.h2.codec.reset(self.sid, code):
            self._drop_body()
            self.h2.flush()
