"""Load-time checks for access logs and tracing, for `proxyd check` and config apply.

Same `(path, reason)` output as proxyd.config.semantic, so the config layer can report
each problem with the file, line and column of the offending field. Nothing is opened
or started: formats and filters are compiled and thrown away.
"""
from __future__ import annotations

from proxyd.proto import unpack
from proxyd import registry

_LOGGERS = "proxyd.observability.access_log.loggers"


def check_access_logs(access_log_list, path=()) -> list[tuple[tuple, str]]:
    """Errors in a repeated envoy.config.accesslog.v3.AccessLog (unknown command operators,
    malformed formats, unsupported filters)."""
    from proxyd.observability.access_log import loggers
    from proxyd.observability.access_log.filters import compile_filter

    out = []
    for i, al in enumerate(access_log_list):
        p = path + (i,)
        if al.HasField("filter"):
            try:
                compile_filter(al.filter, None, "filter")
            except ValueError as e:
                out.append((p + ("filter",), str(e)))
        tc = al.typed_config
        if not al.HasField("typed_config") or not registry.known(tc.type_url):
            continue   # reported by the supported-field check
        if registry.kinds().get(tc.type_url) != registry.ACCESS_LOGGER:
            continue
        try:
            cfg = unpack(tc)
        except ValueError:
            continue
        try:
            loggers.formatter(cfg)
        except (ValueError, OSError) as e:
            out.append((p + ("typed_config",) + loggers.format_path(cfg), str(e)))
    return out


def check_tracing(tracing, path=(), clusters=None) -> list[tuple[tuple, str]]:
    """Errors in HttpConnectionManager.tracing; `clusters`: names the collector may use
    (None: don't check the reference)."""
    if tracing is None or not tracing.HasField("provider"):
        return []
    from envoy.config.trace.v3.zipkin_pb2 import ZipkinConfig


    tc = tracing.provider.typed_config
    if not registry.known(tc.type_url):
        return []
    try:
        cfg = unpack(tc)
    except ValueError:
        return []
    p = path + ("provider", "typed_config")
    out = []
    if cfg.DESCRIPTOR.full_name == "envoy.config.trace.v3.OpenTelemetryConfig":
        if cfg.HasField("grpc_service"):
            gs = cfg.grpc_service
            if gs.WhichOneof("target_specifier") != "envoy_grpc":
                out.append((p + ("grpc_service",), "only envoy_grpc is supported by proxyd"))
            elif clusters is not None and gs.envoy_grpc.cluster_name not in clusters:
                out.append((p + ("grpc_service", "envoy_grpc", "cluster_name"),
                            f"unknown collector cluster '{gs.envoy_grpc.cluster_name}'"))
        if cfg.HasField("http_service"):
            cl = cfg.http_service.http_uri.cluster
            if not cl:
                out.append((p + ("http_service", "http_uri", "cluster"), "required"))
            elif clusters is not None and cl not in clusters:
                out.append((p + ("http_service", "http_uri", "cluster"),
                            f"unknown collector cluster '{cl}'"))
        try:
            from proxyd.observability.tracing.opentelemetry import OpenTelemetryTracer
            OpenTelemetryTracer.check(cfg)
        except ValueError as e:
            out.append((p, str(e)))
    if tracing.custom_tags:
        from proxyd.observability.tracing.hcm import CustomTag
        for i, t in enumerate(tracing.custom_tags):
            try:
                CustomTag(t)
            except ValueError as e:
                out.append((path + ("custom_tags", i), str(e)))
    if not isinstance(cfg, ZipkinConfig):
        return out
    if cfg.collector_endpoint_version not in (0, 1):
        out.append((p + ("collector_endpoint_version",),
                    "only HTTP_JSON is supported by proxyd"))
    if cfg.trace_context_option:
        out.append((p + ("trace_context_option",), "only USE_B3 is supported by proxyd"))
    if clusters is not None and cfg.collector_cluster and cfg.collector_cluster not in clusters:
        out.append((p + ("collector_cluster",),
                    f"unknown collector cluster '{cfg.collector_cluster}'"))
    return out
