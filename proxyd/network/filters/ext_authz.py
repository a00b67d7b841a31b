"""envoy.filters.network.ext_authz: a connection's first bytes wait for an
`envoy.service.auth.v3.Authorization/Check` (source and destination peers only) over the
internal gRPC client; OK lets them go on, a denial closes the connection, an error closes
it unless `failure_mode_allow`. As Envoy, the check starts at the first data (so a
tcp_proxy after it has already connected upstream). Stats
`ext_authz.<stat_prefix>.{total,ok,denied,error,failure_mode_allowed,cx_closed}` and the
gauge `active` (calls in flight).
"""
from __future__ import annotations

from proxyd.network.filter import FilterStatus
from proxyd.network.side_call import WAITING, SideCallFilter

CHECK_METHOD = "/envoy.service.auth.v3.Authorization/Check"
DEFAULT_TIMEOUT = 0.2
COUNTERS = ("total", "ok", "denied", "error", "failure_mode_allowed", "cx_closed", "disabled")


def _peer(address: str, msg) -> None:
    host, _, port = (address or "").rpartition(":")
    sa = msg.address.socket_address
    sa.address = host.strip("[]")
    if port.isdigit():
        sa.port_value = int(port)


class NetworkExtAuthzFilter(SideCallFilter):
    def __init__(self, cfg):
        self.cfg = cfg

    def on_new_connection(self) -> FilterStatus:
        return FilterStatus.CONTINUE

    def on_data(self, data: bytes, end_stream: bool) -> FilterStatus:
        if self.state == WAITING:
            self.cfg.total.inc()
            self.cfg.active.inc()
            return self.start()
        return super().on_data(data, end_stream)

    def decide(self) -> bool:
        from envoy.service.auth.v3.external_auth_pb2 import CheckRequest, CheckResponse
        from proxyd.upstream.grpc_client import GrpcError
        cfg = self.cfg
        conn = self.callbacks.connection
        req = CheckRequest()
        _peer(conn.remote_address, req.attributes.source)
        _peer(conn.local_address, req.attributes.destination)
        try:
            try:
                resp = cfg.client.unary(CHECK_METHOD, req, CheckResponse)
            except GrpcError:
                return self.on_error()
        finally:
            cfg.active.dec()
        if resp.status.code == 0:
            cfg.ok.inc()
            return True
        cfg.denied.inc()
        cfg.cx_closed.inc()
        return False

    def on_error(self) -> bool:
        cfg = self.cfg
        cfg.error.inc()
        if cfg.failure_mode_allow:
            cfg.failure_mode_allowed.inc()
            return True
        cfg.cx_closed.inc()
        return False


class NetworkExtAuthz:
    def __init__(self, msg, ctx):
        gs = msg.grpc_service
        if gs.WhichOneof("target_specifier") != "envoy_grpc":
            raise ValueError("grpc_service: only envoy_grpc is supported by proxyd")
        from proxyd.upstream.grpc_client import GrpcClient
        self.client = GrpcClient.from_config(gs, ctx.cluster_manager, DEFAULT_TIMEOUT)
        self.failure_mode_allow = msg.failure_mode_allow
        prefix = "ext_authz.%s." % msg.stat_prefix
        for n in COUNTERS:
            setattr(self, n, ctx.stats.counter(prefix + n))
        self.active = ctx.stats.gauge(prefix + "active")

    def __call__(self, filter_manager) -> None:
        filter_manager.add_read_filter(NetworkExtAuthzFilter(self))


def create(msg, ctx) -> NetworkExtAuthz:
    return NetworkExtAuthz(msg, ctx)
