"""Outlier detection across worker processes: the workers report results through the
stats file, the master ejects, and every worker's balancer skips the ejected host, with
Envoy's stats and event log, against real upstreams that fail on cue."""
import json

from harness import closed_port, cluster, free_port, http, simple_config
from health_helpers import clusters, stats, wait_for

P = "cluster.upstream.outlier_detection."


def _start(proxyd_factory, endpoints, od, concurrency=2, tmp_path=None, **extra):
    admin = free_port()
    cfg = simple_config(free_port(), admin_port=admin,
                        clusters=[cluster("upstream", endpoints, outlier_detection=od, **extra)])
    if tmp_path is not None:
        cfg["cluster_manager"] = {"outlier_detection": {
            "event_log_path": str(tmp_path / "od_events.log")}}
    return proxyd_factory(cfg, concurrency=concurrency), admin


def _ports_seen(px, n):
    return [http(px.port, path="/x").json()["port"] for _ in range(n)]


def test_consecutive_5xx_ejects_the_host_for_every_worker(proxyd_factory, flaky_factory, tmp_path):
    up = flaky_factory(2)
    bad, good = up.ports
    px, admin = _start(proxyd_factory, up.addresses,
                       {"consecutive_5xx": 3, "interval": "0.2s", "base_ejection_time": "3s",
                        "max_ejection_percent": 50}, tmp_path=tmp_path)
    up.set(bad, status=503)
    # round robin on two workers: keep asking until three 503s from `bad` were seen
    wait_for(lambda: (http(px.port, path="/x"),
                      stats(admin)[P + "ejections_active"] == "1")[1], what="an ejection")
    s = stats(admin)
    assert s[P + "ejections_enforced_consecutive_5xx"] == "1"
    assert s[P + "ejections_detected_consecutive_5xx"] == "1"
    assert s[P + "ejections_enforced_total"] == "1"
    assert s[P + "ejections_total"] == "1"
    assert s["cluster.upstream.membership_healthy"] == "1"
    assert clusters(admin)[("upstream", "127.0.0.1:%d" % bad)] == "/failed_outlier_check"
    # every worker skips it: many new connections (spread over both workers) all land on `good`
    assert set(_ports_seen(px, 20)) == {good}
    # after base_ejection_time x 1 (checked on the interval) it comes back
    up.set(bad, status=200)
    wait_for(lambda: stats(admin)[P + "ejections_active"] == "0", what="the unejection")
    wait_for(lambda: bad in _ports_seen(px, 6), what="traffic to the unejected host")
    events = [json.loads(line) for line in (tmp_path / "od_events.log").read_text().splitlines()]
    assert [e["action"] for e in events] == ["EJECT", "UNEJECT"]
    ej = events[0]
    assert ej["type"] == "CONSECUTIVE_5XX" and ej["enforced"] is True
    assert ej["cluster_name"] == "upstream" and ej["upstream_url"] == "127.0.0.1:%d" % bad
    assert ej["num_ejections"] == 1 and "eject_consecutive_event" in ej


def test_small_cluster_rule_overflows_unless_always_eject_one_host(proxyd_factory, flaky_factory):
    up = flaky_factory(1)
    od = {"consecutive_5xx": 3, "interval": "0.2s"}
    px, admin = _start(proxyd_factory, up.addresses, od, concurrency=1)
    up.set(up.ports[0], status=503)
    for _ in range(3):
        assert http(px.port, path="/x").status == 503
    # what Envoy 1.40 does with one host and the default 10 %: detected, overflow, not ejected
    wait_for(lambda: stats(admin)[P + "ejections_overflow"] == "1", what="the overflow")
    s = stats(admin)
    assert s[P + "ejections_detected_consecutive_5xx"] == "1"
    assert s[P + "ejections_active"] == "0"
    px.stop()
    px2, admin2 = _start(proxyd_factory, up.addresses,
                         dict(od, always_eject_one_host=True), concurrency=1)
    for _ in range(3):
        http(px2.port, path="/x")
    wait_for(lambda: stats(admin2)[P + "ejections_active"] == "1", what="the ejection")
    # an ejected host in a cluster with no other host: Envoy's panic routing still uses it
    assert stats(admin2)[P + "ejections_overflow"] == "0"


def test_gateway_failures_are_detected_but_not_enforced_by_default(proxyd_factory, flaky_factory):
    up = flaky_factory(2)
    bad = up.ports[0]
    px, admin = _start(proxyd_factory, [up.addresses[0]] + [up.addresses[1]],
                       {"consecutive_gateway_failure": 2, "consecutive_5xx": 100, "interval": "0.2s",
                        "max_ejection_percent": 50}, concurrency=1)
    up.set(bad, status=502)
    wait_for(lambda: (http(px.port, path="/x"),
                      stats(admin)[P + "ejections_detected_consecutive_gateway_failure"] == "1")[1],
             what="a detected gateway failure")
    s = stats(admin)
    assert s[P + "ejections_enforced_consecutive_gateway_failure"] == "0"
    assert s[P + "ejections_active"] == "0"


def test_split_local_origin_counts_connect_failures(proxyd_factory, flaky_factory):
    up = flaky_factory(1)
    dead = closed_port()
    px, admin = _start(proxyd_factory, [up.addresses[0], ("127.0.0.1", dead)],
                       {"split_external_local_origin_errors": True,
                        "consecutive_local_origin_failure": 2, "interval": "0.2s",
                        "max_ejection_percent": 50}, concurrency=1)
    wait_for(lambda: (http(px.port, path="/x"),
                      stats(admin)[P + "ejections_active"] == "1")[1], what="a local-origin ejection")
    s = stats(admin)
    assert s[P + "ejections_enforced_consecutive_local_origin_failure"] == "1"
    assert s[P + "ejections_detected_consecutive_5xx"] == "0"
    assert clusters(admin)[("upstream", "127.0.0.1:%d" % dead)] == "/failed_outlier_check"
    assert all(http(px.port, path="/x").status == 200 for _ in range(10))


def test_failure_percentage_ejects_with_enough_hosts_and_volume(proxyd_factory, flaky_factory):
    up = flaky_factory(5)
    bad = up.ports[0]
    px, admin = _start(proxyd_factory, up.addresses,
                       {"consecutive_5xx": 1000, "interval": "1s", "enforcing_failure_percentage": 100,
                        "failure_percentage_request_volume": 10, "failure_percentage_threshold": 50,
                        "max_ejection_percent": 40, "enforcing_success_rate": 0},
                       concurrency=2)
    up.set(bad, status=500)

    def ejected():
        for _ in range(25):
            http(px.port, path="/x")
        return stats(admin)[P + "ejections_active"] == "1"
    wait_for(ejected, what="a failure-percentage ejection")
    s = stats(admin)
    assert s[P + "ejections_enforced_failure_percentage"] == "1"
    assert clusters(admin)[("upstream", "127.0.0.1:%d" % bad)] == "/failed_outlier_check"


def test_clusters_without_outlier_detection_get_no_rows(proxyd_factory, flaky_factory):
    up = flaky_factory(1)
    admin = free_port()
    px = proxyd_factory(simple_config(free_port(), admin_port=admin,
                                      clusters=[cluster("upstream", up.addresses)]))
    assert http(px.port, path="/x").status == 200
    names = stats(admin)
    # (http.<prefix>.tracing.health_check is the HCM tracing counter, not one of these rows)
    bad = [n for n in names if n.startswith("cluster.")
           and ("outlier_detection" in n or "health_check" in n)]
    assert not bad, bad


def test_success_rate_ejects_the_outlier(proxyd_factory, flaky_factory):
    up = flaky_factory(5)
    bad = up.ports[0]
    px, admin = _start(proxyd_factory, up.addresses,
                       {"consecutive_5xx": 1000, "interval": "1s", "success_rate_request_volume": 10,
                        "success_rate_minimum_hosts": 5, "success_rate_stdev_factor": 1000,
                        "max_ejection_percent": 40}, concurrency=2)
    up.set(bad, status=500)

    def ejected():
        for _ in range(25):
            http(px.port, path="/x")
        return stats(admin)[P + "ejections_active"] == "1"
    wait_for(ejected, what="a success-rate ejection")
    s = stats(admin)
    assert s[P + "ejections_enforced_success_rate"] == "1"
    assert s[P + "ejections_detected_success_rate"] == "1"
    assert s[P + "ejections_success_rate"] == "1"
    assert clusters(admin)[("upstream", "127.0.0.1:%d" % bad)] == "/failed_outlier_check"


def test_an_ejection_carries_over_a_hot_restart(proxyd_factory, flaky_factory, tmp_path):
    from harness import run_cli
    up = flaky_factory(2)
    bad, good = up.ports
    px, admin = _start(proxyd_factory, up.addresses,
                       {"consecutive_5xx": 2, "interval": "0.2s", "base_ejection_time": "20s",
                        "max_ejection_percent": 50}, concurrency=1, tmp_path=tmp_path)
    up.set(bad, status=503)
    wait_for(lambda: (http(px.port, path="/x"),
                      stats(admin)[P + "ejections_active"] == "1")[1], what="an ejection")
    up.set(bad, status=200)
    cp = run_cli("reload", "--runtime-dir", px.runtime_dir, timeout=60)
    assert cp.returncode == 0, cp.stdout + cp.stderr
    # the new master keeps the ejection (flag, time, count) and ends it itself
    assert clusters(admin)[("upstream", "127.0.0.1:%d" % bad)] == "/failed_outlier_check"
    assert stats(admin)[P + "ejections_active"] == "1"
    assert {http(px.port, path="/x").json()["port"] for _ in range(6)} == {good}
    wait_for(lambda: stats(admin)[P + "ejections_active"] == "0", timeout=60, what="the unejection")
    events = [json.loads(line) for line in (tmp_path / "od_events.log").read_text().splitlines()]
    assert [(e["action"], e["num_ejections"]) for e in events] == [("EJECT", 1), ("UNEJECT", 1)]


def test_tcp_proxy_connect_failures_eject(proxyd_factory, flaky_factory):
    """tcp_proxy reports to the detector as Envoy's does: a connect failure is a 5xx to
    it, a connect a success (LocalOriginConnectSuccessFinal)."""
    import socket
    from harness import bootstrap
    up = flaky_factory(1)
    dead = closed_port()
    admin, lport = free_port(), free_port()
    tcp = {"name": "tcp", "address": {"socket_address": {"address": "127.0.0.1", "port_value": lport}},
           "filter_chains": [{"filters": [{"name": "envoy.filters.network.tcp_proxy", "typed_config": {
               "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
               "stat_prefix": "tcp", "cluster": "upstream", "max_connect_attempts": 1}}]}]}
    cfg = bootstrap([tcp], [cluster("upstream", [up.addresses[0], ("127.0.0.1", dead)],
                                    outlier_detection={"consecutive_5xx": 2, "interval": "0.2s",
                                                       "max_ejection_percent": 50})], admin)
    proxyd_factory(cfg, concurrency=1)

    def one():
        try:
            with socket.create_connection(("127.0.0.1", lport), timeout=5) as s:
                s.sendall(b"GET /x HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n")
                return s.recv(100)
        except OSError:  # the upstream connect failed: tcp_proxy closes the client's
            return b""
    wait_for(lambda: (one(), stats(admin)[P + "ejections_active"] == "1")[1],
             what="the dead host ejected")
    assert clusters(admin)[("upstream", "127.0.0.1:%d" % dead)] == "/failed_outlier_check"
    assert all(one().startswith(b"HTTP/1.1 200") for _ in range(6))


def test_grpc_status_in_headers_counts_as_its_http_mapping(proxyd_factory):
    """A trailers-only gRPC answer UNAVAILABLE is a 503 to the detector (Envoy's router
    maps grpc-status in response headers), although its HTTP status is 200."""
    import os
    import sys
    from concurrent import futures

    import grpc
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "http2"))
    from h2_helpers import H2_OPTIONS

    def unavailable(request, context):
        context.abort(grpc.StatusCode.UNAVAILABLE, "down")

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("t.S", {
        "M": grpc.unary_unary_rpc_method_handler(unavailable)}),))
    gport = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        px, admin = _start(proxyd_factory, [("127.0.0.1", gport)],
                           {"consecutive_5xx": 2, "interval": "0.2s", "always_eject_one_host": True},
                           concurrency=1, typed_extension_protocol_options=H2_OPTIONS)
        with grpc.insecure_channel("127.0.0.1:%d" % px.port) as ch:
            for _ in range(2):
                try:
                    ch.unary_unary("/t.S/M")(b"x", timeout=5)
                except grpc.RpcError as e:
                    assert e.code() == grpc.StatusCode.UNAVAILABLE
        wait_for(lambda: stats(admin)[P + "ejections_active"] == "1", what="the ejection")
        s = stats(admin)
        assert s[P + "ejections_enforced_consecutive_5xx"] == "1"
        assert s["cluster.upstream.upstream_rq_200"] == "2"   # the HTTP status is still 200
    finally:
        server.stop(0)
