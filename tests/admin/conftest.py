"""A running AdminServer on a real socket, with a test double of the master behind it."""

import argparse
import os
import socket
import threading
import time
import uuid

import pytest
from google.protobuf import json_format

import envoy.config.bootstrap.v3.bootstrap_pb2 as bootstrap_pb2
import envoy.extensions.filters.network.tcp_proxy.v3.tcp_proxy_pb2  # noqa: F401  (Any in the bootstrap)
import envoy.extensions.transport_sockets.tls.v3.tls_pb2  # noqa: F401

from proxyd.stats import StatsStore

BOOTSTRAP = {
    "node": {"id": "node-1", "cluster": "edge"},
    "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 9901}}},
    "static_resources": {
        "listeners": [{
            "name": "tcp_in",
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": 10000}},
            "filter_chains": [{"filters": [{"name": "envoy.filters.network.tcp_proxy", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
                "stat_prefix": "tcp_in", "cluster": "web"}}]}],
        }],
        "clusters": [{
            "name": "web", "connect_timeout": "1s", "type": "STATIC",
            "load_assignment": {"cluster_name": "web", "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": {"socket_address": {"address": "10.0.0.1", "port_value": 80}}}}]}]},
            "transport_socket": {"name": "envoy.transport_sockets.tls", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                "common_tls_context": {"tls_certificates": [{
                    "certificate_chain": {"inline_string": "CERT"},
                    "private_key": {"inline_string": "SECRET-KEY"}}]}}},
        }],
    },
}


class FakeMaster:
    """The master as the admin server sees it (AdminContext); it records what it was asked."""

    def __init__(self, stats):
        self.bootstrap = json_format.ParseDict(BOOTSTRAP, bootstrap_pb2.Bootstrap())
        self.stats = stats
        self.options = argparse.Namespace(config_path="/etc/proxyd.yaml", concurrency=2, base_id=7,
                                          restart_epoch=1, drain_time_s=30, parent_shutdown_time_s=45,
                                          runtime_dir="/run/proxyd", log_level="info", log_format="text")
        now = time.time()
        self.first_start_time = now - 100
        self.epoch_start_time = now - 10
        self.state = "LIVE"
        self.calls = []
        self.worker_pids = []

    def processes(self):
        return [("master", os.getpid())] + [(f"worker_{i}", pid) for i, pid in enumerate(self.worker_pids)]

    def clusters_status(self):
        return [{"name": "web", "added_via_api": False, "hosts": [
            {"address": "10.0.0.1:80", "hostname": "web-1", "health_flags": "healthy", "weight": 1},
            {"address": "10.0.0.2:80", "hostname": "", "health_flags": "/failed_active_hc", "weight": 3}]}]

    def listeners_status(self):
        return [("tcp_in", "127.0.0.1:10000")]

    def set_healthcheck_failed(self, failed):
        self.calls.append(("healthcheck_failed", failed))

    def drain_listeners(self, graceful):
        self.calls.append(("drain", graceful))
        self.state = "DRAINING"

    def quit(self):
        self.calls.append(("quit",))

    def set_log_level(self, level):
        self.calls.append(("log_level", level))
        self.options.log_level = level
        return True

    def active_connections(self):
        return 3

    def reopen_logs(self):
        self.calls.append(("reopen_logs",))


@pytest.fixture
def master():
    path = f"/dev/shm/proxyd-admin-test-{uuid.uuid4().hex}.stats"
    stats = StatsStore.create(path)
    stats.bind(stats.claim_slot(os.getpid(), "master"))
    yield FakeMaster(stats)
    stats.unlink()


@pytest.fixture
def admin(master):
    """(host, port) of an AdminServer running in its own thread (its own gevent hub)."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    started, stop = threading.Event(), threading.Event()

    def serve():
        import gevent
        from proxyd.admin import AdminServer
        server = AdminServer(master, listener)
        server.start()
        started.set()
        while not stop.is_set():
            gevent.sleep(0.02)
        server.stop()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert started.wait(10)
    yield listener.getsockname()
    stop.set()
    thread.join(10)
    listener.close()
