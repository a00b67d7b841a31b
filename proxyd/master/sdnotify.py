"""systemd's sd_notify protocol, spoken directly: a datagram to $NOTIFY_SOCKET.

A dozen lines instead of a library (research/ecosystem.md section 8): none of the
packages pass fds, and BARRIER=1 needs one. Every call is a no-op outside systemd.
"""
from __future__ import annotations

import os
import select
import socket
import time


def _address() -> str | None:
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return None
    return "\0" + addr[1:] if addr.startswith("@") else addr


def notify(*lines: str, fds: list[int] = ()) -> bool:
    """Send `KEY=value` lines in one datagram; False if there is no notify socket."""
    addr = _address()
    if addr is None:
        return False
    msg = "\n".join(lines).encode()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        if fds:
            sock.sendmsg([msg], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                  b"".join(fd.to_bytes(4, "little", signed=True) for fd in fds))],
                           0, addr)
        else:
            sock.sendto(msg, addr)
    except OSError:
        return False
    finally:
        sock.close()
    return True


def monotonic_usec() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def barrier(timeout: float = 5.0) -> bool:
    """BARRIER=1: wait until the manager has processed everything sent before, shown by
    it closing its copy of the pipe we pass. True when confirmed."""
    if _address() is None:
        return False
    r, w = os.pipe()
    try:
        if not notify("BARRIER=1", fds=[w]):
            return False
        os.close(w)
        w = -1
        poller = select.poll()
        poller.register(r, select.POLLHUP)
        return bool(poller.poll(int(timeout * 1000)))
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)
