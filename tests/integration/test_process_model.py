"""The process model as an operator sees it: several workers serving, a killed worker
replaced, graceful stop, start-up failures, `proxyd check`, and the README example."""
import os
import re
import signal
import socket
import threading
import time
import urllib.request

import psutil
import pytest

from harness import (REPO, Conn, Proxyd, free_port, group_pids, http, run_cli, simple_config,
                     write_config)


def serving_pid(px, conn: Conn) -> int | None:
    """The worker process holding the server side of `conn`."""
    for pid in px.worker_pids():
        for c in psutil.Process(pid).net_connections(kind="tcp"):
            if c.raddr and c.raddr.port == conn.local_port and c.laddr.port == px.port:
                return pid
    return None


def test_two_workers_both_serve(upstream, proxyd_factory):
    px = proxyd_factory(simple_config(free_port(), upstream.port), concurrency=2)
    workers = set(px.worker_pids())
    assert len(workers) == 2 and px.pid not in workers
    seen = set()
    for _ in range(20):
        conns = [Conn(px.port) for _ in range(16)]
        try:
            for c in conns:
                assert c.request("GET", "/w").status == 200
            seen.update(serving_pid(px, c) for c in conns)
        finally:
            for c in conns:
                c.close()
        if workers <= seen:
            break
    assert seen == workers
    assert psutil.Process(px.pid).net_connections(kind="tcp") == [] or all(
        c.status == psutil.CONN_LISTEN for c in psutil.Process(px.pid).net_connections(kind="tcp"))


def test_killed_worker_is_replaced_and_serves(upstream, proxyd_factory):
    px = proxyd_factory(simple_config(free_port(), upstream.port), concurrency=1)
    (old,) = px.worker_pids()
    t0 = time.monotonic()
    os.kill(old, signal.SIGKILL)
    new = None
    while time.monotonic() - t0 < 3:
        pids = px.worker_pids()
        if pids and pids[0] != old:
            new = pids[0]
            break
        time.sleep(0.02)
    replaced_after = time.monotonic() - t0
    assert new is not None
    assert replaced_after < 1.0, replaced_after
    r = http(px.port, path="/after-kill")
    assert r.status == 200
    assert time.monotonic() - t0 < 2.5
    assert re.search(r"worker_exited.*killed by signal SIGKILL", px.log())


def test_crash_loop_backs_off(upstream, proxyd_factory):
    """A worker that keeps dying is respawned with a growing delay, not in a hot loop."""
    px = proxyd_factory(simple_config(free_port(), upstream.port), concurrency=1)
    spawned = set(px.worker_pids())
    t0 = time.monotonic()
    while time.monotonic() - t0 < 3:
        for pid in px.worker_pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            spawned.add(pid)
        time.sleep(0.01)
    assert len(spawned) < 15, "respawned %d times in 3 s" % len(spawned)
    assert "worker_respawn_backoff" in px.log()


def test_graceful_stop_finishes_in_flight_request(upstream, proxyd_factory):
    px = proxyd_factory(simple_config(free_port(), upstream.port), concurrency=2, drain_time_s=10)
    result = {}

    def slow():
        result["r"] = http(px.port, path="/?size=1000&delay=1.5", timeout=20)

    t = threading.Thread(target=slow)
    t.start()
    time.sleep(0.4)
    t0 = time.monotonic()
    rc = px.stop()
    took = time.monotonic() - t0
    t.join(10)
    assert rc == 0
    r = result["r"]
    assert r.status == 200 and len(r.body) == 1000
    assert took >= 0.8  # it waited for the request
    assert took < 8
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", px.port), timeout=1).close()
    assert group_pids(px.pid) == []


def test_graceful_stop_closes_idle_keepalive_connections(upstream, proxyd_factory):
    # An idle keep-alive connection is closed after the idle grace (2.5 s: its client may
    # be sending a request right now), not held open until the 30 s drain deadline.
    px = proxyd_factory(simple_config(free_port(), upstream.port), drain_time_s=30)
    c = Conn(px.port)
    assert c.request("GET", "/idle").status == 200
    t0 = time.monotonic()
    assert px.stop() == 0
    assert time.monotonic() - t0 < 15
    assert c.is_closed(timeout=1)
    c.close()


def test_drain_deadline_bounds_stop(upstream, proxyd_factory):
    px = proxyd_factory(simple_config(free_port(), upstream.port), drain_time_s=1)
    t = threading.Thread(target=lambda: _swallow(http, px.port, path="/?delay=30", timeout=40))
    t.daemon = True
    t.start()
    time.sleep(0.3)
    t0 = time.monotonic()
    assert px.stop() == 0
    assert time.monotonic() - t0 < 8


def _swallow(fn, *a, **kw):
    try:
        fn(*a, **kw)
    except OSError:
        pass


def test_sigterm_is_graceful_and_sigint_fast(upstream, proxyd_factory):
    px = proxyd_factory(simple_config(free_port(), upstream.port))
    px.signal(signal.SIGTERM)
    assert px.wait_exit(15) == 0
    px2 = proxyd_factory(simple_config(free_port(), upstream.port), drain_time_s=30)
    t = threading.Thread(target=lambda: _swallow(http, px2.port, path="/?delay=20", timeout=30))
    t.daemon = True
    t.start()
    time.sleep(0.3)
    t0 = time.monotonic()
    px2.signal(signal.SIGINT)
    assert px2.wait_exit(15) == 0
    assert time.monotonic() - t0 < 7  # did not wait for the 20 s request
    assert group_pids(px2.pid) == []


def test_bind_failure_exits_nonzero_with_message(upstream, tmp_path):
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    port = busy.getsockname()[1]
    try:
        px = Proxyd(write_config(tmp_path, simple_config(port, upstream.port)))
        px.start(wait=False)
        try:
            rc = px.wait_exit(20)
            log = px.log()
        finally:
            px.cleanup()
    finally:
        busy.close()
    assert rc != 0
    assert "listener_0" in log and str(port) in log
    assert re.search(r"(?i)address already in use|in use", log), log


def test_bad_config_exits_nonzero(tmp_path):
    px = Proxyd(write_config(tmp_path, "static_resources:\n  listeners: 3\n"))
    px.start(wait=False)
    try:
        assert px.wait_exit(20) == 1
        assert "proxyd:" in px.log()
    finally:
        px.cleanup()


BAD_CONFIG = """\
static_resources:
  listeners:
  - name: l
    address:
      socket_address: { address: 127.0.0.1, port_value: 10000 }
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefx: ingress
          route_config:
            virtual_hosts:
            - name: v
              domains: ["*"]
              routes:
              - match: { prefix: "/" }
                route: { cluster: c }
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: c
    connect_timeout: 1s
    load_assignment:
      cluster_name: c
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: { address: 127.0.0.1, port_value: eighty }
"""


def test_check_reports_errors_with_line_numbers(tmp_path):
    path = write_config(tmp_path, BAD_CONFIG, "bad.yaml")
    r = run_cli("check", "-c", path)
    assert r.returncode == 1
    lines = r.stderr.splitlines()
    assert any(line.startswith("%s:11:" % path) and "stat_prefx" in line and "stat_prefix" in line
               for line in lines), r.stderr


def test_check_reports_bad_value_line(tmp_path):
    text = BAD_CONFIG.replace("stat_prefx", "stat_prefix")
    path = write_config(tmp_path, text, "bad2.yaml")
    r = run_cli("check", "-c", path)
    assert r.returncode == 1
    assert re.search(r"^%s:32:\d+: .*port_value" % re.escape(str(path)), r.stderr, re.M), r.stderr


def test_check_unsupported_field_is_named(tmp_path):
    text = BAD_CONFIG.replace("stat_prefx", "stat_prefix").replace("port_value: eighty", "port_value: 80")
    text = text.replace("    connect_timeout: 1s\n", "    connect_timeout: 1s\n    circuit_breakers_typo_free: {}\n")
    path = write_config(tmp_path, text, "bad3.yaml")
    r = run_cli("check", "-c", path)
    assert r.returncode == 1
    assert re.search(r"^%s:26:5: .*circuit_breakers_typo_free" % re.escape(str(path)), r.stderr, re.M), r.stderr


def test_check_ok(tmp_path, upstream):
    path = write_config(tmp_path, simple_config(free_port(), upstream.port))
    r = run_cli("check", "-c", path)
    assert r.returncode == 0, r.stderr
    assert "OK" in r.stdout and "1 listener" in r.stdout and "1 cluster" in r.stdout


def test_readme_example_config_serves(tmp_path, upstream_factory):
    """etc/proxyd.yaml, with its ports moved to free ones: / answered by proxyd itself,
    /app/ proxied (prefix rewritten) to the upstream via STRICT_DNS localhost."""
    text = (REPO / "etc" / "proxyd.yaml").read_text()
    listen, admin, app = free_port(), free_port(), free_port()
    for old, new in (("port_value: 10000", listen), ("port_value: 9901", admin), ("port_value: 8080", app)):
        assert old in text
        text = text.replace(old, "port_value: %d" % new)
    up = upstream_factory("app")
    from harness import Upstream
    up.stop()
    up = Upstream("app", port=app)
    px = Proxyd(write_config(tmp_path, text))
    try:
        px.start()
        r = http(listen, path="/")
        assert (r.status, r.body) == (200, b"hello from proxyd\n")
        r = http(listen, path="/app/x?y=1")
        assert r.status == 200 and r.json()["path"] == "/x?y=1"
        assert r.json()["server"] == "app"
        with urllib.request.urlopen("http://127.0.0.1:%d/ready" % admin, timeout=5) as resp:
            assert resp.status == 200 and b"LIVE" in resp.read()
        assert px.stop() == 0
    finally:
        px.cleanup()
        up.stop()
