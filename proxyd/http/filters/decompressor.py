"""envoy.filters.http.decompressor: decodes request and response bodies with the
configured library (gzip, brotli or zstd), as Envoy 1.40's decompressor_filter.cc does.

Request side: while response decompression is enabled and `advertise_accept_encoding`
(default true) holds, the library's encoding is put last in Accept-Encoding (any entry
for it, with its q-value, is dropped first). A message with a body whose first
Content-Encoding is the library's (and no `cache-control: no-transform` unless
`ignore_no_transform_header`) is decoded: that coding leaves Content-Encoding (the header
goes once empty), Content-Length goes, and the end of the body carries the trailers
`x-envoy-decompressor-<name>-compressed-bytes` / `-uncompressed-bytes`. Headers-only
messages are never counted. Stats `http.<prefix>.decompressor.<name>.<lib>.{request,response}.
{decompressed,not_decompressed,total_compressed_bytes,total_uncompressed_bytes}` and the
library's errors under `decompressor_library.` (made with the first decoder, as Envoy's).
"""
from __future__ import annotations

from proxyd import registry
from proxyd.config.loader import extension_config
from proxyd.http.filter import FilterDataStatus, FilterHeadersStatus, StreamFilter

_DIRECTION = ("decompressed", "not_decompressed", "total_compressed_bytes",
              "total_uncompressed_bytes")


class _Direction:
    def __init__(self, msg, has: bool, scope, name: str):
        common = msg.common_config
        self.enabled = (common.enabled.runtime_key, common.enabled.default_value.value) \
            if has and common.HasField("enabled") else None
        self.ignore_no_transform = common.ignore_no_transform_header
        self.stats = scope(name, counters=_DIRECTION)

    def on(self, runtime) -> bool:
        return self.enabled is None or runtime.get_bool(*self.enabled)


class Config:
    def __init__(self, msg, ctx):
        lib = msg.decompressor_library
        _type_name, lib_msg = extension_config(lib.typed_config)
        self.library = registry.factory(lib.typed_config.type_url).create(lib_msg)
        base = "decompressor.%s.%s" % (lib.name, self.library.stat_prefix)
        self.request = _Direction(msg.request_direction_config,
                                  msg.HasField("request_direction_config"), ctx.scope,
                                  base + "request.")
        self.response = _Direction(msg.response_direction_config,
                                   msg.HasField("response_direction_config"), ctx.scope,
                                   base + "response.")
        rq = msg.request_direction_config
        self.advertise = rq.advertise_accept_encoding.value \
            if rq.HasField("advertise_accept_encoding") else True
        self.encoding = self.library.encoding
        self.trailer_compressed = "x-envoy-decompressor-%s-compressed-bytes" % lib.name
        self.trailer_uncompressed = "x-envoy-decompressor-%s-uncompressed-bytes" % lib.name
        self._scope = ctx.stats.scope(base + "decompressor_library.")
        self._library_stats = None

    def decompressor(self):
        if self._library_stats is None:
            self._library_stats = self._scope.declare(counters=self.library.stat_names)
        return self.library(self._library_stats)


def add_encoding_to_accept_encoding(value: str | None, encoding: str) -> str:
    """Envoy's HeaderUtility::addEncodingToAcceptEncoding."""
    if not value:
        return encoding
    kept = [c.strip() for c in value.split(",")
            if c.split(";", 1)[0].strip() != encoding]
    return ",".join(kept + [encoding])


def _no_transform(headers) -> bool:
    return any(d.strip().lower() == "no-transform"
               for v in headers.get_all("cache-control") for d in v.split(","))


class _Side:
    """One direction's decoder state on one stream."""
    __slots__ = ("decoder", "compressed", "uncompressed")

    def __init__(self, decoder):
        self.decoder = decoder
        self.compressed = self.uncompressed = 0


class DecompressorFilter(StreamFilter):
    def __init__(self, config: Config):
        self.config = config
        self.req = self.resp = None

    def _maybe_init(self, d: _Direction, headers, runtime):
        c = self.config
        coding = headers.get("content-encoding")
        if d.on(runtime) and coding is not None and \
                (d.ignore_no_transform or not _no_transform(headers)) and \
                coding.split(",", 1)[0].strip().lower() == c.encoding:
            d.stats.decompressed.inc()
            headers.remove("content-length")
            rest = coding.strip().partition(",")
            if rest[1]:
                headers.set("content-encoding", rest[2].strip())
            else:
                headers.remove("content-encoding")
            return _Side(c.decompressor())
        d.stats.not_decompressed.inc()
        return None

    def _decode(self, side: _Side, d: _Direction, data, end_stream: bool, add_trailers):
        out = side.decoder.decompress(data)
        side.compressed += len(data)
        side.uncompressed += len(out)
        d.stats.total_compressed_bytes.inc(len(data))
        d.stats.total_uncompressed_bytes.inc(len(out))
        data[:] = out
        if end_stream:
            self._report(side, add_trailers())

    def _report(self, side: _Side, trailers) -> None:
        trailers.add(self.config.trailer_compressed, str(side.compressed))
        trailers.add(self.config.trailer_uncompressed, str(side.uncompressed))

    # -- request --------------------------------------------------------------------------

    def decode_headers(self, headers, end_stream: bool):
        c = self.config
        runtime = self.decoder_callbacks.runtime
        if c.advertise and c.response.on(runtime):
            headers.set("accept-encoding", add_encoding_to_accept_encoding(
                headers.get("accept-encoding"), c.encoding))
        if not end_stream:
            self.req = self._maybe_init(c.request, headers, runtime)
        return FilterHeadersStatus.CONTINUE

    def decode_data(self, data, end_stream: bool):
        if self.req is not None:
            self._decode(self.req, self.config.request, data, end_stream,
                         self.decoder_callbacks.add_decoded_trailers)
        return FilterDataStatus.CONTINUE

    def decode_trailers(self, trailers):
        if self.req is not None:
            self._report(self.req, trailers)
        return super().decode_trailers(trailers)

    # -- response -------------------------------------------------------------------------

    def encode_headers(self, headers, end_stream: bool):
        if not end_stream:
            self.resp = self._maybe_init(self.config.response, headers,
                                         self.encoder_callbacks.runtime)
        return FilterHeadersStatus.CONTINUE

    def encode_data(self, data, end_stream: bool):
        if self.resp is not None:
            self._decode(self.resp, self.config.response, data, end_stream,
                         self.encoder_callbacks.add_encoded_trailers)
        return FilterDataStatus.CONTINUE

    def encode_trailers(self, trailers):
        if self.resp is not None:
            self._report(self.resp, trailers)
        return super().encode_trailers(trailers)


def create(msg, ctx):
    config = Config(msg, ctx)
    return lambda chain: chain.add_stream_filter(DecompressorFilter(config))
