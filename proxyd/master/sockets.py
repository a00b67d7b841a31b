"""Listening sockets the master owns and lends to workers (and to its successor on a
hot restart)."""
from __future__ import annotations

import os
import socket


class BindError(Exception):
    pass


def is_udp(socket_address) -> bool:
    return socket_address.protocol == socket_address.UDP


def address_key(socket_address) -> str:
    """'tcp://ip:port' or 'udp://ip:port', the key a hot restart uses to hand a socket
    over (as Envoy)."""
    return "%s://%s:%d" % ("udp" if is_udp(socket_address) else "tcp",
                           socket_address.address, socket_address.port_value)


def bind_listener(socket_address) -> socket.socket:
    """The socket for a listener's address: TCP listening, or UDP bound."""
    if is_udp(socket_address):
        return bind_udp(socket_address.address, socket_address.port_value)
    return bind_tcp(socket_address.address, socket_address.port_value)


def bind_udp(address: str, port: int) -> socket.socket:
    """A non-inheritable bound UDP socket (a UDP listener's; the workers read from it)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((address, port))
    except OSError as e:
        sock.close()
        raise BindError("cannot bind udp %s:%d: %s" % (address, port, e.strerror or e)) from None
    return sock


def bind_unix(path: str, backlog: int) -> socket.socket:
    """A listening Unix stream socket at `path`, mode 0600 from the start (umask, not a
    chmod after bind, so no other user can connect in between); replaces a stale file."""
    if os.path.exists(path):
        os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(path)
    finally:
        os.umask(old)
    sock.listen(backlog)
    return sock


def bind_tcp(address: str, port: int, backlog: int = 1024) -> socket.socket:
    """A non-inheritable listening TCP socket; the master passes it on explicitly."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((address, port))
        sock.listen(backlog)
    except OSError as e:
        sock.close()
        raise BindError("cannot bind %s:%d: %s" % (address, port, e.strerror or e)) from None
    return sock
