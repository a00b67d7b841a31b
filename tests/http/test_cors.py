"""envoy.filters.http.cors end to end: a browser-like preflight answered by proxyd, the
actual request's CORS headers, policies resolved field by field across route and virtual
host, origins no policy allows, and the cors.origin_valid/invalid stats."""
from __future__ import annotations

import urllib.request

import pytest

from harness import Proxyd, bootstrap, cluster, free_port, hcm, http, route, write_config

CORS = "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors"
POLICY = "type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy"


def policy(**fields):
    return {"envoy.filters.http.cors": dict({"@type": POLICY}, **fields)}


def config(port, admin_port, upstream_port):
    vhost_policy = policy(allow_origin_string_match=[{"exact": "https://app.example"},
                                                     {"suffix": ".trusted.example"}],
                          allow_methods="GET,POST,PUT", allow_headers="content-type,x-token",
                          expose_headers="x-trace", max_age="600", allow_credentials=True)
    routes = [
        dict(route("/wild"), typed_per_filter_config=policy(allow_methods="*",
                                                            allow_headers="*")),
        dict(route("/nocred"), typed_per_filter_config=policy(allow_credentials=False)),
        dict(route("/shadow"), typed_per_filter_config=policy(
            filter_enabled={"default_value": {"numerator": 0}},
            shadow_enabled={"default_value": {"numerator": 100}})),
        route("/"),
    ]
    h = hcm(virtual_hosts=[{"name": "vh", "domains": ["*"], "routes": routes,
                            "typed_per_filter_config": vhost_policy}], stat_prefix="ingress")
    h["http_filters"].insert(0, {"name": "envoy.filters.http.cors",
                                 "typed_config": {"@type": CORS}})
    return bootstrap([{"name": "l", "address": {"socket_address": {"address": "127.0.0.1",
                                                                   "port_value": port}},
                       "filter_chains": [{"filters": [{
                           "name": "envoy.filters.network.http_connection_manager",
                           "typed_config": h}]}]}],
                     [cluster("upstream", [("127.0.0.1", upstream_port)])], admin_port)


@pytest.fixture(scope="module")
def px(upstream, tmp_path_factory):
    d = tmp_path_factory.mktemp("cors")
    p = Proxyd(write_config(d, config(free_port(), free_port(), upstream.port)))
    p.start()
    yield p
    p.cleanup()


def preflight(px, path, origin, method="PUT", req_headers="content-type"):
    return http(px.port, "OPTIONS", path, [("origin", origin),
                                           ("access-control-request-method", method),
                                           ("access-control-request-headers", req_headers)])


def stats(px) -> dict:
    text = urllib.request.urlopen(px.admin_url + "/stats", timeout=5).read().decode()
    return dict(line.split(": ", 1) for line in text.splitlines() if ": " in line)


def test_browser_preflight_is_answered_by_the_proxy(px, upstream):
    before = upstream.stats()["requests"]
    r = preflight(px, "/api", "https://app.example")
    assert r.status == 200
    assert r.header("access-control-allow-origin") == "https://app.example"
    assert r.header("access-control-allow-methods") == "GET,POST,PUT"
    assert r.header("access-control-allow-headers") == "content-type,x-token"
    assert r.header("access-control-max-age") == "600"
    assert r.header("access-control-allow-credentials") == "true"
    assert upstream.stats()["requests"] == before   # never reached the upstream


def test_actual_request_gets_allow_origin_and_expose_headers(px):
    r = http(px.port, "GET", "/api", [("origin", "https://x.trusted.example")])
    assert r.status == 200 and r.json()["path"] == "/api"
    assert r.header("access-control-allow-origin") == "https://x.trusted.example"
    assert r.header("access-control-expose-headers") == "x-trace"
    assert r.header("access-control-allow-credentials") == "true"


def test_route_policy_overrides_field_by_field(px):
    r = preflight(px, "/wild", "https://app.example", "DELETE", "x-custom")
    assert r.header("access-control-allow-methods") == "DELETE"
    assert r.header("access-control-allow-headers") == "x-custom"
    assert r.header("access-control-max-age") == "600"     # from the virtual host
    r = preflight(px, "/nocred", "https://app.example")
    assert r.status == 200 and r.header("access-control-allow-credentials") is None


def test_unknown_origin_preflight_goes_upstream_without_cors_headers(px):
    r = preflight(px, "/api", "https://evil.example")
    assert r.status == 200 and r.json()["method"] == "OPTIONS"   # the upstream's echo
    assert r.header("access-control-allow-origin") is None


def test_origin_stats(px):
    s0 = stats(px)
    http(px.port, "GET", "/api", [("origin", "https://app.example")])
    http(px.port, "GET", "/api", [("origin", "https://nope.example")])
    http(px.port, "GET", "/api")   # no Origin: not counted
    s1 = stats(px)
    for name in ("origin_valid", "origin_invalid"):
        key = "http.ingress.cors." + name
        assert int(s1[key]) - int(s0.get(key, 0)) == 1, name


def legacy_config(port, admin_port, upstream_port):
    """Envoy's cors sandbox (backend front-envoy): the deprecated `cors` fields."""
    vhost_cors = {"allow_origin_string_match": [{"safe_regex": {"regex": "\\*"}}],
                  "allow_methods": "GET",
                  "filter_enabled": {"default_value": {"numerator": 100}},
                  "shadow_enabled": {"default_value": {"numerator": 0}}}
    routes = [
        route("/cors/open"),
        route("/cors/disabled", cors={"filter_enabled": {"default_value": {"numerator": 0}}}),
        route("/cors/restricted", cors={"allow_origin_string_match": [
            {"safe_regex": {"regex": ".*\\.envoyproxy\\.io"}}], "allow_methods": "GET"}),
        route("/"),
    ]
    h = hcm(virtual_hosts=[{"name": "www", "domains": ["*"], "routes": routes,
                            "cors": vhost_cors}], stat_prefix="ingress_http")
    h["http_filters"].insert(0, {"name": "envoy.filters.http.cors",
                                 "typed_config": {"@type": CORS}})
    return bootstrap([{"name": "l", "address": {"socket_address": {"address": "127.0.0.1",
                                                                   "port_value": port}},
                       "filter_chains": [{"filters": [{
                           "name": "envoy.filters.network.http_connection_manager",
                           "typed_config": h}]}]}],
                     [cluster("upstream", [("127.0.0.1", upstream_port)])], admin_port)


@pytest.fixture(scope="module")
def legacy(upstream, tmp_path_factory):
    d = tmp_path_factory.mktemp("cors_legacy")
    p = Proxyd(write_config(d, legacy_config(free_port(), free_port(), upstream.port)))
    p.start()
    yield p
    p.cleanup()


def test_legacy_cors_fields_of_envoys_sandbox(legacy):
    origin = [("origin", "http://localhost:8002")]
    r = http(legacy.port, "GET", "/cors/open", origin)
    assert r.header("access-control-allow-origin") == "http://localhost:8002"  # "\*" allows all
    r = http(legacy.port, "GET", "/cors/disabled", origin)
    assert r.status == 200 and r.header("access-control-allow-origin") is None
    r = http(legacy.port, "GET", "/cors/restricted", origin)
    assert r.header("access-control-allow-origin") is None
    r = http(legacy.port, "GET", "/cors/restricted", [("origin", "https://www.envoyproxy.io")])
    assert r.header("access-control-allow-origin") == "https://www.envoyproxy.io"


def test_shadow_mode_counts_but_does_not_enforce(px, upstream):
    s0 = stats(px)
    r = preflight(px, "/shadow", "https://app.example")
    assert r.json()["method"] == "OPTIONS"           # went upstream: not answered
    assert r.header("access-control-allow-origin") is None
    key = "http.ingress.cors.origin_valid"
    assert int(stats(px)[key]) - int(s0.get(key, 0)) == 1
