"""redis_proxy in front of a real 3-node Redis Cluster: MOVED and ASK followed with
enable_redirection, passed through without it."""
from __future__ import annotations

import os
import socket
import sys
import time

import pytest
import redis

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "tls"))

from harness import bootstrap, free_port  # noqa: E402
from redisutil import RedisCluster, redis_cluster_config, redis_listener  # noqa: E402
from tlsutil import stats  # noqa: E402


@pytest.fixture(scope="module")
def cluster():
    c = RedisCluster()
    yield c
    c.stop()


def keys_elsewhere(cluster, node, n: int) -> list:
    """`n` keys whose slots are not served by `node`."""
    out, i = [], 0
    while len(out) < n:
        k = "key:%d" % i
        if cluster.node_for(k) is not node:
            out.append(k)
        i += 1
    return out


def test_moved_is_followed_with_enable_redirection(proxyd_factory, cluster):
    seed = cluster.nodes[0]
    for n in cluster.nodes:
        n.client.flushall()
    px = proxyd_factory(bootstrap(
        [redis_listener(free_port(), settings={"op_timeout": "2s", "enable_redirection": True})],
        [redis_cluster_config("redis", [seed], "ROUND_ROBIN")]))
    r = redis.Redis(port=px.ports[0], protocol=2)
    keys = keys_elsewhere(cluster, seed, 4)
    for k in keys:
        assert r.set(k, k) is True
    assert r.mget(keys) == [k.encode() for k in keys]
    for k in keys:
        assert cluster.node_for(k).client.get(k) == k.encode()
    s = stats(px)
    assert s["cluster.redis.upstream_internal_redirect_succeeded_total"] == 8
    assert s["redis.egress_redis.command.set.success"] == 4


def test_moved_goes_to_the_client_without_enable_redirection(proxyd_factory, cluster):
    seed = cluster.nodes[0]
    px = proxyd_factory(bootstrap([redis_listener(free_port())],
                                  [redis_cluster_config("redis", [seed], "ROUND_ROBIN")]))
    r = redis.Redis(port=px.ports[0], protocol=2)
    with pytest.raises(redis.exceptions.MovedError):
        r.set(keys_elsewhere(cluster, seed, 1)[0], "v")


def test_ask_during_a_slot_migration_sends_asking_first(proxyd_factory, cluster):
    src, dst = cluster.nodes[0], cluster.nodes[1]
    key = next(k for k in ("mig:%d" % i for i in range(10000)) if cluster.node_for(k) is src)
    slot = src.client.cluster("keyslot", key)
    src_id, dst_id = src.client.cluster("myid"), dst.client.cluster("myid")
    src.client.delete(key)
    dst.client.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", src_id)
    src.client.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", dst_id)
    try:
        px = proxyd_factory(bootstrap(
            [redis_listener(free_port(), settings={"op_timeout": "2s", "enable_redirection": True})],
            [redis_cluster_config("redis", [src], "ROUND_ROBIN")]))
        r = redis.Redis(port=px.ports[0], protocol=2)
        assert r.set(key, "moving") is True        # ASK to dst: ASKING, then SET there
        assert asking(dst, b"GET " + key.encode()) == b"$6\r\nmoving\r\n"
        assert stats(px)["cluster.redis.upstream_internal_redirect_succeeded_total"] == 1
    finally:
        asking(dst, b"DEL " + key.encode())
        for n in (src, dst):
            n.client.execute_command("CLUSTER", "SETSLOT", slot, "STABLE")


def asking(node, command: bytes) -> bytes:
    """`command`'s reply from `node` right after ASKING, on one connection."""
    with socket.create_connection(("127.0.0.1", node.port), timeout=5) as s:
        s.sendall(b"ASKING\r\n" + command + b"\r\n")
        buf = b""
        while buf.count(b"\r\n") < 2 or (buf[5:6] == b"$" and buf.count(b"\r\n") < 3):
            buf += s.recv(65536)
        assert buf.startswith(b"+OK\r\n")
        return buf[5:]


def test_envoy_clusters_redis_learns_the_slots_from_one_seed(proxyd_factory, cluster):
    for n in cluster.nodes:
        n.client.flushall()
    seed = cluster.nodes[0]
    redis_type = {"cluster_type": {
        "name": "envoy.clusters.redis",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.clusters.redis.v3."
                                  "RedisClusterConfig", "cluster_refresh_rate": "1s"}}}
    c = redis_cluster_config("redis", [seed], "CLUSTER_PROVIDED", **redis_type)
    del c["type"]
    px = proxyd_factory(bootstrap([redis_listener(free_port())], [c]))
    r = redis.Redis(port=px.ports[0], protocol=2)
    keys = ["{u%d}:name" % i for i in range(30)]
    deadline = time.monotonic() + 5
    while True:  # the first requests may reach the seed before CLUSTER SLOTS came back
        try:
            r.set("probe", 1)
            r.set("{u29}:probe", 1)
            break
        except redis.exceptions.MovedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    assert r.mset({k: k for k in keys}) is True          # no MOVED: each key to its primary
    for k in keys:
        assert cluster.node_for(k).client.get(k) == k.encode()
    assert sorted(r.keys("{u*")) == sorted(k.encode() for k in keys + ["{u29}:probe"])
    assert stats(px).get("cluster.redis.upstream_internal_redirect_succeeded_total", 0) == 0
