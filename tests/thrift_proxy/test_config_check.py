"""`proxyd check` on thrift_proxy configs: what it accepts, and what it rejects as
Envoy does (an unknown thrift cluster) or as not supported by proxyd (Twitter)."""
from __future__ import annotations

from harness import run_cli, write_config

from .conftest import thrift_bootstrap

ROUTER = "type.googleapis.com/envoy.extensions.filters.network.thrift_proxy.router.v3.Router"


def check(tmp_path, cfg):
    return run_cli("check", "-c", write_config(tmp_path, cfg))


def test_a_full_thrift_config_passes(tmp_path):
    routes = [{"match": {"service_name": "Calc"}, "route": {"cluster": "a", "strip_service_name": True}},
              {"match": {"method_name": "ping", "invert": True},
               "route": {"weighted_clusters": {"clusters": [{"name": "a", "weight": 1},
                                                            {"name": "b", "weight": 2}]}}}]
    cfg = thrift_bootstrap(9, 10, routes, {"a": 11, "b": 12}, transport="HEADER", protocol="COMPACT",
                           max_requests_per_connection=100,
                           thrift_filters=[{"name": "envoy.filters.thrift.router", "typed_config": {
                               "@type": ROUTER, "close_downstream_on_upstream_error": False}}])
    r = check(tmp_path, cfg)
    assert r.returncode == 0, r.stdout + r.stderr


def test_unknown_thrift_cluster_is_rejected_like_envoy(tmp_path):
    cfg = thrift_bootstrap(9, 10, [{"match": {"method_name": ""}, "route": {"cluster": "nowhere"}}],
                           {"calc": 11})
    r = check(tmp_path, cfg)
    assert r.returncode != 0 and "unknown cluster 'nowhere'" in r.stdout + r.stderr


def test_twitter_protocol_is_not_supported(tmp_path):
    cfg = thrift_bootstrap(9, 10, [{"match": {"method_name": ""}, "route": {"cluster": "calc"}}],
                           {"calc": 11}, protocol="TWITTER")
    r = check(tmp_path, cfg)
    assert r.returncode != 0 and "TWITTER" in r.stdout + r.stderr


def test_unknown_shadow_cluster_is_rejected_like_envoy(tmp_path):
    cfg = thrift_bootstrap(9, 10, [{"match": {"method_name": ""}, "route": {
        "cluster": "calc", "request_mirror_policies": [{"cluster": "nomirror"}]}}], {"calc": 11})
    r = check(tmp_path, cfg)
    assert r.returncode != 0 and "unknown thrift shadow cluster 'nomirror'" in r.stdout + r.stderr
