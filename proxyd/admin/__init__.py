"""The admin API served by the master: stats, Prometheus, readiness, dumps and controls."""

from .context import AdminContext
from .server import AdminServer
from .server_stats import refresh_server_stats

__all__ = ["AdminContext", "AdminServer", "refresh_server_stats"]
