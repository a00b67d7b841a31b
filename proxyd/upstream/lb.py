"""Load balancers: pick a host from a cluster's healthy hosts."""
from __future__ import annotations

import bisect
import itertools
import math
import random

from envoy.config.cluster.v3 import cluster_pb2


class RoundRobin:
    """Weighted round robin; equal weights cycle, unequal weights interleave by a
    repeated schedule (hosts appear weight/gcd times, spread out), as Envoy's does."""

    __slots__ = ("_schedule", "_i")

    def __init__(self, hosts: list):
        self._i = random.randrange(len(hosts)) if hosts else 0
        weights = [h.weight for h in hosts]
        if hosts and len(set(weights)) > 1:
            g = 0
            for w in weights:
                g = math.gcd(g, w)
            counts = [w // g for w in weights]
            total = sum(counts)
            # smooth weighted round robin, precomputed once per membership change
            current = [0] * len(hosts)
            schedule = []
            for _ in range(min(total, 4096)):
                for j, c in enumerate(counts):
                    current[j] += c
                best = max(range(len(hosts)), key=current.__getitem__)
                current[best] -= total
                schedule.append(hosts[best])
            self._schedule = schedule
        else:
            self._schedule = list(hosts)

    def choose(self):
        schedule = self._schedule
        n = len(schedule)
        if not n:
            return None
        for _ in range(n):
            self._i += 1
            h = schedule[self._i % n]
            if h.healthy:
                return h
        # Panic mode (Envoy's healthy_panic_threshold): no healthy host, use any.
        return schedule[self._i % n]


class RandomWeighted:
    """What Envoy's hash balancers (RING_HASH, MAGLEV) do for a request without a hash
    key, which is every HTTP and TCP request here (no route hash_policy yet): a random
    host, in proportion to its weight (its share of the ring or table)."""

    __slots__ = ("_hosts", "_cum", "_total")

    def __init__(self, hosts: list):
        self._hosts = list(hosts)
        self._cum = list(itertools.accumulate(h.weight for h in hosts))
        self._total = self._cum[-1] if hosts else 0

    def choose(self):
        hosts = self._hosts
        if not hosts:
            return None
        healthy = [h for h in hosts if h.healthy]
        if len(healthy) == len(hosts):
            return hosts[bisect.bisect_right(self._cum, random.randrange(self._total))]
        # Panic mode as in RoundRobin: no healthy host, use any.
        pool = healthy or hosts
        return random.choices(pool, weights=[h.weight for h in pool])[0]


def for_policy(lb_policy: int):
    """The balancer class for a cluster's lb_policy (the ones supported.py allows)."""
    return RandomWeighted if lb_policy in _HASH_POLICIES else RoundRobin


_HASH_POLICIES = {cluster_pb2.Cluster.RING_HASH, cluster_pb2.Cluster.MAGLEV}
