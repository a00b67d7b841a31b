"""Load balancing and mirroring beside Envoy 1.40 on one template, in front of the same
four upstream processes: the host each hash key lands on (RING_HASH and MAGLEV, header,
query-parameter, cookie, combined and terminal policies), the generated cookie, the
weighted round-robin split, the balancer's stats, and what a shadow cluster receives."""
from __future__ import annotations

import collections
import re
import time

import pytest

from harness import Upstream, http

TEMPLATE = """
admin:
  address: {socket_address: {address: 127.0.0.1, port_value: $admin}}
static_resources:
  listeners:
  - name: main
    address: {socket_address: {address: 127.0.0.1, port_value: $listener}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress_http
          route_config:
            name: local_route
            virtual_hosts:
            - name: vh
              domains: ["*"]
              routes:
              - match: {prefix: "/ring/"}
                route:
                  cluster: ring
                  hash_policy: [{header: {header_name: x-key}}]
              - match: {prefix: "/maglev/"}
                route:
                  cluster: maglev
                  hash_policy: [{header: {header_name: x-key}}]
              - match: {prefix: "/query/"}
                route:
                  cluster: ring
                  hash_policy: [{query_parameter: {name: k}}]
              - match: {prefix: "/combined/"}
                route:
                  cluster: maglev
                  hash_policy:
                  - {header: {header_name: x-a}}
                  - {header: {header_name: x-b}, terminal: true}
                  - {query_parameter: {name: k}}
              - match: {prefix: "/cookie/"}
                route:
                  cluster: ring
                  hash_policy: [{cookie: {name: sticky, ttl: 600s, path: /cookie}}]
              - match: {prefix: "/wrr/"}
                route: {cluster: wrr}
              - match: {prefix: "/loc/"}
                route: {cluster: loc}
              - match: {prefix: "/prio/"}
                route: {cluster: prio}
              - match: {prefix: "/retry-ring/"}
                route:
                  cluster: ring
                  hash_policy: [{header: {header_name: x-key}}]
                  retry_policy: &retry
                    retry_on: 5xx
                    num_retries: 1
                    host_selection_retry_max_attempts: 3
                    retry_host_predicate:
                    - name: envoy.retry_host_predicates.previous_hosts
                      typed_config: {"@type": type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate}
              - match: {prefix: "/retry-maglev/"}
                route:
                  cluster: maglev
                  hash_policy: [{header: {header_name: x-key}}]
                  retry_policy: *retry
              - match: {prefix: "/mirror/"}
                route:
                  cluster: wrr
                  request_mirror_policies: [{cluster: shadow}]
              - match: {prefix: "/mirror-nosuffix/"}
                route:
                  cluster: wrr
                  request_mirror_policies: [{cluster: shadow, disable_shadow_host_suffix_append: true}]
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}
  clusters:
  - name: ring
    type: STATIC
    connect_timeout: 1s
    lb_policy: RING_HASH
    load_assignment:
      cluster_name: ring
      endpoints: [{lb_endpoints: [EPS_1213]}]
  - name: maglev
    type: STATIC
    connect_timeout: 1s
    lb_policy: MAGLEV
    load_assignment:
      cluster_name: maglev
      endpoints: [{lb_endpoints: [EPS_1213]}]
  - name: wrr
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: wrr
      endpoints: [{lb_endpoints: [EPS_123]}]
  - name: loc
    type: STATIC
    connect_timeout: 1s
    common_lb_config: {locality_weighted_lb_config: {}}
    load_assignment:
      cluster_name: loc
      endpoints:
      - {locality: {zone: a}, load_balancing_weight: 1, lb_endpoints: [EP_0]}
      - {locality: {zone: b}, load_balancing_weight: 3, lb_endpoints: [EP_1]}
      - {locality: {zone: c}, lb_endpoints: [EP_2]}
      - {priority: 1, locality: {zone: d}, load_balancing_weight: 5, lb_endpoints: [EP_3]}
  - name: prio
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: prio
      policy: {overprovisioning_factor: 50}
      endpoints:
      - {lb_endpoints: [EP_0]}
      - {priority: 1, lb_endpoints: [EP_1]}
  - name: shadow
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: shadow
      endpoints: [{lb_endpoints: [SHADOW_EP]}]
"""
KEYS = ["user-%d" % i for i in range(40)]


def _ep(port, weight):
    return ("{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: %d}}}, "
            "load_balancing_weight: %d}" % (port, weight))


@pytest.fixture(scope="module")
def hosts():
    ups = [Upstream("u%d" % i) for i in range(5)]  # u4 is the shadow
    yield ups
    for u in ups:
        u.stop()


@pytest.fixture(scope="module")
def pair(pair_factory, hosts):
    tpl = (TEMPLATE
           .replace("EPS_1213", ", ".join(_ep(u.port, w) for u, w in zip(hosts, (1, 2, 1, 3))))
           .replace("EPS_123", ", ".join(_ep(u.port, w) for u, w in zip(hosts, (1, 2, 3))))
           .replace("SHADOW_EP", _ep(hosts[4].port, 1)))
    for i in range(4):
        tpl = tpl.replace("EP_%d" % i, _ep(hosts[i].port, 1))
    return pair_factory(tpl)


def _server(side, path, headers=()):
    r = side.http(path, headers=headers)
    assert r.status == 200, (side.name, r)
    return r.json()["server"]


def test_hash_keys_pick_the_hosts_envoy_picks(pair):
    def observe(side):
        return {
            "ring": [_server(side, "/ring/x", [("x-key", k)]) for k in KEYS],
            "maglev": [_server(side, "/maglev/x", [("x-key", k)]) for k in KEYS],
            # a header with two values: sorted, then hashed as one string
            "two_values": [_server(side, "/maglev/x", [("x-key", k), ("x-key", "b")])
                           for k in KEYS[:10]],
            "query": [_server(side, "/query/x?a=1&k=%s&k=other" % k) for k in KEYS],
            "combined": [_server(side, "/combined/x?k=%s" % k, [("x-a", k)]) for k in KEYS[:10]]
                        + [_server(side, "/combined/x?k=%s" % k, [("x-a", "a"), ("x-b", k)])
                           for k in KEYS[:10]],
            "cookie": [_server(side, "/cookie/x", [("cookie", "o=1; sticky=\"%s\"" % k)])
                       for k in KEYS[:10]],
        }
    envoy, proxyd = pair.both(observe)
    assert len(set(envoy["ring"])) >= 3 and len(set(envoy["maglev"])) >= 3
    assert proxyd == envoy


def test_generated_cookie_matches_envoy(pair):
    def observe(side):
        r = side.http("/cookie/x")
        cookie = r.header("set-cookie")
        value = re.fullmatch(r'sticky="([0-9a-f]{16})"(.*)', cookie or "")
        assert value, (side.name, r.headers)
        # the value hashes the connection's addresses (a different client port per
        # side), so compare its shape and that it steers the next request
        follow = _server(side, "/cookie/x", [("cookie", "sticky=%s" % value.group(1))])
        again = _server(side, "/cookie/x", [("cookie", "sticky=%s" % value.group(1))])
        return value.group(2), follow == again == r.json()["server"]
    envoy, proxyd = pair.both(observe)
    assert envoy == ("; Max-Age=600; Path=/cookie; HttpOnly", True)
    assert proxyd == envoy


def test_weighted_round_robin_split_matches_envoy(pair):
    def observe(side):
        counts = collections.Counter(_server(side, "/wrr/x") for _ in range(60))
        return {k: v for k, v in sorted(counts.items())}
    envoy, proxyd = pair.both(observe)
    for got in (envoy, proxyd):  # EDF over weights 1:2:3; a window may start mid-cycle
        assert set(got) == {"u0", "u1", "u2"}
        for name, want in (("u0", 10), ("u1", 20), ("u2", 30)):
            assert abs(got[name] - want) <= 1, got


def test_locality_weights_and_priorities_match_envoy(pair):
    """Localities weighted 1:3 (a third without a weight gets nothing) in priority 0, a
    healthy priority 0 takes everything from priority 1."""
    def observe(side):
        return dict(sorted(collections.Counter(_server(side, "/loc/x") for _ in range(40))
                           .items()))
    envoy, proxyd = pair.both(observe)
    for got in (envoy, proxyd):  # EDF over the localities: a window may start mid-cycle
        assert set(got) == {"u0", "u1"}, got
        assert abs(got["u0"] - 10) <= 1, got


def test_overprovisioning_factor_splits_priorities_as_envoy(pair):
    """overprovisioning_factor 50: a fully healthy level is 50 % available, so half the
    load goes to priority 1."""
    def observe(side):
        return collections.Counter(_server(side, "/prio/x") for _ in range(100))
    envoy, proxyd = pair.both(observe)
    for got in (envoy, proxyd):
        assert set(got) == {"u0", "u1"} and 25 <= got["u0"] <= 75, got


def test_retry_host_predicate_moves_on_the_ring_as_envoy(pair):
    """previous_hosts on a hash balancer: a re-pick moves by the attempt number (the
    ring's next point, a flipped Maglev hash), so the retried host is Envoy's."""
    def observe(side):
        out = []
        for kind in ("ring", "maglev"):
            for k in KEYS[:12]:
                # fail=1: each server answers this target 503 the first time it sees it
                r = side.http("/retry-%s/%s-%s?fail=1" % (kind, side.name, k),
                              headers=[("x-key", k)])
                first = _server(side, "/%s/x" % kind, [("x-key", k)])
                out.append((r.status, r.json()["server"], first))
        return out
    envoy, proxyd = pair.both(observe)
    # mostly another host; the same one when every re-pick landed on it again (then
    # it has seen the target once and answers 200)
    assert sum(retried != first for _s, retried, first in envoy) >= len(envoy) // 2, envoy
    assert proxyd == envoy


def test_balancer_stats_match_envoy(pair):
    names = ("ring.ring_hash_lb.size", "ring.ring_hash_lb.min_hashes_per_host",
             "ring.ring_hash_lb.max_hashes_per_host", "maglev.maglev_lb.min_entries_per_host",
             "maglev.maglev_lb.max_entries_per_host", "ring.lb_healthy_panic",
             "wrr.lb_healthy_panic", "wrr.lb_zone_routing_all_directly")

    def observe(side):
        side.http("/ring/x", headers=[("x-key", "k")])
        stats = dict(line.split(": ", 1) for line in side.admin("/stats").body.decode()
                     .splitlines() if ": " in line)
        return {n: stats.get("cluster." + n) for n in names}
    envoy, proxyd = pair.both(observe)
    assert envoy["ring.ring_hash_lb.size"] is not None
    assert proxyd == envoy


def _until_stat(side, name, value, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stats = dict(line.split(": ", 1) for line in side.admin("/stats").body.decode()
                     .splitlines() if ": " in line)
        if stats.get(name) == value:
            return
        time.sleep(0.02)


def test_the_shadow_sees_what_envoy_sends_it(pair, hosts):
    shadow = hosts[4]
    keep = ("host", "content-length", "x-forwarded-proto", "x-envoy-expected-rq-timeout-ms",
            "x-custom", "x-envoy-internal", "x-forwarded-for", "x-request-id")

    def observe(side):
        shadow.reset()
        out = []
        for i, (path, host, body) in enumerate((("/mirror/a?q=1", "svc.example:8080", None),
                                                ("/mirror/post", "svc.example", b"z" * 5000),
                                                ("/mirror-nosuffix/b", "svc.example", None))):
            r = http(side.ports["listener"], method="POST" if body else "GET", path=path,
                     host=host, body=body, headers=[("x-custom", "1"), ("x-request-id", "r1")]
                     + ([("x-forwarded-for", "10.0.0.1")] if body else []))
            out.append(r.status)
            # the shadow is answered after the client: the next request reuses its
            # connection only once it is back in the pool (on both sides)
            _until_stat(side, "cluster.shadow.upstream_rq_completed", str(i + 1))
        deadline = time.monotonic() + 10
        log = []
        while len(log) < 3 and time.monotonic() < deadline:
            log = shadow.requests_log()
            time.sleep(0.05)
        seen = sorted((e["method"], e["path"],
                       sorted((k, v) for k, v in e["headers"] if k in keep)) for e in log)
        names = ("upstream_rq_total", "upstream_rq_200", "upstream_rq_2xx",
                 "upstream_rq_completed", "upstream_cx_total", "upstream_rq_active",
                 "retry_or_shadow_abandoned")
        deadline = time.monotonic() + 10
        while True:  # the shadow's answer is counted once it is read
            stats = dict(line.split(": ", 1) for line in side.admin("/stats").body.decode()
                         .splitlines() if ": " in line)
            if stats.get("cluster.shadow.upstream_rq_completed") == "3" or \
                    time.monotonic() > deadline:
                break
            time.sleep(0.05)
        return out, seen, {n: stats.get("cluster.shadow." + n) for n in names}
    envoy, proxyd = pair.both(observe)
    assert [h for _m, _p, hs in envoy[1] for k, h in hs if k == "host"] == [
        "svc.example", "svc.example-shadow:8080", "svc.example-shadow"]
    assert proxyd == envoy
