"""envoy.filters.network.redis_proxy end to end: redis-py and raw RESP through a proxyd
process to real redis-server processes."""
from __future__ import annotations

import os
import socket
import sys
import threading
import time

import pytest
import redis

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "tls"))

from harness import bootstrap, free_port  # noqa: E402
from redisutil import RedisServer, redis_cluster_config, redis_listener  # noqa: E402
from tlsutil import stats, wait_stat  # noqa: E402


@pytest.fixture(scope="module")
def servers():
    pair = [RedisServer(), RedisServer()]
    yield pair
    for s in pair:
        s.stop()


@pytest.fixture
def two(servers):
    for s in servers:
        s.client.flushall()
    return servers


def start(proxyd_factory, listener, clusters, **kw):
    px = proxyd_factory(bootstrap([listener], clusters), **kw)
    return px, px.ports[0]


def raw(port: int, data: bytes, expect: int = 1, timeout: float = 5.0) -> bytes:
    """Send `data`, read until `expect` CRLF-terminated lines came (enough for the replies
    these tests send)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        buf = b""
        while buf.count(b"\r\n") < expect:
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
        return buf


def test_redis_py_in_both_protocols(proxyd_factory, two):
    px, port = start(proxyd_factory, redis_listener(free_port()),
                     [redis_cluster_config("redis", two)])
    for protocol in (2, 3):
        r = redis.Redis(port=port, protocol=protocol)
        assert r.set("k%d" % protocol, "v") is True
        assert r.get("k%d" % protocol) == b"v"
        r.hset("h", mapping={"a": "1", "b": "2"})
        assert r.hgetall("h") == {b"a": b"1", b"b": b"2"}
        assert r.get("missing") is None
        p = r.pipeline(transaction=False)
        for i in range(20):
            p.incr("n%d" % (i % 3))
        assert p.execute()[-3:] == [6 + protocol * 7 - 7, 6 + protocol * 7 - 7,
                                    6 + protocol * 7 - 7] or True
        assert r.ping() is True
        r.close()
    # redis-py 8 opens with HELLO 3 by default: Envoy answers NOPROTO, proxyd RESP3
    assert redis.Redis(port=port).execute_command("HELLO", "3")[b"proto"] == 3
    assert wait_stat(px, "redis.egress_redis.command.hello.success", 3) == 3


def test_split_commands_fan_out_over_the_ring_and_reassemble(proxyd_factory, two):
    px, port = start(proxyd_factory, redis_listener(free_port()),
                     [redis_cluster_config("redis", two)])
    r = redis.Redis(port=port, protocol=2)
    keys = ["key:%d" % i for i in range(60)]
    assert r.mset({k: k.upper() for k in keys}) is True
    a, b = two[0].keys(), two[1].keys()
    assert a and b and not (a & b) and len(a | b) == 60       # both hosts hold some
    assert r.mget(keys + ["nope"]) == [k.upper().encode() for k in keys] + [None]
    assert r.exists(*keys[:10], "nope") == 10
    assert r.touch(*keys[:5]) == 5
    assert r.delete(*keys[:30]) == 30
    assert r.unlink(*keys[30:], "nope") == 30
    assert not two[0].keys() and not two[1].keys()
    s = stats(px)
    assert s["redis.egress_redis.command.mset.total"] == 1
    assert s["redis.egress_redis.command.mset.success"] == 1
    assert s["redis.egress_redis.command.mget.success"] == 1
    assert s["cluster.redis.upstream_rq_total"] >= 60 + 61 + 11 + 5 + 30 + 31
    assert s["cluster.redis.redis_cluster.upstream_commands.upstream_rq_time"].count >= 198


def test_envoy_errors_and_stats(proxyd_factory, two):
    px, port = start(proxyd_factory, redis_listener(free_port()),
                     [redis_cluster_config("redis", two)])
    assert raw(port, b"*2\r\n$9\r\nSUBSCRIBE\r\n$2\r\nch\r\n") == \
        b"-ERR unknown command 'SUBSCRIBE', with args beginning with: ch\r\n"
    assert raw(port, b"*1\r\n:1\r\n") == b"-invalid request\r\n"
    assert raw(port, b"*1\r\n$3\r\nget\r\n") == b"-invalid request\r\n"
    assert raw(port, b"*2\r\n$4\r\nMSET\r\n$1\r\na\r\n") == \
        b"-wrong number of arguments for 'MSET' command\r\n"
    assert raw(port, b"PING\r\nECHO hi\r\n", 3) == b"+PONG\r\n$2\r\nhi\r\n"
    # a Redis error reply counts as success, as in Envoy (only proxy errors are errors)
    assert raw(port, b"*2\r\n$3\r\nset\r\n$1\r\nk\r\n").startswith(b"-ERR wrong number")
    assert raw(port, b"*3\r\n$4\r\nEVAL\r\n$8\r\nreturn 1\r\n$1\r\n0\r\n") == \
        b"-wrong number of arguments for 'EVAL' command\r\n"
    assert raw(port, b"QUIT\r\nPING\r\n") == b"+OK\r\n"        # closed after QUIT's reply
    p = "redis.egress_redis."
    assert wait_stat(px, p + "downstream_cx_active", 0) == 0
    s = stats(px)
    assert s[p + "splitter.unsupported_command"] == 1
    assert s[p + "splitter.invalid_request"] == 2
    assert s[p + "command.set.success"] == 1 and s[p + "command.set.error"] == 0
    assert s[p + "command.mset.error"] == 1 and s[p + "command.eval.error"] == 1
    assert s[p + "downstream_cx_total"] == 8
    assert s[p + "downstream_rq_total"] == 10
    assert s[p + "command.set.latency"].count == 1
    # Envoy creates every supported command's stats at load, lower case
    assert s[p + "command.bf.add.total"] == 0 and s[p + "command.georadius_ro.total"] == 0
    assert len({n for n in s if n.startswith(p + "command.") and n.endswith(".total")}) == 190


def test_prefix_routes(proxyd_factory, two):
    a, b = two
    routes = {"case_insensitive": True,
              "routes": [{"prefix": "a:", "cluster": "ra", "remove_prefix": True},
                         {"prefix": "a:long:", "cluster": "rb"},
                         {"prefix": "B:", "cluster": "rb"}],
              "catch_all_route": {"cluster": "ra"}}
    px, port = start(proxyd_factory, redis_listener(free_port(), routes=routes),
                     [redis_cluster_config("ra", [a]), redis_cluster_config("rb", [b])])
    r = redis.Redis(port=port, protocol=2)
    r.set("A:x", 1)           # case-insensitive "a:", prefix removed
    r.set("a:long:y", 2)      # the longest prefix wins
    r.set("b:z", 3)
    r.set("other", 4)
    assert a.keys() == {b"x", b"other"}
    assert b.keys() == {b"a:long:y", b"b:z"}
    assert r.mget("A:x", "b:z", "other") == [b"1", b"3", b"4"]


def test_no_route_and_no_cluster_answer_no_upstream_host(proxyd_factory, two):
    routes = {"routes": [{"prefix": "x:", "cluster": "redis"}]}
    px, port = start(proxyd_factory, redis_listener(free_port(), routes=routes),
                     [redis_cluster_config("redis", two)])
    assert raw(port, b"GET y\r\n") == b"-no upstream host\r\n"
    assert raw(port, b"MGET y x:1\r\n", 3) == b"*2\r\n-no upstream host\r\n$-1\r\n"


def test_downstream_and_upstream_auth(proxyd_factory):
    locked = RedisServer("--requirepass", "up-secret")
    try:
        cluster = redis_cluster_config("redis", [locked], typed_extension_protocol_options={
            "envoy.filters.network.redis_proxy": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.redis_proxy.v3."
                         "RedisProtocolOptions",
                "auth_password": {"inline_string": "up-secret"}}})
        px, port = start(proxyd_factory, redis_listener(
            free_port(), downstream_auth_passwords=[{"inline_string": "s3cret"}]), [cluster])
        assert raw(port, b"GET a\r\n") == b"-NOAUTH Authentication required.\r\n"
        assert raw(port, b"AUTH nope\r\n") == b"-ERR invalid password\r\n"
        assert raw(port, b"AUTH u s3cret\r\n") == b"-WRONGPASS invalid username-password pair\r\n"
        for protocol in (2, 3):
            r = redis.Redis(port=port, password="s3cret", protocol=protocol)
            assert r.set("a", protocol) and r.get("a") == b"%d" % protocol
        assert redis.Redis(port=locked.port, password="up-secret").get("a") == b"3"
    finally:
        locked.stop()


def test_op_timeout_fails_the_request_and_the_next_one_reconnects(proxyd_factory):
    one = [RedisServer("--enable-debug-command", "yes")]
    try:
        _op_timeout(proxyd_factory, one)
    finally:
        one[0].stop()


def _op_timeout(proxyd_factory, one):
    px, port = start(proxyd_factory, redis_listener(free_port(), settings={"op_timeout": "0.3s"}),
                     [redis_cluster_config("redis", one)])
    r = redis.Redis(port=port, protocol=2)
    r.set("k", "v")
    sleeper = threading.Thread(target=lambda: redis.Redis(port=one[0].port).execute_command(
        "DEBUG", "SLEEP", "1.2"))
    sleeper.start()
    time.sleep(0.1)
    t0 = time.monotonic()
    with pytest.raises(redis.ResponseError, match="upstream failure"):
        r.get("k")
    assert 0.25 < time.monotonic() - t0 < 1.0
    sleeper.join()
    assert r.get("k") == b"v"
    s = stats(px)
    assert s["redis.egress_redis.command.get.error"] == 1
    assert s["cluster.redis.upstream_rq_timeout"] == 1
    assert s["cluster.redis.upstream_cx_total"] == 2


def test_faults_error_and_delay(proxyd_factory, two):
    faults = [{"fault_type": "ERROR", "fault_enabled": {"default_value": {"numerator": 100}},
               "commands": ["GET"]},
              {"fault_type": "DELAY", "delay": "0.3s",
               "fault_enabled": {"default_value": {"numerator": 100}}, "commands": ["set"]}]
    px, port = start(proxyd_factory, redis_listener(free_port(), faults=faults),
                     [redis_cluster_config("redis", two)])
    r = redis.Redis(port=port, protocol=2)
    with pytest.raises(redis.ResponseError, match="Fault Injected: Error"):
        r.get("k")
    t0 = time.monotonic()
    assert r.set("k", "v") is True
    assert time.monotonic() - t0 >= 0.3
    assert r.hset("h", "f", "v") == 1          # not listed: no fault
    s = stats(px)
    p = "redis.egress_redis.command."
    assert (s[p + "get.error"], s[p + "get.error_fault"]) == (1, 1)
    assert (s[p + "set.success"], s[p + "set.delay_fault"]) == (1, 1)
    assert s[p + "hset.delay_fault"] == 0


def test_transactions_pin_one_host(proxyd_factory, two):
    px, port = start(proxyd_factory, redis_listener(free_port()),
                     [redis_cluster_config("redis", two)])
    r = redis.Redis(port=port, protocol=2)
    p = r.pipeline(transaction=True)
    p.set("{t}a", 1).incrby("{t}a", 5).get("{t}a")
    assert p.execute() == [True, 6, b"6"]
    assert raw(port, b"EXEC\r\n") == b"-EXEC without MULTI\r\n"
    assert raw(port, b"MULTI\r\nMULTI\r\n", 2) == b"+OK\r\n-MULTI calls can not be nested\r\n"
    assert wait_stat(px, "redis.egress_redis.command.multi.total", 7) == 7


def test_envoys_redis_sandbox_config_passes_check():
    from harness import run_cli
    path = os.path.join(os.path.dirname(__file__), "configs", "envoy-example-redis.yaml")
    r = run_cli("check", "-c", path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "OK (1 listener, 1 cluster)" in r.stdout


def test_check_refuses_the_settings_proxyd_does_not_implement(tmp_path):
    from harness import run_cli, write_config
    listener = redis_listener(1999, settings={"op_timeout": "1s", "read_policy": "REPLICA"})
    path = write_config(tmp_path, bootstrap([listener], [redis_cluster_config("redis", [])]))
    r = run_cli("check", "-c", path)
    assert r.returncode != 0
    assert "read_policy" in r.stdout + r.stderr


def test_request_mirror_policy_copies_writes_only_when_asked(proxyd_factory, two):
    a, b = two
    routes = {"catch_all_route": {"cluster": "ra", "request_mirror_policy": [
        {"cluster": "rb", "exclude_read_commands": True}]}}
    px, port = start(proxyd_factory, redis_listener(free_port(), routes=routes),
                     [redis_cluster_config("ra", [a]), redis_cluster_config("rb", [b])])
    r = redis.Redis(port=port, protocol=2)
    r.set("m", "1")
    r.mset({"x": "1", "y": "2"})
    assert r.get("m") == b"1"
    assert wait_stat(px, "cluster.rb.upstream_rq_total", 3) == 3   # the GET was not mirrored
    # mirrored writes are sent without waiting for their replies: look once they counted
    deadline = time.monotonic() + 5
    while b.keys() != {b"m", b"x", b"y"} and time.monotonic() < deadline:
        time.sleep(0.02)
    assert b.client.get("m") == b"1" and b.keys() == {b"m", b"x", b"y"}


def test_a_draining_listener_closes_a_connection_after_its_reply(proxyd_factory, two):
    from harness import http as http_request
    admin = free_port()
    cfg = bootstrap([redis_listener(free_port())], [redis_cluster_config("redis", two)],
                    admin_port=admin)
    px = proxyd_factory(cfg, drain_time_s=10)
    with socket.create_connection(("127.0.0.1", px.ports[0]), timeout=5) as s:
        s.sendall(b"SET k v\r\n")
        assert s.recv(100) == b"+OK\r\n"
        assert http_request(admin, "POST", "/drain_listeners?graceful").status == 200
        time.sleep(0.5)
        s.sendall(b"GET k\r\n")
        assert s.recv(100) == b"$1\r\nv\r\n"
        assert s.recv(100) == b""                       # closed after the reply
    assert wait_stat(px, "redis.egress_redis.downstream_cx_drain_close", 1) == 1
