"""An upstream endpoint and its per-host stats (what /clusters shows per host).

Health: ``healthy`` / ``available()`` read the host's shared health word
(proxyd/upstream/health.py), written by the master's health checks, outlier detector
and EDS health status; a host without a word is healthy. Load balancers filter on it.
``outlier`` is the host's outlier-detection reporter (proxyd/upstream/outlier.py) when
its cluster configures outlier detection, else None; ``hc_fail`` counts responses carrying
x-envoy-immediate-health-check-fail when it configures active health checks.
"""
from __future__ import annotations

from proxyd.upstream.health import UNHEALTHY


class Host:
    __slots__ = ("address", "addr_str", "hostname", "weight", "health", "outlier", "hc_fail", "pool",
                 "h2pool", "cx_total", "cx_active", "cx_connect_fail", "rq_total", "rq_timeout",
                 "rq_success", "rq_error", "rq_active")

    def __init__(self, ip: str, port: int, weight: int, hostname: str, store, cluster: str):
        self.address = (ip, port)
        self.addr_str = "[%s]:%d" % (ip, port) if ":" in ip else "%s:%d" % (ip, port)
        self.hostname = hostname
        self.weight = weight
        self.health = None   # HealthWord, or None: always healthy
        self.outlier = None
        self.hc_fail = None  # counter of x-envoy-immediate-health-check-fail answers (with active HC)
        self.pool = None
        self.h2pool = None  # HTTP/2 pool when the cluster's protocol options ask for it
        prefix = "_host.%s.%s." % (cluster, self.addr_str)
        for name in ("cx_total", "cx_connect_fail", "rq_total", "rq_timeout", "rq_success",
                     "rq_error"):
            setattr(self, name, store.counter(prefix + name))
        self.cx_active = store.gauge(prefix + "cx_active")
        self.rq_active = store.gauge(prefix + "rq_active")

    @property
    def healthy(self) -> bool:
        """No failing health flag (active HC, outlier ejection, EDS status) is set."""
        h = self.health
        return h is None or not h.get() & UNHEALTHY

    def available(self) -> bool:
        return self.healthy

    def health_flags(self) -> int:
        """The raw flags word (proxyd.upstream.health constants); 0 when healthy."""
        h = self.health
        return 0 if h is None else h.get()

    @property
    def key(self) -> tuple:
        return (self.address, self.weight, self.hostname)
