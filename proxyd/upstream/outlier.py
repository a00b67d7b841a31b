"""Outlier detection (Cluster.outlier_detection), split as Envoy splits it across threads.

Workers report each upstream result through ``HostReporter`` (one per host, beside the
host's pool): the consecutive-error counts are shared words in the stats file (every
worker adds to the same count, as Envoy's worker threads do to one atomic), changed
under a record lock on the word's bytes and only on the error path or when a count is
not already zero, so a success costs one shared load. When a count reaches its
threshold the worker resets nothing but bumps a per-slot trigger counter; request and
success totals for the success-rate and failure-percentage detectors are per-slot
counters too. Nothing here needs the master's answer.

The master's ``Detector`` (one per cluster) polls the trigger counters often (Envoy's
post to the main thread) and runs Envoy's interval sweep every ``interval``: unejects
hosts whose ejection time is over, computes success rates from the interval's deltas,
ejects, and decrements the back-off of hosts that stayed healthy. An ejection sets
FAILED_OUTLIER_CHECK in the host's health word (proxyd/upstream/health.py), which every
worker's load balancer reads.

Envoy semantics kept (source/common/upstream/outlier_detection_impl.cc):
- without split_external_local_origin_errors, local-origin results count as HTTP codes:
  connect failure 503, timeout 504, "connect success" is not counted;
- a trigger for a host that is already ejected is dropped; otherwise the detected
  counter counts, then ejectHost: max_ejection_percent over all hosts
  (100 * (active + 1) / hosts <= max), always_eject_one_host, then enforcing_* decides;
- ejection time min(base * backoff, max_ejection_time) + jitter, checked only on the
  interval timer; backoff grows by one per ejection while base * backoff < max + base
  and shrinks by one per interval the host spent unejected;
- unejecting resets the consecutive counts; a successful active health check unejects
  a host that is not also failing active HC (successful_active_health_check_uneject_host).
"""
from __future__ import annotations

import fcntl
import json
import math
import random
import time

from proxyd.upstream import health as H

INTERNAL = "_od:"

# Envoy's Outlier::Result, what callers report besides HTTP codes
CONNECT_FAILED, TIMEOUT, CONNECT_SUCCESS, CONNECT_SUCCESS_FINAL, EXT_FAILED, EXT_SUCCESS = range(6)

# envoy.data.cluster.v3.OutlierEjectionType
CONSECUTIVE_5XX, CONSECUTIVE_GATEWAY_FAILURE, SUCCESS_RATE, CONSECUTIVE_LOCAL_ORIGIN_FAILURE, \
    SUCCESS_RATE_LOCAL_ORIGIN, FAILURE_PERCENTAGE, FAILURE_PERCENTAGE_LOCAL_ORIGIN = range(7)
_TYPE_NAMES = ("CONSECUTIVE_5XX", "CONSECUTIVE_GATEWAY_FAILURE", "SUCCESS_RATE",
               "CONSECUTIVE_LOCAL_ORIGIN_FAILURE", "SUCCESS_RATE_LOCAL_ORIGIN",
               "FAILURE_PERCENTAGE", "FAILURE_PERCENTAGE_LOCAL_ORIGIN")
_STAT_SUFFIX = ("consecutive_5xx", "consecutive_gateway_failure", "success_rate",
                "consecutive_local_origin_failure", "local_origin_success_rate",
                "failure_percentage", "local_origin_failure_percentage")

STATS_COUNTERS = (
    "ejections_enforced_total", "ejections_overflow", "ejections_total",
    "ejections_consecutive_5xx", "ejections_success_rate", "ejections_detected_degradation",
) + tuple("ejections_%s_%s" % (w, s) for w in ("enforced", "detected") for s in _STAT_SUFFIX)


def _ms(msg, field: str, default_ms: int) -> int:
    if msg.HasField(field):
        d = getattr(msg, field)
        return d.seconds * 1000 + d.nanos // 1_000_000
    return default_ms


def _u(msg, field: str, default: int) -> int:
    return getattr(msg, field).value if msg.HasField(field) else default


class Config:
    """OutlierDetection with Envoy's defaults resolved."""

    def __init__(self, od):
        self.interval_ms = _ms(od, "interval", 10000)
        self.base_ejection_ms = _ms(od, "base_ejection_time", 30000)
        self.max_ejection_ms = _ms(od, "max_ejection_time", max(300000, self.base_ejection_ms))
        self.max_ejection_jitter_ms = _ms(od, "max_ejection_time_jitter", 0)
        self.consecutive_5xx = _u(od, "consecutive_5xx", 5)
        self.consecutive_gateway_failure = _u(od, "consecutive_gateway_failure", 5)
        self.consecutive_local_origin_failure = _u(od, "consecutive_local_origin_failure", 5)
        self.max_ejection_percent = min(100, _u(od, "max_ejection_percent", 10))
        self.always_eject_one_host = od.HasField("always_eject_one_host") and \
            od.always_eject_one_host.value
        self.split = od.split_external_local_origin_errors
        self.sr_minimum_hosts = _u(od, "success_rate_minimum_hosts", 5)
        self.sr_request_volume = _u(od, "success_rate_request_volume", 100)
        self.sr_stdev_factor = _u(od, "success_rate_stdev_factor", 1900) / 1000.0
        self.fp_threshold = _u(od, "failure_percentage_threshold", 85)
        self.fp_minimum_hosts = _u(od, "failure_percentage_minimum_hosts", 5)
        self.fp_request_volume = _u(od, "failure_percentage_request_volume", 50)
        self.enforcing = {
            CONSECUTIVE_5XX: _u(od, "enforcing_consecutive_5xx", 100),
            CONSECUTIVE_GATEWAY_FAILURE: _u(od, "enforcing_consecutive_gateway_failure", 0),
            SUCCESS_RATE: _u(od, "enforcing_success_rate", 100),
            CONSECUTIVE_LOCAL_ORIGIN_FAILURE: _u(od, "enforcing_consecutive_local_origin_failure", 100),
            SUCCESS_RATE_LOCAL_ORIGIN: _u(od, "enforcing_local_origin_success_rate", 100),
            FAILURE_PERCENTAGE: _u(od, "enforcing_failure_percentage", 0),
            FAILURE_PERCENTAGE_LOCAL_ORIGIN: _u(od, "enforcing_failure_percentage_local_origin", 0),
        }
        self.uneject_on_hc_success = bool(_u(od, "successful_active_health_check_uneject_host", True))
        if self.max_ejection_ms < self.base_ejection_ms:
            raise ValueError("outlier detector's max_ejection_time cannot be smaller than "
                             "base_ejection_time")


def _names(cluster: str, addr: str) -> dict:
    p = "%s%s:%s:" % (INTERNAL, cluster, addr)
    return {k: p + k for k in ("c5xx", "cgw", "clo", "rq", "ok", "lrq", "lok", "t5xx", "tgw", "tlo",
                               "ejected_ns", "num_ejections", "backoff")}


_KEPT = ("ejected_ns", "num_ejections", "backoff")  # the master's bookkeeping, for a successor


_SHARED = ("c5xx", "cgw", "clo")
_SLOT = ("rq", "ok", "lrq", "lok", "t5xx", "tgw", "tlo")
_LOCAL = frozenset(("clo", "lrq", "lok", "tlo"))  # rows only with split_external_local_origin_errors


def _shared_keys(split: bool):
    return _SHARED if split else tuple(k for k in _SHARED if k not in _LOCAL)


def _slot_keys(split: bool):
    return _SLOT if split else tuple(k for k in _SLOT if k not in _LOCAL)


class HostReporter:
    """A worker's view of one host's outlier monitor (Envoy's DetectorHostMonitorImpl,
    worker side)."""

    __slots__ = ("_w", "_r5", "_rg", "_rl", "_fd", "_lock_off", "rq", "ok", "lrq", "lok",
                 "t5xx", "tgw", "tlo", "_n5", "_ng", "_nl", "_split")

    def __init__(self, store, cluster: str, addr: str, cfg: Config):
        names = _names(cluster, addr)
        views = [store.shared_word(names[k]) for k in _shared_keys(cfg.split)]
        self._w = views[0][0]
        self._r5, self._rg = views[0][1], views[1][1]
        self._rl = views[2][1] if cfg.split else None
        self._fd, self._lock_off = views[0][2], views[0][3]  # the c5xx word's lock guards all three
        for k in _SLOT:
            setattr(self, k, store.counter(names[k]) if k in _slot_keys(cfg.split) else None)
        self._n5, self._ng, self._nl = (cfg.consecutive_5xx, cfg.consecutive_gateway_failure,
                                        cfg.consecutive_local_origin_failure)
        self._split = cfg.split

    def _lock(self):
        if self._fd is not None:
            fcntl.lockf(self._fd, fcntl.LOCK_EX, 8, self._lock_off)

    def _unlock(self):
        if self._fd is not None:
            fcntl.lockf(self._fd, fcntl.LOCK_UN, 8, self._lock_off)

    def http_status(self, code: int) -> None:
        """An upstream response head (Envoy's putHttpResponseCode)."""
        self.rq.inc()
        w = self._w
        if 500 <= code < 600:
            self._lock()
            try:
                if code in (502, 503, 504):
                    n = w[self._rg] = w[self._rg] + 1
                    if n == self._ng:
                        self.tgw.inc()
                else:
                    w[self._rg] = 0
                n = w[self._r5] = w[self._r5] + 1
                if n == self._n5:
                    self.t5xx.inc()
            finally:
                self._unlock()
        else:
            self.ok.inc()
            if w[self._r5] or w[self._rg]:
                self._lock()
                try:
                    w[self._r5] = 0
                    w[self._rg] = 0
                finally:
                    self._unlock()

    def result(self, what: int) -> None:
        """A non-HTTP result (Envoy's putResult)."""
        if not self._split:
            code = _AS_HTTP.get(what)
            if code is not None:
                self.http_status(code)
            return
        if what in (CONNECT_SUCCESS, CONNECT_SUCCESS_FINAL):
            self._local_ok()
        elif what in (TIMEOUT, CONNECT_FAILED):
            self.lrq.inc()
            self._lock()
            try:
                w = self._w
                n = w[self._rl] = w[self._rl] + 1
                if n == self._nl:
                    self.tlo.inc()
            finally:
                self._unlock()
        elif what == EXT_FAILED:
            self.http_status(503)
        elif what == EXT_SUCCESS:
            self.http_status(200)
            self._local_ok()

    def _local_ok(self) -> None:
        self.lrq.inc()
        self.lok.inc()
        w = self._w
        if w[self._rl]:
            self._lock()
            try:
                w[self._rl] = 0
            finally:
                self._unlock()


_AS_HTTP = {EXT_SUCCESS: 200, CONNECT_SUCCESS_FINAL: 200, TIMEOUT: 504, CONNECT_FAILED: 503,
            EXT_FAILED: 500}


# --- master side ------------------------------------------------------------------

class _HostState:
    __slots__ = ("addr", "word", "shared", "totals", "last", "num_ejections", "backoff",
                 "last_ejection", "last_unejection", "jitter_ms", "sr", "lo_sr", "kept")

    def __init__(self, addr, word, shared, totals, kept):
        self.addr = addr
        self.word = word        # HealthWord
        self.shared = shared    # (view, row, fd, offset) of c5xx, cgw, clo
        self.totals = totals    # {name: total_view}
        self.kept = kept        # {name: (view, row)}: ejection bookkeeping in the stats file
        self.last = {k: sum(v) for k, v in totals.items()}
        # a predecessor master's ejection carries on (CLOCK_MONOTONIC is machine-wide)
        self.num_ejections = self._get("num_ejections")
        self.backoff = self._get("backoff")
        ns = self._get("ejected_ns")
        self.last_ejection = ns / 1e9 if ns and self.ejected() else None
        self.last_unejection = None
        self.jitter_ms = 0
        self.sr = -1.0
        self.lo_sr = -1.0

    def _get(self, k: str) -> int:
        v, r = self.kept[k]
        return v[r]

    def save(self) -> None:
        for k, value in (("num_ejections", self.num_ejections), ("backoff", self.backoff),
                         ("ejected_ns", int(self.last_ejection * 1e9) if self.last_ejection else 0)):
            v, r = self.kept[k]
            v[r] = value

    def ejected(self) -> bool:
        return bool(self.word.get() & H.FAILED_OUTLIER_CHECK)


class Detector:
    """One cluster's outlier detector in the master."""

    def __init__(self, cluster: str, od, store, event_log=None, rand=random.random,
                 clock=time.monotonic):
        self.cluster = cluster
        self.cfg = Config(od)
        self._store = store
        self._clock = clock
        self._rand = rand
        self.event_log = event_log     # a file opened for append, or None
        prefix = "cluster.%s.outlier_detection." % cluster
        self.stats = {n: store.counter(prefix + n) for n in STATS_COUNTERS}
        self.ejections_active = store.gauge(prefix + "ejections_active")
        self.hosts: dict[str, _HostState] = {}
        self.sr_average = self.sr_threshold = -1.0
        self.lo_sr_average = self.lo_sr_threshold = -1.0
        self.next_interval = clock() + self.cfg.interval_ms / 1000.0
        self.on_change = None   # callback(addr) after an ejection or unejection

    def set_hosts(self, addrs: list, words: dict) -> None:
        """Membership: `words` maps address to its HealthWord (made by the master)."""
        keep = {}
        for addr in addrs:
            st = self.hosts.get(addr)
            if st is None:
                names = _names(self.cluster, addr)
                split = self.cfg.split
                shared = [self._store.shared_word(names[k]) for k in _shared_keys(split)]
                totals = {k: self._store.total_view(self._store.counter(names[k]))
                          for k in _slot_keys(split)}
                kept = {k: self._store.shared_word(names[k])[:2] for k in _KEPT}
                st = _HostState(addr, words[addr], shared, totals, kept)
            keep[addr] = st
        self.hosts = keep
        self.ejections_active.set(sum(1 for s in keep.values() if s.ejected()))

    def _active(self) -> int:
        return sum(1 for s in self.hosts.values() if s.ejected())

    def _reset(self, st: _HostState, which) -> None:
        view, row5, fd, off = st.shared[0]
        if fd is not None:
            fcntl.lockf(fd, fcntl.LOCK_EX, 8, off)
        try:
            for i in which:
                if i < len(st.shared):
                    v, r = st.shared[i][0], st.shared[i][1]
                    v[r] = 0
        finally:
            if fd is not None:
                fcntl.lockf(fd, fcntl.LOCK_UN, 8, off)

    # consecutive errors: Envoy's onConsecutiveErrorWorker, run when a trigger is seen
    def poll(self) -> None:
        for st in list(self.hosts.values()):
            for key, kind, idx in (("tgw", CONSECUTIVE_GATEWAY_FAILURE, 1),
                                   ("t5xx", CONSECUTIVE_5XX, 0),
                                   ("tlo", CONSECUTIVE_LOCAL_ORIGIN_FAILURE, 2)):
                if key not in st.totals:
                    continue
                total = sum(st.totals[key])
                fired = total - st.last[key]
                if fired <= 0:
                    st.last[key] = total
                    continue
                st.last[key] = total
                for _ in range(fired):
                    if st.ejected():
                        break
                    self.stats["ejections_detected_" + _STAT_SUFFIX[kind]].inc()
                    self._eject(st, kind)
                    if kind == CONSECUTIVE_5XX:
                        self.stats["ejections_consecutive_5xx"].inc()
                    self._reset(st, (idx,))
        now = self._clock()
        if now >= self.next_interval:
            self.next_interval = now + self.cfg.interval_ms / 1000.0
            self.interval(now)

    def _eject(self, st: _HostState, kind: int) -> None:
        cfg = self.cfg
        active = self._active()
        n = len(self.hosts)
        should = n > 0 and 100.0 * (active + 1) / n <= cfg.max_ejection_percent
        if cfg.always_eject_one_host:
            should = active == 0 or should
        if not should:
            self.stats["ejections_overflow"].inc()
            return
        if kind in (CONSECUTIVE_5XX, SUCCESS_RATE):
            self.stats["ejections_total"].inc()
        enforce = cfg.enforcing[kind]
        if not (enforce >= 100 or (enforce > 0 and self._rand() * 100 < enforce)):
            self._log_eject(st, kind, False)
            return
        self.stats["ejections_enforced_total"].inc()
        self.stats["ejections_enforced_" + _STAT_SUFFIX[kind]].inc()
        st.word.set(st.word.get() | H.FAILED_OUTLIER_CHECK)
        st.num_ejections += 1
        st.last_ejection = self._clock()
        jmax = cfg.max_ejection_jitter_ms
        st.jitter_ms = int(self._rand() * (jmax + 1)) if jmax else 0
        if st.backoff * cfg.base_ejection_ms < cfg.max_ejection_ms + cfg.base_ejection_ms:
            st.backoff += 1
        st.save()
        self.ejections_active.set(self._active())
        self._log_eject(st, kind, True)
        if self.on_change is not None:
            self.on_change(st.addr)

    def uneject(self, st: _HostState) -> None:
        st.word.set(st.word.get() & ~H.FAILED_OUTLIER_CHECK)
        self._reset(st, (0, 1, 2))
        st.last_unejection = self._clock()
        st.save()
        self.ejections_active.set(self._active())
        self._log(st, "UNEJECT", st.last_ejection, {})
        if self.on_change is not None:
            self.on_change(st.addr)

    def hc_succeeded(self, addr: str) -> None:
        """An active health check of `addr` passed (the host-check-complete callback)."""
        st = self.hosts.get(addr)
        if st is None or not self.cfg.uneject_on_hc_success:
            return
        if st.ejected() and not st.word.get() & H.FAILED_ACTIVE_HC:
            self.uneject(st)

    def interval(self, now: float) -> None:
        cfg = self.cfg
        for st in self.hosts.values():
            if st.ejected() and st.last_ejection is not None:
                span = min(cfg.base_ejection_ms * st.backoff, cfg.max_ejection_ms) + st.jitter_ms
                if span <= (now - st.last_ejection) * 1000.0:
                    self.uneject(st)
            elif st.ejected():      # ejected before this master kept the time: from now
                st.last_ejection = now
                st.backoff = max(st.backoff, 1)
                st.save()
        buckets = {}
        for st in self.hosts.values():
            cur = {k: sum(st.totals[k]) for k in ("rq", "ok", "lrq", "lok") if k in st.totals}
            buckets[st.addr] = {k: cur[k] - st.last[k] for k in cur}
            st.last.update(cur)
            st.sr = st.lo_sr = -1.0
        self._success_rate(buckets, "rq", "ok", False)
        if self.cfg.split:
            self._success_rate(buckets, "lrq", "lok", True)
        for st in self.hosts.values():
            if not st.ejected() and st.last_unejection is not None and \
                    (now - st.last_unejection) * 1000.0 >= cfg.interval_ms and st.backoff:
                st.backoff -= 1
                st.save()

    def _success_rate(self, buckets, total_key, ok_key, local: bool) -> None:
        cfg = self.cfg
        if local:
            self.lo_sr_average = self.lo_sr_threshold = -1.0
        else:
            self.sr_average = self.sr_threshold = -1.0
        if len(self.hosts) < cfg.sr_minimum_hosts and len(self.hosts) < cfg.fp_minimum_hosts:
            return
        valid_sr, valid_fp = [], []
        for st in self.hosts.values():
            if st.ejected():
                continue
            b = buckets[st.addr]
            total = b[total_key]
            if not total:
                continue
            rate = b[ok_key] * 100.0 / total
            if total >= min(cfg.sr_request_volume, cfg.fp_request_volume):
                if local:
                    st.lo_sr = rate
                else:
                    st.sr = rate
            if total >= cfg.sr_request_volume:
                valid_sr.append((st, rate))
            if total >= cfg.fp_request_volume:
                valid_fp.append((st, rate))
        if valid_sr and len(valid_sr) >= cfg.sr_minimum_hosts:
            mean = sum(r for _, r in valid_sr) / len(valid_sr)
            stdev = math.sqrt(sum((r - mean) ** 2 for _, r in valid_sr) / len(valid_sr))
            threshold = mean - cfg.sr_stdev_factor * stdev
            if local:
                self.lo_sr_average, self.lo_sr_threshold = mean, threshold
            else:
                self.sr_average, self.sr_threshold = mean, threshold
            kind = SUCCESS_RATE_LOCAL_ORIGIN if local else SUCCESS_RATE
            for st, rate in valid_sr:
                if rate < threshold:
                    self.stats["ejections_success_rate"].inc()
                    self.stats["ejections_detected_" + _STAT_SUFFIX[kind]].inc()
                    self._eject(st, kind)
        if valid_fp and len(valid_fp) >= cfg.fp_minimum_hosts:
            kind = FAILURE_PERCENTAGE_LOCAL_ORIGIN if local else FAILURE_PERCENTAGE
            for st, rate in valid_fp:
                if 100.0 - rate >= cfg.fp_threshold:
                    self.stats["ejections_detected_" + _STAT_SUFFIX[kind]].inc()
                    self._eject(st, kind)

    # --- event log (Envoy's OutlierDetectionEvent as JSON, one per line) ---------------
    def _log_eject(self, st, kind: int, enforced: bool) -> None:
        extra = {"enforced": enforced}
        if kind in (SUCCESS_RATE, SUCCESS_RATE_LOCAL_ORIGIN):
            local = kind == SUCCESS_RATE_LOCAL_ORIGIN
            extra["eject_success_rate_event"] = {
                "cluster_average_success_rate": _round(self.lo_sr_average if local else self.sr_average),
                "cluster_success_rate_ejection_threshold":
                    _round(self.lo_sr_threshold if local else self.sr_threshold),
                "host_success_rate": _round(st.lo_sr if local else st.sr)}
        elif kind in (FAILURE_PERCENTAGE, FAILURE_PERCENTAGE_LOCAL_ORIGIN):
            extra["eject_failure_percentage_event"] = {
                "host_success_rate": _round(st.lo_sr if kind == FAILURE_PERCENTAGE_LOCAL_ORIGIN
                                            else st.sr)}
        else:
            extra["eject_consecutive_event"] = {}
        self._log(st, "EJECT", st.last_unejection, extra, kind)

    def _log(self, st, action: str, since, extra: dict, kind=None) -> None:
        if self.event_log is None:
            return
        ev = {}
        if kind is not None:
            ev["type"] = _TYPE_NAMES[kind]
        ts = time.time()
        ev["timestamp"] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + \
            (".%03dZ" % int(ts % 1 * 1000))
        if since is not None:
            ev["secs_since_last_action"] = str(int(self._clock() - since))
        ev["cluster_name"] = self.cluster
        ev["upstream_url"] = st.addr
        ev["action"] = action
        ev["num_ejections"] = st.num_ejections
        ev.update(extra)
        try:
            self.event_log.write(json.dumps(ev, separators=(",", ":")) + "\n")
            self.event_log.flush()
        except OSError:
            pass


def _round(v: float):
    return int(v) if v == int(v) else v
