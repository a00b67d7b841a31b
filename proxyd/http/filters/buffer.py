"""envoy.filters.http.buffer: holds a request until its body is complete, as Envoy's
buffer_filter.cc does.

A request with a body stops at this filter until its end; the stream's buffer limit
becomes `max_request_bytes`, so a larger body is answered 413 (`Payload Too Large`,
`downstream_rq_too_large`, details `request_payload_too_large`). Once complete, a request
without Content-Length gets one with the buffered length. A `BufferPerRoute` turns it off
(`disabled`) or sets another limit (`buffer`) on a route, the most specific level winning.
"""
from __future__ import annotations

from proxyd.http.filter import FilterDataStatus, FilterHeadersStatus, FilterTrailersStatus, \
    StreamDecoderFilter


class Settings:
    def __init__(self, msg):
        self.max_request_bytes = msg.max_request_bytes.value


class RouteSettings:
    def __init__(self, msg):
        which = msg.WhichOneof("override")
        self.disabled = which == "disabled" and msg.disabled
        self.settings = Settings(msg.buffer) if which == "buffer" else None


class BufferFilter(StreamDecoderFilter):
    quiet_end = True

    def __init__(self, settings: Settings):
        self.settings = settings
        self.active = False
        self.length = 0

    def decode_headers(self, headers, end_stream: bool):
        cb = self.decoder_callbacks
        route = cb.per_route_config()
        settings = self.settings
        if isinstance(route, RouteSettings):
            if route.disabled:
                return FilterHeadersStatus.CONTINUE
            settings = route.settings or settings
        if end_stream:
            return FilterHeadersStatus.CONTINUE
        self.active = True
        cb.set_buffer_limit(settings.max_request_bytes)
        return FilterHeadersStatus.STOP_ITERATION

    def decode_data(self, data, end_stream: bool):
        if not self.active:
            return FilterDataStatus.CONTINUE
        self.length += len(data)
        if end_stream:
            self._content_length()
            return FilterDataStatus.CONTINUE
        return FilterDataStatus.STOP_ITERATION_AND_BUFFER

    def decode_trailers(self, trailers):
        if self.active:
            self._content_length()
        return FilterTrailersStatus.CONTINUE

    def _content_length(self) -> None:
        request = self.decoder_callbacks.request
        if request.headers.get("content-length") is None:
            request.chunked = False
            request.headers.remove("transfer-encoding")
            request.set("content-length", str(self.length))


def create(msg, ctx):
    settings = Settings(msg)
    return lambda chain: chain.add_stream_decoder_filter(BufferFilter(settings))


def create_route_config(msg, factory) -> RouteSettings:
    return RouteSettings(msg)
