"""The HCM's per-stream timers that a route can change (Envoy's ActiveStream
`refreshDurationTimeout` / `refreshIdleTimeout`):

- `max_stream_duration`: the HCM's (common_http_protocol_options, from the stream's
  start) or the route's (RouteAction.max_stream_duration, re-armed when the route is
  resolved, less the time the stream already lived), or a gRPC request's own
  `grpc-timeout` capped by `grpc_timeout_header_max` less `grpc_timeout_header_offset`;
  the gRPC request then goes upstream with that `grpc-timeout`. Expiry: 504 (408 while
  the request is still arriving) "downstream duration timeout", details
  `max_duration_timeout`, no response flag, `downstream_rq_max_duration_reached`
  (a started response is reset), as Envoy 1.40.
- a route's `idle_timeout` over HTTP/1 (0 disables even the HCM's stream_idle_timeout):
  one loop timer per stream, activity only stamps `last_active` and the check re-arms
  itself for what is left, as the HTTP/2 stream's own idle timer does.

Both are loop timers throwing into the stream's greenlet (created only when a config
asks for them; the stream closes them before its error handlers run).
"""
from __future__ import annotations

import time

import gevent

from proxyd.http import grpc
from proxyd.http.stream_errors import MaxStreamDurationReached, StreamIdleTimeout


def is_grpc_request(req) -> bool:
    """Envoy's Grpc::Common::isGrpcRequestHeaders (gRPC-Web is not gRPC here)."""
    ct = req.headers.get("content-type")
    return ct is not None and (ct == "application/grpc" or
                               ct.startswith(("application/grpc+", "application/grpc;")))


class StreamTimers:
    __slots__ = ("stream", "glet", "loop", "duration", "idle", "idle_timeout", "last_active")

    def __init__(self, stream):
        self.stream = stream
        self.glet = gevent.getcurrent()   # the greenlet running Stream.run
        self.loop = gevent.get_hub().loop
        self.duration = None      # the max_stream_duration timer
        self.idle = None          # HTTP/1: the route idle_timeout's timer
        self.idle_timeout = 0.0
        self.last_active = 0.0

    def close(self) -> None:
        if self.duration is not None:
            self.duration.close()
            self.duration = None
        if self.idle is not None:
            self.idle.close()
            self.idle = None

    # -- max_stream_duration ----------------------------------------------------------------

    def arm_duration(self, seconds: float) -> None:
        """Expire `seconds` after the stream started (at once if that is past)."""
        if self.duration is not None:
            self.duration.close()
        left = seconds - (time.monotonic() - self.stream.info.start_mono)
        t = self.duration = self.loop.timer(left if left > 0 else 0.0)
        t.start(self._duration_reached)

    def _duration_reached(self) -> None:
        self.duration.close()
        self.duration = None
        self.glet.throw(MaxStreamDurationReached())

    def refresh_duration(self, route) -> None:
        """Envoy's refreshDurationTimeout for the route just resolved."""
        stream = self.stream
        req = stream.request
        msd, header_max, offset = route.stream_duration
        grpc_timeout = grpc.parse_timeout(req.headers.get("grpc-timeout"))
        timeout = 0.0
        disable = False
        if grpc_timeout is None or header_max is None:
            if msd is not None:
                timeout = msd
                disable = int(msd * 1000) == 0  # an explicit 0 means none
            elif stream.hcm.max_stream_duration:
                timeout = stream.hcm.max_stream_duration
            else:
                disable = True
        else:
            timeout = grpc_timeout
            if header_max and timeout > header_max:
                timeout = header_max
            if timeout and offset:
                timeout = timeout - offset if offset < timeout else 0.0
        is_grpc = is_grpc_request(req)
        if disable:
            if self.duration is not None:
                self.duration.close()
                self.duration = None
                if is_grpc:
                    req.headers.remove("grpc-timeout")
            return
        if is_grpc:  # what the upstream is told, before the time already used
            req.headers.set("grpc-timeout", grpc.format_timeout(timeout))
        self.arm_duration(timeout)

    # -- HTTP/1: a route's idle_timeout -------------------------------------------------------

    def set_idle(self, seconds: float | None) -> None:
        if self.idle is not None:
            self.idle.close()
            self.idle = None
        if not seconds:
            return
        self.idle_timeout = seconds
        self.last_active = self.loop.now()
        t = self.idle = self.loop.timer(seconds)
        t.start(self._idle_check)

    def _idle_check(self) -> None:
        self.idle.close()
        left = self.last_active + self.idle_timeout - self.loop.now()
        if left > 0.001:
            t = self.idle = self.loop.timer(left)
            t.start(self._idle_check)
            return
        self.idle = None
        self.glet.throw(StreamIdleTimeout())
