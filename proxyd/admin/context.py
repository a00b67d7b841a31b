"""What the admin server needs from the master, and nothing more.

The admin server runs inside the master and reaches it only through this interface, so the
handlers can be tested against a small test double while the network stays real.
"""

import argparse
from typing import Protocol

from ..stats import StatsStore

STATES = ("PRE_INITIALIZING", "INITIALIZING", "LIVE", "DRAINING")


class AdminContext(Protocol):
    bootstrap: object
    """The envoy.config.bootstrap.v3.Bootstrap now running (for /config_dump, node, admin)."""

    stats: StatsStore
    """The family's shared stats store; the master's own slot is bound."""

    options: argparse.Namespace
    """Command line: config_path, concurrency, base_id, restart_epoch, drain_time_s,
    parent_shutdown_time_s, runtime_dir, log_level, log_format."""

    first_start_time: float
    """Unix time of the first start of this family (uptime_all_epochs, server.uptime)."""

    epoch_start_time: float
    """Unix time this master started (uptime_current_epoch)."""

    state: str
    """One of STATES; /ready is 200 only for 'LIVE'."""

    def processes(self) -> list[tuple[str, int]]:
        """[('master', pid), ('worker_0', pid), ...] for the per-process figures in /metrics."""

    def clusters_status(self) -> list[dict]:
        """Active clusters for /clusters:
        [{'name', 'added_via_api': bool, 'hosts': [{'address': 'ip:port', 'hostname': str,
        'health_flags': 'healthy' | '/failed_active_hc' ..., 'weight': int}]}].
        Optional per cluster: 'circuit_breakers': {'default': {...}, 'high': {...}} with
        max_connections, max_pending_requests, max_requests, max_retries (Envoy defaults otherwise)."""

    def listeners_status(self) -> list[tuple[str, str]]:
        """[(listener name, 'ip:port')] of the listeners now bound."""

    def set_healthcheck_failed(self, failed: bool) -> None:
        """POST /healthcheck/fail (True) and /healthcheck/ok (False)."""

    def drain_listeners(self, graceful: bool) -> None:
        """POST /drain_listeners[?graceful]: stop accepting (after the drain time if graceful)."""

    def quit(self) -> None:
        """POST /quitquitquit: clean shutdown, called after the response has been sent."""

    def set_log_level(self, level: str) -> bool:
        """POST /logging?level=: False if the level is unknown."""

    def reopen_logs(self) -> None:
        """POST /reopen_logs: every worker reopens its access log files (as SIGUSR1)."""

    def active_connections(self) -> int:
        """Downstream connections open across workers (server.total_connections)."""

    dynamic: object
    """master/dynamic.py DynamicConfig when xDS or watched files are in use, else None:
    `config_dump_sections(stamp_of)` feeds /config_dump."""

    def runtime_layers(self) -> list:
        """/runtime (optional): [(layer name, {key: proxyd.runtime.Entry})] in bootstrap order."""

    def runtime_modify(self, changes: dict) -> str | None:
        """POST /runtime_modify (optional): merge `changes` (key -> value, '' removes) into
        the admin layer and reload; an error text when there is no admin layer."""
