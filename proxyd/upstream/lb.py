"""Load balancing as Envoy does it: priority, then locality, then host.

`ClusterLb.choose(ctx)` is Envoy's `chooseHost(LoadBalancerContext*)`:

- **Priorities** (`LocalityLbEndpoints.priority`): each level's health is
  `min(100, overprovisioning_factor * healthy / hosts)` (factor 140 unless the
  ClusterLoadAssignment's policy says otherwise); the load goes to the levels in order of
  their health, normalized when the total is under 100 (Envoy's `distributeLoad`). A
  request picks its level by `h % 100 + 1` where `h` is its hash (hash balancers) or a
  random number (the others).
- **Panic** (`common_lb_config.healthy_panic_threshold`, 50 %): a level whose healthy
  share is under the threshold, while the total health is under 100, balances over all of
  its hosts and counts `lb_healthy_panic`; when every level panics, load goes by host
  count. 0 % never panics (no healthy host: no host, 503 UH).
- **Localities** (`common_lb_config.locality_weighted_lb_config`): a level picks a
  locality first, by `weight * min(1, factor * healthy / hosts)`, then a host in it; a
  locality without `load_balancing_weight` gets no traffic. The hash balancers fold the
  locality weights into the host weights of their table instead, as Envoy does.
- **Hosts**: ROUND_ROBIN (unweighted with a random start, or Envoy's EDF schedule when
  weights differ), LEAST_REQUEST (power of `choice_count` choices; EDF over
  `weight / (active + 1) ^ active_request_bias` when weights differ), RANDOM (unweighted,
  as Envoy's), RING_HASH and MAGLEV (`proxyd.upstream.hash_lb`; without a hash key a
  random `h`, as Envoy).

Health is read through `usable(host)` only: a pick re-reads it for every host after
`health_changed()`, after the master changed any host's flags (the family's shared
health epoch, proxyd.upstream.health.epoch_word), or HEALTH_RECHECK_S (0.1 s) since
the last reading, and the per-level
state is rebuilt when the answer changed for any host, so a health source (health checks,
outlier detection, EDS health) needs to change nothing here but `usable` (and may call
`health_changed()` to be seen at once).

A retry's host predicate (`previous_hosts`) re-picks up to
`host_selection_retry_max_attempts` times, inside the balancer (the hash tables move a
re-pick by the attempt number, as Envoy's do).
"""
from __future__ import annotations

import heapq
import os
import random
import time

from envoy.config.cluster.v3 import cluster_pb2

from proxyd.upstream import hash_lb, health

_C = cluster_pb2.Cluster
ROUND_ROBIN, LEAST_REQUEST, RANDOM = _C.ROUND_ROBIN, _C.LEAST_REQUEST, _C.RANDOM
RING_HASH, MAGLEV, CLUSTER_PROVIDED = _C.RING_HASH, _C.MAGLEV, _C.CLUSTER_PROVIDED
DEFAULT_OVERPROVISIONING = 140
DEFAULT_PANIC_THRESHOLD = 50
_getrandbits = random.getrandbits
_monotonic = time.monotonic

# LEAST_REQUEST compares each host's active requests summed over every worker (what
# Envoy's per-host rq_active is: one count for the process, shared by its threads),
# read from the stats file; "worker" compares this worker's own share only, kept for
# scripts/bench_least_request.py (PROXYD_BENCH_LEAST_REQUEST_COUNTS=worker). See
# docs/ARCHITECTURE.md ("Load balancing") for why summed.
LEAST_REQUEST_COUNTS = os.environ.get("PROXYD_BENCH_LEAST_REQUEST_COUNTS", "summed")


def usable(host) -> bool:
    """Whether a balancer may send a request to `host`: the one health test every
    balancer and level calculation uses (health checking and outlier detection plug in
    here)."""
    return host.healthy


HEALTH_RECHECK_S = 0.1
_health_epoch = [0]


def health_changed() -> None:
    """Tell every balancer in this process that `usable` may answer differently now:
    the next pick re-reads it. Without the call a change is seen within
    HEALTH_RECHECK_S (a health source writing shared memory needs no call)."""
    _health_epoch[0] += 1


class LbContext:
    """What a request tells the balancer (Envoy's LoadBalancerContext): its hash key
    (computed on first use, only by the hash balancers: a generated cookie is set only
    then), the hosts a retry host predicate rejects, how often to re-pick, and the
    downstream connection and request headers."""

    __slots__ = ("_hash_fn", "_hash", "_hashed", "tried", "selection_attempts",
                 "set_cookies", "downstream", "headers")

    def __init__(self, hash_fn=None, downstream=None, headers=None):
        """`hash_fn(ctx) -> int | None`: the route's hash policy for this request;
        `downstream`, `headers`: the connection and request headers (ORIGINAL_DST)."""
        self.downstream = downstream
        self.headers = headers
        self._hash_fn = hash_fn
        self._hash = None
        self._hashed = hash_fn is None
        self.tried = None               # a set of hosts, when previous_hosts applies
        self.selection_attempts = 0     # host_selection_retry_max_attempts
        self.set_cookies: list | None = None  # Set-Cookie values a cookie policy made

    def hash_key(self):
        if not self._hashed:
            self._hashed = True
            self._hash = self._hash_fn(self)
        return self._hash

    def should_select_another(self, host) -> bool:
        tried = self.tried
        return tried is not None and host in tried


class _Level:
    """One priority: its hosts, their localities, and what the last refresh derived."""

    __slots__ = ("hosts", "localities", "healthy", "per_locality", "health", "panic",
                 "locality_edf", "table")

    def __init__(self):
        self.hosts: list = []
        self.localities: list = []  # [(key, weight, [hosts])], in config order
        self.healthy: list = []
        self.per_locality: list = []
        self.health = 0
        self.panic = False
        self.locality_edf = None
        self.table = None


class ClusterLb:
    def __init__(self, config, placed: list, store=None, stats=None, publish: bool = False):
        """`placed`: [(host, priority, locality)] in the cluster's host order; `locality`
        is (region, zone, sub_zone, locality weight or None). `stats`: the cluster's
        ClusterStats (lb_healthy_panic); `publish`: this process sets the table gauges
        (ring_hash_lb.*, maglev_lb.*: one worker does, they are summed over processes)."""
        self.policy = config.lb_policy
        self._store = store
        self._stats = stats
        self._publish = publish
        self._name = config.name
        common = config.common_lb_config
        self.panic_threshold = (round(common.healthy_panic_threshold.value)
                                if common.HasField("healthy_panic_threshold")
                                else DEFAULT_PANIC_THRESHOLD)
        self.locality_weighted = common.HasField("locality_weighted_lb_config")
        policy = config.load_assignment.policy
        self.overprovisioning = (policy.overprovisioning_factor.value
                                 if policy.HasField("overprovisioning_factor")
                                 else DEFAULT_OVERPROVISIONING)
        self.hashing = self.policy in (RING_HASH, MAGLEV)
        lr = config.least_request_lb_config
        self.choice_count = lr.choice_count.value if lr.HasField("choice_count") else 2
        self.bias = (lr.active_request_bias.default_value
                     if lr.HasField("active_request_bias") else 1.0)
        rh = config.ring_hash_lb_config
        self.ring_min = (rh.minimum_ring_size.value if rh.HasField("minimum_ring_size")
                         else hash_lb.DEFAULT_MIN_RING_SIZE)
        self.ring_max = (rh.maximum_ring_size.value if rh.HasField("maximum_ring_size")
                         else hash_lb.DEFAULT_MAX_RING_SIZE)
        self.ring_murmur = rh.hash_function == _C.RingHashLbConfig.MURMUR_HASH_2
        mc = config.maglev_lb_config
        self.maglev_size = (mc.table_size.value if mc.HasField("table_size")
                            else hash_lb.DEFAULT_MAGLEV_TABLE_SIZE)
        ch = common.consistent_hashing_lb_config
        self.use_hostname = ch.use_hostname_for_hashing
        self._gauges = None
        if publish and store is not None and self.hashing:
            prefix = "cluster.%s.%s." % (self._name, "ring_hash_lb" if self.policy == RING_HASH
                                         else "maglev_lb")
            names = (("size", "min_hashes_per_host", "max_hashes_per_host")
                     if self.policy == RING_HASH else ("min_entries_per_host",
                                                       "max_entries_per_host"))
            self._gauges = [store.gauge(prefix + n) for n in names]
        self.update(placed)

    # -- membership and health -------------------------------------------------------

    def update(self, placed: list) -> None:
        levels: dict = {}
        for host, priority, locality in placed:
            lv = levels.get(priority)
            if lv is None:
                lv = levels[priority] = _Level()
            lv.hosts.append(host)
            key = locality[:3] if locality is not None else None
            for entry in lv.localities:
                if entry[0] == key:
                    entry[2].append(host)
                    break
            else:
                weight = locality[3] if locality is not None else None
                lv.localities.append((key, weight, [host]))
        # priorities have no gaps in Envoy (validated); an empty level keeps its place
        self.levels = [levels.get(p) or _Level() for p in range(max(levels) + 1)] \
            if levels else []
        self.hosts = [h for lv in self.levels for h in lv.hosts]
        self._health = None
        self._pickers: dict = {}
        self._fast = None
        self._epoch = -1
        self._recheck_at = 0.0
        # the master bumps it on every health flag change (proxyd.upstream.health); it
        # makes it at start-up, before any worker builds a balancer
        self._shared_epoch = (health.epoch_word(self._store) if self._store is not None
                              else None)
        if self.hashing and self.hosts:
            # build the tables now, not on a request, and publish their gauges at once
            # as Envoy does
            self._epoch = self._current_epoch()
            self._recheck_at = _monotonic() + HEALTH_RECHECK_S
            self._refresh(tuple(map(usable, self.hosts)))
            for lv in self.levels:
                if lv.table is None and lv.hosts:
                    self._build_table(lv)

    def _refresh(self, health: tuple) -> None:
        """Envoy's recalculatePerPriorityState and recalculatePerPriorityPanic."""
        self._health = health
        self._pickers = {}
        self._fast = None
        factor = self.overprovisioning
        threshold = self.panic_threshold
        levels = self.levels
        for lv in levels:
            lv.healthy = [h for h in lv.hosts if usable(h)]
            n = len(lv.hosts)
            lv.health = min(100, factor * len(lv.healthy) // n) if n else 0
            lv.table = None
            lv.locality_edf = None
            if self.locality_weighted and not self.hashing:
                lv.per_locality = [[h for h in hs if usable(h)] for _k, _w, hs in lv.localities]
                weights = []
                for (_k, w, hs), ok in zip(lv.localities, lv.per_locality):
                    avail = min(1.0, factor / 100.0 * len(ok) / len(hs)) if hs else 0.0
                    weights.append((w or 0) * avail)
                lv.locality_edf = _Edf(list(range(len(weights))), weights)
        loads = [0] * len(levels)
        total = min(100, sum(lv.health for lv in levels))
        if total:
            remaining = 100
            first = -1
            for i, lv in enumerate(levels):
                if first < 0 and lv.health > 0:
                    first = i
                loads[i] = min(remaining, lv.health * 100 // total)
                remaining -= loads[i]
            if remaining and first >= 0:
                loads[first] += remaining
        for lv in levels:
            lv.panic = False
        if threshold == 0 and total == 0:
            if loads:
                loads[0] = 100
        else:
            for lv in levels:
                n = len(lv.hosts)
                healthy_pct = 100.0 * len(lv.healthy) / n if n else 0.0
                lv.panic = total != 100 and healthy_pct < threshold
            if levels and all(lv.panic for lv in levels):
                count = len(self.hosts)
                if count == 0:
                    loads = [0] * len(levels)
                    loads[0] = 100
                else:
                    remaining, first = 100, -1
                    for i, lv in enumerate(levels):
                        if first < 0 and lv.hosts:
                            first = i
                        loads[i] = 100 * len(lv.hosts) // count
                        remaining -= loads[i]
                    loads[first] += remaining
        self._cum_loads = []
        acc = 0
        for load in loads:
            acc += load
            self._cum_loads.append(acc)
        if self._gauges is not None and levels:
            self._publish_table(levels[0])
        # the common case, one level neither in panic nor split by locality: its picker
        if (len(levels) == 1 and not self.hashing and not levels[0].panic
                and levels[0].locality_edf is None and levels[0].healthy):
            self._fast = self._picker(levels[0].healthy)

    def _level(self, h: int):
        """Envoy's choosePriority: `h % 100 + 1` against the cumulative loads."""
        h = h % 100 + 1
        for i, acc in enumerate(self._cum_loads):
            if h <= acc:
                return self.levels[i]
        return self.levels[0]

    # -- picking ------------------------------------------------------------------------

    def _current_epoch(self) -> int:
        """This process's health_changed() count plus the family's shared epoch."""
        e = self._shared_epoch
        return _health_epoch[0] + (e.get() if e is not None else 0)

    def choose(self, ctx: LbContext | None = None):
        hosts = self.hosts
        if not hosts:
            # Envoy's empty priority 0 is in panic (0 % healthy) unless panic is off
            if self.panic_threshold:
                self._panic()
            return None
        now = _monotonic()
        epoch = self._current_epoch()
        if now >= self._recheck_at or self._epoch != epoch:
            self._recheck_at = now + HEALTH_RECHECK_S
            self._epoch = epoch
            health = tuple(map(usable, hosts))
            if health != self._health:
                self._refresh(health)
        fast = self._fast
        if fast is not None and (ctx is None or ctx.tried is None):
            return fast.pick()
        attempts = ctx.selection_attempts + 1 if ctx is not None else 1
        if self.hashing:
            h = ctx.hash_key() if ctx is not None else None
            if h is None:
                h = _getrandbits(64)
            lv = self._level(h)
            if lv.panic:
                self._panic()
            table = lv.table if lv.table is not None else self._build_table(lv)
            host = None
            for i in range(attempts):
                host = table.choose(h, i)
                if host is None or ctx is None or not ctx.should_select_another(host):
                    return host
            return host
        host = None
        for _ in range(attempts):
            host = self._choose_once()
            if host is None or ctx is None or not ctx.should_select_another(host):
                return host
        return host

    def _choose_once(self):
        lv = self._level(_getrandbits(64)) if len(self.levels) > 1 else self.levels[0]
        if lv.panic:
            self._panic()
            source = lv.hosts
            key = (id(lv), -1)
        else:
            source = lv.healthy
            key = (id(lv), -2)
            if lv.locality_edf is not None:
                i = lv.locality_edf.pick()
                if i is not None:
                    source = lv.per_locality[i]
                    key = (id(lv), i)
        if not source:
            return None
        picker = self._pickers.get(key)
        if picker is None:
            picker = self._pickers[key] = self._picker(source)
        return picker.pick()

    def _panic(self) -> None:
        if self._stats is not None:
            self._stats.lb_healthy_panic.inc()

    def _picker(self, hosts):
        if self.policy == LEAST_REQUEST:
            return _LeastRequest(hosts, self.choice_count, self.bias, self._store)
        if self.policy == RANDOM:
            return _Random(hosts)
        return _RoundRobin(hosts)

    def _table_weights(self, lv) -> list:
        """Envoy's ThreadAwareLoadBalancerBase normalizeWeights: healthy hosts (all in
        panic), scaled by their locality's share when localities are weighted."""
        panic = lv.panic
        if not self.locality_weighted or not any(w for _k, w, _hs in lv.localities):
            return hash_lb.normalized(lv.hosts if panic else lv.healthy)
        total = sum(w or 0 for _k, w, _hs in lv.localities)
        out = []
        for _k, w, hs in lv.localities:
            if w:
                out.extend(hash_lb.normalized(hs if panic else [h for h in hs if usable(h)],
                                              w / total))
        return out

    def _build_table(self, lv):
        weights = self._table_weights(lv)
        if self.policy == RING_HASH:
            lv.table = hash_lb.RingHash(weights, self.ring_min, self.ring_max,
                                        self.ring_murmur, self.use_hostname)
        else:
            lv.table = hash_lb.Maglev(weights, self.maglev_size, self.use_hostname)
        return lv.table

    def _publish_table(self, lv) -> None:
        table = lv.table if lv.table is not None else self._build_table(lv)
        if self.policy == RING_HASH:
            values = (table.size, table.min_hashes, table.max_hashes)
        else:
            values = (table.min_entries, table.max_entries)
        for g, v in zip(self._gauges, values):
            g.set(v)


class _Edf:
    """Envoy's EdfScheduler: each entry's next deadline is `now + 1/weight`; the
    earliest goes next (ties in insertion order). `weight_fn(entry)`, when given, is
    asked again each time an entry is put back (least request's live weights)."""

    __slots__ = ("_heap", "_seq", "_steps", "_weight_fn")

    def __init__(self, entries: list, weights: list, weight_fn=None):
        self._seq = 0
        self._weight_fn = weight_fn
        self._steps = {}
        heap = []
        for e, w in zip(entries, weights):
            if w > 0:
                self._steps[e] = 1.0 / w
                heap.append((1.0 / w, self._seq, e))
                self._seq += 1
        heapq.heapify(heap)
        self._heap = heap

    def pick(self):
        heap = self._heap
        if not heap:
            return None
        deadline, _seq, e = heap[0]
        fn = self._weight_fn
        if fn is None:
            step = self._steps[e]
        else:
            w = fn(e)
            step = 1.0 / w if w > 0 else 1e12
        self._seq += 1
        heapq.heapreplace(heap, (deadline + step, self._seq, e))
        return e


class _RoundRobin:
    """Equal weights: a rotation from a random start (Envoy seeds its index at random);
    unequal: the EDF schedule over the host weights."""

    __slots__ = ("_hosts", "_i", "_edf")

    def __init__(self, hosts: list):
        self._hosts = hosts
        self._i = random.randrange(len(hosts))
        weights = [h.weight for h in hosts]
        self._edf = _Edf(hosts, weights) if len(set(weights)) > 1 else None
        if self._edf is not None:
            for _ in range(self._i):  # Envoy's createWithPicks: a random number of picks
                self._edf.pick()

    def pick(self):
        if self._edf is not None:
            return self._edf.pick()
        self._i += 1
        hosts = self._hosts
        return hosts[self._i % len(hosts)]


class _Random:
    __slots__ = ("_hosts",)

    def __init__(self, hosts: list):
        self._hosts = hosts

    def pick(self):
        hosts = self._hosts
        return hosts[_getrandbits(64) % len(hosts)]


def active_requests(store, host):
    """`f() -> int`: the host's active requests as LEAST_REQUEST compares them (see
    LEAST_REQUEST_COUNTS)."""
    gauge = host.rq_active
    if LEAST_REQUEST_COUNTS == "summed" and store is not None:
        view = store.total_view(gauge)
        return lambda: sum(view)
    return lambda: gauge._v[gauge._i]  # this worker's own share


class _LeastRequest:
    """Envoy's LeastRequestLoadBalancer: with equal weights, the least loaded of
    `choice_count` random picks (with replacement); with unequal ones, EDF over
    `weight / (active + 1) ^ bias`, each host's weight taken anew when it is put back."""

    __slots__ = ("_hosts", "_n", "_active", "_edf")

    def __init__(self, hosts: list, choice_count: int, bias: float, store):
        self._hosts = hosts
        self._n = choice_count
        self._active = {h: active_requests(store, h) for h in hosts}
        weights = [h.weight for h in hosts]
        self._edf = None
        if len(set(weights)) > 1:
            active = self._active

            def weight(h):
                if bias == 0.0:
                    return float(h.weight)
                a = active[h]() + 1
                return h.weight / (a if bias == 1.0 else a ** bias)
            self._edf = _Edf(hosts, [weight(h) for h in hosts], weight)

    def pick(self):
        if self._edf is not None:
            return self._edf.pick()
        hosts = self._hosts
        n = len(hosts)
        active = self._active
        best = hosts[_getrandbits(64) % n]
        best_rq = active[best]()
        for _ in range(self._n - 1):
            h = hosts[_getrandbits(64) % n]
            rq = active[h]()
            if rq < best_rq:
                best, best_rq = h, rq
        return best
