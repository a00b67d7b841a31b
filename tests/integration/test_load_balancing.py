"""Load-balancer policies, route hash policies, priorities and localities end to end:
real upstream processes behind proxyd (several workers where the answer could depend on
which worker took the connection)."""
import collections
import re
import socket
import threading
import time

import pytest

from harness import bootstrap, cluster, free_port, http, listener, route, virtual_host


def _endpoints(ups, weights=None):
    return [{"endpoint": {"address": {"socket_address": {"address": "127.0.0.1",
                                                          "port_value": u.port}}},
             **({"load_balancing_weight": w} if w else {})}
            for u, w in zip(ups, weights or [None] * len(ups))]


def _cluster(ups, policy, weights=None, **extra):
    c = cluster("upstream", [], lb_policy=policy, **extra)
    c["load_assignment"]["endpoints"] = [{"lb_endpoints": _endpoints(ups, weights)}]
    return c


def _serve(proxyd_factory, clusters, routes=None, concurrency=1, **hcm):
    port = free_port()
    proxyd_factory(bootstrap([listener(port, routes=routes, **hcm)], clusters),
                   concurrency=concurrency)
    return port


def _server(port, path="/x", headers=()):
    r = http(port, path=path, headers=headers)
    assert r.status == 200, r
    return r.json()["server"]


@pytest.mark.parametrize("policy", ["RING_HASH", "MAGLEV"])
def test_a_header_key_sticks_to_one_host_on_every_worker(upstream_factory, proxyd_factory,
                                                         policy):
    ups = [upstream_factory("u%d" % i) for i in range(4)]
    port = _serve(proxyd_factory, [_cluster(ups, policy)],
                  routes=[route(hash_policy=[{"header": {"header_name": "x-user"}}])],
                  concurrency=2)
    picks = {}
    for key in ("user-%d" % i for i in range(24)):
        seen = {_server(port, headers=[("x-user", key)]) for _ in range(4)}
        assert len(seen) == 1, (key, seen)       # new connections: any worker answers
        picks[key] = seen.pop()
    assert len(set(picks.values())) >= 3, picks  # 24 keys spread over the hosts


def test_ring_hash_matches_the_ring_envoy_builds(upstream_factory, proxyd_factory):
    """The host for a key is the one Envoy's ring gives (the conformance suite checks
    against Envoy itself; here against the table built the same way offline)."""
    from proxyd.upstream import hash_lb
    import xxhash
    ups = [upstream_factory("u%d" % i) for i in range(3)]
    port = _serve(proxyd_factory, [_cluster(ups, "RING_HASH", weights=[1, 2, 3])],
                  routes=[route(hash_policy=[{"query_parameter": {"name": "k"}}])])

    class H:
        def __init__(self, u, w):
            self.addr_str, self.hostname, self.weight, self.name = (
                "127.0.0.1:%d" % u.port, "", w, u.name)
    ring = hash_lb.RingHash(hash_lb.normalized([H(u, w) for u, w in zip(ups, (1, 2, 3))]))
    for i in range(20):
        key = "key%d" % i
        want = ring.choose(xxhash.xxh64_intdigest(key.encode())).name
        assert _server(port, path="/x?k=%s&other=1" % key) == want


def test_cookie_policy_sets_a_cookie_and_then_follows_it(upstream_factory, proxyd_factory):
    ups = [upstream_factory("u%d" % i) for i in range(4)]
    port = _serve(proxyd_factory, [_cluster(ups, "MAGLEV")], routes=[route(hash_policy=[
        {"cookie": {"name": "sticky", "ttl": "3600s", "path": "/app",
                    "attributes": [{"name": "SameSite", "value": "Lax"}]}}])])
    r = http(port, path="/x")
    cookie = r.header("set-cookie")
    m = re.fullmatch(r'sticky="([0-9a-f]{16})"; Max-Age=3600; Path=/app; SameSite=Lax; HttpOnly',
                     cookie or "")
    assert m, r.headers
    first = r.json()["server"]
    for _ in range(5):
        r = http(port, path="/x", headers=[("cookie", "a=b; sticky=%s" % m.group(1))])
        assert r.header("set-cookie") is None  # the request carried it: none generated
        assert r.json()["server"] == first


def test_round_robin_follows_endpoint_weights(upstream_factory, proxyd_factory):
    ups = [upstream_factory("u%d" % i) for i in range(3)]
    port = _serve(proxyd_factory, [_cluster(ups, "ROUND_ROBIN", weights=[1, 2, 3])])
    counts = collections.Counter(_server(port) for _ in range(60))
    assert counts == {"u0": 10, "u1": 20, "u2": 30}  # one worker: one schedule


def test_random_and_unweighted_round_robin_use_every_host(upstream_factory, proxyd_factory):
    ups = [upstream_factory("u%d" % i) for i in range(3)]
    c_random = _cluster(ups, "RANDOM")
    c_rr = dict(_cluster(ups, "ROUND_ROBIN"), name="rr")
    c_rr["load_assignment"] = dict(c_rr["load_assignment"], cluster_name="rr")
    port = _serve(proxyd_factory, [c_random, c_rr],
                  routes=[route("/rr", cluster="rr"), route("/")])
    assert {_server(port) for _ in range(60)} == {"u0", "u1", "u2"}
    rr = [_server(port, path="/rr") for _ in range(9)]
    assert collections.Counter(rr) == {"u0": 3, "u1": 3, "u2": 3}


def test_locality_weights_split_the_load(upstream_factory, proxyd_factory):
    ups = [upstream_factory("u%d" % i) for i in range(3)]
    c = cluster("upstream", [], common_lb_config={"locality_weighted_lb_config": {}})
    c["load_assignment"]["endpoints"] = [
        {"locality": {"zone": "a"}, "load_balancing_weight": 1, "lb_endpoints": _endpoints(ups[:1])},
        {"locality": {"zone": "b"}, "load_balancing_weight": 3, "lb_endpoints": _endpoints(ups[1:2])},
        # no weight: a weighted-locality cluster sends it nothing (Envoy)
        {"locality": {"zone": "c"}, "lb_endpoints": _endpoints(ups[2:])}]
    port = _serve(proxyd_factory, [c])
    counts = collections.Counter(_server(port) for _ in range(40))
    assert counts == {"u0": 10, "u1": 30}, counts


def test_a_healthy_first_priority_takes_all_the_load(upstream_factory, proxyd_factory):
    ups = [upstream_factory("u%d" % i) for i in range(2)]
    c = cluster("upstream", [])
    c["load_assignment"]["endpoints"] = [
        {"priority": 0, "lb_endpoints": _endpoints(ups[:1])},
        {"priority": 1, "lb_endpoints": _endpoints(ups[1:])}]
    port = _serve(proxyd_factory, [c], concurrency=2)
    assert {_server(port) for _ in range(20)} == {"u0"}


class HoldingServer:
    """An upstream that accepts and reads requests and answers none until released."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.held = 0
        self.release = threading.Event()
        self._conns = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self._conns.append(c)
            threading.Thread(target=self._hold, args=(c,), daemon=True).start()

    def _hold(self, c):
        try:
            if c.recv(65536):
                self.held += 1
                self.release.wait()
                body = b'{"server": "holding"}'
                c.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
        except OSError:
            pass

    def close(self):
        self.release.set()
        self.sock.close()
        for c in self._conns:
            c.close()


WORKERS = 2


def test_least_request_avoids_a_host_busy_on_another_worker(upstream_factory, proxyd_factory):
    """Active requests are counted across workers: once the holding host has two
    requests in flight (on whichever workers), no worker sends it another (the fast host
    has at most one: the client's previous request, whose worker may not have counted
    it done yet when the next one is picked). choice_count 64 makes "every sample hit
    the busy host" a 2^-64 event."""
    fast = upstream_factory("fast")
    slow = HoldingServer()
    try:
        c = cluster("upstream", [("127.0.0.1", fast.port), ("127.0.0.1", slow.port)],
                    lb_policy="LEAST_REQUEST", least_request_lb_config={"choice_count": 64})
        port = _serve(proxyd_factory, [c], concurrency=WORKERS)
        def held_request():
            try:
                http(port, path="/x")
            except OSError:  # the holding server closes at the end
                pass
        deadline = time.monotonic() + 30
        while slow.held < 2 and time.monotonic() < deadline:  # until two are held there
            t = threading.Thread(target=held_request, daemon=True)
            t.start()
            t.join(0.5)
        held = slow.held
        assert held >= 2
        assert {_server(port) for _ in range(30)} == {"fast"}
        assert slow.held == held
    finally:
        slow.close()


# --- request mirroring -----------------------------------------------------------------

def _wait_log(up, n, timeout=10.0):
    deadline = time.monotonic() + timeout
    while True:
        log = up.requests_log()
        if len(log) >= n or time.monotonic() > deadline:
            return log
        time.sleep(0.05)


def _mirror_config(main, shadow_port, policies, concurrency=1, proxyd_factory=None):
    clusters = [cluster("upstream", [("127.0.0.1", main.port)]),
                cluster("shadow", [("127.0.0.1", shadow_port)])]
    return _serve(proxyd_factory, clusters, routes=[
        route("/none", request_mirror_policies=[dict(policies[0], runtime_fraction={
            "default_value": {"numerator": 0}})]),
        dict(route("/", request_mirror_policies=policies),
             request_headers_to_add=[{"header": {"key": "x-added", "value": "1"}}])],
        concurrency=concurrency)


def test_mirror_copies_the_request_with_a_shadow_host(upstream_factory, proxyd_factory):
    main, shadow = upstream_factory("main"), upstream_factory("shadow")
    port = _mirror_config(main, shadow.port, [{"cluster": "shadow"}],
                          proxyd_factory=proxyd_factory)
    r = http(port, path="/a?b=1", host="example.com:8080")
    assert r.status == 200 and r.json()["server"] == "main"
    body = b"x" * 300_000
    r = http(port, method="POST", path="/post", host="example.com", body=body)
    assert r.status == 200 and r.json()["body_len"] == len(body)
    log = _wait_log(shadow, 2)
    assert [(e["method"], e["path"]) for e in log] == [("GET", "/a?b=1"), ("POST", "/post")]
    heads = [dict(e["headers"]) for e in log]
    assert heads[0]["host"] == "example.com-shadow:8080"
    assert heads[0]["x-added"] == "1"               # the request as sent upstream
    assert heads[1]["host"] == "example.com-shadow"
    assert heads[1]["content-length"] == str(len(body))
    # runtime_fraction 0 %: no copy
    assert http(port, path="/none").status == 200
    time.sleep(0.3)
    assert len(shadow.requests_log()) == 2


def test_mirror_never_delays_or_fails_the_request(upstream_factory, proxyd_factory):
    """A shadow that never answers, and one that refuses connections: the main request
    is answered at once either way."""
    main = upstream_factory("main")
    holding = HoldingServer()
    refused = free_port()
    try:
        clusters = [cluster("upstream", [("127.0.0.1", main.port)]),
                    cluster("hold", [("127.0.0.1", holding.port)]),
                    cluster("refuse", [("127.0.0.1", refused)])]
        port = _serve(proxyd_factory, clusters, routes=[route("/", request_mirror_policies=[
            {"cluster": "hold", "disable_shadow_host_suffix_append": True},
            {"cluster": "refuse"}])], concurrency=2)
        for i in range(5):
            r = http(port, method="POST", path="/p%d" % i, body=b"y" * 1000)
            assert r.status == 200 and r.json()["server"] == "main"
        deadline = time.monotonic() + 10
        while holding.held < 5 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert holding.held == 5
        assert len(main.requests_log()) == 5
    finally:
        holding.close()


def test_mirror_host_suffix_can_be_disabled(upstream_factory, proxyd_factory):
    main, shadow = upstream_factory("main"), upstream_factory("shadow")
    port = _mirror_config(main, shadow.port, [{"cluster": "shadow",
                                               "disable_shadow_host_suffix_append": True}],
                          proxyd_factory=proxyd_factory)
    assert http(port, path="/q", host="svc.local").status == 200
    log = _wait_log(shadow, 1)
    assert dict(log[0]["headers"])["host"] == "svc.local"


def test_http2_requests_hash_on_a_header_and_the_authority(upstream_factory, proxyd_factory):
    """An HTTP/2 request hashes like an HTTP/1 one: a header's value, and the
    ":authority" pseudo-header (the Host of HTTP/1) on the same ring."""
    import json
    import sys
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parents[1] / "http2"))
    from h2client import H2Client
    ups = [upstream_factory("u%d" % i) for i in range(4)]
    port = _serve(proxyd_factory, [_cluster(ups, "RING_HASH")], routes=[
        route("/h", hash_policy=[{"header": {"header_name": "x-user"}}]),
        route("/a", hash_policy=[{"header": {"header_name": ":authority"}}])])
    for path, key in (("/h", "x-user"), ("/a", None)):
        for k in ("alice", "bob", "carol"):
            h1 = http(port, path=path, headers=[("x-user", k)] if key else (),
                      host=k if not key else "example.com").json()["server"]
            c = H2Client(port)
            if not key:
                c.authority = k
            seen = {json.loads(bytes(c.wait(c.request(path=path, headers=[("x-user", k)]
                                                      if key else [])).body))["server"]
                    for _ in range(3)}
            c.sock.close()
            assert seen == {h1}, (path, k, seen, h1)
