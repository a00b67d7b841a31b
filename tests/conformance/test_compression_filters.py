"""Brotli and zstd compressors and the decompressor filter (gzip, brotli, zstd, both
directions) next to real Envoy 1.40: the same template through both, the same responses
(bodies compared decoded), the same request the upstream saw, and the same stats."""
from __future__ import annotations

import gzip

import brotli
import zstandard

from compare import response_diff

LIB = "type.googleapis.com/envoy.extensions.compression."
TEMPLATE = """
admin:
  address: {socket_address: {address: 127.0.0.1, port_value: $admin}}
static_resources:
  listeners:
  - name: main
    address: {socket_address: {address: 127.0.0.1, port_value: $listener}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: edge
          route_config:
            virtual_hosts:
            - name: vh
              domains: ["*"]
              routes:
              - match: {prefix: "/inner"}
                route: {cluster: inner}
              - match: {prefix: "/"}
                route: {cluster: upstream}
          http_filters:
          - name: gunzip
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.decompressor.v3.Decompressor
              decompressor_library:
                name: gz
                typed_config: {"@type": %(lib)sgzip.decompressor.v3.Gzip}
          - name: unbrotli
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.decompressor.v3.Decompressor
              decompressor_library:
                name: br
                typed_config: {"@type": %(lib)sbrotli.decompressor.v3.Brotli}
              request_direction_config: {advertise_accept_encoding: false}
              response_direction_config: {common_config: {ignore_no_transform_header: true}}
          - name: unzstd
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.decompressor.v3.Decompressor
              decompressor_library:
                name: zs
                typed_config: {"@type": %(lib)szstd.decompressor.v3.Zstd}
              response_direction_config:
                common_config: {enabled: {default_value: false, runtime_key: unzstd.response}}
          - name: envoy.filters.http.router
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}
  - name: inner
    address: {socket_address: {address: 127.0.0.1, port_value: $inner}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: inner
          route_config:
            virtual_hosts:
            - name: vh
              domains: ["*"]
              routes:
              - match: {prefix: "/"}
                route: {cluster: upstream}
          http_filters:
          - name: brotli
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.compressor.v3.Compressor
              compressor_library:
                name: text
                typed_config: {"@type": %(lib)sbrotli.compressor.v3.Brotli, quality: 5}
          - name: zstd
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.compressor.v3.Compressor
              response_direction_config:
                common_config: {min_content_length: 100}
              compressor_library:
                name: text
                typed_config: {"@type": %(lib)szstd.compressor.v3.Zstd, compression_level: 7}
          - name: gzip
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.compressor.v3.Compressor
              compressor_library:
                name: text
                typed_config: {"@type": %(lib)sgzip.compressor.v3.Gzip}
          - name: envoy.filters.http.router
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}
  clusters:
  - name: upstream
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: upstream
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: $upstream}}}}]}]
  - name: inner
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: inner
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: $inner}}}}]}]
""".replace("%(lib)s", LIB)

TEXT = "&hdr=content-type:text/plain"
PATTERN = b"0123456789abcdef" * 300
DECODE = {"gzip": gzip.decompress, "br": brotli.decompress,
          "zstd": lambda b: zstandard.ZstdDecompressor().decompressobj().decompress(b)}


def _decoded(resp):
    """Bodies decoded: the libraries' versions choose different valid bytes."""
    enc = resp.header("content-encoding")
    if enc in DECODE:
        resp.body = DECODE[enc](resp.body)
    return resp


# (method, path, headers, body, port)
SCENARIOS = {
    # the inner listener's compressors, straight
    "br": ("GET", "/t?size=3000" + TEXT, [("accept-encoding", "br")], None, "inner"),
    "zstd": ("GET", "/t?size=3000" + TEXT, [("accept-encoding", "zstd;q=0.8, gzip;q=0.3")],
             None, "inner"),
    "zstd_small": ("GET", "/t?size=80" + TEXT, [("accept-encoding", "zstd")], None, "inner"),
    "all_three": ("GET", "/t?size=3000" + TEXT, [("accept-encoding", "gzip, br, zstd")], None,
                  "inner"),
    # the edge's decompressors on requests (the upstream echoes what it got)
    "rq_gzip": ("POST", "/echo", [("content-encoding", "gzip")], gzip.compress(PATTERN),
                "listener"),
    "rq_br": ("POST", "/echo", [("content-encoding", "br"), ("accept-encoding", "br;q=0.3")],
              brotli.compress(PATTERN), "listener"),
    "rq_zstd_then_gzip": ("POST", "/echo", [("content-encoding", "zstd, gzip")],
                          zstandard.ZstdCompressor().compress(PATTERN), "listener"),
    "rq_no_transform": ("POST", "/echo", [("content-encoding", "gzip"),
                                          ("cache-control", "no-transform")],
                        gzip.compress(PATTERN), "listener"),
    "rq_broken_gzip": ("POST", "/echo", [("content-encoding", "gzip")], b"not gzip", "listener"),
    # Envoy's guards against compression bombs: 100 times a chunk's input at most
    "bomb_gzip": ("POST", "/echo", [("content-encoding", "gzip")],
                  gzip.compress(PATTERN * 70), "listener"),
    "bomb_br": ("POST", "/echo", [("content-encoding", "br")], brotli.compress(PATTERN * 5),
                "listener"),
    "bomb_br_small": ("POST", "/echo", [("content-encoding", "br")],
                      brotli.compress(PATTERN[:9000]), "listener"),
    "bomb_zstd": ("POST", "/echo", [("content-encoding", "zstd")],
                  zstandard.ZstdCompressor().compress(PATTERN * 200), "listener"),
    "rq_plain": ("POST", "/echo", [("accept-encoding", "gzip;q=0.5, deflate")], b"plain",
                 "listener"),
    "rq_headers_only": ("GET", "/echo", [("content-encoding", "gzip")], None, "listener"),
    # responses compressed by the inner listener, decoded by the edge
    "rs_br": ("GET", "/inner/t?size=3000" + TEXT, [("accept-encoding", "br")], None, "listener"),
    "rs_gzip": ("GET", "/inner/t?size=3000" + TEXT, [], None, "listener"),
    "rs_gzip_no_transform": ("GET", "/inner/t?size=3000&hdr=cache-control:no-transform" + TEXT,
                             [], None, "listener"),
}

FAMILIES = ("http.edge.decompressor.", "http.inner.compressor.")


def _stats(side) -> dict:
    out = {}
    for line in side.admin("/stats").body.decode().splitlines():
        name, _, value = line.partition(": ")
        # compressed byte counts follow the libraries' versions (zlib-ng in Envoy): the
        # inner compressors' output and so the edge's response input differ
        if name.startswith(FAMILIES) and not (
                name.endswith("total_compressed_bytes") and (
                    name.startswith("http.inner.") or ".response." in name)):
            out[name] = value
    return out


def test_brotli_zstd_and_decompressor_match_envoy(pair_factory):
    pair = pair_factory(TEMPLATE)
    diffs = []
    for name, (method, path, headers, body, port) in SCENARIOS.items():
        e, p = pair.both(lambda s: _decoded(s.http(path, port=port, method=method,
                                                   headers=headers, body=body)))
        diffs += ["%s: %s" % (name, d) for d in response_diff(e, p)]
    stats = pair.both(_stats)
    assert int(stats[0]["http.edge.decompressor.gz.gzip.request.decompressed"]) >= 2
    assert int(stats[0]["http.inner.compressor.text.brotli.compressed"]) >= 2
    diffs += ["stat %s: envoy %s, proxyd %s" % (k, stats[0].get(k), stats[1].get(k))
              for k in sorted(set(stats[0]) | set(stats[1])) if stats[0].get(k) != stats[1].get(k)]
    assert diffs == [], "\n".join(diffs)
