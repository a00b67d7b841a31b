"""envoy.filters.http.grpc_http1_bridge: lets HTTP/1.1 clients call gRPC services without
trailers, as Envoy's http1_bridge_filter.cc does.

For a gRPC request (content-type `application/grpc*`) that arrived over HTTP/1.x, the
response is held until its trailers: a grpc-status other than 0 turns the HTTP status
into 503, grpc-status and grpc-message move into the response headers, and the body gets
a Content-Length. A trailers-only answer and HTTP/2 requests pass untouched. No call
stats: Envoy 1.40's bridge counts none (the grpc_stats filter does).
"""
from __future__ import annotations

from proxyd.http import grpc
from proxyd.http.filter import FilterDataStatus, FilterHeadersStatus, StreamFilter


class Http1BridgeFilter(StreamFilter):
    quiet_end = True

    def __init__(self):
        self.bridging = False
        self.response = None

    def decode_headers(self, headers, end_stream: bool):
        if grpc.is_grpc(headers):
            self.bridging = self.decoder_callbacks.request.version != "HTTP/2"
        return FilterHeadersStatus.CONTINUE

    def encode_headers(self, headers, end_stream: bool):
        if not self.bridging or end_stream:
            return FilterHeadersStatus.CONTINUE
        self.response = headers
        return FilterHeadersStatus.STOP_ITERATION

    def encode_data(self, data, end_stream: bool):
        if not self.bridging or end_stream:
            return FilterDataStatus.CONTINUE
        return FilterDataStatus.STOP_ITERATION_AND_BUFFER

    def encode_trailers(self, trailers):
        if self.bridging and self.response is not None:
            resp = self.response
            status = trailers.get("grpc-status")
            if status is not None:
                if status != "0":
                    resp.set(":status", "503")
                resp.set("grpc-status", status)
            message = trailers.get("grpc-message")
            if message is not None:
                resp.set("grpc-message", message)
            buf = self.encoder_callbacks.encoding_buffer()
            resp.set("content-length", str(len(buf) if buf is not None else 0))
        return super().encode_trailers(trailers)


def create(msg, ctx):
    return lambda chain: chain.add_stream_filter(Http1BridgeFilter())
