"""A master that dies by SIGKILL takes its children with it: every worker (however busy:
keep-alive clients, open tcp_proxy sessions, a 600 s drain time) and the xDS agent are
gone within about a second. The next cold start never serves beside a survivor of the
old family, and removes the stats files of dead families from /dev/shm."""
from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import time

import psutil
import pytest

from harness import (Conn, Proxyd, bootstrap, closed_port, cluster, free_port, http, listener, route,
                     write_config)
from hr_helpers import stats_file

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "tcp"))
from test_tcp_proxy import TcpServer, tcp_listener  # noqa: E402

# The worker's own bound is 0.95 s after the kernel's signal (measured here: 0.06-0.7 s);
# the margin is for a loaded machine (the figures are printed). Before the fix a busy
# worker stayed until its drain deadline (600 s here).
GONE_WITHIN_S = 2.5


def _descendants(pid: int) -> list[int]:
    return [p.pid for p in psutil.Process(pid).children(recursive=True)]


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _kill_and_time(master: int, pids: list[int], limit: float = 10.0) -> dict[int, float]:
    """SIGKILL `master`, then poll until every pid in `pids` is gone: {pid: seconds}."""
    gone: dict[int, float] = {}
    t0 = time.monotonic()
    os.kill(master, signal.SIGKILL)
    while len(gone) < len(pids) and time.monotonic() - t0 < limit:
        for pid in pids:
            if pid not in gone and not _running(pid):
                gone[pid] = time.monotonic() - t0
        time.sleep(0.005)
    return gone


class KeepAliveLoad:
    """Threads looping GETs on keep-alive connections until stop(), reconnecting on errors."""

    def __init__(self, port: int, n: int):
        self.port = port
        self.done = threading.Event()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(n)]
        for t in self.threads:
            t.start()

    def _run(self):
        while not self.done.is_set():
            try:
                c = Conn(self.port, timeout=5)
                while not self.done.is_set():
                    c.request("GET", "/")
            except (OSError, ValueError, AssertionError):
                time.sleep(0.01)

    def stop(self):
        self.done.set()


def _static_config(http_port, tcp_port, upstream_port, tcp_upstream_port):
    return bootstrap([listener(http_port, routes=[route("/")]),
                      tcp_listener(tcp_port, cluster_name="tcp_upstream")],
                     [cluster("upstream", [("127.0.0.1", upstream_port)]),
                      cluster("tcp_upstream", [("127.0.0.1", tcp_upstream_port)])])


def test_sigkilled_master_takes_busy_workers_within_a_second(upstream, proxyd_factory):
    """Two workers serving keep-alive load and holding idle tcp_proxy sessions, with a
    600 s drain time: both are gone about a second after the master's SIGKILL (before
    the fix they stayed until the drain deadline, with parent 1)."""
    held = TcpServer(hold=True)
    http_port, tcp_port = free_port(), free_port()
    px = proxyd_factory(_static_config(http_port, tcp_port, upstream.port, held.port),
                        concurrency=2, drain_time_s=600)
    workers = px.worker_pids()
    sessions = [socket.create_connection(("127.0.0.1", tcp_port)) for _ in range(6)]
    load = KeepAliveLoad(http_port, 8)
    try:
        deadline = time.monotonic() + 10
        while held.connections < len(sessions) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert held.connections == len(sessions), "the tcp_proxy sessions did not reach upstream"
        time.sleep(0.3)
        gone = _kill_and_time(px.pid, workers)
    finally:
        load.stop()
        for s in sessions:
            s.close()
        held.stop()
    print("workers gone after", {p: round(s, 3) for p, s in gone.items()})
    assert set(gone) == set(workers), "still running: %s" % (set(workers) - set(gone))
    assert max(gone.values()) < GONE_WITHIN_S, gone
    assert "master_gone" in px.log()
    assert "Traceback" not in px.log()


def test_sigkilled_master_takes_the_xds_agent_and_workers(tmp_path):
    """With dynamic resources the master runs an xDS agent process too (here its
    management server is down): it goes with the workers."""
    api = {"api_type": "AGGREGATED_GRPC", "transport_api_version": "V3",
           "grpc_services": [{"envoy_grpc": {"cluster_name": "xds"}}]}
    src = {"ads": {}, "resource_api_version": "V3"}
    cfg = {"node": {"id": "t", "cluster": "t"},
           "dynamic_resources": {"lds_config": src, "cds_config": src, "ads_config": api},
           "static_resources": {"clusters": [dict(cluster("xds", [("127.0.0.1", closed_port())]),
                                                  http2_protocol_options={})]}}
    px = Proxyd(write_config(tmp_path, cfg), concurrency=2, drain_time_s=600)
    try:
        px.start(wait=False)
        deadline = time.monotonic() + 20
        kids = []
        while time.monotonic() < deadline:
            kids = _descendants(px.pid)
            cmds = [" ".join(psutil.Process(p).cmdline()) for p in kids if _running(p)]
            if sum("proxyd.worker.main" in c for c in cmds) == 2 and \
                    any("proxyd.xds.agent" in c for c in cmds):
                break
            time.sleep(0.05)
        else:
            pytest.fail("no xDS agent and two workers: %s\n%s" % (kids, px.log()))
        time.sleep(1.0)  # past their start-up: the children run their main loops
        gone = _kill_and_time(px.pid, kids)
        print("children gone after", {p: round(s, 3) for p, s in gone.items()})
        assert set(gone) == set(kids), "still running: %s" % (set(kids) - set(gone))
        assert max(gone.values()) < GONE_WITHIN_S, gone
    finally:
        px.cleanup()


def test_new_master_stops_a_frozen_orphan_before_serving(upstream, proxyd_factory):
    """A worker frozen (SIGSTOP) when its master was SIGKILLed cannot exit by itself; a
    new master on the same runtime dir finds it in the family's stats file, stops it,
    and only then binds and serves (the orphan held the listening socket)."""
    port = free_port()
    cfg = bootstrap([listener(port, routes=[route("/")])],
                    [cluster("upstream", [("127.0.0.1", upstream.port)])])
    old = proxyd_factory(cfg, concurrency=2, drain_time_s=600)
    frozen, other = old.worker_pids()
    os.kill(frozen, signal.SIGSTOP)
    gone = _kill_and_time(old.pid, [other])
    assert other in gone
    assert _running(frozen)
    new = Proxyd(old.config_path, concurrency=1, runtime_dir=old.runtime_dir)
    try:
        new.start(timeout=30)
        assert not _running(frozen), "the frozen orphan still runs beside the new master"
        assert "orphans_found" in new.log() and str(frozen) in new.log()
        assert http(port, path="/x").status == 200
        assert set(new.worker_pids()).isdisjoint({frozen, other})
    finally:
        new.cleanup()
        if _running(frozen):
            os.kill(frozen, signal.SIGKILL)


def test_cold_start_refuses_beside_a_frozen_master(upstream, proxyd_factory):
    """A master that is alive but does not answer on its control socket (frozen) still
    owns its runtime dir: a second cold start there refuses, and the first family is
    left untouched."""
    port = free_port()
    cfg = bootstrap([listener(port, routes=[route("/")])],
                    [cluster("upstream", [("127.0.0.1", upstream.port)])])
    old = proxyd_factory(cfg, concurrency=1)
    workers = old.worker_pids()
    os.kill(old.pid, signal.SIGSTOP)
    try:
        second = Proxyd(old.config_path, concurrency=1, runtime_dir=old.runtime_dir)
        second.start(wait=False)
        rc = second.wait_exit(30)
        log = second.log()
        second.cleanup()
    finally:
        os.kill(old.pid, signal.SIGCONT)
    assert rc == 1, log
    assert "is alive but does not answer" in log and str(old.pid) in log
    assert all(_running(w) for w in workers)
    assert http(port, path="/x").status == 200


def _age(path: str, seconds: float) -> None:
    """Make the stats file look `seconds` older (its header's creation time)."""
    from proxyd.stats import layout as L
    fd = os.open(path, os.O_RDWR)
    try:
        created = int.from_bytes(os.pread(fd, 8, L.H_CREATED_NS * 8), "little", signed=True)
        os.pwrite(fd, (created - int(seconds * 1e9)).to_bytes(8, "little", signed=True),
                  L.H_CREATED_NS * 8)
    finally:
        os.close(fd)


def test_cold_start_reclaims_stats_files_of_dead_families(upstream, proxyd_factory):
    """Each SIGKILLed family used to leave its stats file (tens of MB) in /dev/shm for
    good. A cold start of any family removes the files whose processes are all gone and
    keeps those of live families."""
    def cfg():
        return bootstrap([listener(free_port(), routes=[route("/")])],
                         [cluster("upstream", [("127.0.0.1", upstream.port)])])
    dead = proxyd_factory(cfg(), concurrency=1)
    dead_file = stats_file(dead)
    live = proxyd_factory(cfg(), concurrency=1)
    live_file = stats_file(live)
    dead.kill()                      # the whole group: master and worker
    assert os.path.exists(dead_file)
    _age(dead_file, 60)
    _age(live_file, 60)
    fresh = proxyd_factory(cfg(), concurrency=1)
    assert not os.path.exists(dead_file), "the dead family's stats file is still in /dev/shm"
    assert os.path.exists(live_file)
    assert os.path.exists(stats_file(fresh))
    assert "stale_stats_reclaimed" in fresh.log()
    assert http(live.port, path="/x").status == 200
