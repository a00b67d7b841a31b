"""The socket a blocking terminal filter (the HTTP connection manager's codecs) reads and
writes when other network filters run in front of it in one filter chain.

The codecs of `proxyd.http` are greenlet loops that call `sock.recv()` / `sock.send()`.
Behind a chain they get this object instead of the socket: `recv()` returns the bytes
the chain handed to the terminal filter (its `on_data` calls `deliver()`); when none are
waiting it reads the real socket once and runs the bytes through the read filters
(`FilterManager.on_read`), so every byte passes RBAC, rate limits and ext_authz first, in
order, as in Envoy. The driver is the reading itself ("pull"): no extra greenlet, and one
`on_read` per socket read, so a chain in front of the HCM costs a few calls a read.

While a filter in front holds bytes (an ext_authz or rate-limit call in flight) `recv()`
waits for them to be delivered, or for the connection to close, without reading further:
the rest stays in the kernel's buffer (Envoy reads it into its own; either way the
filters see it after the call, in order). `settimeout()` bounds that wait as it bounds a
socket read. Writes go through the write filters when the chain has any, straight to
the socket otherwise. A driver that reads file descriptors itself (splice, an fd watcher)
must not use it behind a chain: `through_chain` says so, and `_sock` is not exposed.
"""
from __future__ import annotations

import socket

from gevent.event import Event


class ChainSocket:
    __slots__ = ("conn", "sock", "manager", "buf", "eof", "ready", "timeout", "_direct",
                 "read_bytes", "delivered_bytes")
    through_chain = True   # an upgraded tunnel copies through it rather than splicing the fd

    def __init__(self, conn, sock):
        self.conn = conn            # the FilterChainConnection (its manager, its close)
        self.sock = sock            # the real (plain or TLS) socket
        self.manager = conn.manager
        self.buf = b""              # delivered by the chain, not yet returned by recv
        self.eof = False            # the chain delivered the end of stream
        self.ready = None           # while recv waits: an Event, set on delivery or close
        self.timeout = None
        self.read_bytes = 0         # read from the socket
        self.delivered_bytes = 0    # of those, handed to the terminal filter
        self._direct = not conn.manager.has_write_filters()
        conn.add_connection_callbacks(self)

    # --- the terminal filter's side --------------------------------------------------
    def deliver(self, data: bytes, end_stream: bool) -> None:
        """Bytes (and the end of stream) that reached the terminal filter."""
        if data:
            self.buf = self.buf + data if self.buf else data
            self.delivered_bytes += len(data)
        if end_stream:
            self.eof = True
        ready = self.ready
        if ready is not None:
            ready.set()

    def on_event(self, event) -> None:
        """The connection closed (a filter closed it, or the peer went away)."""
        ready = self.ready
        if ready is not None:
            ready.set()

    def wait_data(self, timeout: float | None) -> bool:
        """Pull until the chain has delivered bytes (True) or ended or closed (False);
        socket.timeout after `timeout` with nothing delivered."""
        self.settimeout(timeout)
        try:
            while not self.buf:
                if self.eof or self.conn.closed:
                    return False
                self._pull(65536)
            return True
        finally:
            self.settimeout(None)

    def unreturned_bytes(self) -> int:
        """Bytes read from the socket that recv never returned: held or dropped by a
        filter in front, or delivered after the codec stopped reading."""
        return self.read_bytes - self.delivered_bytes + len(self.buf)

    # --- what the codecs see (a socket) ----------------------------------------------
    def recv(self, size: int) -> bytes:
        while True:
            buf = self.buf
            if buf:
                self.buf = b""
                return buf
            if self.eof or self.conn.closed:
                return b""
            self._pull(size)

    def recv_into(self, buffer, nbytes: int = 0) -> int:
        size = nbytes or len(buffer)
        while not self.buf:
            if self.eof or self.conn.closed:
                return 0
            self._pull(size)
        data, self.buf = self.buf[:size], self.buf[size:]
        buffer[:len(data)] = data
        return len(data)

    def _pull(self, size: int) -> None:
        """Read the socket once into the read filters; or, while a filter in front holds
        bytes, wait for it to let them go (or close the connection)."""
        if self.manager.holding():
            if self.conn.closed:
                return
            ready = self.ready = Event()
            try:
                if not ready.wait(self.timeout):
                    raise socket.timeout("timed out")
            finally:
                self.ready = None
            return
        try:
            data = self.sock.recv(size)
        except socket.timeout:
            raise
        except OSError:
            self.conn.read_ended = True     # reset by the peer: a remote close
            raise
        if self.conn.closed:        # a filter closed it meanwhile (a side call's denial)
            return
        if not data:
            self.conn.read_ended = True
        self.read_bytes += len(data)
        self.manager.on_read(data, not data)

    def send(self, data) -> int:
        if self._direct:
            return self.sock.send(data)
        self.conn.write(bytes(data))
        return len(data)

    def sendall(self, data) -> None:
        if self._direct:
            self.sock.sendall(data)
        else:
            self.conn.write(bytes(data))

    def settimeout(self, timeout: float | None) -> None:
        self.timeout = timeout
        self.sock.settimeout(timeout)

    def gettimeout(self):
        return self.timeout

    def shutdown(self, how: int) -> None:
        self.sock.shutdown(how)

    def close(self) -> None:
        self.sock.close()

    def fileno(self) -> int:
        return self.sock.fileno()

    def __getattr__(self, name):
        # anything else a codec or a filter asks of the socket (TLS details, names); not
        # the raw socket, which fast paths (WaitingReader) read bypassing the chain
        if name == "_sock":
            raise AttributeError(name)
        return getattr(object.__getattribute__(self, "sock"), name)
