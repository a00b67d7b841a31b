"""envoy.filters.http.compressor with gzip end to end: curl --compressed gets a gzip body
that decodes to the upstream's bytes, Accept-Encoding q-values, Vary, ETag weakening,
responses left alone (small, already encoded, no-transform, other types), a streamed
body that stays streamed, remove_accept_encoding_header, and the stats Envoy names."""
from __future__ import annotations

import gzip
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from harness import Conn, Proxyd, bootstrap, cluster, free_port, hcm, http, write_config

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "http2"))
from h2client import H2Client  # noqa: E402

COMPRESSOR = "type.googleapis.com/envoy.extensions.filters.http.compressor.v3.Compressor"
GZIP = "type.googleapis.com/envoy.extensions.compression.gzip.compressor.v3.Gzip"
PATTERN = b"0123456789abcdef"
TEXT = "&hdr=content-type:text/plain"


PER_ROUTE = "type.googleapis.com/envoy.extensions.filters.http.compressor.v3.CompressorPerRoute"


def _listener(port, prefix, compressor):
    off = {"envoy.filters.http.compressor": {"@type": PER_ROUTE, "disabled": True}}
    h = hcm(stat_prefix=prefix, routes=[
        {"match": {"prefix": "/off"}, "route": {"cluster": "upstream"},
         "typed_per_filter_config": off},
        {"match": {"prefix": "/"}, "route": {"cluster": "upstream"}}])
    h["http_filters"].insert(0, {"name": "envoy.filters.http.compressor",
                                 "typed_config": dict({"@type": COMPRESSOR}, **compressor)})
    return {"name": prefix, "address": {"socket_address": {"address": "127.0.0.1",
                                                           "port_value": port}},
            "filter_chains": [{"filters": [{
                "name": "envoy.filters.network.http_connection_manager", "typed_config": h}]}]}


@pytest.fixture(scope="module")
def px(upstream, tmp_path_factory):
    d = tmp_path_factory.mktemp("compressor")
    lib = {"name": "text_optimized", "typed_config": {"@type": GZIP, "compression_level":
                                                      "BEST_COMPRESSION"}}
    tuned = {"compressor_library": lib, "response_direction_config": {
        "common_config": {"min_content_length": 100, "content_type": ["application/x-custom"]},
        "remove_accept_encoding_header": True}}
    cfg = bootstrap([_listener(free_port(), "ingress", {"compressor_library": lib}),
                     _listener(free_port(), "tuned", tuned)],
                    [cluster("upstream", [("127.0.0.1", upstream.port)])], free_port())
    p = Proxyd(write_config(d, cfg))
    p.start()
    yield p
    p.cleanup()


def stats(px) -> dict:
    text = urllib.request.urlopen(px.admin_url + "/stats", timeout=5).read().decode()
    return dict(line.split(": ", 1) for line in text.splitlines() if ": " in line)


def body(n):
    return (PATTERN * (n // len(PATTERN) + 1))[:n]


def test_curl_compressed_gets_gzip_that_decodes_to_the_upstream_body(px):
    out = subprocess.run(["curl", "-s", "--compressed", "-D", "-", "-o", "/dev/stderr",
                          "http://127.0.0.1:%d/t?size=5000%s" % (px.ports[0], TEXT)],
                         capture_output=True, timeout=10)
    head = out.stdout.decode().lower()
    assert "content-encoding: gzip" in head and "vary: accept-encoding" in head
    assert "content-length" not in head and "transfer-encoding: chunked" in head
    assert out.stderr == body(5000)   # curl decoded it


def test_q_values_vary_and_etag(px):
    r = http(px.ports[0], "GET", "/t?size=2000%s&hdr=etag:\"v1\"" % TEXT,
             [("accept-encoding", "br;q=0.9, gzip;q=0.5")])
    assert r.header("content-encoding") == "gzip" and gzip.decompress(r.body) == body(2000)
    assert r.header("etag") is None                 # a strong ETag no longer holds
    r = http(px.ports[0], "GET", "/t?size=2000%s&hdr=etag:W/\"v1\"" % TEXT,
             [("accept-encoding", "gzip")])
    assert r.header("etag") == 'W/"v1"'             # a weak one does
    r = http(px.ports[0], "GET", "/t?size=2000" + TEXT, [("accept-encoding", "gzip;q=0, identity")])
    assert r.header("content-encoding") is None and r.body == body(2000)
    assert r.header("vary") == "Accept-Encoding"    # compressible, so it varies


@pytest.mark.parametrize("query,accept", [
    ("size=10" + TEXT, "gzip"),                                        # under 30 bytes
    ("size=2000&hdr=content-type:image/png", "gzip"),                  # not a listed type
    ("size=2000%s&hdr=content-encoding:br" % TEXT, "gzip"),            # already encoded
    ("size=2000%s&hdr=cache-control:no-transform" % TEXT, "*"),
    ("size=2000" + TEXT, None),                                        # no Accept-Encoding
])
def test_responses_left_alone(px, query, accept):
    r = http(px.ports[0], "GET", "/t?" + query, [("accept-encoding", accept)] if accept else [])
    assert r.header("content-encoding") in (None, "br")
    assert r.body == body(int(query.split("&")[0][5:]))


def test_streamed_body_is_compressed_chunk_by_chunk(px):
    with Conn(px.ports[0]) as c:
        t0 = time.monotonic()
        r = c.request("GET", "/t?size=300&chunk=100&interval=0.2&chunked=1" + TEXT,
                      [("accept-encoding", "gzip")])
    assert time.monotonic() - t0 >= 0.35
    assert r.header("content-encoding") == "gzip" and gzip.decompress(r.body) == body(300)


def test_tuned_config_types_min_length_and_removed_accept_encoding(px):
    ct = "&hdr=content-type:application/x-custom"
    r = http(px.ports[1], "GET", "/t?size=150" + ct, [("accept-encoding", "gzip")])
    assert r.header("content-encoding") == "gzip" and gzip.decompress(r.body) == body(150)
    r = http(px.ports[1], "GET", "/t?size=80" + ct, [("accept-encoding", "gzip")])
    assert r.header("content-encoding") is None     # under min_content_length 100
    r = http(px.ports[1], "GET", "/echo", [("accept-encoding", "gzip")])
    assert "accept-encoding" not in r.json()["headers"]   # the upstream never saw it


def test_stats_as_envoy_names_them(px):
    s0 = stats(px)
    http(px.ports[0], "GET", "/t?size=1000" + TEXT, [("accept-encoding", "gzip")])
    s1 = stats(px)
    p = "http.ingress.compressor.text_optimized.gzip."
    delta = lambda k: int(s1[p + k]) - int(s0.get(p + k, 0))  # noqa: E731
    assert delta("compressed") == 1 and delta("header_compressor_used") == 1
    assert delta("total_uncompressed_bytes") == 1000
    assert 0 < delta("total_compressed_bytes") < 200
    assert "http.tuned.compressor.text_optimized.gzip.response.compressed" in s1
    assert p + "request.not_compressed" in s1


def test_route_can_disable_compression(px):
    r = http(px.ports[0], "GET", "/off?size=2000" + TEXT, [("accept-encoding", "gzip")])
    assert r.header("content-encoding") is None and r.body == body(2000)


def test_http2_downstream_gets_gzip(px):
    with H2Client(px.ports[0]) as c:
        r = c.get("/t?size=4000" + TEXT, [("accept-encoding", "gzip")])
    assert r.status == 200 and r.header("content-encoding") == "gzip"
    assert r.header("content-length") is None
    assert gzip.decompress(bytes(r.body)) == body(4000)
