"""proxyd's global rate limit filter against envoyproxy/ratelimit itself (Go, built from
the pinned commit by tests/peers/envoy_ratelimit.py) with a real redis-server behind it:
the standard service's answers reach the client as Envoy's filter passes them on."""
from __future__ import annotations

import urllib.request

import pytest

from harness import Proxyd, bootstrap, cluster, free_port, hcm, http, write_config
from peers.envoy_ratelimit import EnvoyRatelimit, binary
from ratelimit_service import RedisServer
from side_services import H2_OPTIONS

CONFIG = """\
domain: web
descriptors:
  - key: generic_key
    value: api
    descriptors:
      - key: user
        rate_limit: {unit: minute, requests_per_unit: 2}
  - key: generic_key
    value: open
"""


@pytest.fixture(scope="module")
def service():
    exe, reason = binary()
    if exe is None:
        pytest.skip("envoyproxy/ratelimit unavailable: " + reason)
    redis_server = RedisServer()
    try:
        with EnvoyRatelimit(exe, redis_server.port, CONFIG) as svc:
            yield svc
    finally:
        redis_server.stop()


@pytest.fixture(scope="module")
def px(upstream, service, tmp_path_factory):
    d = tmp_path_factory.mktemp("rl_go")
    port, admin = free_port(), free_port()
    h = hcm(routes=[{"match": {"prefix": "/api"}, "route": {
                        "cluster": "upstream", "rate_limits": [{"actions": [
                            {"generic_key": {"descriptor_value": "api"}},
                            {"request_headers": {"header_name": "x-user",
                                                 "descriptor_key": "user"}}]}]}},
                    {"match": {"prefix": "/"}, "route": {
                        "cluster": "upstream", "rate_limits": [{"actions": [
                            {"generic_key": {"descriptor_value": "open"}}]}]}}],
            stat_prefix="go")
    h["http_filters"].insert(0, {"name": "envoy.filters.http.ratelimit", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit",
        "domain": "web", "timeout": "2s", "enable_x_ratelimit_headers": "DRAFT_VERSION_03",
        "rate_limit_service": {"transport_api_version": "V3", "grpc_service": {
            "envoy_grpc": {"cluster_name": "rls"}}}}})
    lst = {"name": "l", "address": {"socket_address": {"address": "127.0.0.1",
                                                       "port_value": port}},
           "filter_chains": [{"filters": [{
               "name": "envoy.filters.network.http_connection_manager", "typed_config": h}]}]}
    cfg = bootstrap([lst], [cluster("upstream", [("127.0.0.1", upstream.port)]),
                            cluster("rls", [("127.0.0.1", service.grpc_port)],
                                    typed_extension_protocol_options=H2_OPTIONS)], admin)
    p = Proxyd(write_config(d, cfg))
    p.start()
    p.lport = port
    yield p
    p.cleanup()


def test_envoyproxy_ratelimit_limits_per_user(px):
    carol = [http(px.lport, "GET", "/api/x", headers=[("x-user", "carol")]) for _ in range(3)]
    assert [r.status for r in carol] == [200, 200, 429]
    assert carol[2].header("x-envoy-ratelimited") == "true"
    assert carol[0].header("x-ratelimit-limit") == "2, 2;w=60"
    assert [r.header("x-ratelimit-remaining") for r in carol] == ["1", "0", "0"]
    assert http(px.lport, "GET", "/api/x", headers=[("x-user", "dave")]).status == 200
    assert all(http(px.lport, "GET", "/o").status == 200 for _ in range(4))   # no limit
    text = urllib.request.urlopen(px.admin_url + "/stats", timeout=5).read().decode()
    stats = dict(ln.split(": ", 1) for ln in text.splitlines() if ": " in ln)
    assert stats["cluster.upstream.ratelimit.over_limit"] == "1"
    assert stats["cluster.upstream.ratelimit.ok"] == "7"
