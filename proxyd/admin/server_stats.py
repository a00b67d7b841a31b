"""The master's ``server.*`` gauges, set in the master's own slot.

Only the master writes them, so a hot-restarted master's values replace the old master's
once the old master's slot is retired.
"""

import time

import psutil

from ..stats.prometheus import process_figures, warm

# Envoy's admin.v3.ServerInfo.State numbers, which server.state reports.
STATE_CODES = {"LIVE": 0, "DRAINING": 1, "PRE_INITIALIZING": 2, "INITIALIZING": 3}


def refresh_server_stats(ctx) -> None:
    """Set server.{live,state,uptime,concurrency,memory_allocated,total_connections,
    hot_restart_epoch,hot_restart_generation} and listener_manager.workers_started. The master calls it every second; the admin
    server also calls it before each /stats or /metrics response."""
    stats, options = ctx.stats, ctx.options
    gauge = stats.gauge
    gauge("server.live").set(1 if ctx.state == "LIVE" else 0)
    gauge("server.state").set(STATE_CODES.get(ctx.state, STATE_CODES["PRE_INITIALIZING"]))
    gauge("server.uptime").set(int(time.time() - ctx.first_start_time))
    gauge("server.concurrency").set(int(getattr(options, "concurrency", 0) or 0))
    gauge("server.memory_allocated").set(_memory(ctx))
    gauge("server.total_connections").set(int(ctx.active_connections()))
    gauge("server.hot_restart_epoch").set(int(getattr(options, "restart_epoch", 0) or 0))
    gauge("server.hot_restart_generation").set(stats.master_generation)
    gauge("listener_manager.workers_started").set(
        0 if ctx.state in ("PRE_INITIALIZING", "INITIALIZING") else 1)
    warm(stats)


def _memory(ctx) -> int:
    """Resident bytes of the master and every worker (Python has no tcmalloc counter)."""
    try:
        return sum(figure[3] for figure in process_figures(ctx.processes()))
    except psutil.Error:
        return 0
