"""The watchdog: a worker frozen with SIGSTOP is noticed by the master through the
heartbeat in shared memory, counted under Envoy 1.40's names and logged; with
`kill_timeout` it is killed and replaced while the other worker keeps serving."""
from __future__ import annotations

import os
import signal
import time

from harness import bootstrap, cluster, free_port, http, listener, route
from hr_helpers import alive, counters
from proxyd.master.watchdog import Timeouts

HEARTBEAT_S = Timeouts().heartbeat_s  # the tests set no miss_timeout

# What Envoy 1.40's /stats lists for --concurrency 2 (with or without a watchdog config).
ENVOY_NAMES = {"main_thread.watchdog_miss", "main_thread.watchdog_mega_miss",
               "server.main_thread.watchdog_miss", "server.main_thread.watchdog_mega_miss",
               "workers.watchdog_miss", "workers.watchdog_mega_miss",
               "server.worker_0.watchdog_miss", "server.worker_0.watchdog_mega_miss",
               "server.worker_1.watchdog_miss", "server.worker_1.watchdog_mega_miss"}


def _config(upstream_port, **watchdogs):
    cfg = bootstrap([listener(free_port(), routes=[route("/")])],
                    [cluster("upstream", [("127.0.0.1", upstream_port)])])
    if watchdogs:
        cfg["watchdogs"] = watchdogs
    return cfg


def _wait(pred, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(0.05)
    raise AssertionError("timed out waiting for " + what)


def _index_of(px, pid) -> int:
    return px.worker_pids().index(pid)


def test_frozen_worker_is_counted_and_logged(upstream, proxyd_factory):
    px = proxyd_factory(_config(upstream.port), concurrency=2)
    c = counters(px)
    assert ENVOY_NAMES <= set(c), ENVOY_NAMES - set(c)
    assert all(c[n] == 0 for n in ENVOY_NAMES if n.startswith("workers") or ".worker_" in n)
    frozen = px.worker_pids()[0]
    index = _index_of(px, frozen)
    # A loaded machine can delay a worker past 200 ms now and then (Envoy counts that
    # too): compare with the counts just before the freeze.
    base = counters(px)
    os.kill(frozen, signal.SIGSTOP)
    try:
        # Envoy's defaults: a miss after 200 ms, a mega miss after 1 s, no kill.
        _wait(lambda: counters(px)["server.worker_%d.watchdog_mega_miss" % index]
              > base["server.worker_%d.watchdog_mega_miss" % index], 15, "a mega miss")
        time.sleep(1.5)       # still frozen: the same silence is not counted again
        c = counters(px)
    finally:
        os.kill(frozen, signal.SIGCONT)
    delta = {n: c[n] - base[n] for n in ENVOY_NAMES}
    assert (delta["server.worker_%d.watchdog_miss" % index],
            delta["server.worker_%d.watchdog_mega_miss" % index]) == (1, 1), delta
    other = 1 - index
    assert delta["server.worker_%d.watchdog_mega_miss" % other] == 0, delta
    assert delta["workers.watchdog_mega_miss"] == 1, delta
    assert delta["workers.watchdog_miss"] >= 1, delta
    log = _wait(lambda: "watchdog_worker_responsive" in px.log() and px.log(), 10, "recovery line")
    unresponsive = [ln for ln in log.splitlines() if "watchdog_worker_unresponsive" in ln]
    assert len(unresponsive) == 1 and "pid=%d" % frozen in unresponsive[0], unresponsive
    assert frozen in px.worker_pids() and alive(frozen)   # no kill_timeout: left alone
    assert http(px.port, path="/x").status == 200


def test_kill_timeout_replaces_a_frozen_worker(upstream, proxyd_factory):
    px = proxyd_factory(_config(upstream.port, worker_watchdog={"kill_timeout": "2s"}),
                        concurrency=2)
    frozen, other = px.worker_pids()
    os.kill(frozen, signal.SIGSTOP)
    t0 = time.monotonic()
    try:
        _wait(lambda: not alive(frozen), 20, "the watchdog to kill the frozen worker")
        killed_after = time.monotonic() - t0
        for _ in range(20):   # the other worker serves meanwhile
            assert http(px.port, path="/x").status == 200
        pids = _wait(lambda: (lambda p: len(p) == 2 and frozen not in p and p)(px.worker_pids()),
                     30, "a replacement worker")
    finally:
        if alive(frozen):
            os.kill(frozen, signal.SIGKILL)
    print("frozen worker killed after %.2f s" % killed_after)
    # kill_timeout runs from the worker's last heartbeat, which came before SIGSTOP (and
    # before t0) by up to one beat interval
    assert killed_after >= 2.0 - HEARTBEAT_S, killed_after
    assert other in pids
    log = px.log()
    assert "watchdog_kill" in log and "pid=%d" % frozen in log
    assert "Traceback" not in log
    assert counters(px)["workers.watchdog_mega_miss"] >= 1


def test_watchdog_config_as_envoy(tmp_path):
    """`watchdogs` (and the deprecated `watchdog`) with miss/megamiss/kill timeouts are
    accepted; what proxyd does not do (multikill, actions) is refused by name."""
    from harness import run_cli, write_config
    ok = _config(1, main_thread_watchdog={"miss_timeout": "0.5s"},
                 worker_watchdog={"miss_timeout": "0.3s", "megamiss_timeout": "2s",
                                  "kill_timeout": "10s"})
    assert run_cli("check", "-c", write_config(tmp_path, ok, "ok.yaml")).returncode == 0
    old = _config(1)
    old["watchdog"] = {"kill_timeout": "5s"}
    assert run_cli("check", "-c", write_config(tmp_path, old, "old.yaml")).returncode == 0
    bad = _config(1, worker_watchdog={"multikill_timeout": "5s"})
    cp = run_cli("check", "-c", write_config(tmp_path, bad, "bad.yaml"))
    assert cp.returncode == 1 and "multikill_timeout" in cp.stdout + cp.stderr, cp
