"""proxyd's redis_proxy beside real Envoy 1.40 on the same config and the same Redis
servers: the same host for every key (RING_HASH, MAGLEV), the same replies to the same
requests."""
from __future__ import annotations

import socket

import pytest
import redis

from harness import bootstrap, free_port, wait_port
from redisutil import Envoy, RedisServer, redis_cluster_config, redis_listener


@pytest.fixture(scope="module")
def three():
    servers = [RedisServer() for _ in range(3)]
    yield servers
    for s in servers:
        s.stop()


def placement(port: int, servers, keys) -> dict:
    for s in servers:
        s.client.flushall()
    r = redis.Redis(port=port, protocol=2)
    for k in keys:
        r.set(k, k)
    where = {}
    for i, s in enumerate(servers):
        for k in s.keys():
            where[k.decode()] = i
    return where


@pytest.mark.parametrize("lb_policy", ["RING_HASH", "MAGLEV"])
def test_every_key_goes_to_the_host_envoy_sends_it_to(proxyd_factory, three, tmp_path, lb_policy):
    keys = ["user:%d" % i for i in range(300)] + ["{tag}:%d" % i for i in range(20)]
    clusters = [redis_cluster_config("redis", three, lb_policy)]
    eport, pport = free_port(), free_port()
    envoy = Envoy(bootstrap([redis_listener(eport)], clusters), tmp_path)
    try:
        wait_port(eport, timeout=20)
        by_envoy = placement(eport, three, keys)
    finally:
        envoy.stop()
    proxyd_factory(bootstrap([redis_listener(pport)], clusters))
    by_proxyd = placement(pport, three, keys)
    assert len(by_envoy) == len(keys) and len(set(by_envoy.values())) == 3
    assert by_proxyd == by_envoy


REQUESTS = [
    b"PING\r\n", b"*1\r\n$4\r\nPING\r\n", b"ECHO hi\r\n", b"ECHO\r\n", b"ECHO a b\r\n",
    b"SET k v\r\n", b"GET k\r\n", b"GET\r\n", b"SET k\r\n", b"GETDEL nope\r\n",
    b"MSET a 1 b 2\r\n", b"MSET a\r\n", b"MGET a b nope\r\n", b"DEL a b nope\r\n",
    b"EXISTS k nope\r\n", b"FOO bar baz\r\n", b"foo\r\n", b"*1\r\n:1\r\n", b"*0\r\n",
    b"+OK\r\n", b"AUTH x\r\n", b"AUTH x y\r\n", b"HELLO 2\r\n", b"HELLO 9\r\n",
    b"CLIENT SETNAME app\r\n", b"CLIENT LIST\r\n", b"CLIENT SETNAME\r\n",
    b"EVAL\r\n", b"EVAL x 0\r\n", b"EVAL \"return 1\" 1 k\r\n", b"OBJECT ENCODING k\r\n",
    b"MULTI\r\n", b"SET t 1\r\n", b"EXEC\r\n", b"EXEC\r\n", b"DISCARD\r\n",
    b"WATCH k\r\n", b"UNWATCH\r\n", b"HSET h f v\r\n", b"HGETALL h\r\n", b"SUBSCRIBE ch\r\n",
    b"KEYS nomatch*\r\n", b"SELECT 0\r\n", b"CLUSTER RESET\r\n",
    b"INFO.SHARD x\r\n", b"INFO.SHARD 5\r\n",
]


def replies(port: int) -> list:
    out = []
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.settimeout(0.5)
        for req in REQUESTS:
            s.sendall(req)
            buf = b""
            while True:
                try:
                    chunk = s.recv(65536)
                except socket.timeout:
                    break
                if not chunk:
                    break
                buf += chunk
                if buf.endswith(b"\r\n"):
                    try:
                        s.settimeout(0.05)
                        more = s.recv(65536)
                        buf += more
                    except socket.timeout:
                        break
                    finally:
                        s.settimeout(0.5)
            out.append((req, buf))
    return out


def test_the_same_replies_as_envoy(proxyd_factory, three, tmp_path):
    one = three[:1]
    clusters = [redis_cluster_config("redis", one)]
    eport, pport = free_port(), free_port()
    one[0].client.flushall()
    envoy = Envoy(bootstrap([redis_listener(eport)], clusters), tmp_path)
    try:
        wait_port(eport, timeout=20)
        by_envoy = replies(eport)
    finally:
        envoy.stop()
    one[0].client.flushall()
    proxyd_factory(bootstrap([redis_listener(pport)], clusters))
    by_proxyd = replies(pport)
    diff = [(a, b) for a, b in zip(by_proxyd, by_envoy) if a != b]
    assert diff == []
