"""The master: owns config, listening sockets, the stats region, admin and the control
socket; spawns, watches and replaces workers; never proxies a request.

It runs a gevent loop (admin, control socket, DNS refresh, one greenlet per worker).
Workers are started with fork+exec (`proxyd.worker.main`), so nothing the master runs
(greenlets, resolver threads, later an xDS agent) leaks into them: see worker/main.py.
Signal handlers only queue work into the loop (gunicorn's lesson).
"""
from __future__ import annotations

import os
import signal
import socket
import sys
import time

import gevent
from gevent import subprocess as gsubprocess
from gevent.event import Event

from proxyd import __version__
from proxyd.config import ConfigError, load_bootstrap
from proxyd.ipc import Channel
from proxyd.master import endpoints as eps
from proxyd.master.control import CONTROL_SOCK, PID_FILE, ControlServer
from proxyd.master.sockets import BindError, address_key, bind_tcp
from proxyd.observability.logging import get_logger, set_level
from proxyd.stats import StatsStore

SPAWN_BACKOFF_MAX = 10.0


class StartupError(Exception):
    """The master cannot start (bad config, bind failure); the message says why."""


def stats_path(options) -> str:
    import hashlib
    h = hashlib.sha1(os.path.abspath(options.runtime_dir).encode()).hexdigest()[:10]
    return "/dev/shm/proxyd-%d-%s.stats" % (options.base_id, h)


class WorkerHandle:
    def __init__(self, index: int):
        self.index = index
        self.proc = None
        self.slot = None
        self.channel: Channel | None = None
        self.sent_listeners: set[str] = set()
        self.applied_version = -1
        self.started = 0.0
        self.failures = 0


class Master:
    def __init__(self, options):
        self.options = options
        self.log = get_logger("master")
        self.bootstrap = None
        self.stats: StatsStore | None = None
        self.state = "PRE_INITIALIZING"
        self.epoch_start_time = time.time()
        self.first_start_time = self.epoch_start_time
        self.listen_socks: dict[str, socket.socket] = {}   # address key -> socket
        self.listener_keys: dict[str, str] = {}            # listener name -> address key
        self.admin_sock = None
        self.admin = None
        self.control = None
        self.workers: list[WorkerHandle] = []
        self.endpoints: dict[str, list] = {}
        self.version = 0
        self.stopping = False
        self.healthcheck_failed = False
        self.stopped = Event()
        self.live = Event()

    # --- start-up -------------------------------------------------------------
    def start(self) -> None:
        opts = self.options
        try:
            self.bootstrap = load_bootstrap(opts.config_path)
        except ConfigError as e:
            raise StartupError(str(e)) from None
        os.makedirs(opts.runtime_dir, mode=0o755, exist_ok=True)
        self.state = "INITIALIZING"
        self.stats = StatsStore.create(stats_path(opts))
        self.stats.bind(self.stats.claim_slot(os.getpid(), role="master"))
        self._bind_all()
        self._resolve_all()
        self._start_admin()
        self.control = ControlServer(os.path.join(opts.runtime_dir, CONTROL_SOCK), self.handle_control)
        self.control.start()
        with open(os.path.join(opts.runtime_dir, PID_FILE), "w") as f:
            f.write("%d\n" % os.getpid())
        for i in range(opts.concurrency):
            w = WorkerHandle(i)
            self.workers.append(w)
            gevent.spawn(self._supervise, w)
        for name, cluster in self._dns_clusters():
            gevent.spawn(self._dns_loop, name, cluster)
        gevent.spawn(self._stats_loop)
        gevent.spawn(self._await_live)

    def _bind_all(self) -> None:
        for lst in self.bootstrap.static_resources.listeners:
            sa = lst.address.socket_address
            key = address_key(sa)
            if key not in self.listen_socks:
                try:
                    self.listen_socks[key] = bind_tcp(sa.address, sa.port_value)
                except BindError as e:
                    raise StartupError("listener %r: %s" % (lst.name, e)) from None
            self.listener_keys[lst.name] = key
            self.log.info("listener_bound", listener=lst.name, address=key)
        if self.bootstrap.HasField("admin") and self.bootstrap.admin.HasField("address"):
            sa = self.bootstrap.admin.address.socket_address
            try:
                self.admin_sock = bind_tcp(sa.address, sa.port_value, backlog=128)
            except BindError as e:
                raise StartupError("admin: %s" % e) from None

    def _start_admin(self) -> None:
        if self.admin_sock is None:
            return
        from proxyd.admin.server import AdminServer
        self.admin = AdminServer(self, self.admin_sock)
        self.admin.start()
        self.log.info("admin_listening", address="%s:%d" % self.admin_sock.getsockname()[:2])

    def _dns_clusters(self):
        for c in self.bootstrap.static_resources.clusters:
            if eps.is_dns(c):
                yield c.name, c

    def _resolve_all(self) -> None:
        for c in self.bootstrap.static_resources.clusters:
            if eps.is_dns(c):
                try:
                    self.endpoints[c.name] = eps.resolve(c)
                except OSError as e:
                    self.log.warning("dns_resolution_failed", cluster=c.name, error=str(e))
                    self.endpoints[c.name] = []
            else:
                self.endpoints[c.name] = eps.static_endpoints(c)

    def _dns_loop(self, name: str, cluster) -> None:
        rate = eps.refresh_rate(cluster)
        while not self.stopping:
            gevent.sleep(rate)
            try:
                new = eps.resolve(cluster)
            except OSError as e:
                self.log.warning("dns_resolution_failed", cluster=name, error=str(e))
                continue
            if new != self.endpoints.get(name):
                self.log.info("dns_membership_changed", cluster=name, hosts=len(new))
                self.endpoints[name] = new
                self.push_snapshot()

    # --- workers ----------------------------------------------------------------
    def _spawn(self, w: WorkerHandle) -> None:
        opts = self.options
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        w.slot = self.stats.claim_slot(os.getpid(), role="worker")
        cmd = [sys.executable, "-m", "proxyd.worker.main",
               "--index", str(w.index), "--concurrency", str(opts.concurrency),
               "--slot", str(w.slot), "--fd", str(child.fileno()),
               "--stats", self.stats_file, "--epoch", str(opts.restart_epoch),
               "--drain-time-s", str(opts.drain_time_s),
               "--log-level", opts.log_level, "--log-format", opts.log_format]
        try:
            w.proc = gsubprocess.Popen(cmd, pass_fds=(child.fileno(),), close_fds=True)
        finally:
            child.close()
        self.stats.set_slot_pid(w.slot, w.proc.pid)
        w.channel = Channel(parent)
        w.sent_listeners = set()
        w.applied_version = -1
        w.started = time.monotonic()
        self.log.info("worker_started", worker=w.index, pid=w.proc.pid, slot=w.slot)
        self._send_snapshot(w)
        gevent.spawn(self._read_worker, w, w.channel)

    @property
    def stats_file(self) -> str:
        return stats_path(self.options)

    def _supervise(self, w: WorkerHandle) -> None:
        """Keep worker `w` running: respawn on exit, backing off on a crash loop."""
        backoff = 0.0
        while not self.stopping:
            self._spawn(w)
            rc = w.proc.wait()
            w.channel.close()
            self.stats.retire_slot(w.slot)
            if self.stopping:
                break
            lived = time.monotonic() - w.started
            how = ("killed by signal %s" % signal.Signals(-rc).name) if rc < 0 else "exit status %d" % rc
            self.log.error("worker_exited", worker=w.index, pid=w.proc.pid, how=how,
                           lived_s=round(lived, 3))
            backoff = 0.0 if lived > 5.0 else min(max(backoff * 2, 0.1), SPAWN_BACKOFF_MAX)
            if backoff:
                self.log.warning("worker_respawn_backoff", worker=w.index, delay_s=backoff)
                gevent.sleep(backoff)
        self.log.info("worker_stopped", worker=w.index, pid=w.proc.pid, rc=w.proc.returncode)

    def _read_worker(self, w: WorkerHandle, ch: Channel) -> None:
        while True:
            try:
                msg, _fds = ch.recv()
            except EOFError:
                return
            if msg["kind"] == "applied":
                w.applied_version = msg["version"]

    def _snapshot_message(self, w: WorkerHandle):
        new = [name for name, key in self.listener_keys.items() if name not in w.sent_listeners]
        msg = {"kind": "snapshot", "version": self.version,
               "bootstrap": self.bootstrap.SerializeToString(),
               "endpoints": self.endpoints, "new_listeners": new}
        fds = [self.listen_socks[self.listener_keys[name]].fileno() for name in new]
        return msg, fds, new

    def _send_snapshot(self, w: WorkerHandle) -> None:
        msg, fds, new = self._snapshot_message(w)
        try:
            w.channel.send(msg, fds)
        except OSError as e:
            self.log.warning("snapshot_send_failed", worker=w.index, error=str(e))
            return
        w.sent_listeners.update(new)

    def push_snapshot(self) -> None:
        """Send the current config to every worker (they swap atomically)."""
        self.version += 1
        for w in self.workers:
            if w.proc is not None and w.proc.returncode is None and w.channel is not None:
                self._send_snapshot(w)

    def _await_live(self) -> None:
        while not self.stopping:
            if self.workers and all(w.applied_version >= 0 for w in self.workers):
                self.state = "LIVE"
                self.live.set()
                self.log.info("live", workers=len(self.workers), pid=os.getpid())
                return
            gevent.sleep(0.02)

    def _stats_loop(self) -> None:
        while not self.stopping:
            self.refresh_server_stats()
            gevent.sleep(1.0)

    def refresh_server_stats(self) -> None:
        try:
            from proxyd.admin.server_stats import refresh_server_stats
        except ImportError:
            return
        refresh_server_stats(self)

    # --- stop -----------------------------------------------------------------
    def stop(self, graceful: bool = True) -> None:
        if self.stopping:
            return
        self.stopping = True
        self.state = "DRAINING"
        self.log.info("stopping", graceful=graceful, drain_time_s=self.options.drain_time_s)
        gevent.spawn(self._stop, graceful)

    def _stop(self, graceful: bool) -> None:
        deadline = self.options.drain_time_s
        for w in self.workers:
            if w.proc is None or w.proc.returncode is not None:
                continue
            if graceful:
                try:
                    w.channel.send({"kind": "drain", "deadline": deadline})
                except OSError:
                    w.proc.send_signal(signal.SIGTERM)
            else:
                w.proc.send_signal(signal.SIGQUIT)
        for sock in self.listen_socks.values():
            sock.close()
        with gevent.Timeout(deadline + 5.0 if graceful else 5.0, False):
            for w in self.workers:
                if w.proc is not None:
                    w.proc.wait()
        for w in self.workers:
            if w.proc is not None and w.proc.returncode is None:
                self.log.warning("worker_killed_after_deadline", worker=w.index, pid=w.proc.pid)
                w.proc.kill()
                w.proc.wait()
        self.stopped.set()

    def shutdown(self) -> None:
        """Release what only this master owns; called once the workers are gone."""
        if self.admin is not None:
            self.admin.stop()
        if self.control is not None:
            self.control.close()
        try:
            os.unlink(os.path.join(self.options.runtime_dir, PID_FILE))
        except OSError:
            pass
        if self.stats is not None:
            self.stats.unlink()

    # --- control socket -----------------------------------------------------------
    def handle_control(self, req: dict) -> dict:
        cmd = req.get("cmd")
        if cmd == "stop":
            self.stop(graceful=not req.get("fast"))
            return {"ok": True, "pid": os.getpid()}
        if cmd == "status":
            return {"ok": True, "pid": os.getpid(), "state": self.state,
                    "epoch": self.options.restart_epoch,
                    "workers": [w.proc.pid for w in self.workers if w.proc]}
        return {"ok": False, "error": "unknown command %r" % cmd}

    # --- admin context (proxyd/admin/context.py) ----------------------------------
    def processes(self) -> list:
        out = [("master", os.getpid())]
        out.extend(("worker_%d" % w.index, w.proc.pid) for w in self.workers
                   if w.proc is not None and w.proc.returncode is None)
        return out

    def clusters_status(self) -> list:
        out = []
        for c in self.bootstrap.static_resources.clusters:
            hosts = [{"address": ("[%s]:%d" if ":" in ip else "%s:%d") % (ip, port),
                      "hostname": hostname, "health_flags": "healthy", "weight": weight}
                     for ip, port, weight, hostname in self.endpoints.get(c.name, [])]
            out.append({"name": c.name, "added_via_api": False, "hosts": hosts})
        return out

    def listeners_status(self) -> list:
        return [(name, key[len("tcp://"):]) for name, key in self.listener_keys.items()]

    def set_healthcheck_failed(self, failed: bool) -> None:
        self.healthcheck_failed = failed

    def drain_listeners(self, graceful: bool) -> None:
        for w in self.workers:
            if w.channel is not None and w.proc is not None and w.proc.returncode is None:
                try:
                    w.channel.send({"kind": "drain",
                                    "deadline": self.options.drain_time_s if graceful else 0.0})
                except OSError:
                    pass

    def quit(self) -> None:
        self.stop(graceful=False)

    def set_log_level(self, level: str) -> bool:
        if not set_level(level):
            return False
        for w in self.workers:
            if w.channel is not None:
                try:
                    w.channel.send({"kind": "log_level", "level": level})
                except OSError:
                    pass
        return True

    def active_connections(self) -> int:
        total = 0
        for name, kind, value in self.stats.items(include_internal=False):
            if name.startswith("listener.") and name.endswith(".downstream_cx_active"):
                total += value
        return total


def run(options) -> int:
    """`proxyd run`: start, serve until stopped, exit 0 (1 if start-up failed)."""
    log = get_logger("master")
    master = Master(options)
    gevent.signal_handler(signal.SIGTERM, master.stop, True)
    gevent.signal_handler(signal.SIGINT, master.stop, False)
    gevent.signal_handler(signal.SIGQUIT, master.stop, False)
    try:
        master.start()
    except StartupError as e:
        for line in str(e).splitlines():
            print("proxyd: %s" % line, file=sys.stderr)
        log.error("startup_failed", error=str(e).splitlines()[0])
        for sock in master.listen_socks.values():
            sock.close()
        if master.stats is not None:
            master.stats.unlink()
        return 1
    log.info("started", pid=os.getpid(), version=__version__, concurrency=options.concurrency,
             config=options.config_path)
    master.stopped.wait()
    master.shutdown()
    log.info("exited")
    return 0

