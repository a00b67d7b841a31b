"""Worker process entry: `python -m proxyd.worker.main ...`, started by the master.

Workers are fork+exec'd, not forked: the master runs gevent, a resolver thread pool and
later talks to an xDS agent; a plain fork would copy its greenlets and threads into the
child (research/ecosystem.md section 3), while exec gives a clean interpreter that
patches gevent before anything else is imported. The cost is start-up time (about
0.3 s), paid only when a worker is (re)spawned.
"""
from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import gevent  # noqa: E402
from envoy.config.bootstrap.v3 import bootstrap_pb2  # noqa: E402
from gevent.event import Event  # noqa: E402

from proxyd.ipc import ORPHAN_SIGNAL, Channel  # noqa: E402
from proxyd.listener import limits  # noqa: E402
from proxyd.listener.manager import ListenerManager  # noqa: E402
from proxyd.master import watchdog  # noqa: E402
from proxyd.observability import access_log  # noqa: E402
from proxyd.observability.tracing import opentelemetry as otel_tracing  # noqa: E402
from proxyd.observability.tracing import zipkin  # noqa: E402
from proxyd.observability.logging import configure_logging, get_logger, set_level  # noqa: E402
from proxyd import regex  # noqa: E402
from proxyd.runtime import Runtime  # noqa: E402
from proxyd.stats import StatsStore  # noqa: E402
from proxyd.upstream.cluster_manager import ClusterManager  # noqa: E402

# Imported now rather than by the first connection that needs them: an import at the fd
# limit fails (EMFILE opening the module's file) and would drop that connection.
import proxyd.router.router  # noqa: E402,F401
import proxyd.http.http1_connection  # noqa: E402,F401
import proxyd.http.http2_connection  # noqa: E402,F401

# A worker whose master died (SIGKILL, OOM kill, crash) must not serve on alone: the
# kernel tells it with ORPHAN_SIGNAL (PR_SET_PDEATHSIG, set by the master's Popen; its
# default action ends a worker still importing) or its control channel reads EOF. It stops
# accepting, lets requests in flight finish for ORPHAN_GRACE_S (their responses say
# Connection: close, HTTP/2 gets GOAWAY), closes keep-alive connections idle longer than
# ORPHAN_IDLE_S, and exits; tcp_proxy sessions and long responses are cut, not drained.
# ITIMER_REAL ends the process at ORPHAN_EXIT_S even if its loop is stuck.
ORPHAN_GRACE_S = 0.6
ORPHAN_IDLE_S = 0.25
ORPHAN_EXIT_S = 0.95


class WorkerContext:
    """What filters and clusters built in this worker can reach."""

    def __init__(self, index: int, concurrency: int, stats, drain_time_s: float = 600.0):
        self.worker_index = index
        self.drain_time_s = drain_time_s
        self.concurrency = concurrency
        self.stats = stats
        self.cluster_manager = ClusterManager(stats, membership=index == 0)
        self.node = None
        self.bootstrap = None
        self.runtime = Runtime()   # the layered runtime of the snapshot applied last
        self.global_cx_limit = None  # listener/limits.py: the global connection ceiling


class Worker:
    def __init__(self, args):
        self.args = args
        self.log = get_logger("worker")
        self.stats = (StatsStore.attach_fd(args.stats_fd, args.stats) if args.stats_fd is not None
                      else StatsStore.attach(args.stats))
        self.stats.bind(args.slot)
        self.ctx = WorkerContext(args.index, args.concurrency, self.stats, args.drain_time_s)
        self.listeners = ListenerManager(self.ctx)
        self.channel = Channel(socket.socket(fileno=args.fd))
        self.stopped = Event()
        self.version = None
        self.orphaned = False
        self.watchdog = watchdog.Timeouts()   # the worker_watchdog of the config applied last

    def run(self) -> int:
        gevent.signal_handler(signal.SIGTERM, self.drain, "signal")
        gevent.signal_handler(signal.SIGINT, self.stopped.set)
        gevent.signal_handler(signal.SIGQUIT, self.stopped.set)
        gevent.signal_handler(signal.SIGUSR1, access_log.reopen_all)
        gevent.signal_handler(ORPHAN_SIGNAL, self.master_gone, "parent_death_signal")
        gevent.spawn(self._control_loop)
        gevent.spawn(watchdog.heartbeat, self.stats.gauge(watchdog.HEARTBEAT_STAT),
                     lambda: self.watchdog.heartbeat_s)
        self.stopped.wait()
        access_log.flush_all()
        zipkin.flush_all()
        otel_tracing.flush_all()
        return 0

    def _control_loop(self) -> None:
        ch = self.channel
        while True:
            try:
                msg, fds = ch.recv()
            except EOFError:
                self.master_gone("control_channel_eof")
                return
            kind = msg["kind"]
            if kind == "snapshot":
                try:
                    self._apply(msg, fds)
                    reply = {"kind": "applied", "version": msg["version"]}
                except Exception as e:  # noqa: BLE001 - any build failure refuses the config
                    reply = self._refused(msg, e)
                try:
                    ch.send(reply)
                except OSError:
                    # The master died after sending the snapshot (a successor killed
                    # mid-start): the same as EOF, never a worker left waiting forever.
                    self.master_gone("control_channel_eof")
                    return
            elif kind == "drain":
                # Stop accepting before answering: a reload reports success only once no
                # old worker takes new connections (a request sent after `proxyd reload`
                # returns must see the new config).
                deadline = self.stop_accepting("master", msg.get("deadline", 600.0))
                if deadline is not None:
                    gevent.spawn(self._finish_drain, deadline)
                try:
                    ch.send({"kind": "not_accepting"})
                except OSError:
                    self.master_gone("control_channel_eof")
                    return
            elif kind == "log_level":
                set_level(msg["level"])

    def _refused(self, msg, error: Exception) -> dict:
        """A snapshot this worker cannot build: it keeps what it serves and tells the master
        (which refuses the config at start-up), naming the new listeners it did not start
        so their sockets are sent again with the next snapshot."""
        text = str(error) or type(error).__name__
        self.log.error("snapshot_refused", version=msg["version"], error=text)
        return {"kind": "refused", "version": msg["version"], "error": text,
                "not_started": [n for n in msg["new_listeners"] if n not in self.listeners.listeners]}

    def _apply(self, msg, fds) -> None:
        bs = bootstrap_pb2.Bootstrap()
        bs.ParseFromString(msg["bootstrap"])
        ctx = self.ctx
        ctx.bootstrap = bs
        ctx.node = bs.node
        ctx.runtime.update(msg.get("runtime", {}))
        self.watchdog = watchdog.timeouts(bs)[1]
        ctx.global_cx_limit = limits.global_limit(bs, ctx.runtime)
        regex.set_program_size_limits(ctx.runtime)  # before route tables compile
        clusters = list(bs.static_resources.clusters) + [c for c in msg.get("clusters", [])]
        ctx.cluster_manager.apply(clusters, msg["endpoints"])
        socks = {}
        for name, fd in zip(msg["new_listeners"], fds):
            socks[name] = socket.socket(fileno=fd)
        self.listeners.apply(list(bs.static_resources.listeners), socks)
        self.version = msg["version"]
        self.log.debug("snapshot_applied", version=self.version)

    def master_gone(self, why: str) -> None:
        """Exit within a second of the master's death (see ORPHAN_GRACE_S), whatever
        drain is in progress."""
        if self.orphaned:
            return
        self.orphaned = True
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
        signal.setitimer(signal.ITIMER_REAL, ORPHAN_EXIT_S)
        self.log.warning("master_gone", why=why, connections=self.listeners.active_connections(),
                         exit_within_s=ORPHAN_EXIT_S)
        gevent.spawn(self._leave_orphaned)

    def _leave_orphaned(self) -> None:
        self._draining = True
        self.listeners.drain()
        deadline = time.monotonic() + ORPHAN_GRACE_S
        while self.listeners.active_connections() and time.monotonic() < deadline:
            for al in self.listeners.listeners.values():
                al.close_idle(ORPHAN_IDLE_S)
            gevent.sleep(0.02)
        self.stopped.set()

    def drain(self, why: str = "signal", deadline: float | None = None) -> None:
        """Stop accepting, let in-flight requests finish, exit by the deadline."""
        deadline = self.stop_accepting(why, deadline)
        if deadline is not None:
            self._finish_drain(deadline)

    def stop_accepting(self, why: str, deadline: float | None) -> float | None:
        """The first half of a drain, done at once: no connection is accepted after this
        returns. The drain deadline to keep, or None when a drain already runs."""
        if getattr(self, "_draining", False):
            return None
        self._draining = True
        deadline = self.args.drain_time_s if deadline is None else deadline
        self.log.info("draining", why=why, deadline_s=deadline)
        self.listeners.drain()
        return deadline

    def _finish_drain(self, deadline: float) -> None:
        with gevent.Timeout(deadline, False):
            while self.listeners.active_connections():
                gevent.sleep(0.05)
                for al in self.listeners.listeners.values():
                    al.close_idle()
        self.stopped.set()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="proxyd-worker")
    ap.add_argument("--index", type=int, required=True)
    ap.add_argument("--concurrency", type=int, required=True)
    ap.add_argument("--slot", type=int, required=True)
    ap.add_argument("--fd", type=int, required=True)
    ap.add_argument("--stats", required=True)
    ap.add_argument("--stats-fd", type=int)
    ap.add_argument("--epoch", type=int, default=0)
    ap.add_argument("--drain-time-s", type=float, default=600.0)
    ap.add_argument("--log-level", default="info")
    ap.add_argument("--log-format", default="text")
    args = ap.parse_args(argv)
    configure_logging(args.log_level, args.log_format, worker=args.index, epoch=args.epoch)
    rc = Worker(args).run()
    sys.stdout.flush()
    os._exit(rc)


if __name__ == "__main__":
    main()
