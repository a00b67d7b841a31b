"""The xDS resource types proxyd consumes: type URLs, message classes, resource names."""
from __future__ import annotations

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from envoy.service.runtime.v3 import rtds_pb2

PREFIX = "type.googleapis.com/"
LISTENER = PREFIX + "envoy.config.listener.v3.Listener"
CLUSTER = PREFIX + "envoy.config.cluster.v3.Cluster"
ROUTE = PREFIX + "envoy.config.route.v3.RouteConfiguration"
ENDPOINT = PREFIX + "envoy.config.endpoint.v3.ClusterLoadAssignment"
RUNTIME = PREFIX + "envoy.service.runtime.v3.Runtime"
SECRET = PREFIX + "envoy.extensions.transport_sockets.tls.v3.Secret"
RESOURCE_WRAPPER = PREFIX + "envoy.service.discovery.v3.Resource"

MESSAGES = {
    LISTENER: listener_pb2.Listener,
    CLUSTER: cluster_pb2.Cluster,
    ROUTE: route_pb2.RouteConfiguration,
    ENDPOINT: endpoint_pb2.ClusterLoadAssignment,
    RUNTIME: rtds_pb2.Runtime,
    SECRET: secret_pb2.Secret,
}

SHORT = {LISTENER: "LDS", CLUSTER: "CDS", ROUTE: "RDS", ENDPOINT: "EDS", RUNTIME: "RTDS",
         SECRET: "SDS"}

# Wildcard types: a state-of-the-world response is the full set (absent = deleted).
WILDCARD = frozenset({LISTENER, CLUSTER})

# Make-before-break order for (re)subscribing on one ADS stream (xDS spec).
# Secrets come with the clusters and listeners that name them (both warm until they arrive).
ORDER = (CLUSTER, SECRET, ENDPOINT, LISTENER, ROUTE, RUNTIME)


def resource_name(type_url: str, msg) -> str:
    return msg.cluster_name if type_url == ENDPOINT else msg.name
