"""Envoy admin JSON documents built as admin.v3 protos, so field names and shapes are Envoy's."""

import json

from google.protobuf import any_pb2, json_format, timestamp_pb2

from envoy.admin.v3 import (clusters_pb2, config_dump_pb2, config_dump_shared_pb2, listeners_pb2, metrics_pb2,
                            server_info_pb2)
from envoy.config.core.v3 import address_pb2, base_pb2, health_check_pb2
from udpa.annotations import sensitive_pb2

from .. import __version__
from ..config import loader
from ..observability.access_log.sinks import FLUSH_INTERVAL, MIN_FLUSH_SIZE
from ..stats import layout

VERSION = f"proxyd/{__version__}/Clean/RELEASE/Python"
HOT_RESTART_VERSION = f"proxyd.{layout.VERSION}"
REDACTED = "[redacted]"

# Envoy's defaults when a cluster has no circuit_breakers thresholds.
DEFAULT_THRESHOLDS = {"max_connections": 1024, "max_pending_requests": 1024, "max_requests": 1024, "max_retries": 3}
HOST_COUNTERS = ("cx_connect_fail", "cx_total", "rq_error", "rq_success", "rq_timeout", "rq_total")
HOST_GAUGES = ("cx_active", "rq_active")


def to_json(message, defaults: bool = False) -> bytes:
    return json_format.MessageToJson(message, preserving_proto_field_name=True,
                                     always_print_fields_with_no_presence=defaults).encode() + b"\n"


def socket_address(address: str) -> address_pb2.Address:
    """'ip:port' or '[v6]:port' -> core.v3.Address."""
    host, _, port = address.rpartition(":")
    return address_pb2.Address(socket_address=address_pb2.SocketAddress(
        address=host.strip("[]"), port_value=int(port or 0)))


def _seconds(value) -> str:
    return f"{int(value or 0)}s"


def server_info(ctx, now: float) -> bytes:
    options = ctx.options
    info = server_info_pb2.ServerInfo(
        version=VERSION,
        state=server_info_pb2.ServerInfo.State.Value(ctx.state),
        hot_restart_version=HOT_RESTART_VERSION,
    )
    info.uptime_current_epoch.FromSeconds(int(now - ctx.epoch_start_time))
    info.uptime_all_epochs.FromSeconds(int(now - ctx.first_start_time))
    cli = info.command_line_options
    cli.base_id = int(getattr(options, "base_id", 0) or 0)
    cli.concurrency = int(getattr(options, "concurrency", 0) or 0)
    cli.config_path = str(getattr(options, "config_path", "") or "")
    cli.restart_epoch = int(getattr(options, "restart_epoch", 0) or 0)
    cli.log_level = str(getattr(options, "log_level", "") or "")
    cli.log_format = str(getattr(options, "log_format", "") or "")
    cli.socket_path = str(getattr(options, "runtime_dir", "") or "")
    cli.drain_time.FromSeconds(int(getattr(options, "drain_time_s", 600) or 0))
    cli.parent_shutdown_time.FromSeconds(int(getattr(options, "parent_shutdown_time_s", 900) or 0))
    cli.mode = server_info_pb2.CommandLineOptions.Serve
    cli.file_flush_interval.FromSeconds(int(FLUSH_INTERVAL))
    if ctx.bootstrap is not None and ctx.bootstrap.HasField("node"):
        info.node.CopyFrom(ctx.bootstrap.node)
    info.node.user_agent_name = info.node.user_agent_name or "proxyd"
    build = info.node.user_agent_build_version
    if not build.HasField("version"):
        major, minor, patch = (int(x) for x in (__version__.split(".") + ["0", "0"])[:3])
        build.version.major_number, build.version.minor_number, build.version.patch = (
            major, minor, patch)
        build.metadata.update({"build.type": "RELEASE", "revision.status": "Clean"})
    out = json.loads(to_json(info, defaults=True))
    # Envoy 1.40 fields newer than the xds-protos ServerInfo proto
    out["hot_restart_initializing"] = False
    out["command_line_options"].update(file_flush_min_size=MIN_FLUSH_SIZE,
                                       log_stacktrace_single_entry=False)
    return json.dumps(out, indent=2).encode() + b"\n"


def _health_status(flags: str) -> clusters_pb2.HostHealthStatus:
    status = clusters_pb2.HostHealthStatus(eds_health_status=health_check_pb2.HEALTHY)
    for flag in filter(None, flags.split("/")):
        if flag == "failed_active_hc":
            status.failed_active_health_check = True
        elif flag == "failed_outlier_check":
            status.failed_outlier_check = True
        elif flag == "failed_eds_health":
            status.eds_health_status = health_check_pb2.UNHEALTHY
        elif flag == "degraded_eds_health":
            status.eds_health_status = health_check_pb2.DEGRADED
        elif flag == "degraded_active_hc":
            status.failed_active_degraded_check = True
        elif flag == "pending_dynamic_removal":
            status.pending_dynamic_removal = True
        elif flag == "pending_active_hc":
            status.pending_active_hc = True
        elif flag == "excluded_via_immediate_hc_fail":
            status.excluded_via_immediate_hc_fail = True
        elif flag == "active_hc_timeout":
            status.active_hc_timeout = True
        elif flag == "eds_status_draining":
            status.eds_health_status = health_check_pb2.DRAINING
    return status


def thresholds(cluster: dict) -> list[tuple[str, dict]]:
    """[('default', {...}), ('high', {...})] with Envoy's defaults filled in."""
    given = cluster.get("circuit_breakers") or {}
    return [(p, {**DEFAULT_THRESHOLDS, **(given.get(p) or {})}) for p in ("default", "high")]


def clusters_json(clusters: list[dict], host_stat) -> bytes:
    """admin.v3.Clusters; ``host_stat(cluster, address, stat)`` reads a per-host value."""
    out = clusters_pb2.Clusters()
    for cluster in clusters:
        status = out.cluster_statuses.add(name=cluster["name"], observability_name=cluster["name"],
                                          added_via_api=bool(cluster.get("added_via_api")))
        for priority, values in thresholds(cluster):
            t = status.circuit_breakers.thresholds.add(
                priority=base_pb2.RoutingPriority.Value(priority.upper()))
            for key, value in values.items():
                getattr(t, key).value = value
        for host in cluster.get("hosts", ()):
            hs = status.host_statuses.add(address=socket_address(host["address"]),
                                          hostname=host.get("hostname", ""), weight=int(host.get("weight", 1)),
                                          health_status=_health_status(host.get("health_flags", "healthy")))
            hs.locality.SetInParent()  # Envoy shows it even when empty
            for stat in HOST_COUNTERS:
                hs.stats.add(name=stat, type=metrics_pb2.SimpleMetric.COUNTER,
                             value=host_stat(cluster["name"], host["address"], stat))
            for stat in HOST_GAUGES:
                hs.stats.add(name=stat, type=metrics_pb2.SimpleMetric.GAUGE,
                             value=max(0, host_stat(cluster["name"], host["address"], stat)))
            for field in ("success_rate", "local_origin_success_rate"):  # set once valid
                if host.get(field, -1) >= 0:
                    getattr(hs, field).value = host[field]
    return to_json(out)


def listeners_json(listeners: list[tuple[str, str]]) -> bytes:
    out = listeners_pb2.Listeners()
    for name, address in listeners:
        out.listener_statuses.add(name=name, local_address=socket_address(address))
    return to_json(out)


def stamp(unix_time: float) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(int(unix_time * 1e9))
    return ts


# Envoy's order of the `configs` array; scripts index into it (`.configs[1]` is clusters).
# Envoy shows endpoints only with ?include_eds.
_ORDER = (config_dump_shared_pb2.ClustersConfigDump, config_dump_shared_pb2.EndpointsConfigDump,
          config_dump_shared_pb2.ListenersConfigDump, config_dump_shared_pb2.ScopedRoutesConfigDump,
          config_dump_shared_pb2.RoutesConfigDump, config_dump_pb2.SecretsConfigDump)


def _static_sections(boot, when) -> list:
    clusters = config_dump_shared_pb2.ClustersConfigDump()
    for cluster in boot.static_resources.clusters:
        clusters.static_clusters.add(last_updated=when).cluster.Pack(cluster)
    listeners = config_dump_shared_pb2.ListenersConfigDump()
    routes = config_dump_shared_pb2.RoutesConfigDump()
    for listener in boot.static_resources.listeners:
        listeners.static_listeners.add(last_updated=when).listener.Pack(listener)
        for chain in listener.filter_chains:
            for f in chain.filters:
                if f.typed_config.type_url.endswith(".HttpConnectionManager"):
                    hcm = loader.unpack(f.typed_config)
                    if hcm.HasField("route_config"):
                        routes.static_route_configs.add(last_updated=when).route_config.Pack(
                            hcm.route_config)
    secrets = config_dump_pb2.SecretsConfigDump()
    for sec in boot.static_resources.secrets:
        secrets.static_secrets.add(name=sec.name).secret.Pack(sec)
    return [clusters, listeners, routes, secrets]


def config_dump(bootstrap, updated_at: float, sections=None, include_eds: bool = False) -> bytes:
    """Bootstrap plus the clusters, listeners, scoped routes, routes and secrets dumps in
    Envoy's order, sensitive fields redacted. `sections`: the dynamic-config dumps (static
    and dynamic resources with versions) when xDS or watched files are in use; else the
    static resources."""
    boot = type(bootstrap)()
    boot.CopyFrom(bootstrap)
    redact(boot)
    when = stamp(updated_at)
    if sections is None:
        sections = _static_sections(boot, when)
    given = {type(section): section for section in sections}
    dump = config_dump_pb2.ConfigDump()
    dump.configs.add().Pack(config_dump_pb2.BootstrapConfigDump(bootstrap=boot, last_updated=when))
    for kind in _ORDER:
        if kind is config_dump_shared_pb2.EndpointsConfigDump and not include_eds:
            continue
        section = given.get(kind) or kind()
        redact(section)
        dump.configs.add().Pack(section)
    return to_json(dump)


def redact(message) -> None:
    """Blank every field Envoy marks ``(udpa.annotations.sensitive)``, inside ``Any`` too."""
    for field, value in message.ListFields():
        if field.GetOptions().Extensions[sensitive_pb2.sensitive]:
            _blank(message, field, value)
        elif field.message_type is not None:
            items = value.values() if field.message_type.GetOptions().map_entry else (
                value if field.is_repeated else [value])
            for item in items:
                if hasattr(item, "ListFields"):
                    _redact_one(item)


def _redact_one(message) -> None:
    if isinstance(message, any_pb2.Any):
        inner = _unpack(message)
        if inner is not None:
            redact(inner)
            message.Pack(inner)
        return
    redact(message)


def _unpack(message):
    """The message inside an Any, importing its proto package first (the master has not
    imported the modules of every extension an xDS resource may carry)."""
    descriptor = loader.find_descriptor(message.type_url)
    if descriptor is None:
        return None
    inner = loader.message_class(descriptor)()
    message.Unpack(inner)
    return inner


def _blank(message, field, value) -> None:
    if field.message_type is None:
        if field.is_repeated:
            message.ClearField(field.name)
        elif field.type == field.TYPE_BYTES:
            setattr(message, field.name, REDACTED.encode())
        elif field.type == field.TYPE_STRING:
            setattr(message, field.name, REDACTED)
        else:
            message.ClearField(field.name)
        return
    items = value if field.is_repeated else [value]
    for item in items:
        for sub, sub_value in item.ListFields():
            _blank(item, sub, sub_value)
