"""Stats and admin end to end: real proxyd (master + 2 workers), real upstreams, real clients.

Counts are checked exactly against what the clients sent and what the upstream processes
saw; /metrics is judged by prometheus_client's parser and, where installed, promtool.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from harness import Conn, bootstrap, cluster, free_port, http, listener
from proxyd.master.arbiter import stats_path as family_stats_path
from proxyd.stats import StatsStore
from proxyd.stats.catalog import Catalog
from proxyd.stats.region import Region

PREFIX = "ingress_http"
CLUSTER = "web"
RQ_STATS = [f"cluster.{CLUSTER}.upstream_rq_total", f"cluster.{CLUSTER}.upstream_rq_200",
            f"cluster.{CLUSTER}.upstream_rq_2xx", f"cluster.{CLUSTER}.upstream_rq_completed",
            f"http.{PREFIX}.downstream_rq_2xx", f"http.{PREFIX}.downstream_rq_total"]
HISTOGRAMS = [("envoy_cluster_upstream_rq_time", {"envoy_cluster_name": CLUSTER}),
              ("envoy_http_downstream_rq_time", {"envoy_http_conn_manager_prefix": PREFIX})]
# Envoy's own names carry no HELP, no _total on counters and units like _ms: promtool
# lint complaints about those are expected (the allowance of test_exposition.py), plus
# one that only a running proxy shows: membership_total is a gauge in Envoy.
PROMTOOL_STYLE = re.compile(r' (no help text|counter metrics should have "_total" suffix'
                            r'|metric names should not contain abbreviated units)$'
                            r'|^envoy_cluster_membership_total non-counter metrics should not have "_total" suffix$')


# --- helpers ---------------------------------------------------------------------------
def start(proxyd_factory, upstreams):
    port, admin_port = free_port(), free_port()
    config = bootstrap([listener(port, stat_prefix=PREFIX, routes=[
        {"match": {"prefix": "/"}, "route": {"cluster": CLUSTER}}])],
        [cluster(CLUSTER, [u.address for u in upstreams])], admin_port)
    return proxyd_factory(config, concurrency=2)


def admin(px, path, method="GET"):
    """(status, body text) of one admin request."""
    req = urllib.request.Request(px.admin_url + path, method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def stats(px) -> dict:
    """name -> value of every counter and gauge, from /stats?format=json."""
    status, body = admin(px, "/stats?format=json")
    assert status == 200
    return {s["name"]: s["value"] for s in json.loads(body)["stats"] if "value" in s}


def metrics(px):
    """(text, [families]) of /metrics, parsed by prometheus_client. A list: the parser
    names both envoy_cluster_upstream_rq and envoy_cluster_upstream_rq_total families
    "envoy_cluster_upstream_rq" (it strips a counter's _total)."""
    status, text = admin(px, "/metrics")
    assert status == 200
    return text, list(text_string_to_metric_families(text))


def samples(families, kind=None) -> dict:
    """(sample name, sorted labels) -> value, over families of type `kind` (any if None).
    The parser also renames counter samples to name_total: envoy_cluster_upstream_rq{code}
    reads as envoy_cluster_upstream_rq_total{code}, told apart from the real one by labels."""
    found = [((s.name, tuple(sorted(s.labels.items()))), s.value)
             for f in families if kind is None or f.type == kind for s in f.samples]
    out = dict(found)
    assert len(out) == len(found), "two series read the same"
    return out


def envoy_counters(families) -> dict:
    return {k: v for k, v in samples(families, "counter").items() if k[0].startswith("envoy_")}


def hist_count(families, family, labels) -> float:
    return samples(families, "histogram")[(family + "_count", tuple(sorted(labels.items())))]


def per_process(px, name) -> dict:
    """{pid: that process's own share of `name`}, read from each slot of the stats file."""
    path = family_stats_path(px_options(px))
    store, region = StatsStore.attach(path), Region.attach(path)
    try:
        _, row = Catalog(region).lookup(name)
        return {s["pid"]: region.values(s["slot"])[row] for s in store.slots()}
    finally:
        store.close()
        region.close()


def worker_slot_pids(px) -> set:
    store = StatsStore.attach(family_stats_path(px_options(px)))
    try:
        return {s["pid"] for s in store.slots() if s["role"] == "worker"}
    finally:
        store.close()


def px_options(px):
    class Options:
        base_id = 0
        runtime_dir = px.runtime_dir
    return Options


def wait_for(predicate, timeout=10.0, what="condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def drive(port, conns, per_conn) -> int:
    """`conns` keep-alive connections in parallel, `per_conn` requests each; all must be 200."""
    failures = []

    def one():
        try:
            with Conn(port) as c:
                for _ in range(per_conn):
                    r = c.request(path="/e2e")
                    assert r.status == 200, r
        except Exception as e:  # reported below, in the test's thread
            failures.append(e)
    threads = [threading.Thread(target=one) for _ in range(conns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures, failures[:3]
    return conns * per_conn


def settled(px, expected):
    """Stats once every response sent has been accounted for (a client can read its
    response a moment before the worker records it)."""
    def check():
        s = stats(px)
        done = (s[f"http.{PREFIX}.downstream_rq_total"] >= expected
                and s[f"cluster.{CLUSTER}.upstream_rq_completed"] >= expected
                and s[f"http.{PREFIX}.downstream_rq_active"] == 0)
        return s if done else None
    return wait_for(check, 5.0, f"{expected} requests in the stats")


def assert_exact(px, upstreams, expected):
    s = settled(px, expected)
    assert {name: s[name] for name in RQ_STATS} == {name: expected for name in RQ_STATS}
    assert sum(u.stats()["requests"] for u in upstreams) == expected
    _, fams = metrics(px)
    for family, labels in HISTOGRAMS:
        assert hist_count(fams, family, labels) == expected, family
    counters = envoy_counters(fams)
    assert counters[("envoy_cluster_upstream_rq_total", (("envoy_cluster_name", CLUSTER),))] == expected
    assert counters[("envoy_cluster_upstream_rq_total", (("envoy_cluster_name", CLUSTER),
                                                         ("envoy_response_code", "200")))] == expected
    assert counters[("envoy_http_downstream_rq_xx_total", (("envoy_http_conn_manager_prefix", PREFIX),
                                                            ("envoy_response_code_class", "2")))] == expected
    return s, fams


# --- tests -----------------------------------------------------------------------------
def test_exact_totals_across_workers_and_a_worker_kill(proxyd_factory, upstream_factory):
    """N requests over 8 connections and 2 workers are counted exactly; SIGKILLing a worker
    loses no count and drops its gauges; M more requests add up to N + M."""
    ups = [upstream_factory("a"), upstream_factory("b")]
    px = start(proxyd_factory, ups)
    workers = set(px.worker_pids())

    n = drive(px.port, conns=8, per_conn=400)
    assert_exact(px, ups, n)
    served = per_process(px, f"http.{PREFIX}.downstream_rq_total")
    assert sum(served.values()) == n
    assert all(served[pid] > 0 for pid in workers), served  # both workers took requests
    s = stats(px)  # cluster-wide figures are not multiplied by the number of workers
    assert (s[f"cluster.{CLUSTER}.membership_total"], s[f"cluster.{CLUSTER}.membership_healthy"],
            s[f"cluster.{CLUSTER}.membership_change"]) == (2, 2, 1)

    # Hold idle keep-alive connections, then SIGKILL the worker holding more of them.
    idle = [Conn(px.port) for _ in range(8)]
    try:
        for c in idle:
            assert c.request(path="/e2e").status == 200
        n += len(idle)
        before = settled(px, n)
        assert before[f"http.{PREFIX}.downstream_cx_active"] == len(idle)
        assert before["server.total_connections"] == len(idle)
        _, fams_before = metrics(px)
        cx_share = per_process(px, f"http.{PREFIX}.downstream_cx_active")
        up_share = per_process(px, f"cluster.{CLUSTER}.upstream_cx_active")
        victim = max(workers, key=lambda pid: cx_share[pid])
        os.kill(victim, signal.SIGKILL)

        wait_for(lambda: len(px.worker_pids()) == 2 and victim not in px.worker_pids(), 20.0,
                 "a replacement worker")
        wait_for(lambda: worker_slot_pids(px) == set(px.worker_pids()), 10.0, "the replacement's stats slot")
        wait_for(lambda: stats(px)[f"cluster.{CLUSTER}.membership_total"] == 2, 20.0,
                 "the replacement to apply its config")
        closed = [c for c in idle if c.is_closed(timeout=0.5)]
        assert len(closed) == cx_share[victim]

        after = stats(px)
        _, fams_after = metrics(px)
        counters_after = envoy_counters(fams_after)
        went_down = {k: (v, counters_after.get(k)) for k, v in envoy_counters(fams_before).items()
                     if counters_after.get(k, -1) < v}
        assert went_down == {}
        for name in RQ_STATS:
            assert after[name] == n, name
        survivors = len(idle) - len(closed)
        assert after[f"http.{PREFIX}.downstream_cx_active"] == survivors
        assert after["server.total_connections"] == survivors
        listener_active = [v for k, v in after.items()
                           if k.startswith("listener.") and k.endswith(".downstream_cx_active")]
        assert listener_active == [survivors]
        assert after[f"cluster.{CLUSTER}.upstream_cx_active"] == \
            before[f"cluster.{CLUSTER}.upstream_cx_active"] - up_share[victim]
        assert after[f"http.{PREFIX}.downstream_rq_active"] == 0
        assert after[f"cluster.{CLUSTER}.upstream_rq_active"] == 0
    finally:
        for c in idle:
            c.close()

    n += drive(px.port, conns=4, per_conn=200)
    assert_exact(px, ups, n)
    served = per_process(px, f"http.{PREFIX}.downstream_rq_total")
    assert victim not in served


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
def test_metrics_of_a_running_proxy_pass_promtool(proxyd_factory, upstream_factory):
    px = start(proxyd_factory, [upstream_factory("a")])
    drive(px.port, conns=2, per_conn=20)
    assert http(px.port, path="/e2e?status=503").status == 503
    text, fams = metrics(px)
    assert {dict(labels)["process"] for name, labels in samples(fams)
            if name == "proxyd_process_cpu_seconds_total"} == {"master", "worker_0", "worker_1"}
    result = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
    problems = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert result.returncode in (0, 3), problems
    assert [p for p in problems if not PROMTOOL_STYLE.search(p)] == []


def test_server_gauges(proxyd_factory, upstream_factory):
    px = start(proxyd_factory, [upstream_factory("a")])
    s = stats(px)
    assert (s["server.live"], s["server.state"], s["server.concurrency"], s["server.hot_restart_epoch"],
            s["server.hot_restart_generation"]) == (1, 0, 2, 0, 1)
    assert s["server.memory_allocated"] > 10 << 20
    conns = [Conn(px.port) for _ in range(5)]
    try:
        for c in conns:
            assert c.request(path="/e2e").status == 200
        wait_for(lambda: stats(px)["server.total_connections"] == 5, 5.0, "5 open connections")
        conns.pop().close()
        conns.pop().close()
        wait_for(lambda: stats(px)["server.total_connections"] == 3, 5.0, "3 open connections")
        assert stats(px)["server.total_connections_accepted"] == 5  # counted, never decreased
    finally:
        for c in conns:
            c.close()
    wait_for(lambda: stats(px)["server.total_connections"] == 0, 5.0, "no open connections")
    wait_for(lambda: stats(px)["server.uptime"] > s["server.uptime"], 3.0, "uptime to increase")


def test_every_admin_endpoint_against_the_real_master(proxyd_factory, upstream_factory):
    ups = [upstream_factory("a"), upstream_factory("b")]
    px = start(proxyd_factory, ups)
    n = drive(px.port, conns=2, per_conn=30)
    settled(px, n)

    assert admin(px, "/ready") == (200, "LIVE\n")
    status, body = admin(px, "/server_info")
    info = json.loads(body)
    assert status == 200 and info["state"] == "LIVE"
    assert info["command_line_options"]["concurrency"] == 2
    assert info["command_line_options"]["restart_epoch"] == 0
    assert (info["node"]["id"], info["node"]["cluster"]) == ("test", "test")

    addresses = {"127.0.0.1:%d" % u.port: u for u in ups}
    status, body = admin(px, "/clusters")
    assert status == 200
    lines = body.splitlines()
    for address, u in addresses.items():
        assert f"{CLUSTER}::{address}::rq_total::{u.stats()['requests']}" in lines
        assert f"{CLUSTER}::{address}::health_flags::healthy" in lines
    status, body = admin(px, "/clusters?format=json")
    (web,) = json.loads(body)["cluster_statuses"]
    hosts = {"%s:%d" % (h["address"]["socket_address"]["address"], h["address"]["socket_address"]["port_value"]):
             {st["name"]: int(st.get("value", 0)) for st in h["stats"]} for h in web["host_statuses"]}
    assert web["name"] == CLUSTER and set(hosts) == set(addresses)
    assert {a: h["rq_total"] for a, h in hosts.items()} == {a: u.stats()["requests"] for a, u in addresses.items()}
    assert sum(h["rq_total"] for h in hosts.values()) == n

    assert admin(px, "/listeners") == (200, "listener_0::127.0.0.1:%d\n" % px.port)
    status, body = admin(px, "/listeners?format=json")
    assert json.loads(body)["listener_statuses"][0]["local_address"]["socket_address"]["port_value"] == px.port
    status, body = admin(px, "/config_dump")
    dump = {c["@type"].rsplit(".", 1)[1]: c for c in json.loads(body)["configs"]}
    (static,) = dump["ListenersConfigDump"]["static_listeners"]
    assert static["listener"]["name"] == "listener_0"
    assert static["listener"]["address"]["socket_address"]["port_value"] == px.port
    assert dump["BootstrapConfigDump"]["bootstrap"]["node"]["id"] == "test"
    status, body = admin(px, "/help")
    assert status == 200 and all(p in body for p in ("/stats", "/metrics", "/quitquitquit (POST)"))

    # GET on an endpoint that changes state is refused and changes nothing.
    counted = stats(px)[f"cluster.{CLUSTER}.upstream_rq_total"]
    for path in ("/healthcheck/fail", "/drain_listeners", "/reset_counters", "/logging?level=debug",
                 "/quitquitquit"):
        assert admin(px, path)[0] == 405, path
    assert admin(px, "/ready") == (200, "LIVE\n")
    assert stats(px)[f"cluster.{CLUSTER}.upstream_rq_total"] == counted
    assert http(px.port, path="/e2e").status == 200
    assert px.proc.poll() is None
    n += 1

    assert admin(px, "/healthcheck/fail", "POST")[0] == 200
    assert admin(px, "/ready") == (503, "DRAINING\n")
    assert stats(px)["server.live"] == 0
    assert json.loads(admin(px, "/server_info")[1])["state"] == "DRAINING"
    assert admin(px, "/healthcheck/ok", "POST")[0] == 200
    assert admin(px, "/ready") == (200, "LIVE\n")
    assert stats(px)["server.live"] == 1

    status, body = admin(px, "/logging?level=debug", "POST")
    assert status == 200 and "proxyd: debug" in body
    assert admin(px, "/logging?level=loud", "POST")[0] == 400
    assert "proxyd: debug" in admin(px, "/logging", "POST")[1]  # the live level, not the flag
    assert "[debug" not in px.log()
    victim = px.worker_pids()[0]
    os.kill(victim, signal.SIGKILL)  # its replacement starts at the level now in force
    line = wait_for(lambda: re.search(r"\[debug +\] snapshot_applied .*pid=(\d+)", px.log()), 20.0,
                    "a debug line from the replacement worker")
    assert int(line.group(1)) not in (victim, px.pid)
    wait_for(lambda: len(px.worker_pids()) == 2 and victim not in px.worker_pids(), 10.0, "the replacement")

    before = settled(px, n)
    assert admin(px, "/reset_counters", "POST")[0] == 200
    zeroed = stats(px)
    _, fams = metrics(px)
    assert [k for k, v in envoy_counters(fams).items() if v != 0] == []
    assert zeroed[f"cluster.{CLUSTER}.upstream_rq_total"] == 0
    assert zeroed[f"cluster.{CLUSTER}.membership_total"] == before[f"cluster.{CLUSTER}.membership_total"] == 2
    assert http(px.port, path="/e2e").status == 200
    assert settled(px, 1)[f"cluster.{CLUSTER}.upstream_rq_total"] == 1

    workers = px.worker_pids()
    assert admin(px, "/drain_listeners", "POST")[0] == 200
    wait_for(lambda: not any(os.path.exists(f"/proc/{pid}") for pid in workers), 10.0, "drained workers to exit")
    for _ in range(3):  # refused, and still refused once a replacement worker would be up
        with pytest.raises(ConnectionRefusedError):
            http(px.port, path="/e2e", timeout=1.0)
        time.sleep(1.0)
    assert px.worker_pids() == workers  # none replaced
    assert admin(px, "/ready") == (200, "LIVE\n")  # admin still serves

    assert admin(px, "/quitquitquit", "POST")[0] == 200
    assert px.wait_exit(timeout=15) == 0
