"""A cluster that changes over CDS: its health checks going away leave its hosts
healthy (no stale FAILED_ACTIVE_HC in the shared words), and coming back start fresh."""
import os

import yaml

from harness import cluster, free_port, http, listener, route
from health_helpers import clusters, stats, wait_for

CDS = "type.googleapis.com/envoy.config.cluster.v3.Cluster"


def _write(path, version, cl):
    tmp = str(path) + ".tmp"
    cl = dict(cl, **{"@type": CDS})
    with open(tmp, "w") as f:
        yaml.safe_dump({"version_info": version, "type_url": CDS, "resources": [cl]}, f)
    os.rename(tmp, path)


def test_removing_health_checks_over_cds_clears_the_hosts_flags(proxyd_factory, flaky_factory,
                                                               tmp_path):
    up = flaky_factory(1)
    port = up.ports[0]
    up.set(port, hc=503)
    cds = tmp_path / "cds.yaml"
    hc = [{"timeout": "1s", "interval": "0.3s", "no_traffic_interval": "0.3s",
           "unhealthy_threshold": 1, "healthy_threshold": 1, "http_health_check": {"path": "/hc"}}]
    _write(cds, "1", cluster("upstream", up.addresses, health_checks=hc))
    admin, lport = free_port(), free_port()
    cfg = {"admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
           "node": {"id": "node1", "cluster": "c1"},
           "dynamic_resources": {"cds_config": {"path_config_source": {"path": str(cds)},
                                                "resource_api_version": "V3"}},
           "static_resources": {"listeners": [listener(lport, routes=[route("/")])]}}
    proxyd_factory(cfg, concurrency=1)
    key = ("upstream", "127.0.0.1:%d" % port)
    wait_for(lambda: clusters(admin).get(key) == "/failed_active_hc", what="the failed check")
    _write(cds, "2", cluster("upstream", up.addresses))  # no health checks any more
    wait_for(lambda: clusters(admin).get(key) == "healthy", what="flags cleared")
    wait_for(lambda: stats(admin).get("cluster.upstream.membership_healthy") == "1",
             what="membership_healthy from the worker alone")
    assert http(lport, path="/x").status == 200
    _write(cds, "3", cluster("upstream", up.addresses, health_checks=hc))
    wait_for(lambda: clusters(admin).get(key) == "/failed_active_hc", what="a fresh check failing")
