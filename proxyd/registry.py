"""One table of extensions, keyed by their typed_config type URL.

Every listener filter, network filter, HTTP filter, access logger and tracer registers
its factory here under the Envoy type URL it implements; the config layer and the
worker look factories up by the `@type` of a `typed_config`, so adding an extension
touches its own module and `_MODULES` below, nothing else.
"""
from __future__ import annotations

import importlib

TYPE_PREFIX = "type.googleapis.com/"

NETWORK_FILTER = "network filter"
HTTP_FILTER = "HTTP filter"
HTTP_ROUTE_CONFIG = "HTTP filter per-route config"
ACCESS_LOGGER = "access logger"
TRACER = "tracer"
LISTENER_FILTER = "listener filter"
TRANSPORT_SOCKET = "transport socket"
UPSTREAM_PROTOCOL_OPTIONS = "upstream protocol options"
THRIFT_FILTER = "thrift filter"
CLUSTER = "cluster type"
RESOURCE_MONITOR = "resource monitor"
COMPRESSOR_LIBRARY = "compressor library"
DECOMPRESSOR_LIBRARY = "decompressor library"
RETRY_HOST_PREDICATE = "retry host predicate"
UDP_PROXY_ROUTE = "UDP proxy route action"
OTEL_SAMPLER = "OpenTelemetry sampler"
OTEL_RESOURCE_DETECTOR = "OpenTelemetry resource detector"

# type URL (without prefix) -> (kind, module defining `create(config, ctx)`); modules are
# imported on first use. `proxyd.config.supported.EXTENSIONS` is derived from this table,
# so what `proxyd check` accepts and what the worker can build never disagree.
_MODULES: dict[str, tuple[str, str]] = {
    "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy":
        (NETWORK_FILTER, "proxyd.network.filters.tcp_proxy"),
    "envoy.extensions.filters.network.echo.v3.Echo":
        (NETWORK_FILTER, "proxyd.network.filters.echo"),
    "envoy.extensions.filters.network.local_ratelimit.v3.LocalRateLimit":
        (NETWORK_FILTER, "proxyd.network.filters.local_ratelimit"),
    "envoy.extensions.filters.network.rbac.v3.RBAC":
        (NETWORK_FILTER, "proxyd.network.filters.rbac"),
    "envoy.extensions.filters.network.ext_authz.v3.ExtAuthz":
        (NETWORK_FILTER, "proxyd.network.filters.ext_authz"),
    "envoy.extensions.filters.network.ratelimit.v3.RateLimit":
        (NETWORK_FILTER, "proxyd.network.filters.ratelimit"),
    "envoy.extensions.filters.network.mongo_proxy.v3.MongoProxy":
        (NETWORK_FILTER, "proxyd.network.filters.mongo_proxy"),
    "envoy.extensions.filters.network.thrift_proxy.v3.ThriftProxy":
        (NETWORK_FILTER, "proxyd.network.filters.thrift_proxy"),
    "envoy.extensions.filters.network.thrift_proxy.router.v3.Router":
        (THRIFT_FILTER, "proxyd.network.filters.thrift_proxy.router"),
    "envoy.extensions.filters.network.thrift_proxy.v3.ThriftProtocolOptions":
        (UPSTREAM_PROTOCOL_OPTIONS, "proxyd.network.filters.thrift_proxy.options"),
    "envoy.extensions.filters.network.redis_proxy.v3.RedisProxy":
        (NETWORK_FILTER, "proxyd.network.filters.redis_proxy"),
    "envoy.extensions.filters.network.redis_proxy.v3.RedisProtocolOptions":
        (UPSTREAM_PROTOCOL_OPTIONS, "proxyd.network.filters.redis_proxy.config"),
    "envoy.extensions.clusters.redis.v3.RedisClusterConfig":
        (CLUSTER, "proxyd.network.filters.redis_proxy.redis_cluster"),
    "envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector":
        (LISTENER_FILTER, "proxyd.listener.filters.tls_inspector"),
    "envoy.extensions.filters.listener.proxy_protocol.v3.ProxyProtocol":
        (LISTENER_FILTER, "proxyd.listener.filters.proxy_protocol"),
    "envoy.extensions.filters.listener.http_inspector.v3.HttpInspector":
        (LISTENER_FILTER, "proxyd.listener.filters.http_inspector"),
    "envoy.extensions.filters.listener.original_dst.v3.OriginalDst":
        (LISTENER_FILTER, "proxyd.listener.filters.original_dst"),
    # a UDP listener's filter (listener/udp.py; config/semantic.py keeps it to UDP listeners)
    "envoy.extensions.filters.udp.udp_proxy.v3.UdpProxyConfig":
        (LISTENER_FILTER, "proxyd.listener.filters.udp_proxy"),
    "envoy.extensions.filters.udp.udp_proxy.v3.Route":
        (UDP_PROXY_ROUTE, "proxyd.listener.filters.udp_proxy"),
    "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext":
        (TRANSPORT_SOCKET, "proxyd.transport.tls"),
    "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext":
        (TRANSPORT_SOCKET, "proxyd.transport.tls"),
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager":
        (NETWORK_FILTER, "proxyd.http.conn_manager"),
    "envoy.extensions.filters.http.router.v3.Router": (HTTP_FILTER, "proxyd.router.router"),
    "envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit":
        (HTTP_FILTER, "proxyd.http.filters.local_ratelimit"),
    "envoy.extensions.filters.http.rbac.v3.RBAC": (HTTP_FILTER, "proxyd.http.filters.rbac"),
    "envoy.extensions.filters.http.rbac.v3.RBACPerRoute":
        (HTTP_ROUTE_CONFIG, "proxyd.http.filters.rbac"),
    "envoy.config.route.v3.FilterConfig": (HTTP_ROUTE_CONFIG, "proxyd.http.per_filter_config"),
    "envoy.extensions.filters.http.ratelimit.v3.RateLimit":
        (HTTP_FILTER, "proxyd.http.filters.ratelimit"),
    "envoy.extensions.filters.http.ratelimit.v3.RateLimitPerRoute":
        (HTTP_ROUTE_CONFIG, "proxyd.http.filters.ratelimit"),
    "envoy.extensions.filters.http.ext_authz.v3.ExtAuthz":
        (HTTP_FILTER, "proxyd.http.filters.ext_authz"),
    "envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute":
        (HTTP_ROUTE_CONFIG, "proxyd.http.filters.ext_authz"),
    "envoy.extensions.filters.http.cors.v3.Cors": (HTTP_FILTER, "proxyd.http.filters.cors"),
    "envoy.extensions.filters.http.cors.v3.CorsPolicy":
        (HTTP_ROUTE_CONFIG, "proxyd.http.filters.cors"),
    "envoy.extensions.filters.http.fault.v3.HTTPFault": (HTTP_FILTER, "proxyd.http.filters.fault"),
    "envoy.extensions.filters.http.compressor.v3.Compressor":
        (HTTP_FILTER, "proxyd.http.filters.compressor"),
    "envoy.extensions.filters.http.compressor.v3.CompressorPerRoute":
        (HTTP_ROUTE_CONFIG, "proxyd.http.filters.compressor"),
    "envoy.extensions.compression.gzip.compressor.v3.Gzip":
        (COMPRESSOR_LIBRARY, "proxyd.http.compression.gzip"),
    "envoy.extensions.compression.brotli.compressor.v3.Brotli":
        (COMPRESSOR_LIBRARY, "proxyd.http.compression.brotli"),
    "envoy.extensions.compression.zstd.compressor.v3.Zstd":
        (COMPRESSOR_LIBRARY, "proxyd.http.compression.zstd"),
    "envoy.extensions.filters.http.decompressor.v3.Decompressor":
        (HTTP_FILTER, "proxyd.http.filters.decompressor"),
    "envoy.extensions.filters.http.csrf.v3.CsrfPolicy": (HTTP_FILTER, "proxyd.http.filters.csrf"),
    "envoy.extensions.filters.http.buffer.v3.Buffer": (HTTP_FILTER, "proxyd.http.filters.buffer"),
    "envoy.extensions.filters.http.buffer.v3.BufferPerRoute":
        (HTTP_ROUTE_CONFIG, "proxyd.http.filters.buffer"),
    "envoy.extensions.filters.http.health_check.v3.HealthCheck":
        (HTTP_FILTER, "proxyd.http.filters.health_check"),
    "envoy.extensions.filters.http.grpc_web.v3.GrpcWeb":
        (HTTP_FILTER, "proxyd.http.filters.grpc_web"),
    "envoy.extensions.filters.http.grpc_http1_bridge.v3.Config":
        (HTTP_FILTER, "proxyd.http.filters.grpc_http1_bridge"),
    "envoy.extensions.filters.http.lua.v3.Lua": (HTTP_FILTER, "proxyd.http.filters.lua"),
    "envoy.extensions.filters.http.lua.v3.LuaPerRoute":
        (HTTP_ROUTE_CONFIG, "proxyd.http.filters.lua"),
    "envoy.extensions.filters.http.header_to_metadata.v3.Config":
        (HTTP_FILTER, "proxyd.http.filters.header_to_metadata"),
    "envoy.extensions.compression.gzip.decompressor.v3.Gzip":
        (DECOMPRESSOR_LIBRARY, "proxyd.http.compression.gzip"),
    "envoy.extensions.compression.brotli.decompressor.v3.Brotli":
        (DECOMPRESSOR_LIBRARY, "proxyd.http.compression.brotli"),
    "envoy.extensions.compression.zstd.decompressor.v3.Zstd":
        (DECOMPRESSOR_LIBRARY, "proxyd.http.compression.zstd"),
    "envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate":
        (RETRY_HOST_PREDICATE, "proxyd.router.retry_policy"),
    # proxyd's own: an HTTP filter written in Python (configured by an xds TypedStruct)
    "proxyd.filters.http.python.v1.Python": (HTTP_FILTER, "proxyd.http.filters.python"),
    "proxyd.filters.http.python.v1.PythonPerRoute":
        (HTTP_ROUTE_CONFIG, "proxyd.http.filters.python"),
    "envoy.extensions.access_loggers.file.v3.FileAccessLog":
        (ACCESS_LOGGER, "proxyd.observability.access_log.loggers"),
    "envoy.extensions.access_loggers.stream.v3.StdoutAccessLog":
        (ACCESS_LOGGER, "proxyd.observability.access_log.loggers"),
    "envoy.extensions.access_loggers.stream.v3.StderrAccessLog":
        (ACCESS_LOGGER, "proxyd.observability.access_log.loggers"),
    "envoy.config.trace.v3.ZipkinConfig": (TRACER, "proxyd.observability.tracing.zipkin"),
    "envoy.config.trace.v3.OpenTelemetryConfig": (TRACER,
                                                  "proxyd.observability.tracing.opentelemetry"),
    "envoy.extensions.tracers.opentelemetry.samplers.v3.AlwaysOnSamplerConfig":
        (OTEL_SAMPLER, "proxyd.observability.tracing.opentelemetry"),
    "envoy.extensions.tracers.opentelemetry.samplers.v3.ParentBasedSamplerConfig":
        (OTEL_SAMPLER, "proxyd.observability.tracing.opentelemetry"),
    "envoy.extensions.tracers.opentelemetry.resource_detectors.v3."
    "EnvironmentResourceDetectorConfig":
        (OTEL_RESOURCE_DETECTOR, "proxyd.observability.tracing.opentelemetry"),
    "envoy.extensions.tracers.opentelemetry.resource_detectors.v3."
    "StaticConfigResourceDetectorConfig":
        (OTEL_RESOURCE_DETECTOR, "proxyd.observability.tracing.opentelemetry"),
    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions":
        (UPSTREAM_PROTOCOL_OPTIONS, "proxyd.upstream.pool_http2"),
    "envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig":
        (RESOURCE_MONITOR, "proxyd.listener.limits"),
}

_loaded: dict[str, object] = {}


def register(type_name: str, kind: str, module: str) -> None:
    """Add an extension implemented in `module` (used by tests)."""
    _MODULES[type_name] = (kind, module)


def kinds() -> dict[str, str]:
    """Full type URL -> kind, for the config layer."""
    return {TYPE_PREFIX + name: kind for name, (kind, _mod) in _MODULES.items()}


def known(type_url: str) -> bool:
    return type_url.removeprefix(TYPE_PREFIX) in _MODULES


def fills(type_url: str, slot_kind: str) -> bool:
    """Whether the extension may fill a slot of `slot_kind`: one of its own kind, or a
    per-route slot for an HTTP filter whose own message is also its per-route config
    (Envoy's local_ratelimit): its module has `create_route_config`."""
    kind = _MODULES[type_url.removeprefix(TYPE_PREFIX)][0]
    if kind == slot_kind:
        return True
    return (slot_kind == HTTP_ROUTE_CONFIG and kind == HTTP_FILTER
            and hasattr(factory(type_url), "create_route_config"))


def factory(type_url: str):
    """Return the module implementing `type_url`; it exposes `create(config, ctx)`."""
    name = type_url.removeprefix(TYPE_PREFIX)
    mod = _loaded.get(name)
    if mod is None:
        mod = _loaded[name] = importlib.import_module(_MODULES[name][1])
    return mod
