"""Circuit breakers: Envoy's per-cluster, per-priority resource limits, shared by workers.

Envoy applies them to every cluster, configured or not (1024 connections, 1024 pending
requests, 1024 requests, 3 retries, unlimited connection pools), and shares the counts
across its worker threads; proxyd shares them across worker processes through the stats
file: each worker keeps its share of a count in its own slot and a check sums every
slot's share. Like Envoy's, the check and the increment are not one atomic step, so
concurrent workers may overshoot a limit by a little.

The `circuit_breakers.<priority>.*_open` and `remaining_*` gauges are derived from those
sums when stats are read (proxyd.stats.limits).
"""
from __future__ import annotations

from proxyd.stats.limits import FLAGS, INTERNAL

PRIORITIES = ("default", "high")
# Thresholds field -> (resource, Envoy's default; -1 is unlimited)
_FIELDS = (("max_connections", "cx", 1024), ("max_pending_requests", "pending", 1024),
           ("max_requests", "rq", 1024), ("max_retries", "retries", 3),
           ("max_connection_pools", "cx_pools", -1))


class Overflow(Exception):
    """A circuit breaker refused: the request is answered 503 with flag UO."""


class Resource:
    """One limited resource: this worker's share of the count and the shared total.
    `rows`: 2 keeps the count and publishes the limit, 1 only publishes the limit (for
    the derived remaining_* gauge), 0 neither (a priority no request can use)."""

    __slots__ = ("max", "_share", "_total", "_max_share")

    def __init__(self, store, name: str, limit: int, rows: int = 2):
        self.max = limit
        self._share = store.gauge(name) if rows == 2 else None
        self._total = store.total_view(self._share) if rows == 2 else ()
        self._max_share = store.gauge(name + "_max") if rows else None
        if self._max_share is not None:
            self._max_share.set(limit)

    def can_create(self) -> bool:
        return self.max < 0 or sum(self._total) < self.max

    def inc(self) -> None:
        self._share.inc()

    def dec(self) -> None:
        self._share.dec()

    def withdraw(self) -> None:
        """This worker no longer enforces the limit (cluster removed or rebuilt); its
        share of the count stays until the resources in use are released."""
        if self._max_share is not None:
            self._max_share.set(0)


class ResourceManager:
    """The resources of one cluster priority (Envoy's ResourceManagerImpl). `counted`:
    requests may use this priority (routes cannot ask for HIGH yet), so its counts are
    kept; otherwise it only shows its gauges, at zero use."""

    __slots__ = ("connections", "pending_requests", "requests", "retries",
                 "connection_pools", "_procs")

    def __init__(self, store, cluster: str, priority: str, thresholds=None, counted: bool = True):
        prefix = "cluster.%s.circuit_breakers.%s." % (cluster, priority)
        internal = INTERNAL + prefix
        track = thresholds is not None and thresholds.track_remaining
        rows = 2 if counted else 1 if track else 0
        for field, resource, default in _FIELDS:
            limit = default
            if thresholds is not None and thresholds.HasField(field):
                limit = getattr(thresholds, field).value
            setattr(self, _ATTR[resource], Resource(store, internal + resource, limit, rows))
            store.gauge(prefix + FLAGS[resource])
            if track:
                store.gauge(prefix + "remaining_" + resource)
        self._procs = store.gauge(internal + "procs") if rows else None
        if self._procs is not None:
            self._procs.set(1)

    def close(self) -> None:
        if self._procs is not None:
            self._procs.set(0)
        for _, resource, _ in _FIELDS:
            getattr(self, _ATTR[resource]).withdraw()


_ATTR = {"cx": "connections", "pending": "pending_requests", "rq": "requests",
         "retries": "retries", "cx_pools": "connection_pools"}


def resource_managers(config, store) -> dict:
    """{priority name: ResourceManager} for an envoy.config.cluster.v3.Cluster: the first
    `thresholds` entry of each priority wins, as in Envoy; the rest get the defaults."""
    given = {}
    for t in config.circuit_breakers.thresholds:
        given.setdefault(PRIORITIES[t.priority], t)
    return {p: ResourceManager(store, config.name, p, given.get(p), counted=p == "default")
            for p in PRIORITIES}
