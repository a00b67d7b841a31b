"""An upstream endpoint and its per-host stats (what /clusters shows per host)."""
from __future__ import annotations


class Host:
    __slots__ = ("address", "addr_str", "hostname", "weight", "healthy", "pool", "h2pool",
                 "cx_total", "cx_active", "cx_connect_fail", "rq_total", "rq_timeout",
                 "rq_success", "rq_error", "rq_active")

    def __init__(self, ip: str, port: int, weight: int, hostname: str, store, cluster: str):
        self.address = (ip, port)
        self.addr_str = "[%s]:%d" % (ip, port) if ":" in ip else "%s:%d" % (ip, port)
        self.hostname = hostname
        self.weight = weight
        self.healthy = True
        self.pool = None
        self.h2pool = None  # HTTP/2 pool when the cluster's protocol options ask for it
        prefix = "_host.%s.%s." % (cluster, self.addr_str)
        for name in ("cx_total", "cx_connect_fail", "rq_total", "rq_timeout", "rq_success",
                     "rq_error"):
            setattr(self, name, store.counter(prefix + name))
        self.cx_active = store.gauge(prefix + "cx_active")
        self.rq_active = store.gauge(prefix + "rq_active")

    @property
    def key(self) -> tuple:
        return (self.address, self.weight, self.hostname)
