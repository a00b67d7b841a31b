"""filter_chain_match precedence (Envoy's order) and the ClientHello parser, in-process."""
from __future__ import annotations

import ssl

from envoy.config.listener.v3.listener_components_pb2 import FilterChainMatch

from proxyd.listener.filter_chain import Selector
from proxyd.listener.filters.tls_inspector import _NEED_MORE, parse_client_hello


def sel(*matches, default=None):
    return Selector([(FilterChainMatch(**m), name) for name, m in matches], default)


def test_server_names_exact_then_longest_wildcard_then_catch_all():
    s = sel(("exact", {"server_names": ["www.example.com"]}),
            ("wild", {"server_names": ["*.example.com"]}),
            ("deeper", {"server_names": ["*.b.example.com"]}),
            ("any", {}))
    assert s.select(443, "www.example.com", "tls", []) == "exact"
    assert s.select(443, "x.example.com", "tls", []) == "wild"
    assert s.select(443, "a.b.example.com", "tls", []) == "deeper"
    assert s.select(443, "example.com", "tls", []) == "any"
    assert s.select(443, "", "raw_buffer", []) == "any"


def test_destination_port_first():
    s = sel(("p8443", {"destination_port": {"value": 8443}}), ("sni", {"server_names": ["a.com"]}))
    assert s.select(8443, "a.com", "tls", []) == "p8443"
    assert s.select(443, "a.com", "tls", []) == "sni"


def test_no_backtracking_after_a_specific_match():
    """A server name match that then fails on transport_protocol does not fall back to the
    catch-all chain (Envoy does not backtrack); the default chain is used instead."""
    s = sel(("sni-tls", {"server_names": ["a.com"], "transport_protocol": "tls"}),
            ("any", {}), default="default")
    assert s.select(443, "a.com", "raw_buffer", []) == "default"
    assert s.select(443, "b.com", "raw_buffer", []) == "any"


def test_alpn_in_client_order():
    s = sel(("h2", {"application_protocols": ["h2"]}),
            ("h1", {"application_protocols": ["http/1.1"]}),
            ("none", {}))
    assert s.select(443, "", "tls", ["http/1.1", "h2"]) == "h1"
    assert s.select(443, "", "tls", ["h2", "http/1.1"]) == "h2"
    assert s.select(443, "", "tls", ["spdy/3"]) == "none"
    assert s.select(443, "", "tls", []) == "none"


def test_transport_protocol():
    s = sel(("tls", {"transport_protocol": "tls"}), ("raw", {"transport_protocol": "raw_buffer"}))
    assert s.select(1, "", "tls", []) == "tls"
    assert s.select(1, "", "", []) == "raw"


def _client_hello(server_name=None, alpn=None) -> bytes:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(alpn)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=server_name)
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


def test_parse_real_client_hello():
    hello = _client_hello("Api.Example.com", ["h2", "http/1.1"])
    assert parse_client_hello(hello) == ("api.example.com", ["h2", "http/1.1"])
    assert parse_client_hello(_client_hello()) == ("", [])


def test_parse_partial_and_fragmented():
    hello = _client_hello("a.example.com", ["h2"])
    for cut in (1, 3, 5, 40, len(hello) - 1):
        assert parse_client_hello(hello[:cut]) is _NEED_MORE
    # the same handshake message split over two TLS records
    body = hello[5:]
    rec = lambda b: b"\x16\x03\x01" + len(b).to_bytes(2, "big") + b  # noqa: E731
    split = rec(body[:50]) + rec(body[50:])
    assert parse_client_hello(split) == ("a.example.com", ["h2"])
    assert parse_client_hello(split[:60]) is _NEED_MORE


def test_not_tls():
    assert parse_client_hello(b"GET / HTTP/1.1\r\n") is None
    assert parse_client_hello(b"\x16\x03\x01\x00\x05\x02\x00\x00\x01\x00") is None  # ServerHello
