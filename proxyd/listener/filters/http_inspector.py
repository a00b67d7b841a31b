"""envoy.filters.listener.http_inspector: peek at a plaintext connection's first bytes and
set its application protocol (`h2c`, `http/1.1` or `http/1.0`) for filter_chain_match's
application_protocols, without consuming anything.

As Envoy: a connection whose transport protocol is already known (tls_inspector found a
ClientHello) is left alone; the HTTP/2 connection preface means `h2c`; otherwise the
first line must be an HTTP/1 request line (`METHOD SP target SP HTTP/1.x CRLF`) or the
connection is `http_not_found` (and keeps no application protocol); a peer that closes
before that is a `read_error` and the connection is closed. At most 64 KiB are inspected.

Stats (`http_inspector.`, no prefix): read_error, http10_found, http11_found, http2_found,
http_not_found.
"""
from __future__ import annotations

import re
import socket

import gevent

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
MAX_INSPECT = 64 * 1024
_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_REQUEST_LINE = re.compile(rb"(" + _TOKEN + rb") ([^ \r\n]+) HTTP/1\.([01])\r?\n")
def _prefixes(text: bytes) -> bytes:
    """A regex matching any prefix of `text` (including the empty one)."""
    out = b""
    for ch in reversed(text):
        out = b"(?:" + re.escape(bytes([ch])) + out + b")?"
    return out


# a request line cut short: METHOD, then " target", then " HTTP/1.x" and "\r", each partial
_PARTIAL = re.compile(b"(?:" + _TOKEN + b"(?: [^ \r\n]*(?: " + _prefixes(b"HTTP/1.") +
                      b"[01]?)?)?)?\r?")

_NEED_MORE = object()


def inspect(data: bytes):
    """"h2c", "http/1.1", "http/1.0", None (not HTTP) or _NEED_MORE."""
    n = min(len(data), len(H2_PREFACE))
    if data[:n] == H2_PREFACE[:n]:
        return "h2c" if n == len(H2_PREFACE) else _NEED_MORE
    m = _REQUEST_LINE.match(data)
    if m is not None:
        return "http/1.%s" % m.group(3).decode()
    if len(data) < MAX_INSPECT and b"\n" not in data and _PARTIAL.fullmatch(data):
        return _NEED_MORE
    return None


class HttpInspector:
    def __init__(self, config, ctx):
        stats = ctx.stats
        self.counters = {name: stats.counter("http_inspector." + name) for name in (
            "read_error", "http10_found", "http11_found", "http2_found", "http_not_found")}

    def on_accept(self, conn) -> bool:
        if conn.transport_protocol and conn.transport_protocol != "raw_buffer":
            return True
        sock = conn.sock
        delay = 0.001
        count = self.counters
        while True:
            try:
                data = sock.recv(MAX_INSPECT, socket.MSG_PEEK)
            except OSError:
                data = b""
            if not data:
                count["read_error"].inc()
                return False
            res = inspect(data)
            if res is not _NEED_MORE:
                break
            gevent.sleep(delay)
            delay = min(delay * 2, 0.05)
        if res is None:
            count["http_not_found"].inc()
            return True
        count[{"h2c": "http2_found", "http/1.1": "http11_found",
               "http/1.0": "http10_found"}[res]].inc()
        conn.requested_alpn = (res,)
        return True


def create(config, ctx) -> HttpInspector:
    return HttpInspector(config, ctx)
