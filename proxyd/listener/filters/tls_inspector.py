"""envoy.filters.listener.tls_inspector: read SNI and ALPN from the ClientHello without
consuming it (MSG_PEEK), so the filter chain can be chosen before the handshake starts.

A connection whose first byte is not a TLS handshake record is left as `raw_buffer`;
the handshake itself is still done by the chosen chain's transport socket.
"""
from __future__ import annotations

import socket

import gevent

MAX_CLIENT_HELLO = 64 * 1024  # Envoy's default max_client_hello_size

_NEED_MORE = object()


def parse_client_hello(data: bytes):
    """(server_name, [alpn...]) from the start of a TLS stream; None if it is not a TLS
    ClientHello; `_NEED_MORE` if `data` stops before the ClientHello ends."""
    if not data:
        return _NEED_MORE
    if data[0] != 0x16:
        return None
    # A ClientHello may span several handshake records: concatenate their payloads.
    hs = bytearray()
    pos = 0
    while True:
        if len(data) < pos + 5:
            return _NEED_MORE
        if data[pos] != 0x16 or data[pos + 1] != 3:
            return None
        rlen = int.from_bytes(data[pos + 3:pos + 5], "big")
        if len(data) < pos + 5 + rlen:
            hs += data[pos + 5:]
            if len(hs) >= 4 and hs[0] != 1:
                return None
            return _NEED_MORE
        hs += data[pos + 5:pos + 5 + rlen]
        pos += 5 + rlen
        if len(hs) >= 4:
            if hs[0] != 1:
                return None
            if len(hs) >= 4 + int.from_bytes(hs[1:4], "big"):
                break
    try:
        return _client_hello_body(bytes(hs[4:4 + int.from_bytes(hs[1:4], "big")]))
    except (IndexError, ValueError):
        return None


def _client_hello_body(b: bytes):
    p = 2 + 32                          # client_version, random
    p += 1 + b[p]                       # session_id
    p += 2 + int.from_bytes(b[p:p + 2], "big")  # cipher_suites
    p += 1 + b[p]                       # compression_methods
    sni, alpn = "", []
    if p + 2 > len(b):
        return sni, alpn                # no extensions
    end = p + 2 + int.from_bytes(b[p:p + 2], "big")
    p += 2
    while p + 4 <= end:
        etype = int.from_bytes(b[p:p + 2], "big")
        elen = int.from_bytes(b[p + 2:p + 4], "big")
        ext = b[p + 4:p + 4 + elen]
        p += 4 + elen
        if etype == 0:                  # server_name
            q, qend = 2, 2 + int.from_bytes(ext[0:2], "big")
            while q + 3 <= qend:
                nlen = int.from_bytes(ext[q + 1:q + 3], "big")
                if ext[q] == 0:
                    sni = ext[q + 3:q + 3 + nlen].decode("ascii", "replace").lower().rstrip(".")
                    break
                q += 3 + nlen
        elif etype == 16:               # application_layer_protocol_negotiation
            q, qend = 2, 2 + int.from_bytes(ext[0:2], "big")
            while q < qend:
                n = ext[q]
                alpn.append(ext[q + 1:q + 1 + n].decode("ascii", "replace"))
                q += 1 + n
    return sni, alpn


class TlsInspector:
    """Envoy's stats, shared by every listener (``tls_inspector.``): tls_found/not_found,
    sni_*, alpn_*, client_hello_too_large (the connection is closed, as in Envoy) and the
    bytes_processed histogram."""

    def __init__(self, config, ctx):
        self.max_size = (config.max_client_hello_size.value
                         if config.HasField("max_client_hello_size") else MAX_CLIENT_HELLO)
        stats = ctx.stats
        self.counters = {name: stats.counter("tls_inspector." + name) for name in (
            "client_hello_too_large", "tls_found", "tls_not_found", "alpn_found",
            "alpn_not_found", "sni_found", "sni_not_found")}
        self.bytes_processed = stats.histogram("tls_inspector.bytes_processed")

    def on_accept(self, conn) -> bool:
        """Fill conn.transport_protocol / requested_server_name / requested_alpn. Returns
        False when the connection should be closed (peer gone, ClientHello too large);
        the listener's listener_filters_timeout bounds the wait."""
        sock = conn.sock
        delay = 0.001
        count = self.counters
        while True:
            try:
                data = sock.recv(self.max_size, socket.MSG_PEEK)
            except OSError:
                return False
            if not data:
                return False
            res = parse_client_hello(data)
            if res is _NEED_MORE and len(data) < self.max_size:
                # A peek returns at once while anything is buffered: poll until the rest
                # of a fragmented ClientHello arrives (rare: it usually fits one segment).
                gevent.sleep(delay)
                delay = min(delay * 2, 0.05)
                continue
            self.bytes_processed.record(len(data))
            if res is _NEED_MORE:
                count["client_hello_too_large"].inc()
                return False
            if res is None:
                count["tls_not_found"].inc()
                return True  # not TLS: raw_buffer
            count["tls_found"].inc()
            conn.transport_protocol = "tls"
            conn.requested_server_name, conn.requested_alpn = res
            count["sni_found" if conn.requested_server_name else "sni_not_found"].inc()
            count["alpn_found" if conn.requested_alpn else "alpn_not_found"].inc()
            return True


def create(config, ctx) -> TlsInspector:
    return TlsInspector(config, ctx)
