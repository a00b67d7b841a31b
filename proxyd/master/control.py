"""The control socket (`<runtime-dir>/control.sock`): newline-delimited JSON requests
from `proxyd stop` / `proxyd reload` to the running master."""
from __future__ import annotations

import contextlib
import json
import os
import socket

from proxyd.master.sockets import bind_unix

CONTROL_SOCK = "control.sock"
PID_FILE = "proxyd.pid"


class ControlServer:
    """Serves one JSON request per connection; `handler(request) -> response dict`
    runs in the master's loop (a greenlet per client)."""

    def __init__(self, path: str, handler):
        from gevent.server import StreamServer
        self.path = path
        # Bound beside, then renamed over: the path always reaches a master, the old one
        # until the rename (a hot-restarted master takes it over only once live).
        tmp = "%s.%d" % (path, os.getpid())
        sock = bind_unix(tmp, 16)
        self.inode = os.stat(tmp).st_ino
        os.replace(tmp, path)
        self.handler = handler
        self.server = StreamServer(sock, self._serve)

    def start(self) -> None:
        self.server.start()

    def _serve(self, sock, _addr) -> None:
        f = sock.makefile("rwb")
        try:
            line = f.readline(65536)
            if not line:
                return
            try:
                resp = self.handler(json.loads(line))
            except Exception as e:  # a bad request must not take the master down
                resp = {"ok": False, "error": "%s: %s" % (type(e).__name__, e)}
            f.write(json.dumps(resp).encode() + b"\n")
            f.flush()
        except OSError:
            pass
        finally:
            # A client that left before the answer: close() flushes the unsent answer
            # again and raises EPIPE, a traceback in the master's log per such client.
            with contextlib.suppress(OSError):
                f.close()
            sock.close()

    def close(self) -> None:
        """Stop serving; remove the socket file unless a successor has replaced it."""
        self.server.close()
        try:
            if os.stat(self.path).st_ino == self.inode:
                os.unlink(self.path)
        except OSError:
            pass


def request(runtime_dir: str, req: dict, timeout: float | None = None) -> dict:
    """Client side (plain blocking socket): send one request, return the response."""
    path = os.path.join(runtime_dir, CONTROL_SOCK)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(path)
        sock.sendall(json.dumps(req).encode() + b"\n")
        f = sock.makefile("rb")
        line = f.readline()
        if not line:
            raise ConnectionError("the master closed the control connection")
        return json.loads(line)
    finally:
        sock.close()
