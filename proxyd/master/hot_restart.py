"""Hot restart: a new master takes the listening sockets and the stats region over from
the running one, becomes live, then tells it to drain. The stats file travels as an fd
too, so a path that no longer names it (a tmpfs mounted over /dev/shm) does not matter.

Like Envoy (and HAProxy's `expose-fd listeners`), the sockets travel over a Unix socket
with SCM_RIGHTS rather than through fork lineage, so the new master can be a fresh exec
of the installed code and tell systemd its pid (MAINPID=). Unlike Envoy, nothing is
left behind by a failed attempt: the "reload in progress" state lives in the old
master's memory and the socket file is removed when the attempt ends, however it ends
(Envoy issue 33446).

Wire (ipc.Channel frames on `<runtime-dir>/hot_restart.<old epoch>.sock`, mode 0600):
  new -> old  {"kind": "hello", "pid", "epoch"}
  old -> new  {"kind": "handover", "keys": [...], "stats_fd": True, "first_start_time"}
              + one fd per key, then the stats file's fd
  new -> old  {"kind": "live", "pid"}  or  {"kind": "error", "error"}
"""
from __future__ import annotations

import os
import socket
import sys

import gevent
from gevent import subprocess as gsubprocess

from proxyd.ipc import Channel
from proxyd.master.sockets import bind_unix

ADMIN_KEY = "admin"
LIVE_TIMEOUT = 120.0


def socket_path(runtime_dir: str, epoch: int) -> str:
    return os.path.join(runtime_dir, "hot_restart.%d.sock" % epoch)


def successor_command(options) -> list[str]:
    """The new master: the installed proxyd, the same flags, the next epoch."""
    node_flags = []
    for flag in ("service_node", "service_cluster", "service_zone"):
        value = getattr(options, flag, None)
        if value:
            node_flags += ["--" + flag.replace("_", "-"), value]
    return [sys.executable, "-m", "proxyd", "run", "-c", options.config_path, *node_flags,
            "--concurrency", str(options.concurrency), "--runtime-dir", options.runtime_dir,
            "--base-id", str(options.base_id), "--drain-time-s", str(options.drain_time_s),
            "--parent-shutdown-time-s", str(options.parent_shutdown_time_s),
            "--log-level", options.log_level, "--log-format", options.log_format,
            "--restart-epoch", str(options.restart_epoch + 1)]


class ReloadFailed(Exception):
    pass


def start_successor(master) -> tuple[int, int]:
    """Old-master side of one reload; returns (new pid, new epoch) once the successor is
    live, raises ReloadFailed (the successor is gone and nothing changed) otherwise."""
    opts = master.options
    path = socket_path(opts.runtime_dir, opts.restart_epoch)
    lsock = bind_unix(path, 1)
    proc = None
    try:
        proc = master.successor = gsubprocess.Popen(successor_command(opts), close_fds=True)
        waiter = gevent.spawn(proc.wait)
        acceptor = gevent.spawn(lsock.accept)
        gevent.joinall([waiter, acceptor], timeout=LIVE_TIMEOUT, count=1)
        if not acceptor.ready():
            acceptor.kill()
            raise ReloadFailed(_exit_text(proc) or "new master did not connect within %ds" % LIVE_TIMEOUT)
        conn, _ = acceptor.value
        ch = Channel(conn)
        try:
            hello, _ = ch.recv()
            keys = list(master.listen_socks)
            fds = [master.listen_socks[k].fileno() for k in keys]
            if master.admin_sock is not None:
                keys.append(ADMIN_KEY)
                fds.append(master.admin_sock.fileno())
            ch.send({"kind": "handover", "keys": keys, "stats_fd": True,
                     "first_start_time": master.first_start_time}, fds + [master.stats.fileno()])
            reader = gevent.spawn(ch.recv)
            gevent.joinall([reader, waiter], timeout=LIVE_TIMEOUT, count=1)
            if not reader.ready():
                reader.kill()
                raise ReloadFailed(_exit_text(proc) or "new master not live within %ds" % LIVE_TIMEOUT)
            if not reader.successful():
                raise ReloadFailed(_exit_text(proc) or "new master closed the hot restart socket")
            msg, _ = reader.value
            if msg.get("kind") != "live":
                raise ReloadFailed(msg.get("error") or "new master failed")
            return msg["pid"], opts.restart_epoch + 1
        finally:
            ch.close()
    except ReloadFailed:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        raise
    finally:
        master.successor = None
        lsock.close()
        try:
            os.unlink(path)
        except OSError:
            pass


def _exit_text(proc) -> str | None:
    rc = proc.poll()
    if rc is None:
        return None
    return "new master exited with status %d before becoming live" % rc


class Predecessor:
    """New-master side: the connection to the master being replaced."""

    def __init__(self, runtime_dir: str, epoch: int):
        self.channel = None
        path = socket_path(runtime_dir, epoch - 1)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(path)
        except OSError as e:
            sock.close()
            raise ConnectionError("cannot reach the running master at %s: %s" % (path, e)) from None
        self.channel = Channel(sock)

    def take_sockets(self) -> tuple[dict, float, int | None]:
        """{address key: socket}, the family's first start time and the stats file's fd
        (None from a predecessor that does not send it)."""
        self.channel.send({"kind": "hello", "pid": os.getpid()})
        msg, fds = self.channel.recv()
        keys = msg["keys"]
        socks = {}
        for key, fd in zip(keys, fds):
            socks[key] = socket.socket(fileno=fd)
        stats_fd = fds[len(keys)] if msg.get("stats_fd") and len(fds) > len(keys) else None
        return socks, msg["first_start_time"], stats_fd

    def live(self) -> None:
        self.channel.send({"kind": "live", "pid": os.getpid()})
        self.channel.close()

    def failed(self, error: str) -> None:
        try:
            self.channel.send({"kind": "error", "error": error})
        except OSError:
            pass
        self.channel.close()
