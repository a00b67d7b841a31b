"""Every admin endpoint over a real socket with a real HTTP client."""

import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

MUTATING = ["/healthcheck/fail", "/healthcheck/ok", "/drain_listeners", "/quitquitquit", "/reset_counters",
            "/logging", "/reopen_logs"]


def request(address, method, path):
    conn = http.client.HTTPConnection(*address, timeout=10)
    try:
        conn.request(method, path)
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def get(address, path):
    return request(address, "GET", path)


def post(address, path):
    return request(address, "POST", path)


def test_stats_text_filter_usedonly_and_json(admin, master):
    master.stats.counter("cluster.web.upstream_rq_200").inc(7)
    master.stats.counter("cluster.web.upstream_rq_503")
    master.stats.histogram("cluster.web.upstream_rq_time").record(3)
    status, headers, body = get(admin, "/stats")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    lines = body.decode().splitlines()
    assert "cluster.web.upstream_rq_200: 7" in lines
    assert "server.live: 1" in lines and "server.concurrency: 2" in lines
    assert "server.total_connections: 3" in lines and "server.hot_restart_epoch: 1" in lines
    assert "server.hot_restart_generation: 1" in lines
    assert any(line.startswith("server.uptime: 10") for line in lines)
    assert any(line.startswith("cluster.web.upstream_rq_time: P0(nan,") for line in lines)
    _, _, body = get(admin, "/stats?filter=upstream_rq_5&usedonly")
    assert body == b""
    _, _, body = get(admin, "/stats?filter=%5Ecluster%5C.web%5C.upstream_rq_%5Cd&usedonly")
    assert body.decode().splitlines() == ["cluster.web.upstream_rq_200: 7"]
    status, headers, body = get(admin, "/stats?format=json&filter=upstream_rq")
    doc = json.loads(body)
    assert headers["Content-Type"] == "application/json"
    assert {"name": "cluster.web.upstream_rq_200", "value": 7} in doc["stats"]
    assert doc["stats"][-1]["histograms"]["computed_quantiles"][0]["name"] == "cluster.web.upstream_rq_time"
    status, _, body = get(admin, "/stats?filter=(unclosed")
    assert status == 400 and body == b"Invalid re2 regex: missing ): (unclosed\n"  # as Envoy 1.40
    status, _, body = get(admin, "/stats?filter=%28%3F%3Dx%29")  # (?=x): not RE2
    assert status == 400 and body == b"Invalid re2 regex: invalid perl operator: (?=\n"
    # RE2 syntax Python's re lacks, and no program size limit (Envoy's admin has none)
    status, _, body = get(admin, "/stats?filter=%5Cp%7BLatin%7D%2B%5C.web%5C.upstream_rq_200")
    assert status == 200 and body.decode().splitlines() == ["cluster.web.upstream_rq_200: 7"]
    status, _, body = get(admin, "/stats?filter=%28a%7B50%7D%7Cb%7B60%7D%29x")
    assert status == 200 and body == b""


def test_prometheus_and_metrics_are_identical_and_parse(admin, master):
    master.stats.counter("cluster.web.upstream_rq_200").inc(2)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    master.worker_pids = [sleeper.pid]
    try:
        status, headers, prom = get(admin, "/stats/prometheus")
        _, _, metrics = get(admin, "/metrics")
        _, _, by_format = get(admin, "/stats?format=prometheus")
    finally:
        sleeper.kill()
        sleeper.wait()
    assert status == 200 and headers["Content-Type"].startswith("text/plain; version=0.0.4")
    moving = ("proxyd_process_", "envoy_server_memory_allocated ", "envoy_server_uptime ")

    def strip(text):
        return [line for line in text.decode().splitlines() if not line.startswith(moving)]

    assert strip(prom) == strip(metrics) == strip(by_format)
    text = prom.decode()
    assert 'envoy_cluster_upstream_rq{envoy_response_code="200",envoy_cluster_name="web"} 2\n' in text
    families = list(text_string_to_metric_families(text))
    processes = {s.labels["process"]: s.labels["pid"] for f in families if f.name == "proxyd_process_cpu_seconds"
                 for s in f.samples}
    assert processes == {"master": str(os.getpid()), "worker_0": str(sleeper.pid)}
    assert any(f.name == "envoy_server_memory_allocated" and f.samples[0].value > 0 for f in families)


def test_ready_follows_state(admin, master):
    assert get(admin, "/ready")[::2] == (200, b"LIVE\n")
    master.state = "INITIALIZING"
    assert get(admin, "/ready")[::2] == (503, b"INITIALIZING\n")


def test_server_info_has_envoy_shape(admin):
    status, _, body = get(admin, "/server_info")
    info = json.loads(body)
    assert status == 200
    assert info["state"] == "LIVE" and info["version"].startswith("proxyd/")
    assert info["uptime_current_epoch"] == "10s" and info["uptime_all_epochs"] == "100s"
    cli = info["command_line_options"]
    assert cli["base_id"] == "7" and cli["concurrency"] == 2 and cli["restart_epoch"] == 1
    assert cli["drain_time"] == "30s" and cli["parent_shutdown_time"] == "45s"
    assert cli["config_path"] == "/etc/proxyd.yaml"
    assert info["node"]["id"] == "node-1" and info["node"]["cluster"] == "edge"


def test_clusters_text_and_json(admin, master):
    master.stats.counter("_host.web.10.0.0.1:80.rq_total").inc(11)
    master.stats.gauge("_host.web.10.0.0.1:80.cx_active").set(2)
    _, _, body = get(admin, "/clusters")
    lines = body.decode().splitlines()
    for expected in ("web::observability_name::web", "web::default_priority::max_connections::1024",
                     "web::default_priority::max_retries::3", "web::high_priority::max_requests::1024",
                     "web::added_via_api::false", "web::10.0.0.1:80::rq_total::11",
                     "web::10.0.0.1:80::cx_active::2", "web::10.0.0.1:80::cx_connect_fail::0",
                     "web::10.0.0.1:80::hostname::web-1", "web::10.0.0.1:80::health_flags::healthy",
                     "web::10.0.0.2:80::health_flags::/failed_active_hc", "web::10.0.0.2:80::weight::3"):
        assert expected in lines
    doc = json.loads(get(admin, "/clusters?format=json")[2])
    status = doc["cluster_statuses"][0]
    assert status["name"] == "web"
    assert status["circuit_breakers"]["thresholds"][0]["max_connections"] == 1024
    first, second = status["host_statuses"]
    assert first["address"]["socket_address"] == {"address": "10.0.0.1", "port_value": 80}
    # proto3 JSON as Envoy prints it: COUNTER (0) and zero values are omitted.
    assert {"name": "rq_total", "value": "11"} in first["stats"]
    assert {"name": "cx_active", "type": "GAUGE", "value": "2"} in first["stats"]
    assert {"name": "rq_active", "type": "GAUGE"} in first["stats"]
    assert first["health_status"] == {"eds_health_status": "HEALTHY"}
    assert second["health_status"]["failed_active_health_check"] is True


def test_listeners_text_and_json(admin):
    assert get(admin, "/listeners")[2] == b"tcp_in::127.0.0.1:10000\n"
    doc = json.loads(get(admin, "/listeners?format=json")[2])
    assert doc == {"listener_statuses": [{"name": "tcp_in", "local_address": {
        "socket_address": {"address": "127.0.0.1", "port_value": 10000}}}]}


def test_config_dump_is_admin_v3_and_redacts_secrets(admin):
    status, _, body = get(admin, "/config_dump")
    assert status == 200 and b"SECRET-KEY" not in body and b"[redacted]" in body
    configs = json.loads(body)["configs"]
    assert [c["@type"].rsplit(".", 1)[1] for c in configs] == [
        "BootstrapConfigDump", "ClustersConfigDump", "ListenersConfigDump",
        "ScopedRoutesConfigDump", "RoutesConfigDump", "SecretsConfigDump"]  # Envoy 1.40's order
    assert configs[0]["bootstrap"]["node"]["id"] == "node-1"
    assert configs[1]["static_clusters"][0]["cluster"]["name"] == "web"
    assert configs[2]["static_listeners"][0]["listener"]["name"] == "tcp_in"
    tls = configs[1]["static_clusters"][0]["cluster"]["transport_socket"]["typed_config"]
    assert tls["common_tls_context"]["tls_certificates"][0]["certificate_chain"]["inline_string"] == "CERT"


@pytest.mark.parametrize("path", MUTATING)
def test_mutating_endpoints_refuse_get(admin, master, path):
    status, headers, _ = get(admin, path)
    assert status == 405 and headers["Allow"] == "POST"
    assert master.calls == []


def test_mutating_endpoints_over_post(admin, master):
    counter = master.stats.counter("cluster.web.upstream_rq_total")
    counter.inc(5)
    assert post(admin, "/healthcheck/fail")[::2] == (200, b"OK\n")
    assert post(admin, "/healthcheck/ok")[0] == 200
    assert post(admin, "/reset_counters")[0] == 200
    assert counter.value() == 0
    assert post(admin, "/logging?level=debug")[0] == 200
    assert post(admin, "/logging?level=loud")[0] == 400
    assert post(admin, "/reopen_logs")[::2] == (200, b"OK\n")
    assert post(admin, "/drain_listeners?graceful")[0] == 200
    assert get(admin, "/ready")[0] == 503
    status, headers, _ = post(admin, "/quitquitquit")
    assert status == 200 and headers["Connection"] == "close"
    deadline = time.monotonic() + 5  # quit runs once the response is out
    while ("quit",) not in master.calls and time.monotonic() < deadline:
        time.sleep(0.01)
    assert master.calls == [("healthcheck_failed", True), ("healthcheck_failed", False), ("log_level", "debug"),
                            ("reopen_logs",), ("drain", True), ("quit",)]


def test_runtime_without_layers(admin):
    status, _, body = get(admin, "/runtime")
    assert status == 200 and json.loads(body) == {"entries": {}, "layers": []}


def test_help_unknown_path_keep_alive_and_bad_requests(admin):
    status, _, body = get(admin, "/help")
    assert status == 200 and b"/stats/prometheus" in body and b"/quitquitquit (POST)" in body
    assert get(admin, "/nope")[0] == 404
    conn = http.client.HTTPConnection(*admin, timeout=10)
    for _ in range(3):  # one connection, several requests
        conn.request("GET", "/ready")
        resp = conn.getresponse()
        assert resp.status == 200 and resp.read() == b"LIVE\n"
    conn.request("HEAD", "/stats")
    resp = conn.getresponse()
    assert resp.status == 200 and int(resp.getheader("Content-Length")) > 0 and resp.read() == b""
    conn.close()
    with socket.create_connection(admin, timeout=10) as raw:
        raw.sendall(b"GET /ready HTTP/1.1\r\nHost: x\r\n\r\nGET /listeners HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        while data.count(b"HTTP/1.1 200") < 2:
            chunk = raw.recv(65536)
            assert chunk
            data += chunk
        assert data.index(b"LIVE") < data.index(b"tcp_in::")
    with socket.create_connection(admin, timeout=10) as raw:
        raw.sendall(b"BLAH\r\n\r\n")
        assert raw.recv(65536).startswith(b"HTTP/1.1 400")
    status, _, _ = request(admin, "DELETE", "/stats")
    assert status == 405


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")
def test_curl_sees_the_same(admin):
    out = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "GET",
                          f"http://{admin[0]}:{admin[1]}/quitquitquit"], capture_output=True, text=True, timeout=10)
    assert out.stdout == "405"
    out = subprocess.run(["curl", "-s", f"http://{admin[0]}:{admin[1]}/ready"], capture_output=True, text=True,
                         timeout=10)
    assert out.stdout == "LIVE\n"
