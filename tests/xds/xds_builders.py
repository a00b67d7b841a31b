"""Builders for xDS resources as protobufs (tests only)."""
from __future__ import annotations

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2)
from google.protobuf import json_format


def route_config(name: str, cluster: str = "upstream", prefix: str = "/", direct: int | None = None,
                 body: str = "") -> route_pb2.RouteConfiguration:
    r = {"match": {"prefix": prefix}}
    if direct is not None:
        r["direct_response"] = {"status": direct, "body": {"inline_string": body}}
    else:
        r["route"] = {"cluster": cluster}
    return json_format.ParseDict({"name": name, "virtual_hosts": [
        {"name": "vh", "domains": ["*"], "routes": [r]}]}, route_pb2.RouteConfiguration())


def listener(name: str, port: int, rds: str | None = None, rc=None, stat_prefix: str = "ingress",
             ads: bool = True, http_filters=None) -> listener_pb2.Listener:
    hcm = hcm_pb2.HttpConnectionManager(stat_prefix=stat_prefix)
    if http_filters is None:
        f = hcm.http_filters.add(name="envoy.filters.http.router")
        f.typed_config.Pack(router_pb2.Router())
    if rds is not None:
        hcm.rds.route_config_name = rds
        if ads:
            hcm.rds.config_source.ads.SetInParent()
        hcm.rds.config_source.resource_api_version = 2  # V3
    else:
        hcm.route_config.CopyFrom(rc if rc is not None else route_config("local"))
    lst = listener_pb2.Listener(name=name)
    lst.address.socket_address.address = "127.0.0.1"
    lst.address.socket_address.port_value = port
    flt = lst.filter_chains.add().filters.add(name="envoy.filters.network.http_connection_manager")
    flt.typed_config.Pack(hcm)
    return lst


def eds_cluster(name: str, service_name: str = "", ads: bool = True) -> cluster_pb2.Cluster:
    c = cluster_pb2.Cluster(name=name, type=cluster_pb2.Cluster.EDS, lb_policy=cluster_pb2.Cluster.ROUND_ROBIN)
    c.connect_timeout.FromMilliseconds(1000)
    if ads:
        c.eds_cluster_config.eds_config.ads.SetInParent()
    c.eds_cluster_config.eds_config.resource_api_version = 2
    if service_name:
        c.eds_cluster_config.service_name = service_name
    return c


def static_cluster(name: str, endpoints) -> cluster_pb2.Cluster:
    c = cluster_pb2.Cluster(name=name, type=cluster_pb2.Cluster.STATIC)
    c.connect_timeout.FromMilliseconds(1000)
    c.load_assignment.CopyFrom(cla(name, endpoints))
    return c


def cla(name: str, endpoints) -> endpoint_pb2.ClusterLoadAssignment:
    out = endpoint_pb2.ClusterLoadAssignment(cluster_name=name)
    loc = out.endpoints.add()
    for host, port in endpoints:
        sa = loc.lb_endpoints.add().endpoint.address.socket_address
        sa.address, sa.port_value = host, port
    return out


def secret(name: str, cert_pem: bytes = b"", key_pem: bytes = b"", ca_pem: bytes = b""):
    """An SDS Secret: a tls_certificate from inline PEM, or a validation_context (ca_pem)."""
    from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
    s = secret_pb2.Secret(name=name)
    if ca_pem:
        s.validation_context.trusted_ca.inline_bytes = ca_pem
    else:
        s.tls_certificate.certificate_chain.inline_bytes = cert_pem
        s.tls_certificate.private_key.inline_bytes = key_pem
    return s


def with_sds_tls(lst, secret_name: str, ads: bool = True, initial_fetch_timeout_s: float | None = None):
    """The listener's first filter chain terminates TLS with the certificate of SDS secret
    `secret_name` (fetched over ADS)."""
    from envoy.extensions.transport_sockets.tls.v3 import tls_pb2
    ctx = tls_pb2.DownstreamTlsContext()
    ref = ctx.common_tls_context.tls_certificate_sds_secret_configs.add(name=secret_name)
    if ads:
        ref.sds_config.ads.SetInParent()
    ref.sds_config.resource_api_version = 2
    if initial_fetch_timeout_s is not None:
        ref.sds_config.initial_fetch_timeout.FromMilliseconds(int(initial_fetch_timeout_s * 1000))
    ts = lst.filter_chains[0].transport_socket
    ts.name = "envoy.transport_sockets.tls"
    ts.typed_config.Pack(ctx)
    return lst


def with_sds_ca(cluster, secret_name: str):
    """The cluster talks TLS, trusting the CA of SDS secret `secret_name` (over ADS)."""
    from envoy.extensions.transport_sockets.tls.v3 import tls_pb2
    ctx = tls_pb2.UpstreamTlsContext()
    ref = ctx.common_tls_context.validation_context_sds_secret_config
    ref.name = secret_name
    ref.sds_config.ads.SetInParent()
    ref.sds_config.resource_api_version = 2
    ts = cluster.transport_socket
    ts.name = "envoy.transport_sockets.tls"
    ts.typed_config.Pack(ctx)
    return cluster
