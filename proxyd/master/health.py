"""Host health in the master: active health checks, outlier detection, EDS health_status.

The master is the one writer of every host's shared health word
(proxyd/upstream/health.py). Before each config snapshot goes to the workers, ``sync``
brings the words, health checkers (proxyd/upstream/health_check/) and outlier
detectors (proxyd/upstream/outlier.py) in line with the clusters and their hosts, so a
worker that builds a host finds its word. A poll loop then runs the detectors (their
consecutive-error triggers every POLL_S, their sweep every `interval`) and keeps each
tracked cluster's membership_healthy.

Workers crashing changes nothing here (the master owns the state). A hot-restarted
master finds the words in the stats file it inherits: a host keeps its flags, its
checks continue without a "first check", and an ejection still in force keeps its
start time, ejection count and back-off (shared words beside the flags), so the new
master's detector unejects it when the old one would have.
"""
from __future__ import annotations

import gevent

from proxyd.upstream import health as H
from proxyd.upstream.health_check import ClusterChecker
from proxyd.upstream.outlier import Detector

POLL_S = 0.05
INITIALIZED = 0x100   # set by the master on a word it has set up (not a health flag)

# envoy.config.core.v3.HealthStatus
_UNHEALTHY_EDS = {2, 4}      # UNHEALTHY, TIMEOUT: /failed_eds_health
_DRAINING_EDS = 3            # DRAINING: /eds_status_draining (Envoy 1.40)
_DEGRADED_EDS = 5


class _Managed:
    __slots__ = ("config", "checker", "detector", "words", "membership_healthy")


class HealthManager:
    def __init__(self, store, od_event_log_path: str = "", log=None):
        self.store = store
        H.epoch_word(store, create=True)   # before any worker builds a balancer
        self.log = log
        self.clusters: dict[str, _Managed] = {}
        self.eds_words: dict[tuple, object] = {}
        self.synced_version = None
        self._od_log = None
        if od_event_log_path:
            try:
                self._od_log = open(od_event_log_path, "a", buffering=1)
            except OSError:
                self._od_log = None
        self._loop = None
        self.stopped = False

    def start(self) -> None:
        """Run the checks and the detectors. A hot-restarted master calls this once live:
        until then its predecessor still checks and ejects, and the two would both count."""
        if self._loop is not None:
            return
        for m in self.clusters.values():
            if m.checker is not None:
                m.checker.activate()
        self._loop = gevent.spawn(self._poll_loop)

    def stop(self) -> None:
        self.stopped = True
        if self._loop is not None:
            self._loop.kill(block=False)
        for m in self.clusters.values():
            # this master's shares of the cluster gauges go: a successor sets its own,
            # and the two would add up while this master drains
            m.membership_healthy.set(0)
            if m.detector is not None:
                m.detector.ejections_active.set(0)
            if m.checker is not None:
                m.checker.stop()
                m.checker.healthy_gauge.set(0)
                m.checker.degraded_gauge.set(0)
        self.clusters = {}

    # --- membership ------------------------------------------------------------------
    def sync(self, clusters, endpoints: dict, eds_status: dict) -> None:
        """`clusters`: Cluster protos in force; `endpoints`: name -> [(ip, port, weight,
        hostname)]; `eds_status`: name -> {addr: HealthStatus} for EDS hosts."""
        seen = set()
        for cfg in clusters:
            name = cfg.name
            seen.add(name)
            hosts = []
            for ip, port, *_ in endpoints.get(name, []):
                addr = "[%s]:%d" % (ip, port) if ":" in ip else "%s:%d" % (ip, port)
                hosts.append((addr, ip, port))
            status = eds_status.get(name, {})
            if not H.tracks_health(cfg):
                self._drop(name, clear=True)
                self._eds_only(name, hosts, status)
                continue
            m = self.clusters.get(name)
            if m is not None and m.config != cfg:
                self._drop(name)
                m = None
            if m is None:
                m = _Managed()
                m.config = cfg
                m.words = {}
                m.detector = (Detector(name, cfg.outlier_detection, self.store, self._od_log)
                              if cfg.HasField("outlier_detection") else None)
                m.checker = None
                if cfg.health_checks:
                    on_ok = m.detector.hc_succeeded if m.detector is not None else None
                    m.checker = ClusterChecker(cfg, self.store, on_success=on_ok)
                    if self._loop is not None:
                        m.checker.activate()
                m.membership_healthy = self.store.gauge("cluster.%s.membership_healthy" % name)
                self.clusters[name] = m
            words, carried = {}, set()
            for addr, _ip, _port in hosts:
                w = H.find(self.store, name, addr, create=True)
                flags = w.get()
                if flags & INITIALIZED:
                    carried.add(addr)
                else:
                    flags = INITIALIZED
                    if m.checker is not None:
                        flags |= H.FAILED_ACTIVE_HC | H.PENDING_ACTIVE_HC
                flags = _with_eds(flags, status.get(addr, 0))
                w.set(flags)
                words[addr] = w
            m.words = words
            if m.detector is not None:
                m.detector.set_hosts([a for a, _i, _p in hosts], words)
            if m.checker is not None:
                m.checker.set_hosts(hosts, words, carried)
        for name in list(self.clusters):
            if name not in seen:
                self._drop(name, clear=True)
        self._membership()

    def _eds_only(self, name: str, hosts: list, status: dict) -> None:
        """A cluster without checks or detection: words only where EDS says a host is
        not healthy, or where one exists already (EDS said so before, or the cluster had
        checks or detection once): only the EDS flags stay."""
        for addr, _ip, _port in hosts:
            st = status.get(addr, 0)
            w = self.eds_words.get((name, addr)) or H.find(self.store, name, addr, create=False)
            if w is None:
                if st not in _UNHEALTHY_EDS and st not in (_DEGRADED_EDS, _DRAINING_EDS):
                    continue
                w = H.find(self.store, name, addr, create=True)
            self.eds_words[(name, addr)] = w
            w.set(_with_eds(0, st) | INITIALIZED)

    def _drop(self, name: str, clear: bool = False) -> None:
        """Stop a cluster's checks and detection. `clear`: the cluster no longer tracks
        health (removed, or its checks and detection are gone): its hosts' words lose
        every flag but EDS's and the master's membership_healthy share goes to zero; a
        cluster only changed keeps them for its successor."""
        m = self.clusters.pop(name, None)
        if m is None:
            return
        if m.checker is not None:
            m.checker.stop()
        if clear:
            m.membership_healthy.set(0)
            for w in m.words.values():
                w.set(w.get() & (H.FAILED_EDS_HEALTH | H.DEGRADED_EDS_HEALTH | H.EDS_STATUS_DRAINING))

    def _membership(self) -> None:
        for m in self.clusters.values():
            m.membership_healthy.set(sum(1 for w in m.words.values()
                                         if not w.get() & H.NOT_COUNTED_HEALTHY))

    # --- the loop ------------------------------------------------------------------------
    def _poll_loop(self) -> None:
        while not self.stopped:
            gevent.sleep(POLL_S)
            for m in list(self.clusters.values()):
                if m.checker is not None:
                    m.checker.poll_passive()
                if m.detector is not None:
                    try:
                        m.detector.poll()
                    except Exception as e:  # noqa: BLE001 - never take the master down
                        if self.log is not None:
                            self.log.error("outlier_detector_failed", cluster=m.config.name,
                                           error=repr(e))
            self._membership()

    def wait_initial(self, timeout: float) -> None:
        """Until every checked host has had its first answer (Envoy's clusters wait for
        their first round of health checks before they are initialized), bounded."""
        with gevent.Timeout(timeout, False):
            while any(w.get() & H.PENDING_ACTIVE_HC for m in self.clusters.values()
                      if m.checker is not None for w in m.words.values()):
                gevent.sleep(0.01)

    def initial_timeout(self) -> float:
        t = 0.0
        for m in self.clusters.values():
            if m.checker is not None:
                for s in m.checker.settings_list:
                    t = max(t, s.timeout + s.initial_jitter)
        return t

    # --- admin -----------------------------------------------------------------------------
    def flags(self, cluster: str, addr: str) -> int:
        m = self.clusters.get(cluster)
        w = m.words.get(addr) if m is not None else self.eds_words.get((cluster, addr))
        return 0 if w is None else w.get() & ~INITIALIZED

    def outlier_info(self, cluster: str):
        """(detector or None) for /clusters' success-rate lines."""
        m = self.clusters.get(cluster)
        return None if m is None else m.detector


def _with_eds(flags: int, status: int) -> int:
    flags &= ~(H.FAILED_EDS_HEALTH | H.DEGRADED_EDS_HEALTH | H.EDS_STATUS_DRAINING)
    if status in _UNHEALTHY_EDS:
        flags |= H.FAILED_EDS_HEALTH
    elif status == _DRAINING_EDS:
        flags |= H.EDS_STATUS_DRAINING
    elif status == _DEGRADED_EDS:
        flags |= H.DEGRADED_EDS_HEALTH
    return flags
