"""Load balancers: pick a host from a cluster's healthy hosts."""
from __future__ import annotations

import math
import random


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
