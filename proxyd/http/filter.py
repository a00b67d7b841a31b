"""The HTTP filter contract, shaped like Envoy's (`envoy/http/filter.h`).

An extension module exposes `create(config, ctx) -> FilterFactoryCb`, run once per config
snapshot with a `FactoryContext` (stats scope, runtime, cluster manager). The factory
callback runs once per stream and adds that stream's own filter instances:

    def create(config, ctx):
        stats = ctx.scope("my_filter.", counters=("denied",))
        return lambda chain: chain.add_stream_decoder_filter(MyFilter(config, stats))

Per-stream state lives on the filter instance. The filter manager calls the decoder side
in request order and the encoder side in reverse order; each call returns a status that
says whether iteration goes on. A filter that stops resumes the chain later with
`callbacks.continue_decoding()` / `continue_encoding()`, from any greenlet or a timer:
nothing here assumes that a filter may block.

`headers` is the request or response head (`RequestHead` / `ResponseHead`), which reads
and writes like Envoy's header map, pseudo-headers included (`headers.get(":path")`).
A module may also expose `create_route_config(msg, factory) -> object` to accept
`typed_per_filter_config` (see `DecoderFilterCallbacks.per_route_config`).
"""
from __future__ import annotations

from enum import IntEnum
from typing import Callable, Protocol


class FilterHeadersStatus(IntEnum):
    CONTINUE = 0
    STOP_ITERATION = 1                    # later filters wait; this one still sees data
    STOP_ALL_ITERATION_AND_BUFFER = 2     # this filter and later ones wait; data is buffered
    STOP_ALL_ITERATION_AND_WATERMARK = 3  # same, reads pause above the buffer limit


class FilterDataStatus(IntEnum):
    CONTINUE = 0
    STOP_ITERATION_AND_BUFFER = 1         # keep this data (the buffer limit applies: 413/500)
    STOP_ITERATION_AND_WATERMARK = 2      # keep it; reads pause above the limit instead
    STOP_ITERATION_NO_BUFFER = 3          # drop it (the filter keeps what it needs)


class FilterTrailersStatus(IntEnum):
    CONTINUE = 0
    STOP_ITERATION = 1


class StreamDecoderFilter:
    """Request side. Every method is optional; the defaults let everything through."""
    quiet_end = False   # True: on_stream_complete / on_destroy are no-ops (not called)

    def set_decoder_filter_callbacks(self, callbacks: "DecoderFilterCallbacks") -> None:
        self.decoder_callbacks = callbacks

    def decode_headers(self, headers, end_stream: bool) -> FilterHeadersStatus:
        return FilterHeadersStatus.CONTINUE

    def decode_data(self, data: bytes, end_stream: bool) -> FilterDataStatus:
        return FilterDataStatus.CONTINUE

    def decode_trailers(self, trailers) -> FilterTrailersStatus:
        return FilterTrailersStatus.CONTINUE

    def on_stream_complete(self) -> None:
        """The stream ended (response sent, or reset); called before the access log."""

    def on_destroy(self) -> None:
        """Last call: cancel timers and side calls here."""


class StreamEncoderFilter:
    """Response side. Every method is optional; the defaults let everything through."""
    quiet_end = False

    def set_encoder_filter_callbacks(self, callbacks: "EncoderFilterCallbacks") -> None:
        self.encoder_callbacks = callbacks

    def encode_1xx_headers(self, headers) -> FilterHeadersStatus:
        return FilterHeadersStatus.CONTINUE

    def encode_headers(self, headers, end_stream: bool) -> FilterHeadersStatus:
        return FilterHeadersStatus.CONTINUE

    def encode_data(self, data: bytes, end_stream: bool) -> FilterDataStatus:
        return FilterDataStatus.CONTINUE

    def encode_trailers(self, trailers) -> FilterTrailersStatus:
        return FilterTrailersStatus.CONTINUE

    def on_stream_complete(self) -> None:
        """The stream ended; called before the access log."""

    def on_destroy(self) -> None:
        """Last call: cancel timers and side calls here."""


class StreamFilter(StreamDecoderFilter, StreamEncoderFilter):
    """Both sides (added with `add_stream_filter`)."""


class FilterChainFactoryCallbacks(Protocol):
    """What a FilterFactoryCb gets: where to put this stream's filter instances."""

    def add_stream_decoder_filter(self, f: StreamDecoderFilter) -> None: ...
    def add_stream_encoder_filter(self, f: StreamEncoderFilter) -> None: ...
    def add_stream_filter(self, f: StreamFilter) -> None: ...


FilterFactoryCb = Callable[[FilterChainFactoryCallbacks], None]


class StreamFilterCallbacks(Protocol):
    """Shared by both sides (the filter manager's ActiveStreamFilter)."""

    stream_info: object        # proxyd.http.message.StreamInfo (dynamic_metadata, filter_state)
    stats: object              # this filter's stats scope (ctx.scope handles)
    runtime: object            # proxyd.runtime.Runtime of the current snapshot
    request: object            # RequestHead
    response: object           # ResponseHead once the response started, else None
    connection_id: int
    stream_id: str

    def route(self): ...                   # RouteEntry or None (matched lazily, cached)
    def clear_route_cache(self) -> None: ...
    def per_route_config(self): ...        # most specific typed_per_filter_config, or None
    def per_route_configs(self) -> list: ...   # every level, least specific first
    def send_local_reply(self, status: int, body: bytes | str = b"", details: str = "",
                         headers: list | None = None, grpc_status: int | None = None) -> None: ...
    def reset_stream(self) -> None: ...
    def run_blocking(self, fn: Callable, done: Callable) -> None: ...
    def set_buffer_limit(self, limit: int) -> None: ...
    def buffer_limit(self) -> int: ...


class DecoderFilterCallbacks(StreamFilterCallbacks, Protocol):
    def continue_decoding(self) -> None: ...
    def decoding_buffer(self) -> bytearray | None: ...
    def add_decoded_data(self, data: bytes, streaming: bool = False) -> None: ...
    def modify_decoding_buffer(self, fn: Callable[[bytearray], None]) -> None: ...
    def add_decoded_trailers(self): ...
    def encode_headers(self, headers, end_stream: bool) -> None: ...
    def encode_data(self, data: bytes, end_stream: bool) -> None: ...
    def encode_trailers(self, trailers) -> None: ...


class EncoderFilterCallbacks(StreamFilterCallbacks, Protocol):
    def continue_encoding(self) -> None: ...
    def encoding_buffer(self) -> bytearray | None: ...
    def add_encoded_data(self, data: bytes, streaming: bool = False) -> None: ...
    def modify_encoding_buffer(self, fn: Callable[[bytearray], None]) -> None: ...
    def add_encoded_trailers(self): ...
