"""envoy.filters.http.compressor: compresses response bodies with the configured library
(`compressor_library`: gzip), following Envoy 1.40's decisions and stats.

In order: a response whose content-length is under `min_content_length` (30) is left
alone (`content_length_too_small`). A headers-only response is not compressed. Otherwise
the request's Accept-Encoding is weighed by q-value (`no_accept_header`, `header_identity`,
`header_wildcard`, `header_not_valid`, `header_compressor_used`); this filter only offers
its encoding for an allowed content type (the default list is Envoy's). A response is
compressible when its type is allowed and it has no `cache-control: no-transform`, no
content-encoding, a status outside `uncompressible_response_codes` and (with
`disable_on_etag_header`) no ETag; a compressible response
gets `vary: Accept-Encoding` whether compressed or not. Compressing drops content-length
(HTTP/1.1 goes chunked), sets content-encoding and drops a strong ETag (a weak one stays).
A route's `CompressorPerRoute{disabled: true}` turns it off there. Stats live under
`http.<prefix>.compressor.<library name>.<gzip>.`; once
`response_direction_config` is set, the per-direction ones (compressed, not_compressed,
total_*_bytes, content_length_too_small) move under `response.`, as Envoy 1.40 has them.
"""
from __future__ import annotations

from proxyd import registry
from proxyd.proto import extension_config
from proxyd.http.filter import FilterDataStatus, FilterHeadersStatus, StreamFilter

DEFAULT_TYPES = ("application/javascript", "application/json", "application/xhtml+xml",
                 "image/svg+xml", "text/css", "text/html", "text/plain", "text/xml")
# per direction (under `response.` once response_direction_config is set, `request.`)
_DIRECTION = ("compressed", "not_compressed", "total_uncompressed_bytes",
              "total_compressed_bytes", "content_length_too_small")
# the filter's own, always at the library prefix
_REGISTRY = "envoy.compression.registry"
_DECISION = "envoy.compression.encoding_decision"
_FILTER = ("no_accept_header", "header_identity", "header_compressor_used",
           "header_compressor_overshadowed", "header_wildcard", "header_not_valid",
           "not_compressed_etag")


def _accept_encoding(value: str) -> list[tuple[str, float]]:
    """Accept-Encoding as [(coding, q)]; an item whose q does not parse is skipped (Envoy)."""
    out = []
    for item in value.split(","):
        coding, sep, params = item.partition(";")
        coding = coding.strip()
        if not coding and not sep:
            continue
        q = 1.0
        if sep:
            k, eq, v = params.partition("=")
            if eq and k.strip().lower() == "q":
                try:
                    q = float(v.strip())
                except ValueError:
                    continue
        out.append((coding, q))
    return out


def decide(accept: str, content_type: str | None, configs) -> tuple[str, str]:
    """Envoy's chooseEncoding, made once per stream for every compressor filter on it:
    (the header stat kind, the chosen encoding or "identity"). `configs` are the stream's
    compressor filters in chain order; one whose types exclude the response's content
    type takes no part, and of several for one encoding the first counts."""
    allowed: dict = {}
    for c in configs:
        if content_type and content_type not in c.types:
            continue
        allowed.setdefault(c.library.encoding, len(allowed))
    pairs = _accept_encoding(accept)
    for coding, q in pairs:
        if not q:
            allowed.pop(coding, None)
    if not pairs or not allowed:
        return "not_valid", "identity"
    choice, best = "identity", 0.0
    for coding, q in pairs:
        if q > best and (coding in allowed or coding in ("identity", "*")):
            choice, best = coding, q
    if not best:
        return "not_valid", "identity"
    if choice == "identity":
        return "identity", "identity"
    if choice == "*":
        return "wildcard", min(allowed, key=allowed.get)
    return "valid", choice


def _stat(kind: str, mine: bool) -> str:
    if kind == "valid":
        return "header_compressor_used" if mine else "header_compressor_overshadowed"
    return {"identity": "header_identity", "wildcard": "header_wildcard"}.get(
        kind, "header_not_valid")


class Config:
    def __init__(self, msg, ctx):
        lib = msg.compressor_library
        _type_name, lib_msg = extension_config(lib.typed_config)
        self.library = registry.factory(lib.typed_config.type_url).create(lib_msg)
        resp = msg.response_direction_config
        common = resp.common_config
        self.min_length = common.min_content_length.value \
            if common.HasField("min_content_length") else 30
        self.types = frozenset(t.lower() for t in common.content_type) or frozenset(DEFAULT_TYPES)
        self.enabled = (common.enabled.runtime_key, common.enabled.default_value.value) \
            if common.HasField("enabled") else None
        self.disable_on_etag = resp.disable_on_etag_header
        self.uncompressible_codes = frozenset(str(c) for c in resp.uncompressible_response_codes)
        self.remove_accept_encoding = resp.remove_accept_encoding_header
        base = "compressor.%s.%s" % (lib.name, self.library.stat_prefix)
        response = base + ("response." if msg.HasField("response_direction_config") else "")
        self.stats = ctx.scope(response, counters=_DIRECTION)
        self.filter_stats = ctx.scope(base, counters=_FILTER)
        self.request_stats = ctx.scope(base + "request.", counters=_DIRECTION)

    def is_enabled(self, runtime) -> bool:
        return self.enabled is None or runtime.get_bool(*self.enabled)


def _type_allowed(headers, types) -> bool:
    ct = headers.get("content-type")
    return ct is None or ct.split(";", 1)[0].strip().lower() in types


def _has_no_transform(headers) -> bool:
    return any(d.strip().lower() == "no-transform"
               for v in headers.get_all("cache-control") for d in v.split(","))


def _add_vary(headers) -> None:
    vary = headers.get("vary")
    if vary is None:
        headers.set("vary", "Accept-Encoding")
    elif "accept-encoding" not in [v.strip().lower() for v in vary.split(",")]:
        headers.set("vary", vary + ", Accept-Encoding")


class CompressorFilter(StreamFilter):
    def __init__(self, config: Config):
        self.config = config
        self.accept = None
        self.compressor = None

    def set_decoder_filter_callbacks(self, callbacks) -> None:
        self.decoder_callbacks = callbacks
        # every compressor filter of the stream, in chain order (Envoy's CompressorRegistry)
        callbacks.stream_info.filter_state.setdefault(_REGISTRY, []).append(self.config)

    def _decision(self, headers) -> str:
        """This filter's share of the stream's one encoding decision (made by the first
        compressor the response reaches, then cached): counts the header stat, returns the
        chosen encoding."""
        c = self.config
        if self.accept is None:
            c.filter_stats.no_accept_header.inc()
            return "identity"
        state = self.encoder_callbacks.stream_info.filter_state
        decision = state.get(_DECISION)
        if decision is None:
            ct = headers.get("content-type")
            ct = ct.split(";", 1)[0].strip().lower() if ct is not None else None
            decision = state[_DECISION] = decide(self.accept, ct, state.get(_REGISTRY, ()))
        kind, coding = decision
        getattr(c.filter_stats, _stat(kind, coding == c.library.encoding)).inc()
        return coding

    def decode_headers(self, headers, end_stream: bool):
        self.config.request_stats.not_compressed.inc()
        self.accept = headers.get("accept-encoding")
        if self.accept is not None and self.config.remove_accept_encoding:
            headers.remove("accept-encoding")
        return FilterHeadersStatus.CONTINUE

    def encode_headers(self, headers, end_stream: bool):
        c, stats = self.config, self.config.stats
        cb = self.encoder_callbacks
        if not c.is_enabled(cb.runtime) or isinstance(cb.per_route_config(), RouteDisabled):
            stats.not_compressed.inc()
            return FilterHeadersStatus.CONTINUE
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) < c.min_length):
            stats.content_length_too_small.inc()
            stats.not_compressed.inc()
            return FilterHeadersStatus.CONTINUE
        type_ok = _type_allowed(headers, c.types)
        compressible = type_ok and not _has_no_transform(headers) \
            and "content-encoding" not in headers and headers.get(":status") != "101" \
            and headers.get(":status") not in c.uncompressible_codes
        if compressible and c.disable_on_etag and "etag" in headers:
            c.filter_stats.not_compressed_etag.inc()
            compressible = False
        if end_stream:
            if compressible:
                _add_vary(headers)
            stats.not_compressed.inc()
            return FilterHeadersStatus.CONTINUE
        coding = self._decision(headers)
        if coding != c.library.encoding:
            coding = "identity"
        if not compressible or coding == "identity":
            if compressible:
                _add_vary(headers)
            stats.not_compressed.inc()
            return FilterHeadersStatus.CONTINUE
        stats.compressed.inc()
        headers.remove("content-length")
        headers.set("content-encoding", coding)
        _add_vary(headers)
        etag = headers.get("etag")
        if etag is not None and not etag.startswith("W/"):
            headers.remove("etag")
        self.compressor = c.library()
        return FilterHeadersStatus.CONTINUE

    def encode_data(self, data: bytes, end_stream: bool):
        if self.compressor is None:
            return FilterDataStatus.CONTINUE
        out = self.compressor.compress(bytes(data), end_stream)
        self.config.stats.total_uncompressed_bytes.inc(len(data))
        self.config.stats.total_compressed_bytes.inc(len(out))
        data[:] = out   # encoder filters get a bytearray they may change in place
        return FilterDataStatus.CONTINUE

    def encode_trailers(self, trailers):
        if self.compressor is not None:
            tail = self.compressor.compress(b"", True)
            self.config.stats.total_compressed_bytes.inc(len(tail))
            self.encoder_callbacks.add_encoded_data(tail)
        return super().encode_trailers(trailers)


class RouteDisabled:
    """CompressorPerRoute{disabled: true}: no compression on this route."""


def create_route_config(msg, factory):
    if msg.WhichOneof("override") != "disabled" or not msg.disabled:
        raise ValueError("CompressorPerRoute: only 'disabled: true' is supported")
    return RouteDisabled()


def create(msg, ctx):
    config = Config(msg, ctx)
    return lambda chain: chain.add_stream_filter(CompressorFilter(config))
