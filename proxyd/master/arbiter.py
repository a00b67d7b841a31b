"""The master: owns config, listening sockets, the stats region, admin and the control
socket; spawns, watches and replaces workers; never proxies a request.

It runs a gevent loop (admin, control socket, DNS refresh, one greenlet per worker).
Workers and the xDS agent are started with fork+exec (`proxyd.worker.main`,
`proxyd.xds.agent`), so nothing the master runs (greenlets, resolver threads) leaks into
them, and gRPC lives only in the agent: see worker/main.py.
Signal handlers only queue work into the loop (gunicorn's lesson).
"""
from __future__ import annotations

import hashlib
import os
import signal
import socket
import sys
import time
import uuid

import gevent
from envoy.config.cluster.v3 import cluster_pb2
from gevent import subprocess as gsubprocess
from gevent.event import Event

from proxyd import __version__
from proxyd import runtime as rt
from proxyd.config import ConfigError, load_bootstrap
from proxyd.ipc import ORPHAN_SIGNAL, Channel, die_with_parent
from proxyd.master import endpoints as eps
from proxyd.master import config_check, hot_restart, orphans, sdnotify, watchdog
from proxyd.master.control import CONTROL_SOCK, PID_FILE, ControlServer
from proxyd.master.sockets import BindError, address_key, bind_listener, bind_tcp
from proxyd.observability.logging import get_level, get_logger, set_level
from proxyd.stats import IncompatibleStatsFile, StatsStore

SPAWN_BACKOFF_MAX = 10.0
# How long `proxyd reload` waits for the old workers to stop accepting before it answers.
RELOAD_ACCEPT_STOP_S = 2.0
DISK_LAYER_POLL_S = 0.25   # how often a runtime disk layer's symlink_root is looked at
RUNTIME_APPLY_WAIT_S = 2.0  # /runtime_modify answers once the workers have the change


def apply_node_overrides(bootstrap, options) -> None:
    """Envoy's --service-node/--service-cluster/--service-zone override the bootstrap's
    node (what the control plane sees, the Zipkin service name)."""
    node = bootstrap.node
    if getattr(options, "service_node", None):
        node.id = options.service_node
    if getattr(options, "service_cluster", None):
        node.cluster = options.service_cluster
    if getattr(options, "service_zone", None):
        node.locality.zone = options.service_zone


def name_listeners(bootstrap) -> None:
    """Envoy names a listener that has none with a random UUID, so two unnamed listeners
    are two listeners (workers, /listeners and the master key them by name)."""
    for lst in bootstrap.static_resources.listeners:
        if not lst.name:
            lst.name = str(uuid.uuid4())


class StartupError(Exception):
    """The master cannot start (bad config, bind failure); the message says why."""


def stats_path(options) -> str:
    """The family's stats file: one per base id and runtime dir, so tests and several
    proxyd families on one host never share one."""
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
        self.accepting = True   # until it confirms a drain message ("not_accepting")


class Master:
    def __init__(self, options):
        self.options = options
        self.log = get_logger("master")
        self.bootstrap = None
        self.stats: StatsStore | None = None
        self._state = "PRE_INITIALIZING"
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
        self.handed_over = False       # a successor took over: leave shared state to it
        self.spare_sockets: dict = {}  # inherited on hot restart, not (yet) used
        self.reloading = False
        self.predecessor = None        # hot_restart.Predecessor while taking over
        self.successor = None          # the new master's Popen while a reload runs
        self.healthcheck_failed = False
        self.listeners_drained = False  # POST /drain_listeners: drained workers stay gone
        self.stopped = Event()
        self.live = Event()
        self.dynamic = None            # master/dynamic.py: xDS and watched-file config
        self.runtime_entries: dict = {}  # the merged layered runtime sent to workers
        self.startup_error = None      # why start-up failed after start() returned
        self.health = None             # master/health.py: host health words, checks, ejections

    @property
    def state(self) -> str:
        """Envoy's server state; a LIVE server whose health check was failed by
        `POST /healthcheck/fail` reports DRAINING (so /ready answers 503), as Envoy."""
        if self._state == "LIVE" and self.healthcheck_failed:
            return "DRAINING"
        return self._state

    @state.setter
    def state(self, value: str) -> None:
        self._state = value

    # --- start-up -------------------------------------------------------------
    def start(self) -> None:
        opts = self.options
        try:
            self.bootstrap = load_bootstrap(opts.config_path)
            apply_node_overrides(self.bootstrap, opts)
            name_listeners(self.bootstrap)
        except ConfigError as e:
            raise StartupError(str(e)) from None
        os.makedirs(opts.runtime_dir, mode=0o755, exist_ok=True)
        self.state = "INITIALIZING"
        inherited = {}
        if opts.restart_epoch > 0:
            try:
                self.predecessor = hot_restart.Predecessor(opts.runtime_dir, opts.restart_epoch)
                inherited, self.first_start_time, stats_fd = self.predecessor.take_sockets()
            except (OSError, EOFError) as e:
                raise StartupError("hot restart: %s" % e) from None
            try:
                self.stats = (StatsStore.attach_fd(stats_fd, stats_path(opts)) if stats_fd is not None
                              else StatsStore.attach(stats_path(opts)))
            except (OSError, IncompatibleStatsFile) as e:
                raise StartupError("hot restart: stats file: %s" % e) from None
            self.stats.reap_dead_slots()
        else:
            self._refuse_if_running()
            self.stats = StatsStore.create(stats_path(opts))
            orphans.reclaim_stale_stats(os.path.dirname(self.stats.path), self.stats.path, self.log)
        self.master_slot = self.stats.claim_slot(os.getpid(), role="master")
        self.stats.bind(self.master_slot)
        self._bind_all(inherited)
        self._resolve_all()
        self._start_dynamic()
        if self.dynamic is None:
            self.load_runtime()
        self._start_admin()
        if self.predecessor is None:
            self._take_runtime_dir()
        self._start_health()
        for i in range(opts.concurrency):
            w = WorkerHandle(i)
            self.workers.append(w)
            gevent.spawn(self._supervise, w)
        for name, cluster in self._dns_clusters():
            gevent.spawn(self._dns_loop, name, cluster)
        gevent.spawn(self._stats_loop)
        gevent.spawn(watchdog.GuardDog(self).run)
        gevent.spawn(self._await_live)

    def _start_health(self) -> None:
        """Host health (proxyd/master/health.py): words, checks and detectors in place
        before any worker builds a cluster; the first round of active checks is awaited,
        bounded by the checks' timeouts, as Envoy initializes a cluster after it."""
        from proxyd.master.health import HealthManager
        cm = self.bootstrap.cluster_manager
        path = cm.outlier_detection.event_log_path if cm.HasField("outlier_detection") else ""
        self.health = HealthManager(self.stats, path, self.log)
        self._sync_health()
        if self.predecessor is None:  # else once live: the old master checks until then
            self.health.start()
            self.health.wait_initial(self.health.initial_timeout() + 0.5)

    def _sync_health(self) -> None:
        if self.health is None or self.health.synced_version == self.version:
            return
        self.health.synced_version = self.version
        clusters = list(self.bootstrap.static_resources.clusters)
        endpoints = self.endpoints
        eds = {}
        if self.dynamic is not None:
            from proxyd.master.dynamic import eds_name
            endpoints = self.dynamic.snapshot()[1]
            for name in sorted(self.dynamic.active_clusters):
                clusters.append(self.dynamic.active_clusters[name].msg)
            for c in clusters:
                r = self.dynamic.cla.get(eds_name(c)) if c.type == cluster_pb2.Cluster.EDS else None
                if r is not None:
                    eds[c.name] = _eds_status(r.msg)
        try:
            self.health.sync(clusters, endpoints, eds)
        except Exception as e:  # noqa: BLE001 - health bookkeeping never stops config delivery
            self.log.error("health_sync_failed", error=repr(e))

    def _take_runtime_dir(self) -> None:
        """Serve the control socket and own the pid file. A hot-restarted master does
        this only once live: until then `proxyd reload` and `proxyd stop` must reach the
        old master, which keeps serving if this one dies while starting."""
        rt = self.options.runtime_dir
        self.control = ControlServer(os.path.join(rt, CONTROL_SOCK), self.handle_control)
        self.control.start()
        tmp = os.path.join(rt, "%s.%d" % (PID_FILE, os.getpid()))
        with open(tmp, "w") as f:
            f.write("%d\n" % os.getpid())
        os.replace(tmp, os.path.join(rt, PID_FILE))

    def _start_dynamic(self) -> None:
        from proxyd.master import dynamic
        if dynamic.needs_dynamic(self.bootstrap):
            self.dynamic = dynamic.DynamicConfig(self)
            try:
                self.dynamic.start()
            except dynamic.Refused as e:
                raise StartupError(str(e)) from None

    def _refuse_if_running(self) -> None:
        """A cold start must not steal another live master's runtime dir, nor serve
        beside the orphaned workers of a killed one (master/orphans.py)."""
        from proxyd.master.control import request
        try:
            resp = request(self.options.runtime_dir, {"cmd": "status"}, timeout=2)
        except OSError:
            try:
                orphans.stop_orphans(stats_path(self.options), self.log)
            except orphans.MasterAlive as e:
                raise StartupError("a proxyd master (pid %d) of runtime dir %s is alive but does "
                                   "not answer on its control socket; stop it first"
                                   % (e.pid, self.options.runtime_dir)) from None
            return
        raise StartupError("another proxyd (pid %s) is running with runtime dir %s; use "
                           "`proxyd reload` or another --runtime-dir"
                           % (resp.get("pid"), self.options.runtime_dir))

    def _bind_all(self, inherited: dict) -> None:
        """Bind every listener, reusing sockets inherited from a predecessor; sockets
        inherited but not needed are closed here (they are only our copies)."""
        for lst in self.bootstrap.static_resources.listeners:
            sa = lst.address.socket_address
            key = address_key(sa)
            if key not in self.listen_socks:
                sock = inherited.pop(key, None)
                how = "inherited" if sock is not None else "bound"
                if sock is None:
                    try:
                        sock = bind_listener(sa)
                    except BindError as e:
                        raise StartupError("listener %r: %s" % (lst.name, e)) from None
                self.listen_socks[key] = sock
                self.log.info("listener_" + how, listener=lst.name, address=key)
            self.listener_keys[lst.name] = key
        if self.bootstrap.HasField("admin") and self.bootstrap.admin.HasField("address"):
            sa = self.bootstrap.admin.address.socket_address
            sock = inherited.pop(hot_restart.ADMIN_KEY, None)
            if sock is not None and sock.getsockname()[:2] != (sa.address, sa.port_value):
                sock.close()
                sock = None
            if sock is None:
                try:
                    sock = bind_tcp(sa.address, sa.port_value, backlog=128)
                except BindError as e:
                    raise StartupError("admin: %s" % e) from None
            self.admin_sock = sock
        # Sockets the static config does not use may belong to listeners xDS will send
        # again (master/dynamic.py takes them from here); the rest close once live.
        self.spare_sockets = inherited

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
        stats_fd = self.stats.fileno()
        cmd = [sys.executable, "-m", "proxyd.worker.main",
               "--index", str(w.index), "--concurrency", str(opts.concurrency),
               "--slot", str(w.slot), "--fd", str(child.fileno()),
               "--stats", self.stats_file, "--stats-fd", str(stats_fd),
               "--epoch", str(opts.restart_epoch), "--drain-time-s", str(opts.drain_time_s),
               "--log-level", get_level(), "--log-format", opts.log_format]
        try:
            w.proc = gsubprocess.Popen(cmd, pass_fds=(child.fileno(), stats_fd), close_fds=True,
                                       preexec_fn=die_with_parent(ORPHAN_SIGNAL))
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
        """The family's stats path: named on worker command lines and unlinked at the final
        stop; workers and a successor attach through the fd, whatever the path names now."""
        return self.stats.path

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
            if self.listeners_drained:
                self.log.info("worker_drained", worker=w.index, pid=w.proc.pid, rc=rc)
                return
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
            elif msg["kind"] == "not_accepting":
                w.accepting = False
            elif msg["kind"] == "refused":
                w.sent_listeners.difference_update(msg["not_started"])
                self.log.error("config_refused_by_worker", worker=w.index,
                               version=msg["version"], error=msg["error"])
                if not self.live.is_set():
                    self._fail_start("worker %d cannot build the config: %s"
                                     % (w.index, msg["error"]))

    def _snapshot_message(self, w: WorkerHandle):
        self._sync_health()
        new = [name for name, key in self.listener_keys.items() if name not in w.sent_listeners]
        bootstrap, endpoints = (self.dynamic.snapshot() if self.dynamic is not None
                                else (self._static_bytes(), self.endpoints))
        msg = {"kind": "snapshot", "version": self.version, "bootstrap": bootstrap,
               "endpoints": endpoints, "runtime": self.runtime_entries, "new_listeners": new}
        fds = [self.listen_socks[self.listener_keys[name]].fileno() for name in new]
        return msg, fds, new

    def _static_bytes(self) -> bytes:
        """The bootstrap workers run when nothing is dynamic: static secrets inlined
        (proxyd/transport/secrets.py)."""
        cached = getattr(self, "_static_cache", None)
        if cached is None or cached[0] is not self.bootstrap:
            from proxyd.transport.secrets import inline_static
            cached = self._static_cache = (self.bootstrap,
                                           inline_static(self.bootstrap).SerializeToString())
        return cached[1]

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

    def _fail_start(self, error: str) -> None:
        """A config the workers refuse never serves: stop and exit 1 (a successor tells the
        running master, which keeps serving the old config)."""
        if self.startup_error is not None or self.stopping:
            return
        self.startup_error = error
        if self.predecessor is not None:
            self.predecessor.failed(error)
            self.predecessor = None
            self.handed_over = True  # the stats region and runtime dir stay the old master's
        self.stop(graceful=False)

    def _await_live(self) -> None:
        while not self.stopping:
            if self.workers and all(w.applied_version >= 0 for w in self.workers) and \
                    (self.dynamic is None or self.dynamic.initialized):
                self.state = "LIVE"
                self.live.set()
                if self.health is not None:
                    self.health.start()
                for sock in self.spare_sockets.values():
                    sock.close()
                self.spare_sockets = {}
                self.log.info("live", workers=len(self.workers), pid=os.getpid(),
                              epoch=self.options.restart_epoch)
                status = "STATUS=live: %d workers, epoch %d" % (len(self.workers),
                                                                self.options.restart_epoch)
                if self.predecessor is not None:
                    self._take_runtime_dir()
                    # systemd must know the new main pid before the old master exits.
                    sdnotify.notify("MAINPID=%d" % os.getpid(), "READY=1", status)
                    sdnotify.barrier()
                    self.predecessor.live()
                    self.predecessor = None
                else:
                    sdnotify.notify("READY=1", status)
                return
            gevent.sleep(0.02)

    # --- layered runtime ------------------------------------------------------------
    def runtime_layers(self) -> list:
        """[(layer name, {key: runtime.Entry})] in bootstrap order: static, disk (as last
        read), RTDS and admin layers."""
        rtds = self.dynamic.rtds_layers() if self.dynamic is not None else {}
        return rt.bootstrap_layers(self.bootstrap, rtds, getattr(self, "disk_layers", None),
                                   getattr(self, "admin_layer", None))

    def load_runtime(self) -> None:
        """Re-read the disk layers and merge every layer for the next worker snapshot
        (start-up, RTDS updates, a symlink swap, /runtime_modify), and set Envoy's loader
        stats: load_success or load_error, num_layers, num_keys (distinct keys),
        override_dir_exists (more than one disk layer found) or override_dir_not_exists,
        admin_overrides_active."""
        if not hasattr(self, "admin_layer"):
            self.admin_layer = {}
            gevent.spawn(self._watch_disk_layers)
        self.disk_layers, errors = rt.load_disk_layers(self.bootstrap)
        layers = self.runtime_layers()
        self.runtime_entries = rt.merge(layers)
        s = self.stats
        s.counter("runtime.load_error").inc(1 if errors else 0)
        s.counter("runtime.load_success").inc(0 if errors else 1)
        found = sum(1 for v in self.disk_layers.values() if v is not None)
        s.counter("runtime.override_dir_exists").inc(1 if found > 1 else 0)
        s.counter("runtime.override_dir_not_exists").inc(0 if found > 1 else 1)
        s.gauge("runtime.num_layers").set(len(layers))
        s.gauge("runtime.num_keys").set(len(self.runtime_entries))
        s.gauge("runtime.admin_overrides_active").set(1 if self.admin_layer else 0)

    def runtime_modify(self, changes: dict) -> str | None:
        """POST /runtime_modify: merge into the admin layer and reload; an error text when
        the bootstrap has no admin layer (Envoy's 503)."""
        if not rt.has_admin_layer(self.bootstrap):
            return "No admin layer specified"
        rt.admin_modify(self.admin_layer, changes)
        self.load_runtime()
        self.push_snapshot()
        self.wait_applied(RUNTIME_APPLY_WAIT_S)
        return None

    def wait_applied(self, timeout: float) -> bool:
        """Wait (bounded) until every running worker applied the latest snapshot, so a
        request sent after an admin change meets it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            live = [w for w in self.workers if w.proc is not None and w.proc.returncode is None]
            if all(w.applied_version >= self.version for w in live):
                return True
            gevent.sleep(0.01)
        return False

    def _watch_disk_layers(self) -> None:
        """Reload when a disk layer's symlink_root is replaced (a new inode: the symlink
        swap Envoy watches for), polled; a file edited in place is not seen, as in Envoy."""
        roots = rt.symlink_roots(self.bootstrap)
        if not roots:
            return

        def state():
            out = []
            for r in roots:
                try:
                    st = os.lstat(r)
                    out.append((st.st_ino, st.st_dev, st.st_mtime_ns))
                except OSError:
                    out.append(None)
            return out
        seen = state()
        while not self.stopping:
            gevent.sleep(DISK_LAYER_POLL_S)
            now = state()
            if now != seen:
                seen = now
                self.log.info("runtime_disk_layer_reload", roots=roots)
                self.load_runtime()
                self.push_snapshot()

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
        if self.successor is not None and self.successor.poll() is None:
            # A stop aborts a reload in progress: the half-started master (which may
            # hold the sockets already) must not outlive us.
            self.log.warning("reload_aborted", successor_pid=self.successor.pid)
            self.successor.kill()
        gevent.spawn(self._stop, graceful)

    def _stop(self, graceful: bool) -> None:
        deadline = self.options.drain_time_s
        if self.health is not None:
            self.health.stop()  # a successor (if any) checks from now on
        if self.dynamic is not None:
            self.dynamic.stop()
        hard = self.options.parent_shutdown_time_s if self.handed_over else deadline + 5.0
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
        if self.admin is not None and self.handed_over:
            self.admin.stop()  # the successor serves admin on its copy of the socket
            self.admin = None
        with gevent.Timeout(hard if graceful else 5.0, False):
            for w in self.workers:
                if w.proc is not None:
                    w.proc.wait()
        for w in self.workers:
            if w.proc is not None and w.proc.returncode is None:
                self.log.warning("worker_killed_after_deadline", worker=w.index, pid=w.proc.pid)
                w.proc.kill()
                w.proc.wait()
        with gevent.Timeout(5.0, False):
            while self.reloading:  # an aborted reload removes its socket file first; a
                # finished one writes its answer
                gevent.sleep(0.01)
        self.stopped.set()

    def shutdown(self) -> None:
        """Release what only this master owns; called once the workers are gone. After
        a handover the control socket, pid file and stats region belong to the
        successor: only our stats slot is retired (its counters fold, never lost)."""
        if self.admin is not None:
            self.admin.stop()
        if self.control is not None:
            self.control.close()
        pid_file = os.path.join(self.options.runtime_dir, PID_FILE)
        try:
            with open(pid_file) as f:
                if f.read().strip() == str(os.getpid()):
                    os.unlink(pid_file)
        except OSError:
            pass
        if self.stats is not None:
            if self.handed_over:
                self.stats.retire_slot(self.master_slot)
            else:
                sdnotify.notify("STOPPING=1")
                self.stats.unlink()

    # --- control socket -----------------------------------------------------------
    def handle_control(self, req: dict) -> dict:
        cmd = req.get("cmd")
        if cmd == "stop":
            self.stop(graceful=not req.get("fast"))
            return {"ok": True, "pid": os.getpid()}
        if cmd == "reload":
            return self.reload()
        if cmd == "status":
            return {"ok": True, "pid": os.getpid(), "state": self.state,
                    "epoch": self.options.restart_epoch,
                    "workers": [w.proc.pid for w in self.workers if w.proc]}
        return {"ok": False, "error": "unknown command %r" % cmd}

    # --- hot restart ------------------------------------------------------------
    def reload(self) -> dict:
        """Validate the config on disk, start a successor, hand over, drain. The
        response is the reload's result (ExecReload waits for it)."""
        if self.stopping:
            return {"ok": False, "error": "proxyd is stopping"}
        if self.reloading:
            return {"ok": False, "error": "a reload is already in progress"}
        self.reloading = True
        errors = config_check.validate(self.options.config_path)
        if errors is not None:
            self.reloading = False
            self.log.error("reload_refused", errors=len(errors))
            return {"ok": False, "error": "invalid config, nothing changed:\n" + "\n".join(errors)}
        if self.stopping:
            self.reloading = False
            return {"ok": False, "error": "proxyd is stopping"}
        sdnotify.notify("RELOADING=1", "MONOTONIC_USEC=%d" % sdnotify.monotonic_usec(),
                        "STATUS=reloading: starting epoch %d" % (self.options.restart_epoch + 1))
        self.log.info("reload_started", next_epoch=self.options.restart_epoch + 1)
        try:
            pid, epoch = hot_restart.start_successor(self)
        except hot_restart.ReloadFailed as e:
            self.log.error("reload_failed", error=str(e))
            sdnotify.notify("READY=1", "STATUS=reload failed, still serving: %s" % e)
            return {"ok": False, "error": "reload failed, still serving: %s" % e}
        finally:
            self.reloading = False
        if self.stopping:  # stopped meanwhile: stop() killed the successor
            return {"ok": False, "error": "proxyd is stopping; the reload was abandoned"}
        self.log.info("handed_over", successor_pid=pid, epoch=epoch)
        self.handed_over = True
        # Still "reloading" until the answer is written: _stop waits for that flag before
        # it lets the master shut down (and close this control connection).
        self.reloading = True
        self.stop(graceful=True)
        try:
            self._await_not_accepting(RELOAD_ACCEPT_STOP_S)
        finally:
            self.reloading = False
        return {"ok": True, "pid": pid, "epoch": epoch}

    def _await_not_accepting(self, timeout: float) -> None:
        """Wait until every running worker has stopped accepting (bounded: a worker that
        does not answer is stopped by the drain deadline anyway)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not any(w.accepting for w in self.workers
                       if w.proc is not None and w.proc.returncode is None):
                return
            gevent.sleep(0.005)
        self.log.warning("workers_still_accepting_after_reload", waited_s=timeout)

    def reload_on_signal(self) -> None:
        gevent.spawn(self.reload)

    # --- admin context (proxyd/admin/context.py) ----------------------------------
    def processes(self) -> list:
        out = [("master", os.getpid())]
        out.extend(("worker_%d" % w.index, w.proc.pid) for w in self.workers
                   if w.proc is not None and w.proc.returncode is None)
        return out

    def clusters_status(self) -> list:
        out = []
        # a static EDS cluster's hosts come from EDS, which the dynamic config holds
        endpoints = self.dynamic.snapshot()[1] if self.dynamic is not None else self.endpoints
        for c in self.bootstrap.static_resources.clusters:
            hosts = [{"address": ("[%s]:%d" if ":" in ip else "%s:%d") % (ip, port),
                      "hostname": hostname, "health_flags": "healthy", "weight": weight}
                     for ip, port, weight, hostname, *_ in endpoints.get(c.name, [])]
            out.append({"name": c.name, "added_via_api": False, "hosts": hosts})
        if self.dynamic is not None:
            out.extend(self.dynamic.clusters_status())
        if self.health is not None:
            from proxyd.upstream.health import flags_string
            for entry in out:
                det = self.health.outlier_info(entry["name"])
                if det is not None:
                    entry["outlier"] = (det.sr_average, det.sr_threshold,
                                        det.lo_sr_average, det.lo_sr_threshold)
                for h in entry["hosts"]:
                    h["health_flags"] = flags_string(self.health.flags(entry["name"], h["address"]))
                    st = det.hosts.get(h["address"]) if det is not None else None
                    if st is not None:
                        h["success_rate"] = st.sr
                        h["local_origin_success_rate"] = st.lo_sr
        return out

    def listeners_status(self) -> list:
        return [(name, key[len("tcp://"):]) for name, key in self.listener_keys.items()]

    def set_healthcheck_failed(self, failed: bool) -> None:
        self.healthcheck_failed = failed
        self.refresh_server_stats()   # workers' health_check filters read server.state

    def drain_listeners(self, graceful: bool) -> None:
        """Stop listening, as Envoy: the workers stop accepting and exit once drained and
        are not replaced, and the master closes its copies of the listening sockets, so
        new connections are refused. Admin keeps serving; a reload binds afresh."""
        self.listeners_drained = True
        for sock in self.listen_socks.values():
            sock.close()
        self.listen_socks.clear()
        for w in self.workers:
            if w.channel is not None and w.proc is not None and w.proc.returncode is None:
                try:
                    w.channel.send({"kind": "drain",
                                    "deadline": self.options.drain_time_s if graceful else 0.0})
                except OSError:
                    pass

    def reopen_logs(self) -> None:
        """SIGUSR1 and POST /reopen_logs: workers reopen their access log files."""
        for w in self.workers:
            if w.proc is not None and w.proc.returncode is None:
                w.proc.send_signal(signal.SIGUSR1)

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
    gevent.signal_handler(signal.SIGHUP, master.reload_on_signal)
    gevent.signal_handler(signal.SIGUSR1, master.reopen_logs)
    try:
        master.start()
    except StartupError as e:
        if master.predecessor is not None:
            master.predecessor.failed(str(e))
        for line in str(e).splitlines():
            print("proxyd: %s" % line, file=sys.stderr)
        log.error("startup_failed", error=str(e).splitlines()[0])
        for sock in master.listen_socks.values():
            sock.close()
        if master.stats is not None and options.restart_epoch == 0:
            master.stats.unlink()
        return 1
    log.info("started", pid=os.getpid(), version=__version__, concurrency=options.concurrency,
             config=options.config_path)
    master.stopped.wait()
    master.shutdown()
    if master.startup_error is not None:
        print("proxyd: %s" % master.startup_error, file=sys.stderr)
        log.error("startup_failed", error=master.startup_error)
        return 1
    log.info("exited")
    return 0


def _eds_status(cla) -> dict:
    """{address: envoy.config.core.v3.HealthStatus} of a ClusterLoadAssignment."""
    out = {}
    for locality in cla.endpoints:
        for lbe in locality.lb_endpoints:
            sa = lbe.endpoint.address.socket_address
            addr = ("[%s]:%d" if ":" in sa.address else "%s:%d") % (sa.address, sa.port_value)
            out[addr] = lbe.health_status
    return out
