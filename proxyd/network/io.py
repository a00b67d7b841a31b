"""Socket helpers for the data path."""
from __future__ import annotations

from gevent import get_hub


def send_all(sock, data) -> None:
    """Like sendall, minus gevent's per-call getsockopt(SO_SNDBUF) (6% of a proxied
    request in a py-spy profile): one send() covers the common case, sendall the rest."""
    n = sock.send(data)
    if n < len(data):
        sock.sendall(memoryview(data)[n:])


class WaitingReader:
    """`recv()` that waits until the socket is readable, then reads once.

    gevent's recv() reads first and waits only on EAGAIN. A request/response peer has
    usually sent nothing yet when its connection comes back to read, so that first read
    is a wasted syscall per request; waiting first saves it. TLS sockets read as usual
    (decrypted bytes may be buffered with the fd not readable)."""

    __slots__ = ("recv", "_watcher", "_wait", "_raw", "_size")

    def __init__(self, sock, size: int):
        from proxyd.transport.tls import is_tls
        self._watcher = None
        if is_tls(sock) or not hasattr(sock, "_sock"):
            self.recv = lambda: sock.recv(size)
            return
        hub = get_hub()
        self._watcher = hub.loop.io(sock.fileno(), 1)
        self._wait = hub.wait
        self._raw = sock._sock
        self._size = size
        self.recv = self._recv

    def _recv(self) -> bytes:
        while True:
            self._wait(self._watcher)
            try:
                return self._raw.recv(self._size)
            except BlockingIOError:
                continue

    def close(self) -> None:
        if self._watcher is not None:
            self._watcher.close()
