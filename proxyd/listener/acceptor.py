"""The accept loop: gevent's StreamServer, made calm at the file-descriptor limit.

When accept() fails for lack of descriptors or memory (EMFILE, ENFILE, ENOBUFS, ENOMEM)
the connection stays in the kernel's backlog; retrying at once only spins, and gevent's
default prints a traceback for every attempt. Like nginx (which disables accept events
for 500 ms), the acceptor stops accepting for ACCEPT_PAUSE_S and tries again, and logs
one structured line per burst (a run of such failures with no successful accept
between them). Envoy does not count these; its overflow stats belong to the connection
limits (listener/limits.py), which keep a proxy away from the fd limit in the first place.
"""
from __future__ import annotations

import errno
import resource
import time

from gevent.server import StreamServer

from proxyd.observability.logging import get_logger

ACCEPT_PAUSE_S = 0.5
BURST_GAP_S = 5.0   # failures closer together than this are one burst (one log line)
RESOURCE_ERRORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


class Acceptor(StreamServer):
    def __init__(self, sock, handle, name: str):
        super().__init__(sock, handle)
        self.listener_name = name
        self.last_failure = -BURST_GAP_S   # monotonic time of the latest resource failure
        self.log = get_logger("worker")

    def do_read(self):
        try:
            return super().do_read()
        except OSError as e:
            if e.errno not in RESOURCE_ERRORS:
                raise
            self.exhausted(e, "accept")
            self._pause()
            return None

    def exhausted(self, error: OSError, where: str) -> None:
        """Note a failure for lack of fds or memory (in accept, or in a connection's
        handler: upstream sockets, pipes): one log line per burst."""
        now = time.monotonic()
        if now - self.last_failure > BURST_GAP_S:
            self.log.warning("resources_exhausted", listener=self.listener_name, where=where,
                             error=errno.errorcode.get(error.errno, str(error.errno)),
                             fd_limit=resource.getrlimit(resource.RLIMIT_NOFILE)[0],
                             accept_pause_ms=int(ACCEPT_PAUSE_S * 1000))
        self.last_failure = now

    def _pause(self) -> None:
        self.stop_accepting()
        self._timer = self.loop.timer(ACCEPT_PAUSE_S)
        self._timer.start(self._start_accepting_if_started)
