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

import gevent  # noqa: E402
from envoy.config.bootstrap.v3 import bootstrap_pb2  # noqa: E402
from gevent.event import Event  # noqa: E402

from proxyd.ipc import Channel, die_with_parent  # noqa: E402
from proxyd.listener.manager import ListenerManager  # noqa: E402
from proxyd.observability import access_log  # noqa: E402
from proxyd.observability.tracing import zipkin  # noqa: E402
from proxyd.observability.logging import configure_logging, get_logger, set_level  # noqa: E402
from proxyd import regex  # noqa: E402
from proxyd.runtime import Runtime  # noqa: E402
from proxyd.stats import StatsStore  # noqa: E402
from proxyd.upstream.cluster_manager import ClusterManager  # noqa: E402



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

    def run(self) -> int:
        gevent.signal_handler(signal.SIGTERM, self.drain, "signal")
        gevent.signal_handler(signal.SIGINT, self.stopped.set)
        gevent.signal_handler(signal.SIGQUIT, self.stopped.set)
        gevent.signal_handler(signal.SIGUSR1, access_log.reopen_all)
        gevent.spawn(self._control_loop)
        self.stopped.wait()
        access_log.flush_all()
        zipkin.flush_all()
        return 0

    def _control_loop(self) -> None:
        ch = self.channel
        while True:
            try:
                msg, fds = ch.recv()
            except EOFError:
                # The master is gone: finish what is in flight, then leave.
                self.log.warning("master_gone")
                self.drain("master_gone")
                return
            kind = msg["kind"]
            if kind == "snapshot":
                self._apply(msg, fds)
                try:
                    ch.send({"kind": "applied", "version": msg["version"]})
                except OSError:
                    # The master died after sending the snapshot (a successor killed
                    # mid-start): the same as EOF, never a worker left waiting forever.
                    self.log.warning("master_gone")
                    self.drain("master_gone")
                    return
            elif kind == "drain":
                gevent.spawn(self.drain, "master", msg.get("deadline", 600.0))
            elif kind == "log_level":
                set_level(msg["level"])

    def _apply(self, msg, fds) -> None:
        bs = bootstrap_pb2.Bootstrap()
        bs.ParseFromString(msg["bootstrap"])
        ctx = self.ctx
        ctx.bootstrap = bs
        ctx.node = bs.node
        ctx.runtime.update(msg.get("runtime", {}))
        regex.set_program_size_limits(ctx.runtime)  # before route tables compile
        clusters = list(bs.static_resources.clusters) + [c for c in msg.get("clusters", [])]
        ctx.cluster_manager.apply(clusters, msg["endpoints"])
        socks = {}
        for name, fd in zip(msg["new_listeners"], fds):
            socks[name] = socket.socket(fileno=fd)
        self.listeners.apply(list(bs.static_resources.listeners), socks)
        self.version = msg["version"]
        self.log.debug("snapshot_applied", version=self.version)

    def drain(self, why: str = "signal", deadline: float | None = None) -> None:
        """Stop accepting, let in-flight requests finish, exit by the deadline."""
        if getattr(self, "_draining", False):
            return
        self._draining = True
        deadline = self.args.drain_time_s if deadline is None else deadline
        self.log.info("draining", why=why, deadline_s=deadline)
        self.listeners.drain()
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
    die_with_parent()
    configure_logging(args.log_level, args.log_format, worker=args.index, epoch=args.epoch)
    rc = Worker(args).run()
    sys.stdout.flush()
    os._exit(rc)


if __name__ == "__main__":
    main()
