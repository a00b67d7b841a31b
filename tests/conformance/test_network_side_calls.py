"""envoy.filters.network.ext_authz and envoy.filters.network.ratelimit in front of
tcp_proxy, side by side with real Envoy 1.40: the same connections pass or are closed,
with the same stats. The services are real: grpcio Authorization servers deciding with
Rego (one allowing, one denying everything) and a RateLimitService counting in redis."""
from __future__ import annotations

import time

import pytest

from authz_services import POLICY, RegoAuthz
from ratelimit_service import RateLimitService, RedisServer

ALLOW_ALL = 'package envoy.authz\n\ndecision := {"allow": true}\n'
H2 = """
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {http2_protocol_options: {}}"""


def _cluster(name, port, h2=True):
    return """
  - name: %s
    connect_timeout: 1s%s
    load_assignment:
      cluster_name: %s
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address:
        {address: 127.0.0.1, port_value: %s}}}}]}]""" % (name, H2 if h2 else "", name, port)


def _listener(name, port, first):
    return """
  - name: %s
    address: {socket_address: {address: 127.0.0.1, port_value: %s}}
    filter_chains:
    - filters:
      - %s
      - name: tcp
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: tcp_%s
          cluster: upstream""" % (name, port, first, name)


def _authz(prefix, cluster):
    return ("name: envoy.filters.network.ext_authz\n        typed_config:\n"
            "          \"@type\": type.googleapis.com/envoy.extensions.filters.network.ext_authz.v3.ExtAuthz\n"
            "          stat_prefix: %s\n          transport_api_version: V3\n"
            "          grpc_service: {envoy_grpc: {cluster_name: %s}, timeout: 1s}" % (prefix, cluster))


RL_FILTER = ("name: envoy.filters.network.ratelimit\n        typed_config:\n"
             "          \"@type\": type.googleapis.com/envoy.extensions.filters.network.ratelimit.v3.RateLimit\n"
             "          stat_prefix: tcp_rl\n          domain: tcp\n          timeout: 1s\n"
             "          descriptors: [{entries: [{key: generic_key, value: conn}]}]\n"
             "          rate_limit_service:\n            transport_api_version: V3\n"
             "            grpc_service: {envoy_grpc: {cluster_name: rls}}")


def template(allow_port, deny_port, rls_port):
    return ("admin: {address: {socket_address: {address: 127.0.0.1, port_value: $admin}}}\n"
            "static_resources:\n  clusters:"
            + _cluster("upstream", "$upstream", h2=False) + _cluster("allow", allow_port)
            + _cluster("deny", deny_port) + _cluster("rls", rls_port)
            + "\n  listeners:"
            + _listener("allowed", "$listener", _authz("allowed", "allow"))
            + _listener("denied", "$denied_listener", _authz("denied", "deny"))
            + _listener("limited", "$limited_listener", RL_FILTER) + "\n")


@pytest.fixture(scope="module")
def services():
    allow, deny = RegoAuthz(ALLOW_ALL), RegoAuthz(POLICY)
    redis_server = RedisServer()
    rls = RateLimitService(redis_server.port, {("tcp", "generic_key=conn"): (2, "HOUR")})
    yield allow, deny, rls
    for s in (allow, deny, rls, redis_server):
        s.stop()


@pytest.fixture(scope="module")
def pair(pair_factory, services):
    allow, deny, rls = services
    return pair_factory(template(allow.port, deny.port, rls.port))


def _run(side, rls):
    rls.reset()
    request = b"GET /n HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
    out = []
    for port in ("listener", "denied_listener") + ("limited_listener",) * 4:
        data, closed = side.raw(request, port=port)
        out.append((port, data.split(b"\r\n", 1)[0][:12], closed))
    deadline = time.monotonic() + 5
    while True:   # the denied connections' counters move as the closes are seen
        text = side.admin("/stats").body.decode()
        stats = {k: v for k, v in (ln.split(": ", 1) for ln in text.splitlines() if ": " in ln)
                 if k.startswith(("ext_authz.", "ratelimit.tcp_rl.")) and v != "0"}
        if stats.get("ratelimit.tcp_rl.cx_closed") == "2" or time.monotonic() > deadline:
            return out, stats
        time.sleep(0.05)


def test_network_ext_authz_and_ratelimit_match_envoy(pair, services):
    envoy, proxyd = pair.both(lambda s: _run(s, services[2]))
    assert [o[1] for o in envoy[0]] == [b"HTTP/1.1 200", b"", b"HTTP/1.1 200",
                                        b"HTTP/1.1 200", b"", b""]
    assert proxyd[0] == envoy[0]
    assert proxyd[1] == envoy[1]
