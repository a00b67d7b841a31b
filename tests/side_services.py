"""Helpers for tests of proxyd's internal clients and the filters that use them: a real
worker-side cluster manager over a real stats file, and real grpcio servers run in
threads of the test process (the client side runs in the test's gevent hub)."""
from __future__ import annotations

import os
import uuid
from concurrent import futures

import grpc
from google.protobuf import json_format

from proxyd.stats.store import StatsStore
from proxyd.upstream.cluster_manager import ClusterManager

H2_OPTIONS = {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
    "explicit_http_config": {"http2_protocol_options": {}}}}


def cluster_config(name: str, port: int, h2: bool = False, connect_timeout: str = "1s",
                   **extra) -> dict:
    c = {"name": name, "type": "STATIC", "connect_timeout": connect_timeout,
         "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
             {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1",
                                                          "port_value": port}}}}]}]}}
    if h2:
        c["typed_extension_protocol_options"] = H2_OPTIONS
    c.update(extra)
    return c


class Worker:
    """A worker's stats store and cluster manager, without the worker process."""

    def __init__(self):
        self.path = "/dev/shm/proxyd-clients-test-%s.stats" % uuid.uuid4().hex
        self.stats = StatsStore.create(self.path)
        self.stats.bind(self.stats.claim_slot(os.getpid(), "worker"))
        self.cluster_manager = ClusterManager(self.stats)

    def set_clusters(self, *configs: dict) -> None:
        from envoy.config.cluster.v3.cluster_pb2 import Cluster
        from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2  # noqa: F401
        from envoy.extensions.transport_sockets.tls.v3 import tls_pb2  # noqa: F401
        msgs, eps = [], {}
        for c in configs:
            msg = json_format.ParseDict(c, Cluster())
            msgs.append(msg)
            eps[msg.name] = [(lb.endpoint.address.socket_address.address,
                              lb.endpoint.address.socket_address.port_value, 1, "")
                             for le in msg.load_assignment.endpoints
                             for lb in le.lb_endpoints]
        self.cluster_manager.apply(msgs, eps)

    def value(self, name: str) -> int:
        """A counter's or gauge's total (0 when it was never made)."""
        for n, _kind, v in self.stats.items():
            if n == name:
                return v
        return 0

    def values(self, prefix: str) -> dict:
        return {n: v for n, _k, v in self.stats.items() if n.startswith(prefix)}

    def close(self) -> None:
        for c in self.cluster_manager.clusters.values():
            c.close()
        self.stats.unlink()


class GrpcServer:
    """A grpcio server on a free port with generic method handlers:
    {"/pkg.Svc/Method": (kind, fn, request_deserializer, response_serializer)}, kind one of
    unary_unary, unary_stream, stream_unary, stream_stream."""

    def __init__(self, methods: dict, credentials=None, max_workers: int = 8):
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers))
        by_service: dict = {}
        for path, (kind, fn, req_type, resp_ser) in methods.items():
            service, method = path.lstrip("/").split("/")
            handler = getattr(grpc, kind + "_rpc_method_handler")(
                fn, request_deserializer=req_type.FromString,
                response_serializer=resp_ser)
            by_service.setdefault(service, {})[method] = handler
        self.server.add_generic_rpc_handlers(
            [grpc.method_handlers_generic_handler(s, h) for s, h in by_service.items()])
        if credentials is not None:
            self.port = self.server.add_secure_port("127.0.0.1:0", credentials)
        else:
            self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def stop(self) -> None:
        self.server.stop(0)


def add_servicer(servicer, add_fn, credentials=None, max_workers: int = 8):
    """A grpcio server for a generated servicer (`add_XServicer_to_server`); returns
    (server, port)."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers))
    add_fn(servicer, server)
    port = (server.add_secure_port("127.0.0.1:0", credentials) if credentials is not None
            else server.add_insecure_port("127.0.0.1:0"))
    server.start()
    return server, port
