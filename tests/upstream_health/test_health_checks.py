"""Active health checks run once per cluster by the master: HTTP (status ranges, host,
added headers, HTTP/2), TCP send/receive, gRPC grpc.health.v1 against a real grpcio
health server; thresholds, stats and /clusters flags as Envoy; the health state survives
a worker crash and a hot restart."""
import json
import os
import signal
import socket
import sys
import threading
import time

from harness import cluster, free_port, http, run_cli, simple_config
from health_helpers import clusters, stats, wait_for

P = "cluster.upstream.health_check."


def _hc(kind: dict, **extra) -> dict:
    hc = {"timeout": "1s", "interval": "0.2s", "no_traffic_interval": "0.2s",
          "unhealthy_threshold": 2, "healthy_threshold": 2}
    hc.update(extra)
    hc.update(kind)
    return hc


def _start(proxyd_factory, endpoints, hcs, concurrency=2, **extra):
    admin = free_port()
    cfg = simple_config(free_port(), admin_port=admin,
                        clusters=[cluster("upstream", endpoints, health_checks=hcs, **extra)])
    return proxyd_factory(cfg, concurrency=concurrency), admin


def _flags(admin, port):
    return clusters(admin)[("upstream", "127.0.0.1:%d" % port)]


def _with_healthy(s: dict, n: str):
    """`s` when both healthy-host gauges say `n`, else None."""
    ok = s[P + "healthy"] == n and s["cluster.upstream.membership_healthy"] == n
    return s if ok else None


def test_http_check_fails_a_host_at_once_and_needs_healthy_threshold_to_return(
        proxyd_factory, flaky_factory):
    up = flaky_factory(2)
    sick, well = up.ports
    px, admin = _start(proxyd_factory, up.addresses, [_hc({"http_health_check": {
        "path": "/hc", "host": "hc.example",
        "request_headers_to_add": [{"header": {"key": "x-probe", "value": "yes"}}]}})])
    # the first round ran before the workers served: both hosts are healthy already
    assert _flags(admin, sick) == "healthy" and _flags(admin, well) == "healthy"
    hdrs = up.state(sick)["last_hc_headers"]
    assert hdrs["host"] == "hc.example" and hdrs["user-agent"] == "Envoy/HC"
    assert hdrs["x-probe"] == "yes"
    up.set(sick, hc=503)
    # a 503 is not an expected status: unhealthy on the first failure
    wait_for(lambda: _flags(admin, sick) == "/failed_active_hc", what="the failed check")
    # the gauges follow the flag within the master's next stats refresh
    s = wait_for(lambda: _with_healthy(stats(admin), "1"), what="the healthy gauges")
    assert int(s[P + "failure"]) >= 1 and s[P + "network_failure"] == "0"
    assert {http(px.port, path="/x").json()["port"] for _ in range(12)} == {well}
    up.set(sick, hc=200)
    wait_for(lambda: _flags(admin, sick) == "healthy", what="the recovery")
    s = stats(admin)
    assert int(s[P + "attempt"]) >= int(s[P + "success"]) + int(s[P + "failure"]) - 2
    assert s[P + "healthy"] == "2"
    wait_for(lambda: sick in {http(px.port, path="/x").json()["port"] for _ in range(6)},
             what="traffic back on the recovered host")


def test_expected_statuses_and_network_failures_count_to_the_threshold(proxyd_factory, flaky_factory):
    up = flaky_factory(2)
    a, b = up.ports
    px, admin = _start(proxyd_factory, up.addresses, [_hc({"http_health_check": {
        "path": "/hc", "expected_statuses": [{"start": 200, "end": 300}]}})], concurrency=1)
    up.set(a, hc=204)  # inside [200, 300)
    time.sleep(0.5)
    assert _flags(admin, a) == "healthy"
    up.kill()          # both refuse connections: network failures, threshold 2
    wait_for(lambda: _flags(admin, a) == "/failed_active_hc" and _flags(admin, b) == "/failed_active_hc",
             what="both hosts failed")
    s = stats(admin)
    assert int(s[P + "network_failure"]) >= 4
    assert s[P + "healthy"] == "0"
    # no healthy host at all: Envoy's panic routing tries them anyway (here: refused, 503)
    assert http(px.port, path="/x").status == 503


def test_tcp_check_send_and_receive(proxyd_factory, flaky_factory):
    up = flaky_factory(1)
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    tcp_port = srv.getsockname()[1]
    answer = {"reply": b"PONG"}
    seen = []

    def serve():
        while True:
            try:
                c, _ = srv.accept()
            except OSError:
                return
            try:
                c.settimeout(2)
                data = c.recv(100)
                seen.append(data)
                c.sendall(b"xx" + answer["reply"] + b"yy")
            except OSError:
                pass
            finally:
                c.close()
    threading.Thread(target=serve, daemon=True).start()
    # the TCP check probes tcp_port; traffic goes to the flaky upstream via the other host
    px, admin = _start(proxyd_factory, [("127.0.0.1", tcp_port)], [_hc(
        {"tcp_health_check": {"send": {"text": "50494e47"}, "receive": [{"text": "504f4e47"}]}},
        reuse_connection=False)], concurrency=1)
    assert _flags(admin, tcp_port) == "healthy"
    assert seen[0] == b"PING"
    answer["reply"] = b"NOPE"
    wait_for(lambda: _flags(admin, tcp_port) == "/failed_active_hc", what="the failed TCP check")
    srv.close()
    del up


def test_grpc_check_against_a_grpcio_health_server(proxyd_factory):
    import grpc
    from concurrent import futures
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        servicer.set("svc", health_pb2.HealthCheckResponse.SERVING)
        px, admin = _start(proxyd_factory, [("127.0.0.1", port)], [_hc(
            {"grpc_health_check": {"service_name": "svc"}})], concurrency=1)
        assert _flags(admin, port) == "healthy"
        servicer.set("svc", health_pb2.HealthCheckResponse.NOT_SERVING)
        wait_for(lambda: _flags(admin, port) == "/failed_active_hc", what="NOT_SERVING")
        servicer.set("svc", health_pb2.HealthCheckResponse.SERVING)
        wait_for(lambda: _flags(admin, port) == "healthy", what="SERVING again")
        s = stats(admin)
        assert int(s[P + "success"]) >= 3 and int(s[P + "failure"]) >= 1
    finally:
        server.stop(0)


def test_unknown_grpc_service_fails(proxyd_factory):
    import grpc
    from concurrent import futures
    from grpc_health.v1 import health, health_pb2_grpc
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        px, admin = _start(proxyd_factory, [("127.0.0.1", port)], [_hc(
            {"grpc_health_check": {"service_name": "nope"}})], concurrency=1)
        assert _flags(admin, port) == "/failed_active_hc"  # NOT_FOUND: a failed first check
    finally:
        server.stop(0)


def test_health_state_survives_a_worker_crash(proxyd_factory, flaky_factory):
    up = flaky_factory(2)
    sick, well = up.ports
    px, admin = _start(proxyd_factory, up.addresses, [_hc({"http_health_check": {"path": "/hc"}})])
    up.set(sick, hc=500)
    wait_for(lambda: _flags(admin, sick) == "/failed_active_hc", what="the failed check")
    before = px.worker_pids()
    os.kill(before[0], signal.SIGKILL)
    wait_for(lambda: len(set(px.worker_pids()) - set(before)) == 1, what="a replacement worker")
    # the new worker reads the same word: no request reaches the failed host
    assert {http(px.port, path="/x").json()["port"] for _ in range(12)} == {well}
    assert _flags(admin, sick) == "/failed_active_hc"


def test_health_state_carries_over_a_hot_restart(proxyd_factory, flaky_factory):
    up = flaky_factory(2)
    sick, well = up.ports
    px, admin = _start(proxyd_factory, up.addresses, [_hc({"http_health_check": {"path": "/hc"}},
                                                          interval="0.5s")], concurrency=1)
    up.set(sick, hc=500)
    wait_for(lambda: _flags(admin, sick) == "/failed_active_hc", what="the failed check")
    attempts = int(stats(admin)[P + "attempt"])
    cp = run_cli("reload", "--runtime-dir", px.runtime_dir, timeout=60)
    assert cp.returncode == 0, cp.stdout + cp.stderr
    # the new master inherits the words: still failed, never routed to, counters go on
    assert _flags(admin, sick) == "/failed_active_hc"
    assert {http(px.port, path="/x").json()["port"] for _ in range(8)} == {well}
    assert int(stats(admin)[P + "attempt"]) >= attempts
    up.set(sick, hc=200)
    wait_for(lambda: _flags(admin, sick) == "healthy", what="recovery under the new master")


def test_immediate_health_check_fail_header_fails_the_host_at_once(proxyd_factory, flaky_factory):
    up = flaky_factory(2)
    sick, well = up.ports
    px, admin = _start(proxyd_factory, up.addresses, [_hc({"http_health_check": {"path": "/hc"}},
                                                          interval="30s", no_traffic_interval="30s")])
    up.set(sick, immfail=1)
    wait_for(lambda: (http(px.port, path="/x"),
                      _flags(admin, sick) == "/failed_active_hc/excluded_via_immediate_hc_fail")[1],
             what="the passive failure")
    s = stats(admin)
    assert s[P + "passive_failure"] == "1" and s[P + "healthy"] == "1"
    assert {http(px.port, path="/x").json()["port"] for _ in range(10)} == {well}


def test_http2_check_reuses_its_connection(proxyd_factory):
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "http2"))
    from h2server import H2Server
    srv = H2Server()
    try:
        px, admin = _start(proxyd_factory, [("127.0.0.1", srv.port)], [_hc({"http_health_check": {
            "path": "/hc", "codec_client_type": "HTTP2"}})], concurrency=1)
        assert _flags(admin, srv.port) == "healthy"
        wait_for(lambda: int(stats(admin)[P + "success"]) >= 4, what="four checks")
        assert srv.connections == 1 and srv.paths.count("/hc") >= 4
        px.stop()
        # a reset stream is a network failure: unhealthy after unhealthy_threshold (2) of them
        px2, admin2 = _start(proxyd_factory, [("127.0.0.1", srv.port)], [_hc({"http_health_check": {
            "path": "/rst", "codec_client_type": "HTTP2"}})], concurrency=1)
        wait_for(lambda: _flags(admin2, srv.port) == "/failed_active_hc", what="the failed check")
        assert int(stats(admin2)[P + "network_failure"]) >= 1
    finally:
        srv.stop()


def test_no_traffic_interval_until_the_cluster_has_had_a_connection(proxyd_factory, flaky_factory):
    """Envoy's pitfall kept: before any connection, checks run at no_traffic_interval
    (here 60 s: only the first check), then at `interval`."""
    import urllib.request
    up = flaky_factory(1)
    port = up.ports[0]
    px, admin = _start(proxyd_factory, up.addresses, [_hc({"http_health_check": {"path": "/hc"}},
                                                          no_traffic_interval="60s")], concurrency=1)
    time.sleep(1.0)  # five intervals of 0.2 s: none runs without traffic
    assert stats(admin)[P + "attempt"] == "1" and up.state(port)["hc_requests"] == 1
    assert http(px.port, path="/x").status == 200
    # the first check after traffic is still the one scheduled at 60 s; a failure shows
    # the checker is not stuck: the JSON /clusters says so too
    doc = json.loads(urllib.request.urlopen(
        "http://127.0.0.1:%d/clusters?format=json" % admin, timeout=5).read())
    hs = doc["cluster_statuses"][0]["host_statuses"][0]
    assert hs["health_status"]["eds_health_status"] == "HEALTHY"
    assert not hs["health_status"].get("failed_active_health_check")
