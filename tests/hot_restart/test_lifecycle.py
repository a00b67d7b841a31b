"""SIGHUP reloads like `proxyd reload`; the stats region (one /dev/shm file) carries
every counter across reloads; `proxyd stop` after several reloads stops the current
master and leaves no process, socket, pid file or stats file behind."""
import os
import signal
import time

from harness import free_port, http
from hr_helpers import (config, counters, family_pids, gauges, pid_file_pid, reload, status,
                        stats_file, stop, wait_gone)

RQ = "http.ingress_http.downstream_rq_total"
UPSTREAM_RQ = "cluster.upstream.upstream_rq_total"


def _wait_new_master(px, old: int, timeout: float = 30.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pid = pid_file_pid(px)
        if pid not in (None, old):
            return pid
        time.sleep(0.02)
    raise TimeoutError("no new master after SIGHUP; log:\n" + px.log()[-3000:])


def _wait_gauge(px, name: str, pred, timeout: float = 5.0) -> int:
    deadline = time.monotonic() + timeout
    while True:
        v = gauges(px).get(name)
        if v is not None and pred(v):
            return v
        if time.monotonic() > deadline:
            raise AssertionError("%s = %r" % (name, v))
        time.sleep(0.1)


def test_sighup_reloads_counters_continue_and_stop_cleans_up(upstream, proxyd_factory):
    port = free_port()
    px = proxyd_factory(config(port, upstream.port), concurrency=2)
    started = time.monotonic()
    shm = stats_file(px)
    inode = os.stat(shm).st_ino
    sent = 0
    masters = [px.pid]

    def traffic(n=5):
        nonlocal sent
        for _ in range(n):
            assert http(port, path="/up").status == 200
        sent += n
        c = counters(px)
        assert (c[RQ], c[UPSTREAM_RQ]) == (sent, sent)

    traffic()
    for how in ("SIGHUP", "cli", "cli", "SIGHUP"):
        old = masters[-1]
        if how == "SIGHUP":
            os.kill(old, signal.SIGHUP)
            new = _wait_new_master(px, old)
        else:
            r = reload(px)
            assert r.rc == 0, r
            new = r.pid
        masters.append(new)
        st = status(px)
        assert (st["pid"], st["epoch"], st["state"]) == (new, len(masters) - 1, "LIVE")
        assert wait_gone(old, 15)
        px.proc.poll()
        assert os.stat(shm).st_ino == inode, "the stats file was recreated"
        traffic()

    epoch = len(masters) - 1
    if "server.hot_restart_epoch" in gauges(px):
        _wait_gauge(px, "server.hot_restart_epoch", lambda v: v == epoch)
        _wait_gauge(px, "server.uptime", lambda v: v >= int(time.monotonic() - started) - 1)

    cp = stop(px)
    assert cp.returncode == 0, cp.stderr
    assert "master pid %d" % masters[-1] in cp.stdout
    for pid in masters:
        assert wait_gone(pid, 5)
    assert family_pids(px) == []
    assert not os.path.exists(shm)
    assert sorted(os.listdir(px.runtime_dir)) == ["proxyd.log"]
