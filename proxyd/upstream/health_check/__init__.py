"""Active health checks (Cluster.health_checks), run once per cluster by the master.

One greenlet per (health check, host) in the master's gevent loop: every probe is
bounded by the check's `timeout`, so the loop never waits on a host. Results go to the
host's shared health word (FAILED_ACTIVE_HC, ACTIVE_HC_TIMEOUT, PENDING_ACTIVE_HC:
proxyd/upstream/health.py), which every worker's load balancer reads; the state
machine is Envoy's HealthCheckerImplBase::ActiveHealthCheckSession
(source/common/upstream/health_checker_impl.cc):

- the first result decides at once (healthy_threshold is ignored "to make startup
  faster"); later, `healthy_threshold` successes in a row clear the failure;
- an active failure that is not retriable (an HTTP status that is neither expected nor
  in retriable_statuses, a gRPC NOT_SERVING) fails the host at once; network errors,
  timeouts and retriable statuses need `unhealthy_threshold` in a row;
- the next check comes after `no_traffic_interval` (60 s) while the cluster never had a
  connection (cluster.<c>.upstream_cx_total is 0), else `interval`, `unhealthy_interval`
  while unhealthy, `healthy_edge_interval` / `unhealthy_edge_interval` while a
  transition is pending; plus interval_jitter and interval_jitter_percent;
- stats cluster.<c>.health_check.{attempt,success,failure,network_failure,
  passive_failure,verify_cluster,healthy,degraded} as Envoy, in the master's slot.

Probes: HTTP/1.1 and HTTP/2 (`http.py`), TCP (`tcp.py`), gRPC health (`grpc.py`).
"""
from __future__ import annotations

import json
import random
import time

import gevent

from proxyd.upstream import health as H

SUCCESS, ACTIVE, ACTIVE_RETRIABLE, NETWORK, TIMEOUT, PASSIVE = range(6)
_FAILURE_TYPE = {ACTIVE: "ACTIVE", ACTIVE_RETRIABLE: "ACTIVE", NETWORK: "NETWORK",
                 TIMEOUT: "NETWORK_TIMEOUT", PASSIVE: "PASSIVE"}

STATS_COUNTERS = ("attempt", "success", "failure", "passive_failure", "network_failure",
                  "verify_cluster")
STATS_GAUGES = ("healthy", "degraded")


def _secs(msg, field: str, default: float | None) -> float | None:
    if msg.HasField(field):
        d = getattr(msg, field)
        return d.seconds + d.nanos / 1e9
    return default


class Settings:
    """One HealthCheck with Envoy's defaults resolved."""

    def __init__(self, hc, cluster_name: str):
        self.msg = hc
        self.timeout = _secs(hc, "timeout", 1.0)
        self.interval = _secs(hc, "interval", 1.0)
        self.no_traffic_interval = _secs(hc, "no_traffic_interval", 60.0)
        self.no_traffic_healthy_interval = _secs(hc, "no_traffic_healthy_interval",
                                                 self.no_traffic_interval)
        self.unhealthy_interval = _secs(hc, "unhealthy_interval", self.interval)
        self.unhealthy_edge_interval = _secs(hc, "unhealthy_edge_interval", self.unhealthy_interval)
        self.healthy_edge_interval = _secs(hc, "healthy_edge_interval", self.interval)
        self.interval_jitter = _secs(hc, "interval_jitter", 0.0)
        self.initial_jitter = _secs(hc, "initial_jitter", 0.0)
        self.jitter_percent = hc.interval_jitter_percent
        self.unhealthy_threshold = hc.unhealthy_threshold.value
        self.healthy_threshold = hc.healthy_threshold.value
        self.reuse_connection = hc.reuse_connection.value if hc.HasField("reuse_connection") else True
        self.event_log_path = hc.event_log_path
        self.cluster_name = cluster_name
        self.kind = hc.WhichOneof("health_checker")
        self.type_name = {"http_health_check": "HTTP", "tcp_health_check": "TCP",
                          "grpc_health_check": "GRPC"}.get(self.kind, "HTTP")

    def next_interval(self, healthy: bool, pending: bool, had_traffic: bool) -> float:
        if had_traffic:
            if not healthy:
                base = self.unhealthy_edge_interval if pending else self.unhealthy_interval
            else:
                base = self.healthy_edge_interval if pending else self.interval
        else:
            base = self.no_traffic_healthy_interval if healthy else self.no_traffic_interval
        jitter = 0.0
        if self.jitter_percent:
            jitter += random.random() * base * self.jitter_percent / 100.0
        if self.interval_jitter:
            jitter += random.random() * self.interval_jitter
        return max(0.001, base + jitter)


def make_probe(settings: Settings, host_ip: str, port: int):
    """The probe for one host: an object with `check() -> result` and `close()`."""
    if settings.kind == "http_health_check":
        from proxyd.upstream.health_check.http import HttpProbe
        return HttpProbe(settings, host_ip, port)
    if settings.kind == "tcp_health_check":
        from proxyd.upstream.health_check.tcp import TcpProbe
        return TcpProbe(settings, host_ip, port)
    from proxyd.upstream.health_check.grpc import GrpcProbe
    return GrpcProbe(settings, host_ip, port)


class Session:
    """One host under one health check (Envoy's ActiveHealthCheckSession)."""

    def __init__(self, checker, addr: str, ip: str, port: int, word, carried: bool):
        self.checker = checker
        self.addr = addr
        self.ip, self.port = ip, port
        self.word = word
        self.first_check = not carried
        self.num_healthy = 0
        self.num_unhealthy = 0
        self.probe = make_probe(checker.settings, ip, port)
        self.greenlet = None

    def start(self) -> None:
        self.greenlet = gevent.spawn(self._run)

    def stop(self) -> None:
        if self.greenlet is not None:
            self.greenlet.kill(block=False)
        self.probe.close()

    def _run(self) -> None:
        s = self.checker.settings
        if s.initial_jitter:
            gevent.sleep(random.random() * s.initial_jitter)
        while True:
            self.checker.stats["attempt"].inc()
            try:
                with gevent.Timeout(s.timeout, False):
                    result = None
                    result = self.probe.check()
                if result is None:
                    self.probe.close()
                    result = TIMEOUT
            except gevent.GreenletExit:
                raise
            except Exception:  # noqa: BLE001 - a probe's own bug fails the check, not the master
                self.probe.close()
                result = NETWORK
            if result == SUCCESS:
                healthy, pending = self.handle_success()
            else:
                healthy, pending = self.handle_failure(result)
            gevent.sleep(s.next_interval(healthy, pending, self.checker.had_traffic()))

    # --- Envoy's state machine ----------------------------------------------------
    def handle_success(self):
        c = self.checker
        self.num_unhealthy = 0
        flags = self.word.get()
        pending = False
        if flags & H.FAILED_ACTIVE_HC:
            self.num_healthy += 1
            if self.first_check or self.num_healthy >= c.settings.healthy_threshold:
                flags &= ~(H.FAILED_ACTIVE_HC | H.ACTIVE_HC_TIMEOUT | H.EXCLUDED_VIA_IMMEDIATE_HC_FAIL)
                c.log_event(self, {"add_healthy_event": {"first_check": self.first_check}})
            else:
                pending = True
        flags &= ~H.PENDING_ACTIVE_HC
        self.word.set(flags)
        c.stats["success"].inc()
        self.first_check = False
        c.on_result(self, True)
        return True, pending

    def handle_failure(self, result: int):
        c = self.checker
        self.num_healthy = 0
        flags = self.word.get()
        pending = False
        if not flags & H.FAILED_ACTIVE_HC:
            self.num_unhealthy += 1
            if result in (ACTIVE, PASSIVE) or self.num_unhealthy >= c.settings.unhealthy_threshold:
                flags |= H.FAILED_ACTIVE_HC
                c.log_event(self, {"eject_unhealthy_event": {"failure_type": _FAILURE_TYPE[result]}})
            else:
                pending = True
        if result == TIMEOUT and flags & H.FAILED_ACTIVE_HC:
            flags |= H.ACTIVE_HC_TIMEOUT
        else:
            flags &= ~H.ACTIVE_HC_TIMEOUT
        if self.first_check:
            c.log_event(self, {"health_check_failure_event": {
                "failure_type": _FAILURE_TYPE[result], "first_check": True,
                "http_status_code": getattr(self.probe, "last_status", 0)}})
        flags &= ~H.PENDING_ACTIVE_HC
        self.word.set(flags)
        c.stats["failure"].inc()
        if result in (NETWORK, TIMEOUT):
            c.stats["network_failure"].inc()
        elif result == PASSIVE:
            c.stats["passive_failure"].inc()
        self.first_check = False
        c.on_result(self, False)
        return not flags & H.FAILED_ACTIVE_HC, pending


class ClusterChecker:
    """The health checks of one cluster (one Settings each) over its hosts."""

    def __init__(self, cluster_config, store, on_success=None):
        self.name = cluster_config.name
        self.config = cluster_config
        self._store = store
        prefix = "cluster.%s.health_check." % self.name
        self.stats = {n: store.counter(prefix + n) for n in STATS_COUNTERS}
        self.healthy_gauge = store.gauge(prefix + "healthy")
        self.degraded_gauge = store.gauge(prefix + "degraded")
        self._cx_total = store.counter("cluster.%s.upstream_cx_total" % self.name)
        self._traffic = False
        self.settings_list = [Settings(hc, self.name) for hc in cluster_config.health_checks]
        self.sessions: dict[tuple, Session] = {}   # (check index, addr) -> Session
        self.words: dict[str, object] = {}
        self.on_success = on_success
        self.active = False        # sessions run once activate() is called
        self._passive: dict = {}   # addr -> [total view of its immediate_fail counter, last total]
        self._logs = {}
        for s in self.settings_list:
            if s.event_log_path and s.event_log_path not in self._logs:
                try:
                    self._logs[s.event_log_path] = open(s.event_log_path, "a", buffering=1)
                except OSError:
                    self._logs[s.event_log_path] = None

    def had_traffic(self) -> bool:
        if not self._traffic:
            self._traffic = self._cx_total.value() > 0
        return self._traffic

    def set_hosts(self, hosts: list, words: dict, carried: set) -> None:
        """`hosts`: [(addr, ip, port)]; `words`: addr -> HealthWord; `carried`: addrs whose
        word already held active-HC state (a hot restart): their first result is not
        "first"."""
        wanted = {}
        for i, s in enumerate(self.settings_list):
            view = _CheckView(self, s)
            for addr, ip, port in hosts:
                key = (i, addr)
                sess = self.sessions.pop(key, None)
                if sess is None:
                    sess = Session(view, addr, ip, port, words[addr], addr in carried)
                    if self.active:
                        sess.start()
                wanted[key] = sess
        for sess in self.sessions.values():
            sess.stop()
        self.sessions = wanted
        self.words = words
        self._update_gauge()

    def activate(self) -> None:
        """Start checking (a hot-restarted master does once it is live, so the two
        masters do not both check, nor count, in the overlap)."""
        if not self.active:
            self.active = True
            for sess in self.sessions.values():
                sess.start()

    def poll_passive(self) -> None:
        """Responses with x-envoy-immediate-health-check-fail that workers counted since
        the last poll: the host is excluded and fails its check at once (Envoy's
        setUnhealthyCrossThread, then setUnhealthy(PASSIVE))."""
        for (i, addr), sess in self.sessions.items():
            if i:
                continue
            view = self._passive.get(addr)
            if view is None:
                view = self._passive[addr] = [self._store.total_view(self._store.counter(
                    H.passive_fail_name(self.name, addr))), 0]
                view[1] = sum(view[0])
            total = sum(view[0])
            if total > view[1]:
                view[1] = total
                sess.word.set(sess.word.get() | H.EXCLUDED_VIA_IMMEDIATE_HC_FAIL)
                sess.handle_failure(PASSIVE)

    def _update_gauge(self) -> None:
        self.healthy_gauge.set(sum(1 for w in self.words.values()
                                   if not w.get() & H.FAILED_ACTIVE_HC))

    def on_result(self, sess: Session, ok: bool) -> None:
        self._update_gauge()
        if ok and self.on_success is not None:
            self.on_success(sess.addr)

    def log_event(self, sess: Session, body: dict, settings=None) -> None:
        s = settings
        if s is None or not s.event_log_path:
            return
        f = self._logs.get(s.event_log_path)
        if f is None:
            return
        ts = time.time()
        ev = {"health_checker_type": s.type_name,
              "host": {"socket_address": {"protocol": "TCP", "address": sess.ip,
                                          "port_value": sess.port, "resolver_name": "",
                                          "ipv4_compat": False, "network_namespace_filepath": ""}},
              "cluster_name": self.name,
              "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts))
              + ".%03dZ" % int(ts % 1 * 1000)}
        ev.update(body)
        ev["locality"] = {"region": "", "zone": "", "sub_zone": ""}
        try:
            f.write(json.dumps(ev, separators=(",", ":")) + "\n")
        except OSError:
            pass

    def stop(self) -> None:
        for sess in self.sessions.values():
            sess.stop()
        self.sessions = {}
        for f in self._logs.values():
            if f is not None:
                f.close()
        self._logs = {}


class _CheckView:
    """What a Session sees of its checker: the shared stats plus its own Settings."""

    __slots__ = ("_c", "settings")

    def __init__(self, checker: ClusterChecker, settings: Settings):
        self._c = checker
        self.settings = settings

    @property
    def stats(self):
        return self._c.stats

    def had_traffic(self) -> bool:
        return self._c.had_traffic()

    def on_result(self, sess, ok: bool) -> None:
        self._c.on_result(sess, ok)

    def log_event(self, sess, body: dict) -> None:
        self._c.log_event(sess, body, self.settings)
