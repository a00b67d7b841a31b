"""envoy.filters.network.rbac: the HTTP RBAC engine (`proxyd.http.filters.rbac`) applied
to a connection, once, on its first bytes (Envoy's ONE_TIME_ON_FIRST_BYTE): a denied
connection is closed before any later filter sees data. Principals and permissions read
the peer and local addresses; header and url_path rules see no request, so they match as
on a request without that header or path. Stats at the root scope, as Envoy 1.40 emits
them: `<stat_prefix>.rbac.{allowed,denied,shadow_allowed,shadow_denied}`.
"""
from __future__ import annotations

from proxyd.http.filters.rbac import Engine, _ip, _split
from proxyd.http.headers import Headers
from proxyd.network.filter import FilterStatus


class _NoHead:
    """A connection has no request head: no headers, no pseudo-headers."""
    headers = Headers()
    method = path = authority = scheme = None


class _Connection:
    __slots__ = ("head", "remote_ip", "direct_ip", "local_ip", "local_port", "path")

    def __init__(self, conn):
        self.head = _NoHead
        self.remote_ip = _ip(_split(conn.remote_address or "")[0])
        direct = getattr(getattr(conn, "downstream", conn), "direct_remote_address", None)
        self.direct_ip = self.remote_ip if direct in (None, conn.remote_address) \
            else _ip(_split(direct)[0])
        local, self.local_port = _split(conn.local_address or "")
        self.local_ip = _ip(local)
        self.path = ""


class RbacFilter:
    __slots__ = ("config", "callbacks", "decided")

    def __init__(self, config: "NetworkRbac"):
        self.config = config
        self.decided = False

    def initialize_read_filter_callbacks(self, callbacks) -> None:
        self.callbacks = callbacks

    def on_new_connection(self) -> FilterStatus:
        return FilterStatus.CONTINUE

    def on_data(self, data: bytes, end_stream: bool) -> FilterStatus:
        if self.decided:
            return FilterStatus.CONTINUE
        self.decided = True
        cfg = self.config
        conn = _Connection(self.callbacks.connection)
        if cfg.shadow is not None:
            (cfg.shadow_allowed if cfg.shadow.evaluate(conn)[0] else cfg.shadow_denied).inc()
        if cfg.rules is None or cfg.rules.evaluate(conn)[0]:
            if cfg.rules is not None:
                cfg.allowed.inc()
            return FilterStatus.CONTINUE
        cfg.denied.inc()
        self.callbacks.connection.close()
        return FilterStatus.STOP_ITERATION


class NetworkRbac:
    """The compiled config and the per-connection factory."""

    def __init__(self, msg, ctx):
        self.rules = Engine(msg.rules, "rules") if msg.HasField("rules") else None
        self.shadow = Engine(msg.shadow_rules, "shadow_rules") \
            if msg.HasField("shadow_rules") else None
        prefix = "%s.rbac." % msg.stat_prefix
        for name in ("allowed", "denied", "shadow_allowed", "shadow_denied"):
            setattr(self, name, ctx.stats.counter(prefix + name))

    def __call__(self, filter_manager) -> None:
        filter_manager.add_read_filter(RbacFilter(self))


def create(msg, ctx) -> NetworkRbac:
    return NetworkRbac(msg, ctx)
