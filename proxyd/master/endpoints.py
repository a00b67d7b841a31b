"""Cluster membership as the master computes it: STATIC endpoints as written, STRICT_DNS
names resolved here (every address a name returns is a host, re-resolved every
dns_refresh_rate), LOGICAL_DNS likewise but with one host, the first address the name
returns (Envoy's logical host; its one endpoint is checked in config/semantic.py), so
workers never block on DNS. ORIGINAL_DST clusters have no endpoints: each worker makes
their hosts from the connections it serves (upstream/original_dst.py)."""
from __future__ import annotations

import socket

from envoy.config.cluster.v3 import cluster_pb2

DEFAULT_DNS_REFRESH = 5.0

_FAMILIES = {
    cluster_pb2.Cluster.V4_ONLY: (socket.AF_INET,),
    cluster_pb2.Cluster.V6_ONLY: (socket.AF_INET6,),
    cluster_pb2.Cluster.V4_PREFERRED: (socket.AF_INET, socket.AF_INET6),
    cluster_pb2.Cluster.AUTO: (socket.AF_INET6, socket.AF_INET),
    cluster_pb2.Cluster.ALL: (socket.AF_INET6, socket.AF_INET),
}


def is_dns(cluster) -> bool:
    return cluster.type in (cluster_pb2.Cluster.STRICT_DNS, cluster_pb2.Cluster.LOGICAL_DNS)


def refresh_rate(cluster) -> float:
    r = cluster.dns_refresh_rate
    return (r.seconds + r.nanos / 1e9) if cluster.HasField("dns_refresh_rate") else DEFAULT_DNS_REFRESH


def placement(locality_lb_endpoints) -> tuple:
    """(priority, locality) of a LocalityLbEndpoints: locality is (region, zone,
    sub_zone, its load_balancing_weight or None), what the worker's balancer groups by."""
    g = locality_lb_endpoints
    loc = g.locality
    weight = g.load_balancing_weight.value if g.HasField("load_balancing_weight") else None
    return g.priority, (loc.region, loc.zone, loc.sub_zone, weight)


def lb_endpoints(load_assignment):
    """(Endpoint, weight, priority, locality) for each LbEndpoint of a ClusterLoadAssignment."""
    for group in load_assignment.endpoints:
        priority, locality = placement(group)
        for lbe in group.lb_endpoints:
            weight = lbe.load_balancing_weight.value if lbe.HasField("load_balancing_weight") else 1
            yield lbe.endpoint, weight, priority, locality


def _lb_endpoints(cluster):
    return lb_endpoints(cluster.load_assignment)


def static_endpoints(cluster) -> list:
    """[(ip, port, weight, hostname, priority, locality)]: the tuple every endpoint list
    in the master and the worker snapshots uses (the first four are the host)."""
    return [(ep.address.socket_address.address, ep.address.socket_address.port_value, w,
             ep.hostname, p, loc) for ep, w, p, loc in _lb_endpoints(cluster)]


def resolve(cluster) -> list:
    """Resolve a STRICT_DNS or LOGICAL_DNS cluster; raises OSError when a name does not
    resolve.

    AUTO prefers IPv6 and falls back to IPv4 (Envoy's AUTO); V4_PREFERRED the reverse.
    """
    logical = cluster.type == cluster_pb2.Cluster.LOGICAL_DNS
    families = _FAMILIES.get(cluster.dns_lookup_family, (socket.AF_INET6, socket.AF_INET))
    out = []
    for ep, weight, priority, locality in _lb_endpoints(cluster):
        sa = ep.address.socket_address
        addrs = []
        err = None
        for fam in families:
            try:
                infos = socket.getaddrinfo(sa.address, sa.port_value, fam, socket.SOCK_STREAM)
            except OSError as e:
                err = e
                continue
            # LOGICAL_DNS: the resolver's first answer, as Envoy takes address_list.front()
            addrs = [infos[0][4][0]] if logical and infos else sorted({i[4][0] for i in infos})
            if addrs:
                break
        if not addrs:
            raise err or OSError("no addresses for %s" % sa.address)
        out.extend((ip, sa.port_value, weight, ep.hostname or sa.address, priority, locality)
                   for ip in addrs)
    return out
