"""Outlier detection and active health checks beside Envoy 1.40 on one template: the
deterministic parts (what is detected, overflowed, enforced; the first round of health
checks; an upstream's x-envoy-immediate-health-check-fail; /clusters health flags;
panic routing to a cluster whose only host is out); EDS health_status on an EDS file."""
from __future__ import annotations

import time

CLUSTER = """
  - name: {name}
    type: STATIC
    connect_timeout: 1s
{extra}
    load_assignment:
      cluster_name: {name}
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: ${port}}}}}}}}}]}}]
"""
CLUSTERS = {
    "single": ("upstream", "    outlier_detection: {consecutive_5xx: 3, interval: 0.1s}"),
    "ejectone": ("upstream", "    outlier_detection: {consecutive_5xx: 3, interval: 0.1s, "
                             "always_eject_one_host: true, base_ejection_time: 300s}"),
    "gateway": ("upstream", "    outlier_detection: {consecutive_gateway_failure: 2, "
                            "consecutive_5xx: 50, interval: 0.1s, always_eject_one_host: true}"),
    "refused": ("closed", "    outlier_detection: {consecutive_5xx: 2, interval: 0.1s}"),
    "hcok": ("upstream", "    health_checks: [{timeout: 1s, interval: 60s, no_traffic_interval: 60s, "
                         "unhealthy_threshold: 2, healthy_threshold: 2, "
                         "http_health_check: {path: /ok}}]"),
    "hcbad": ("upstream", "    health_checks: [{timeout: 1s, interval: 60s, no_traffic_interval: 60s, "
                          "unhealthy_threshold: 2, healthy_threshold: 2, event_log_path: $dir/hc.log, "
                          "http_health_check: {path: \"/bad?status=503\"}}]"),
    "hcpassive": ("upstream", "    health_checks: [{timeout: 1s, interval: 60s, no_traffic_interval: 60s, "
                              "unhealthy_threshold: 2, healthy_threshold: 2, "
                              "http_health_check: {path: /ok}}]"),
    "hctcp": ("closed", "    health_checks: [{timeout: 1s, interval: 60s, no_traffic_interval: 60s, "
                        "unhealthy_threshold: 1, healthy_threshold: 1, tcp_health_check: {}}]"),
}
ROUTES = "".join("""
              - match: {prefix: "/%s/"}
                route: {cluster: %s}""" % (n, n) for n in CLUSTERS)
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
              routes:%s
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}
  clusters:%s
cluster_manager:
  outlier_detection: {event_log_path: $dir/od.log}
""" % (ROUTES, "".join(CLUSTER.format(name=n, port=p, extra=e) for n, (p, e) in CLUSTERS.items()))


def _stats(side) -> dict:
    return dict(line.split(": ", 1) for line in side.admin("/stats").body.decode().splitlines()
                if ": " in line)


def _until(side, name, value, timeout=10.0):
    deadline = time.monotonic() + timeout
    while _stats(side).get(name) != value and time.monotonic() < deadline:
        time.sleep(0.05)


def _observe(side):
    out = []
    od = "cluster.%s.outlier_detection."
    for _ in range(3):
        out.append(side.http("/single/x?status=503").status)
    _until(side, od % "single" + "ejections_overflow", "1")
    for _ in range(3):
        out.append(side.http("/ejectone/x?status=503").status)
    _until(side, od % "ejectone" + "ejections_active", "1")
    out.append(side.http("/ejectone/x").status)     # the only host is out: panic routing
    for _ in range(2):
        out.append(side.http("/gateway/x?status=502").status)
    _until(side, od % "gateway" + "ejections_detected_consecutive_gateway_failure", "1")
    for _ in range(2):
        out.append(side.http("/refused/x").status)
    _until(side, od % "refused" + "ejections_overflow", "1")
    for c in ("hcok", "hcbad", "hctcp"):
        _until(side, "cluster.%s.health_check.attempt" % c, "1")
    _until(side, "cluster.hcpassive.health_check.success", "1")
    out.append(side.http("/hcpassive/x?hdr=x-envoy-immediate-health-check-fail:true").status)
    _until(side, "cluster.hcpassive.health_check.passive_failure", "1")
    out.append(side.http("/hcbad/x").status)        # panic again: the failed host still serves
    stats = _stats(side)
    picked = {k: v for k, v in stats.items()
              if any(k.startswith("cluster.%s." % c) for c in CLUSTERS)
              and (".outlier_detection." in k or ".health_check." in k or k.endswith("membership_healthy"))}
    flags = sorted(line for line in side.admin("/clusters").body.decode().splitlines()
                   if "::health_flags::" in line or "::outlier::" in line)
    # Envoy writes its event logs through a flushing file: the ejectone and gateway
    # ejections (enforced, and not) may reach the file after the stats do
    _until_lines(side, "od.log", 2)
    return out, picked, flags, _events(side, "od.log"), _events(side, "hc.log")


def _until_lines(side, name, n, timeout=10.0):
    deadline = time.monotonic() + timeout
    while len(side.read(name).splitlines()) < n and time.monotonic() < deadline:
        time.sleep(0.05)


def _events(side, name):
    """The event log's JSON lines without what differs by run (times, ports)."""
    import json
    out = []
    for line in side.read(name).splitlines():
        ev = json.loads(line)
        ev.pop("timestamp", None)
        ev.pop("secs_since_last_action", None)
        ev.pop("upstream_url", None)
        ev.get("host", {}).get("socket_address", {}).pop("port_value", None)
        out.append(ev)
    return sorted(out, key=lambda e: json.dumps(e, sort_keys=True))


def test_outlier_detection_and_health_checks_match_envoy(pair_factory):
    envoy, proxyd = pair_factory(TEMPLATE).both(_observe)
    assert envoy[0] == [503, 503, 503, 503, 503, 503, 200, 502, 502, 503, 503, 200, 200]
    e = envoy[1]
    assert e["cluster.single.outlier_detection.ejections_detected_consecutive_5xx"] == "1"
    assert e["cluster.single.outlier_detection.ejections_overflow"] == "1"
    assert e["cluster.ejectone.outlier_detection.ejections_active"] == "1"
    assert e["cluster.gateway.outlier_detection.ejections_enforced_consecutive_gateway_failure"] == "0"
    assert e["cluster.hcbad.health_check.failure"] == "1"
    assert e["cluster.hctcp.health_check.network_failure"] == "1"
    assert e["cluster.hcok.health_check.healthy"] == "1"
    assert e["cluster.hcpassive.health_check.passive_failure"] == "1"
    assert proxyd[0] == envoy[0]
    assert proxyd[2] == envoy[2]
    assert proxyd[1] == envoy[1]
    assert envoy[3] and envoy[4]
    assert proxyd[3] == envoy[3]    # outlier detection event log
    assert proxyd[4] == envoy[4]    # health check event log


EDS_TEMPLATE = """
admin:
  address: {socket_address: {address: 127.0.0.1, port_value: $admin}}
node: {id: node1, cluster: cluster1}
static_resources:
  clusters:
  - name: eds
    type: EDS
    connect_timeout: 1s
    eds_cluster_config:
      eds_config: {path_config_source: {path: $dir/eds.yaml}, resource_api_version: V3}
"""
EDS_FILE = """
version_info: "1"
type_url: type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment
resources:
- "@type": type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment
  cluster_name: eds
  endpoints:
  - lb_endpoints:
""" + "".join("""
    - endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: %d}}}
      health_status: %s""" % (20001 + i, st) for i, st in enumerate(
    ("UNHEALTHY", "DRAINING", "TIMEOUT", "DEGRADED", "UNKNOWN", "HEALTHY")))


def test_eds_health_status_matches_envoy(tmp_path, upstream, refused_port):
    from pair import Pair
    pair = Pair(EDS_TEMPLATE, tmp_path, upstream.port, refused_port)
    for side in pair.sides:
        (side.dir / "eds.yaml").write_text(EDS_FILE)
    pair.start()
    try:
        def observe(side):
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                flags = sorted(line for line in side.admin("/clusters").body.decode().splitlines()
                               if "::health_flags::" in line)
                if len(flags) == 6:
                    break
                time.sleep(0.05)
            return flags, _stats(side).get("cluster.eds.membership_healthy")
        envoy, proxyd = pair.both(observe)
        assert envoy[1] == "2" and len(envoy[0]) == 6
        assert proxyd == envoy
    finally:
        pair.cleanup()
