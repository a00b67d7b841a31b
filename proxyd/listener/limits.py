"""Envoy's downstream connection limits, checked by every worker on accept.

- Global: the overload manager's `envoy.resource_monitors.global_downstream_max_connections`
  (DownstreamConnectionsConfig.max_active_downstream_connections), or the deprecated
  runtime key `overload.global_downstream_max_connections` when no such monitor is set.
  It covers every listener but those with `ignore_global_conn_limit`; a rejected
  connection counts `listener.<address>.downstream_global_cx_overflow`.
- Per listener: runtime `envoy.resource_limits.listener.<listener name>.connection_limit`;
  a rejected connection counts `listener.<address>.downstream_cx_overflow`.

Counts are totals over every worker (summed from the shared stats slots when a limit is
set), so, as in Envoy with its worker threads, workers racing for the last places can
overshoot a limit by up to the number of workers. Rejected connections are accepted and
closed at once; they never reach a filter chain.
"""
from __future__ import annotations

from proxyd.proto import unpack

GLOBAL_MONITOR_TYPE = ("type.googleapis.com/envoy.extensions.resource_monitors."
                       "downstream_connections.v3.DownstreamConnectionsConfig")
GLOBAL_RUNTIME_KEY = "overload.global_downstream_max_connections"
GLOBAL_ACTIVE_STAT = "_overload.global_downstream_cx_active"


def listener_limit_key(name: str) -> str:
    return "envoy.resource_limits.listener.%s.connection_limit" % name


def create(config, ctx) -> int:
    """The registry's factory for the resource monitor: its connection ceiling."""
    return config.max_active_downstream_connections


def global_limit(bootstrap, runtime) -> int | None:
    """The global ceiling in force for `bootstrap` and the runtime, None if unlimited."""
    if bootstrap is not None:
        for monitor in bootstrap.overload_manager.resource_monitors:
            if monitor.typed_config.type_url == GLOBAL_MONITOR_TYPE:
                return create(unpack(monitor.typed_config), None)
    limit = runtime.get_int(GLOBAL_RUNTIME_KEY, -1)
    return None if limit < 0 else limit


class ListenerLimits:
    """One listener's checks and counters (the listener's own active gauge is passed in)."""

    def __init__(self, ctx, config, prefix: str, cx_active):
        stats = ctx.stats
        self.ctx = ctx
        self.cx_active = cx_active
        self.cx_overflow = stats.counter(prefix + "downstream_cx_overflow")
        self.global_cx_overflow = stats.counter(prefix + "downstream_global_cx_overflow")
        self.global_active = stats.gauge(GLOBAL_ACTIVE_STAT)
        self.update(config)

    def update(self, config) -> None:
        self.key = listener_limit_key(config.name)
        self.ignore_global = config.ignore_global_conn_limit

    def admit(self) -> bool:
        """True if one more connection fits; counts the rejection otherwise. An admitted
        connection must be `release`d when it closes."""
        ctx = self.ctx
        if not self.ignore_global:
            limit = ctx.global_cx_limit
            if limit is not None and self.global_active.value() >= limit:
                self.global_cx_overflow.inc()
                return False
        limit = ctx.runtime.get_int(self.key, -1)
        if limit >= 0 and self.cx_active.value() >= limit:
            self.cx_overflow.inc()
            return False
        if not self.ignore_global:
            self.global_active.inc()
        return True

    def release(self, counted_global: bool) -> None:
        if counted_global:
            self.global_active.dec()
