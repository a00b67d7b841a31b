"""Brotli and zstd beside gzip, and envoy.filters.http.decompressor both ways, end to end:
curl --compressed decodes what proxyd's brotli and zstd compressors send (HTTP/1.1 and
HTTP/2); request bodies sent compressed reach the upstream decoded, with Envoy's byte
count trailers; a proxyd compressor listener behind a proxyd decompressor listener gives
the client the upstream's bytes back, and the stats carry Envoy's names."""
from __future__ import annotations

import gzip
import subprocess
import sys
import urllib.request
from pathlib import Path

import brotli
import pytest
import zstandard

from harness import Proxyd, bootstrap, cluster, free_port, hcm, http, write_config

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "http2"))
from h2client import H2Client  # noqa: E402

T = "type.googleapis.com/envoy.extensions."
COMPRESSOR = T + "filters.http.compressor.v3.Compressor"
DECOMPRESSOR = T + "filters.http.decompressor.v3.Decompressor"
LIBS = {"gzip": "gzip.%s.v3.Gzip", "br": "brotli.%s.v3.Brotli", "zstd": "zstd.%s.v3.Zstd"}
STAT = {"gzip": "gzip", "br": "brotli", "zstd": "zstd"}
PATTERN = b"0123456789abcdef"
TEXT = "&hdr=content-type:text/plain"
DECODE = {"gzip": gzip.decompress, "br": brotli.decompress,
          "zstd": lambda b: zstandard.ZstdDecompressor().decompressobj().decompress(b)}
ENCODE = {"gzip": gzip.compress, "br": brotli.compress,
          "zstd": lambda b: zstandard.ZstdCompressor().compress(b)}


def body(n):
    return (PATTERN * (n // len(PATTERN) + 1))[:n]


def _filter(kind, enc, name):
    lib = {"name": name, "typed_config": {"@type": T + "compression." + LIBS[enc] % kind}}
    if kind == "compressor":
        return {"name": "envoy.filters.http.compressor",
                "typed_config": {"@type": COMPRESSOR, "compressor_library": lib}}
    return {"name": "envoy.filters.http.decompressor",
            "typed_config": {"@type": DECOMPRESSOR, "decompressor_library": lib}}


def _listener(port, prefix, filters, cluster_name="upstream"):
    h = hcm(stat_prefix=prefix, routes=[{"match": {"prefix": "/"},
                                         "route": {"cluster": cluster_name}}])
    h["http_filters"][:0] = filters
    return {"name": prefix, "address": {"socket_address": {"address": "127.0.0.1",
                                                           "port_value": port}},
            "filter_chains": [{"filters": [{
                "name": "envoy.filters.network.http_connection_manager", "typed_config": h}]}]}


@pytest.fixture(scope="module")
def px(upstream, tmp_path_factory):
    ports = {k: free_port() for k in ("comp_br", "comp_zstd", "dec_gzip", "dec_br", "dec_zstd",
                                      "inner_gzip", "inner_br", "inner_zstd")}
    listeners, clusters = [], [cluster("upstream", [("127.0.0.1", upstream.port)])]
    for enc in ("br", "zstd"):
        listeners.append(_listener(ports["comp_" + enc], "comp_" + enc,
                                   [_filter("compressor", enc, "lib")]))
    for enc in ("gzip", "br", "zstd"):
        listeners.append(_listener(ports["inner_" + enc], "inner_" + enc,
                                   [_filter("compressor", enc, "lib")]))
        clusters.append(cluster("inner_" + enc, [("127.0.0.1", ports["inner_" + enc])]))
        listeners.append(_listener(ports["dec_" + enc], "dec_" + enc,
                                   [_filter("decompressor", enc, "small")], "inner_" + enc))
    cfg = bootstrap(listeners, clusters, free_port())
    p = Proxyd(write_config(tmp_path_factory.mktemp("complibs"), cfg))
    p.start()
    p.named = ports
    yield p
    p.cleanup()


def stats(px) -> dict:
    text = urllib.request.urlopen(px.admin_url + "/stats", timeout=5).read().decode()
    return dict(line.split(": ", 1) for line in text.splitlines() if ": " in line)


@pytest.mark.parametrize("enc", ["br", "zstd"])
def test_curl_compressed_decodes_brotli_and_zstd(px, enc):
    out = subprocess.run(["curl", "-s", "-H", "accept-encoding: " + enc, "--compressed",
                          "-D", "-", "-o", "/dev/stderr",
                          "http://127.0.0.1:%d/t?size=5000%s" % (px.named["comp_" + enc], TEXT)],
                         capture_output=True, timeout=10)
    head = out.stdout.decode().lower()
    assert "content-encoding: %s" % enc in head and "vary: accept-encoding" in head
    assert out.stderr == body(5000)
    s = stats(px)
    assert int(s["http.comp_%s.compressor.lib.%s.compressed" % (enc, STAT[enc])]) >= 1


@pytest.mark.parametrize("enc", ["br", "zstd"])
def test_streamed_brotli_and_zstd_over_http2(px, enc):
    with H2Client(px.named["comp_" + enc]) as c:
        r = c.get("/t?size=3000&chunk=700&chunked=1" + TEXT, [("accept-encoding", enc)])
    assert r.status == 200 and r.header("content-encoding") == enc
    assert DECODE[enc](bytes(r.body)) == body(3000)


@pytest.mark.parametrize("enc", ["gzip", "br", "zstd"])
def test_request_body_reaches_the_upstream_decoded(px, enc):
    raw = body(4000)
    r = http(px.named["dec_" + enc], "POST", "/echo", [("content-encoding", enc)],
             body=ENCODE[enc](raw))
    echo = r.json()
    assert echo["body_len"] == 4000 and echo["body"] == raw.decode()
    seen = dict(echo["headers"])
    assert "content-encoding" not in seen
    # the response decompression advertised this hop's encoding upstream
    assert seen["accept-encoding"].endswith(enc)
    s = stats(px)
    p = "http.dec_%s.decompressor.small.%s.request." % (enc, STAT[enc])
    assert int(s[p + "decompressed"]) >= 1
    assert int(s[p + "total_uncompressed_bytes"]) >= 4000


def test_request_over_http2_and_remaining_codings_and_trailers(px):
    raw = body(3000)
    with H2Client(px.named["dec_gzip"]) as c:
        sid = c.request("POST", "/echo", [("content-encoding", "gzip, br")],
                        body=gzip.compress(raw))
        r = c.wait(sid)
    echo = __import__("json").loads(bytes(r.body))
    assert echo["body_len"] == 3000
    assert dict(echo["headers"]).get("content-encoding") == "br"   # the next coding stays


@pytest.mark.parametrize("enc", ["gzip", "br", "zstd"])
def test_proxyd_compressor_behind_proxyd_decompressor(px, enc):
    r = http(px.named["dec_" + enc], "GET", "/t?size=6000" + TEXT, [])
    assert r.status == 200 and r.header("content-encoding") is None
    assert r.header("content-length") is None and r.body == body(6000)
    s = stats(px)
    assert int(s["http.inner_%s.compressor.lib.%s.compressed" % (enc, STAT[enc])]) >= 1
    p = "http.dec_%s.decompressor.small.%s.response." % (enc, STAT[enc])
    assert int(s[p + "decompressed"]) >= 1


def test_broken_gzip_counts_the_library_error(px):
    r = http(px.named["dec_gzip"], "POST", "/echo", [("content-encoding", "gzip")],
             body=b"not gzip at all")
    assert r.status == 200 and r.json()["body_len"] == 0
    s = stats(px)
    assert int(s["http.dec_gzip.decompressor.small.gzip.decompressor_library.zlib_data_error"]) >= 1
    assert "http.dec_gzip.decompressor.small.gzip.decompressor_library.zlib_errno" in s
