"""envoy.filters.http.grpc_web: serves gRPC-Web clients (browsers) from gRPC services, as
Envoy's grpc_web_filter.cc does.

A request whose content-type starts with `application/grpc-web` goes upstream as gRPC:
content-type `application/grpc`, `te: trailers`, `grpc-accept-encoding:
identity,deflate,gzip`; a `-text` body is base64-decoded on the way (across chunk
boundaries). The response's content-type becomes `application/grpc-web+proto` (or
`application/grpc-web-text+proto` when the client accepts text), its trailers become a
gRPC-Web trailer frame at the end of the body (0x80, a 4-byte length, `name:value\\r\\n`
lines), and a text response's body is base64-encoded. Per-cluster call stats
`cluster.<name>.grpc-web.<service>.<method>.{<status>,success,failure,total}`.
Anything else passes untouched.
"""
from __future__ import annotations

import base64
import binascii
import struct

from proxyd.http import grpc
from proxyd.http.filter import FilterDataStatus, FilterHeadersStatus, StreamFilter

_TEXT = ("application/grpc-web-text", "application/grpc-web-text+proto")
_TRAILER_FLAG = b"\x80"


class GrpcWebFilter(StreamFilter):
    def __init__(self, stats: grpc.GrpcStats):
        self.stats = stats
        self.web = False
        self.text_request = self.text_response = False
        self.pending_in = b""     # base64 text not yet a multiple of 4
        self.pending_out = b""    # bytes not yet a multiple of 3
        self.names = None
        self.cluster = None

    def decode_headers(self, headers, end_stream: bool):
        ct = headers.get("content-type")
        if ct is None or not ct.startswith("application/grpc-web"):
            return FilterHeadersStatus.CONTINUE
        self.web = True
        self.names = grpc.service_and_method(headers.get(":path"))
        if self.names is not None:
            route = self.decoder_callbacks.route()
            self.cluster = route.cluster_for(headers) if route is not None and \
                route.kind == "cluster" else None
        self.text_request = ct in _TEXT
        self.text_response = headers.get("accept") in _TEXT
        headers.set("content-type", "application/grpc")
        headers.set("te", "trailers")
        headers.set("grpc-accept-encoding", "identity,deflate,gzip")
        if self.text_request:
            headers.remove("content-length")
        return FilterHeadersStatus.CONTINUE

    def decode_data(self, data, end_stream: bool):
        if not self.text_request:
            return FilterDataStatus.CONTINUE
        text = self.pending_in + bytes(data)
        keep = len(text) % 4 if not end_stream else 0
        self.pending_in = text[len(text) - keep:] if keep else b""
        try:
            data[:] = base64.b64decode(text[:len(text) - keep] if keep else text)
        except (binascii.Error, ValueError):
            self.decoder_callbacks.send_local_reply(400, b"Bad gRPC-web request, invalid "
                                                    b"base64 data.", "grpc_base64_decode_failed")
            return FilterDataStatus.STOP_ITERATION_NO_BUFFER
        return FilterDataStatus.CONTINUE

    def _charge(self, headers) -> None:
        if self.names is not None:
            self.stats.charge(self.cluster, self.names, headers.get("grpc-status"))

    def encode_headers(self, headers, end_stream: bool):
        if not self.web:
            return FilterHeadersStatus.CONTINUE
        self._charge(headers)
        headers.set("content-type", "application/grpc-web-text+proto" if self.text_response
                    else "application/grpc-web+proto")
        if self.text_response:
            headers.remove("content-length")
        return FilterHeadersStatus.CONTINUE

    def _encode(self, data: bytes, end: bool) -> bytes:
        raw = self.pending_out + data
        keep = 0 if end else len(raw) % 3
        self.pending_out = raw[len(raw) - keep:] if keep else b""
        return base64.b64encode(raw[:len(raw) - keep] if keep else raw)

    def encode_data(self, data, end_stream: bool):
        if self.web and self.text_response:
            data[:] = self._encode(bytes(data), end_stream)
        return FilterDataStatus.CONTINUE

    def encode_trailers(self, trailers):
        if not self.web:
            return super().encode_trailers(trailers)
        self._charge(trailers)
        block = b"".join(b"%s:%s\r\n" % (k.encode("latin-1"), v.encode("latin-1"))
                         for k, v in trailers.items)
        frame = _TRAILER_FLAG + struct.pack(">I", len(block)) + block
        trailers.items.clear()   # now in the body
        if self.text_response:
            frame = self._encode(frame, True)
        self.encoder_callbacks.add_encoded_data(frame)
        return super().encode_trailers(trailers)


def create(msg, ctx):
    stats = grpc.GrpcStats(ctx.worker.stats, "grpc-web")
    return lambda chain: chain.add_stream_filter(GrpcWebFilter(stats))
