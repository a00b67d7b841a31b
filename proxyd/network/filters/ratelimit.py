"""envoy.filters.network.ratelimit: each new connection asks the rate-limit service
(`ShouldRateLimit`, the config's static `descriptors`) over the internal gRPC client
before any of its bytes go on. OVER_LIMIT closes it (runtime `ratelimit.tcp_filter_enforcing`,
default 100 %); an error closes it with `failure_mode_deny`, else lets it through. Runtime
`ratelimit.tcp_filter_enabled` (default 100 %) turns it off. Stats
`ratelimit.<stat_prefix>.{total,ok,over_limit,error,failure_mode_allowed,cx_closed}` and
the gauge `active`, as Envoy's.
"""
from __future__ import annotations

from proxyd.http.filters.ratelimit import ERROR, OVER_LIMIT, should_rate_limit
from proxyd.network.filter import FilterStatus
from proxyd.network.side_call import PASSING, SideCallFilter

DEFAULT_TIMEOUT = 0.02
COUNTERS = ("total", "ok", "over_limit", "error", "failure_mode_allowed", "cx_closed")


class NetworkRateLimitFilter(SideCallFilter):
    def __init__(self, cfg):
        self.cfg = cfg

    def on_new_connection(self) -> FilterStatus:
        if not self.cfg.runtime.feature_enabled("ratelimit.tcp_filter_enabled", 100):
            self.state = PASSING
            return FilterStatus.CONTINUE
        self.cfg.total.inc()
        self.cfg.active.inc()
        return self.start()

    def decide(self) -> bool:
        cfg = self.cfg
        try:
            dec = should_rate_limit(cfg.client, cfg.domain, cfg.descriptors)
        finally:
            cfg.active.dec()
        if dec.code == ERROR:
            cfg.error.inc()
            if cfg.failure_mode_deny:
                cfg.cx_closed.inc()
                return False
            cfg.failure_mode_allowed.inc()
            return True
        if dec.code == OVER_LIMIT:
            cfg.over_limit.inc()
            if cfg.runtime.feature_enabled("ratelimit.tcp_filter_enforcing", 100):
                cfg.cx_closed.inc()
                return False
            return True
        cfg.ok.inc()
        return True

    def on_error(self) -> bool:
        self.cfg.error.inc()
        return not self.cfg.failure_mode_deny


class NetworkRateLimit:
    def __init__(self, msg, ctx):
        if not msg.domain or not msg.descriptors:
            raise ValueError("domain and descriptors are required")
        gs = msg.rate_limit_service.grpc_service
        if gs.WhichOneof("target_specifier") != "envoy_grpc":
            raise ValueError("rate_limit_service.grpc_service: only envoy_grpc is supported "
                             "by proxyd")
        from proxyd.upstream.grpc_client import GrpcClient
        timeout = (msg.timeout.seconds + msg.timeout.nanos / 1e9 if msg.HasField("timeout")
                   else DEFAULT_TIMEOUT)
        self.client = GrpcClient.from_config(gs, ctx.cluster_manager, timeout)
        self.client.timeout = timeout
        self.domain = msg.domain
        self.descriptors = [[(e.key, e.value) for e in d.entries] for d in msg.descriptors]
        self.failure_mode_deny = msg.failure_mode_deny
        self.ctx = ctx
        prefix = "ratelimit.%s." % msg.stat_prefix
        for n in COUNTERS:
            setattr(self, n, ctx.stats.counter(prefix + n))
        self.active = ctx.stats.gauge(prefix + "active")

    @property
    def runtime(self):
        return self.ctx.runtime

    def __call__(self, filter_manager) -> None:
        filter_manager.add_read_filter(NetworkRateLimitFilter(self))


def create(msg, ctx) -> NetworkRateLimit:
    return NetworkRateLimit(msg, ctx)
