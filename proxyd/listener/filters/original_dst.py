"""envoy.filters.listener.original_dst: restore the destination a connection was sent to
before an iptables REDIRECT (or DNAT) sent it here: `SO_ORIGINAL_DST` (IPv4) or
`IP6T_SO_ORIGINAL_DST` (IPv6) becomes the connection's local address, which filter
chain matching and an ORIGINAL_DST cluster use. Where the kernel knows no original
destination (no conntrack entry, e.g. plain loopback) the connection is left as it is,
as in Envoy. No config, no stats.
"""
from __future__ import annotations

import socket
import struct

from proxyd.listener.filters.proxy_protocol import format_address

SO_ORIGINAL_DST = 80            # linux/netfilter_ipv4.h
IP6T_SO_ORIGINAL_DST = 80       # linux/netfilter_ipv6/ip6_tables.h


def original_destination(sock):
    """(ip, port) the kernel recorded before NAT, or None."""
    try:
        if sock.family == socket.AF_INET6:
            raw = sock.getsockopt(socket.IPPROTO_IPV6, IP6T_SO_ORIGINAL_DST, 28)
            port = struct.unpack("!H", raw[2:4])[0]
            ip = socket.inet_ntop(socket.AF_INET6, raw[8:24])
        else:
            raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
            port = struct.unpack("!H", raw[2:4])[0]
            ip = socket.inet_ntop(socket.AF_INET, raw[4:8])
    except OSError:
        return None
    return ip, port


class OriginalDst:
    def __init__(self, config, ctx):
        pass

    def on_accept(self, conn) -> bool:
        dst = original_destination(conn.sock)
        if dst is not None:
            conn.local_address = format_address(dst)
            conn.local_port = dst[1]
            conn.original_dst = dst
        return True


def create(config, ctx) -> OriginalDst:
    return OriginalDst(config, ctx)
