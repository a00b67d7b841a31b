"""Messages between the master and its children over a Unix stream socket.

A frame is a 4-byte length and a pickle (both ends are proxyd processes of the same
user, started by the same master). File descriptors ride with the length prefix as
SCM_RIGHTS, and the frame says how many belong to it, so a listener socket arrives
together with the snapshot that names it.
"""
from __future__ import annotations

import array
import ctypes
import os
import pickle
import signal
import socket
import struct

_LEN = struct.Struct("!I")
_MAX_FDS = 64
PR_SET_PDEATHSIG = 1
ORPHAN_SIGNAL = signal.SIGUSR2  # a worker's "your master is gone" (worker/main.py)


def die_with_parent(sig: int):
    """A Popen `preexec_fn` for a child of the master (worker, xDS agent): the kernel
    sends the child `sig` when the master dies, however it dies, so nothing outlives it
    holding sockets. Set between fork and exec, so there is no window in which the child
    runs unwatched; a master that died before the prctl is seen by the check after it.
    (The kernel tracks the thread that forked: the master forks from its main thread.)"""
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    master = os.getpid()

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        if os.getppid() != master:
            os._exit(1)
    return preexec


class Channel:
    def __init__(self, sock: socket.socket):
        self.sock = sock
        self._buf = bytearray()
        self._fds: list[int] = []

    def send(self, obj, fds: list[int] = ()) -> None:
        """One frame; any number of fds. They go _MAX_FDS at a time, each batch riding on
        its own byte(s) of the frame, so the receiver's ancillary buffer never truncates
        them (a hot restart hands over every listener at once)."""
        payload = pickle.dumps((obj, len(fds)), protocol=pickle.HIGHEST_PROTOCOL)
        data = memoryview(_LEN.pack(len(payload)) + payload)
        fds = list(fds)
        pos = 0
        while fds:
            batch, fds = fds[:_MAX_FDS], fds[_MAX_FDS:]
            end = pos + 1 if fds else len(data)
            pos += socket.send_fds(self.sock, [data[pos:end]], batch)
        if pos < len(data):
            self.sock.sendall(data[pos:])

    def recv(self):
        """Next (message, fds); raises EOFError when the peer is gone."""
        buf = self._buf
        while True:
            if len(buf) >= 4:
                (n,) = _LEN.unpack_from(buf)
                if len(buf) >= 4 + n:
                    obj, nfds = pickle.loads(bytes(buf[4:4 + n]))
                    del buf[:4 + n]
                    fds, self._fds = self._fds[:nfds], self._fds[nfds:]
                    return obj, fds
            try:
                data, anc, _flags, _addr = self.sock.recvmsg(
                    262144, socket.CMSG_SPACE(_MAX_FDS * 4))
            except (ConnectionError, OSError) as e:
                raise EOFError(str(e)) from None
            for level, kind, cdata in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds = array.array("i")
                    fds.frombytes(cdata[:len(cdata) - len(cdata) % fds.itemsize])
                    self._fds.extend(fds)
            if not data:
                raise EOFError("peer closed")
            buf += data

    def close(self) -> None:
        for fd in self._fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self._fds = []
        self.sock.close()
