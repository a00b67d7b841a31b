"""EDS health_status honoured: an endpoint EDS marks UNHEALTHY (or TIMEOUT) gets
/failed_eds_health, a DRAINING one /eds_status_draining (Envoy 1.40), and no traffic from any worker until EDS says otherwise; a
cluster with no health checks and no such endpoint gets no health words."""
import os

import yaml

from harness import free_port, http, simple_config
from health_helpers import clusters, wait_for

CLA = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"


def _eds(path, version, ports_status):
    tmp = str(path) + ".tmp"
    eps = [{"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": p}}},
            "health_status": st} for p, st in ports_status]
    with open(tmp, "w") as f:
        yaml.safe_dump({"version_info": version, "type_url": CLA, "resources": [
            {"@type": CLA, "cluster_name": "upstream", "endpoints": [{"lb_endpoints": eps}]}]}, f)
    os.rename(tmp, path)


def test_eds_unhealthy_endpoint_gets_no_traffic(proxyd_factory, flaky_factory, tmp_path):
    up = flaky_factory(2)
    a, b = up.ports
    eds = tmp_path / "eds.yaml"
    _eds(eds, "1", [(a, "UNHEALTHY"), (b, "HEALTHY")])
    admin = free_port()
    cfg = simple_config(free_port(), admin_port=admin, clusters=[{
        "name": "upstream", "type": "EDS", "connect_timeout": "1s",
        "eds_cluster_config": {"eds_config": {"path_config_source": {"path": str(eds)},
                                              "resource_api_version": "V3"}}}])
    px = proxyd_factory(cfg, concurrency=2)
    wait_for(lambda: clusters(admin).get(("upstream", "127.0.0.1:%d" % a)) == "/failed_eds_health",
             what="the EDS flag")
    assert clusters(admin)[("upstream", "127.0.0.1:%d" % b)] == "healthy"
    assert {http(px.port, path="/x").json()["port"] for _ in range(12)} == {b}
    _eds(eds, "2", [(a, "HEALTHY"), (b, "DRAINING")])
    wait_for(lambda: clusters(admin).get(("upstream", "127.0.0.1:%d" % b)) == "/eds_status_draining",
             what="the new EDS flags")
    assert clusters(admin)[("upstream", "127.0.0.1:%d" % a)] == "healthy"
    wait_for(lambda: {http(px.port, path="/x").json()["port"] for _ in range(12)} == {a},
             what="traffic moved to the healthy endpoint")
