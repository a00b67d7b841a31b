"""envoy.filters.listener.proxy_protocol: read a PROXY protocol header (HAProxy's v1 text
or v2 binary) from the start of a connection, consume it, and make the addresses it
carries the connection's remote and local addresses (what access logs, RBAC's remote_ip,
X-Forwarded-For with use_remote_address and an ORIGINAL_DST cluster see); the physical
peer stays the *direct* remote address.

As in Envoy 1.40 (observed): a v1 `UNKNOWN` or v2 `LOCAL` header is consumed and leaves
the addresses as they are; a v2 `PROXY` header for other than TCP/UDP over IPv4/IPv6
(AF_UNSPEC, AF_UNIX) is an error, as is any malformed header: it
closes the connection (counted under `versions.<v>.error` and the legacy
`downstream_cx_proxy_proto_error`); a connection without a header is closed
(`not_found_disallowed`, and the legacy counter too) unless `allow_requests_without_proxy_protocol`
(`not_found_allowed`); bytes that could still become a header (a short `PROX`) wait for
more, bounded by the listener's `listener_filters_timeout`. `rules` copy a v2 TLV's value
into the connection's dynamic metadata (`namespace.key`).

Stats (`proxy_proto.[<stat_prefix>.]`): `not_found_allowed`, `not_found_disallowed`,
`versions.v1|v2.found|disallowed|error`.
"""
from __future__ import annotations

import ipaddress
import socket
import struct

import gevent

V1_SIGNATURE = b"PROXY "
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V1_MAX = 107                 # "PROXY TCP6 <39> <39> 65535 65535\r\n" is the longest
V2_HEADER = 16

_NEED_MORE = object()


class ProxyProtocolError(Exception):
    def __init__(self, version: int, reason: str):
        super().__init__(reason)
        self.version = version


class Header:
    """A parsed header: its length in bytes, its version, the source and destination
    (None for UNKNOWN/LOCAL) and the v2 TLVs as [(type, value)]."""

    __slots__ = ("length", "version", "src", "dst", "tlvs")

    def __init__(self, length, version, src=None, dst=None, tlvs=()):
        self.length = length
        self.version = version
        self.src = src
        self.dst = dst
        self.tlvs = list(tlvs)


def _is_prefix(data: bytes, signature: bytes) -> bool:
    n = min(len(data), len(signature))
    return data[:n] == signature[:n]


def parse(data: bytes):
    """A Header; None when `data` does not start with a PROXY header; `_NEED_MORE` when it
    may still become one. Raises ProxyProtocolError for a malformed header."""
    if _is_prefix(data, V2_SIGNATURE):
        if len(data) < V2_HEADER:
            return _NEED_MORE
        return _parse_v2(data)
    if _is_prefix(data, V1_SIGNATURE):
        if len(data) < len(V1_SIGNATURE):
            return _NEED_MORE
        return _parse_v1(data)
    return None


def _parse_v1(data: bytes):
    end = data.find(b"\r\n", 0, V1_MAX + 1)
    if end < 0:
        if len(data) > V1_MAX:
            raise ProxyProtocolError(1, "no CRLF within %d bytes" % V1_MAX)
        return _NEED_MORE
    parts = data[:end].decode("latin-1").split(" ")
    if len(parts) >= 2 and parts[1] == "UNKNOWN":
        return Header(end + 2, 1)
    if len(parts) != 6 or parts[1] not in ("TCP4", "TCP6"):
        raise ProxyProtocolError(1, "malformed v1 header")
    want = 4 if parts[1] == "TCP4" else 6
    try:
        src, dst = ipaddress.ip_address(parts[2]), ipaddress.ip_address(parts[3])
        if src.version != want or dst.version != want:
            raise ValueError("address family")
        if not (parts[4].isdigit() and parts[5].isdigit()):
            raise ValueError("port")
        sport, dport = int(parts[4]), int(parts[5])
        if sport > 65535 or dport > 65535:
            raise ValueError("port")
    except ValueError:
        raise ProxyProtocolError(1, "malformed v1 header") from None
    return Header(end + 2, 1, (str(src), sport), (str(dst), dport))


def _parse_v2(data: bytes):
    ver_cmd, fam = data[12], data[13]
    length = struct.unpack("!H", data[14:16])[0]
    if ver_cmd >> 4 != 2 or ver_cmd & 0xF > 1:
        raise ProxyProtocolError(2, "unsupported v2 version or command")
    total = V2_HEADER + length
    if len(data) < total:
        return _NEED_MORE
    body = data[V2_HEADER:total]
    if ver_cmd & 0xF == 0:                       # LOCAL: the proxy's own connection
        return Header(total, 2)
    af, transport = fam >> 4, fam & 0xF
    if af == 1 and transport in (1, 2):
        if length < 12:
            raise ProxyProtocolError(2, "v2 IPv4 addresses are truncated")
        src = (socket.inet_ntop(socket.AF_INET, body[0:4]), struct.unpack("!H", body[8:10])[0])
        dst = (socket.inet_ntop(socket.AF_INET, body[4:8]), struct.unpack("!H", body[10:12])[0])
        tlvs = _tlvs(body[12:])
    elif af == 2 and transport in (1, 2):
        if length < 36:
            raise ProxyProtocolError(2, "v2 IPv6 addresses are truncated")
        src = (socket.inet_ntop(socket.AF_INET6, body[0:16]), struct.unpack("!H", body[32:34])[0])
        dst = (socket.inet_ntop(socket.AF_INET6, body[16:32]), struct.unpack("!H", body[34:36])[0])
        tlvs = _tlvs(body[36:])
    else:   # a PROXY header for UNSPEC or UNIX addresses: refused (Envoy 1.40, observed)
        raise ProxyProtocolError(2, "unsupported v2 address family")
    return Header(total, 2, src, dst, tlvs)


def _tlvs(data: bytes) -> list:
    out = []
    p = 0
    while p < len(data):
        if p + 3 > len(data):
            raise ProxyProtocolError(2, "truncated TLV")
        t = data[p]
        n = struct.unpack("!H", data[p + 1:p + 3])[0]
        if p + 3 + n > len(data):
            raise ProxyProtocolError(2, "truncated TLV")
        out.append((t, data[p + 3:p + 3 + n]))
        p += 3 + n
    return out


def format_address(addr) -> str:
    ip, port = addr
    return "[%s]:%d" % (ip, port) if ":" in ip else "%s:%d" % (ip, port)


class ProxyProtocol:
    def __init__(self, config, ctx):
        self.allow_without = config.allow_requests_without_proxy_protocol
        self.rules = {r.tlv_type: (r.on_tlv_present.metadata_namespace, r.on_tlv_present.key)
                      for r in config.rules}
        self.disallowed = {v + 1 for v in config.disallowed_versions}   # V1 = 0, V2 = 1
        stats = ctx.stats
        p = "proxy_proto." + (config.stat_prefix + "." if config.stat_prefix else "")
        self.not_found_allowed = stats.counter(p + "not_found_allowed")
        self.not_found_disallowed = stats.counter(p + "not_found_disallowed")
        self.versions = {v: {k: stats.counter("%sversions.v%d.%s" % (p, v, k))
                             for k in ("found", "disallowed", "error")} for v in (1, 2)}
        self.legacy_error = stats.counter("downstream_cx_proxy_proto_error")

    def on_accept(self, conn) -> bool:
        sock = conn.sock
        delay = 0.001
        while True:
            try:
                data = sock.recv(V2_HEADER + 65535, socket.MSG_PEEK)
            except OSError:
                return False
            if not data:
                return False
            try:
                res = parse(data)
            except ProxyProtocolError as e:
                self.versions[e.version]["error"].inc()
                self.legacy_error.inc()
                return False
            if res is _NEED_MORE:
                gevent.sleep(delay)          # a peek returns at once while bytes wait
                delay = min(delay * 2, 0.05)
                continue
            break
        if res is None:
            if self.allow_without:
                self.not_found_allowed.inc()
                return True
            self.not_found_disallowed.inc()
            self.legacy_error.inc()        # Envoy 1.40 counts this one too (observed)
            return False
        if res.version in self.disallowed:
            # with allow_requests_without_proxy_protocol the header is a connection without
            # PROXY protocol: left in the stream, as data (Envoy 1.40, observed)
            if self.allow_without:
                self.not_found_allowed.inc()
                return True
            self.versions[res.version]["disallowed"].inc()
            return False
        if not _consume(sock, res.length):
            return False
        self.versions[res.version]["found"].inc()
        if res.src is not None:
            conn.remote_ip = res.src[0]
            conn.remote_address = format_address(res.src)
            conn.local_address = format_address(res.dst)
            conn.local_port = res.dst[1]
            conn.original_dst = res.dst
        for t, value in res.tlvs:
            rule = self.rules.get(t)
            if rule is not None:
                conn.set_dynamic_metadata(rule[0], {rule[1]: value.decode("utf-8", "replace")})
        return True


def _consume(sock, n: int) -> bool:
    """Read exactly the header's `n` bytes (already seen by the peek) off the socket."""
    while n:
        try:
            got = sock.recv(n)
        except OSError:
            return False
        if not got:
            return False
        n -= len(got)
    return True


def create(config, ctx) -> ProxyProtocol:
    return ProxyProtocol(config, ctx)
