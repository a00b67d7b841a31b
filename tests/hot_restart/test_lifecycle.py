"""SIGHUP reloads like `proxyd reload`; the stats region (one /dev/shm file) carries
every counter across reloads and admin reports the epoch; `proxyd stop` after several
reloads stops the current master and leaves no process, socket, pid file or stats file
behind; listeners added or removed by a reload open and close."""
import json
import threading
import os
import signal
import socket
import time
import urllib.request

from harness import free_port, http, listener, route
from hr_helpers import (admin_counters, config, family_pids, pid_file_pid, reload, rewrite, status,
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


def _admin(px, path: str) -> bytes:
    with urllib.request.urlopen(px.admin_url + path, timeout=10) as r:
        return r.read()


def test_sighup_reloads_counters_continue_and_stop_cleans_up(upstream, proxyd_factory):
    port = free_port()
    px = proxyd_factory(config(port, upstream.port, admin_port=free_port()), concurrency=2)
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
        c = admin_counters(px)
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
    info = json.loads(_admin(px, "/server_info"))
    assert (info["state"], info["command_line_options"]["restart_epoch"]) == ("LIVE", epoch)
    assert int(info["uptime_all_epochs"].rstrip("s")) >= int(time.monotonic() - started) - 1
    assert int(info["uptime_current_epoch"].rstrip("s")) < int(info["uptime_all_epochs"].rstrip("s"))
    text = _admin(px, "/stats?filter=^server.hot_restart_epoch$").decode()
    assert text.strip() == "server.hot_restart_epoch: %d" % epoch

    cp = stop(px)
    assert cp.returncode == 0, cp.stderr
    assert "master pid %d" % masters[-1] in cp.stdout
    for pid in masters:
        assert wait_gone(pid, 5)
    assert family_pids(px) == []
    assert not os.path.exists(shm)
    assert sorted(os.listdir(px.runtime_dir)) == ["proxyd.log"]


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def test_reload_adds_and_removes_listeners(upstream, proxyd_factory):
    """A listener new in the config is bound by the new master; one dropped from it is
    closed once the old master is gone (the kernel refuses connections again)."""
    port, dropped, added = free_port(), free_port(), free_port()
    second = [listener(dropped, name="dropped", stat_prefix="dropped", routes=[route("/")])]
    px = proxyd_factory(config(port, upstream.port, extra_listeners=second), concurrency=1)
    assert http(dropped, path="/d").status == 200
    assert _refused(added)

    third = [listener(added, name="added", stat_prefix="added", routes=[route("/")])]
    rewrite(px, config(port, upstream.port, extra_listeners=third))
    r = reload(px)
    assert r.rc == 0, r
    assert wait_gone(px.pid, 15)
    px.proc.poll()
    assert http(added, path="/a").json()["path"] == "/a"
    assert http(port, path="/version").body == b"v1"
    assert _refused(dropped), "the listener removed from the config still accepts"


def test_connections_opened_after_reload_returns_see_the_new_config(upstream, proxyd_factory):
    """`proxyd reload` answers only once no old worker accepts: every connection opened
    after it returned is served by the new config (it used to answer as soon as the
    drain was sent, and an old worker could still accept for a moment)."""
    port = free_port()
    px = proxyd_factory(config(port, upstream.port, body="v1"), concurrency=2, drain_time_s=10)
    results = []          # (opened_at, body)
    stop_at = []

    def hammer():
        while not stop_at or time.monotonic() < stop_at[0]:
            opened = time.monotonic()
            try:
                results.append((opened, http(port, path="/version", timeout=5).body))
            except OSError:
                results.append((opened, b"error"))

    threads = [threading.Thread(target=hammer, daemon=True) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.3)
    rewrite(px, config(port, upstream.port, body="v2"))
    r = reload(px)
    returned = time.monotonic()
    assert r.rc == 0, r
    stop_at.append(returned + 1.0)
    for t in threads:
        t.join(10)
    after = [body for opened, body in results if opened > returned]
    assert len(after) > 20
    assert set(after) == {b"v2"}, [b for b in after if b != b"v2"][:5]
    assert b"error" not in {body for _, body in results}
