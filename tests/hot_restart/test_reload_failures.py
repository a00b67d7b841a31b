"""Failed reloads: a broken config is refused before anything starts; a successor that
fails to bind, or is SIGKILLed while starting, leaves the old master serving exactly as
before, `proxyd reload` says so, and the next reload works (no stuck state)."""
import contextlib
import os
import signal
import subprocess
import sys
import time

import pytest

from harness import REPO, free_port, http, listener, route
from hr_helpers import (PythonLoad, alive, children, config, counters, family_pids, reload, rewrite,
                        stats_file, status, stop, take_port, wait_gone, wait_successor)

def assert_unchanged(px, pid: int, epoch: int, body: bytes = b"v1") -> None:
    """Same master, same epoch, the pid file names it, the old config still serves,
    and nothing but its workers runs under it."""
    st = status(px)
    assert (st["pid"], st["epoch"], st["state"]) == (pid, epoch, "LIVE")
    assert open(os.path.join(px.runtime_dir, "proxyd.pid")).read().strip() == str(pid)
    assert sorted(children(pid)) == sorted(st["workers"])
    assert not [f for f in os.listdir(px.runtime_dir) if f.startswith("hot_restart.")]
    r = http(px.port, path="/version")
    assert (r.status, r.body) == (200, body)


def test_broken_config_is_refused_with_its_location(upstream, proxyd_factory):
    port = free_port()
    px = proxyd_factory(config(port, upstream.port), concurrency=1)
    good = open(px.config_path).read()
    lines = good.replace("inline_string: v1", "inline_string: v2").splitlines()
    bad_line = next(i for i, line in enumerate(lines, 1) if "status: 200" in line)
    lines[bad_line - 1] = lines[bad_line - 1].replace("status: 200", "status: abc")
    with open(px.config_path, "w") as f:
        f.write("\n".join(lines) + "\n")

    r = reload(px)
    assert r.rc == 1, r
    assert r.stdout == ""
    assert "invalid config, nothing changed" in r.stderr
    assert "%s:%d:" % (px.config_path, bad_line) in r.stderr, r.stderr
    assert "direct_response.status" in r.stderr
    assert_unchanged(px, px.pid, 0)

    rewrite(px, config(port, upstream.port, body="v2"))
    r = reload(px)
    assert r.rc == 0 and r.epoch == 1, r
    assert_unchanged(px, r.pid, 1, b"v2")


def test_successor_that_cannot_bind_leaves_the_old_master_serving(upstream, proxyd_factory):
    port = free_port()
    px = proxyd_factory(config(port, upstream.port), concurrency=1)
    for _ in range(3):
        http(port, path="/version")
    blocker, taken = take_port()
    extra = [listener(taken, name="second", stat_prefix="second_http", routes=[route("/")])]
    rewrite(px, config(port, upstream.port, body="v2", extra_listeners=extra))
    before = counters(px)

    r = reload(px)
    assert r.rc == 1, r
    assert "reload failed, still serving" in r.stderr
    assert "cannot bind 127.0.0.1:%d" % taken in r.stderr, r.stderr
    assert "second" in r.stderr
    assert_unchanged(px, px.pid, 0)

    blocker.close()
    r = reload(px)
    assert r.rc == 0 and r.epoch == 1, r
    assert_unchanged(px, r.pid, 1, b"v2")
    assert http(taken, path="/x").json()["path"] == "/x"
    after = counters(px)
    assert after["http.ingress_http.downstream_rq_total"] == \
        before["http.ingress_http.downstream_rq_total"] + 2


def _reload_async(px):
    """`proxyd reload` in the background; returns the Popen."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen([sys.executable, "-m", "proxyd", "reload", "--runtime-dir", px.runtime_dir],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            cwd=str(REPO))


def test_successor_killed_right_after_spawn(upstream, proxyd_factory):
    port = free_port()
    px = proxyd_factory(config(port, upstream.port), concurrency=1)
    load = PythonLoad(port, 4, path="/version", think_s=0.01).start()
    cli = _reload_async(px)
    succ = wait_successor(px.pid, 1)
    os.kill(succ, signal.SIGKILL)
    out, err = cli.communicate(timeout=30)
    assert cli.returncode == 1, (out, err)
    assert "reload failed, still serving" in err
    assert "new master" in err, err
    assert not alive(succ)
    time.sleep(0.3)
    load.stop()
    assert load.failures == [] and load.completed > 0, load.failures[:5]
    assert_unchanged(px, px.pid, 0)

    r = reload(px)
    assert r.rc == 0 and r.epoch == 1, r
    assert_unchanged(px, r.pid, 1)


def test_successor_killed_while_its_workers_start(upstream, proxyd_factory):
    """The successor has taken the sockets and its workers already accept when it is
    frozen (SIGSTOP) and then SIGKILLed: its workers drain away, the old master never
    stopped serving, no request failed or went uncounted, the next reload works."""
    port = free_port()
    px = proxyd_factory(config(port, upstream.port), concurrency=1)
    base = counters(px).get("http.ingress_http.downstream_rq_total", 0)
    load = PythonLoad(port, 4, path="/version", think_s=0.01).start()
    cli = _reload_async(px)
    succ = wait_successor(px.pid, 1)
    deadline = time.monotonic() + 20
    while not children(succ) and time.monotonic() < deadline:
        time.sleep(0.002)
    workers = children(succ)
    assert workers, "the successor started no worker"
    os.kill(succ, signal.SIGSTOP)
    time.sleep(0.5)           # its worker serves a share of the load meanwhile
    os.kill(succ, signal.SIGKILL)
    out, err = cli.communicate(timeout=30)
    assert cli.returncode == 1, (out, err)
    assert "reload failed, still serving" in err
    for pid in workers:
        assert wait_gone(pid, 8), "worker %d of the killed successor is still running" % pid
    load.stop()
    assert load.failures == [] and load.completed > 0, load.failures[:5]
    assert_unchanged(px, px.pid, 0)

    r = reload(px)
    assert r.rc == 0 and r.epoch == 1, r
    assert_unchanged(px, r.pid, 1)
    total = counters(px)["http.ingress_http.downstream_rq_total"]
    assert total == base + load.completed + 2, (total, base, load.completed)


def test_concurrent_reload_is_refused_not_queued(upstream, proxyd_factory):
    """A second `proxyd reload` while one is in progress says so and exits 1; the first
    completes."""
    port = free_port()
    px = proxyd_factory(config(port, upstream.port), concurrency=1)
    first = _reload_async(px)
    succ = wait_successor(px.pid, 1)
    os.kill(succ, signal.SIGSTOP)
    second = reload(px)
    os.kill(succ, signal.SIGCONT)
    out, err = first.communicate(timeout=30)
    assert first.returncode == 0, (out, err)
    assert second.rc == 1 and "already in progress" in second.stderr, second
    assert str(succ) in out
    assert_unchanged(px, succ, 1)



@pytest.mark.parametrize("when", ["spawned", "workers_started"])
def test_stop_during_a_reload_stops_everything(when, upstream, proxyd_factory):
    """`proxyd stop` while a successor is starting (before it connected, or after it
    took the sockets and started workers) stops the whole family: the reload is
    abandoned, no half-started master is left holding the sockets."""
    port = free_port()
    px = proxyd_factory(config(port, upstream.port), concurrency=1)
    shm = stats_file(px)
    cli = _reload_async(px)
    succ = wait_successor(px.pid, 1)
    if when == "workers_started":
        deadline = time.monotonic() + 20
        while not children(succ) and time.monotonic() < deadline:
            time.sleep(0.002)
        assert children(succ)
    os.kill(succ, signal.SIGSTOP)
    cp = stop(px)
    with contextlib.suppress(ProcessLookupError):
        os.kill(succ, signal.SIGCONT)
    out, err = cli.communicate(timeout=30)
    assert cp.returncode == 0, cp.stderr
    assert cli.returncode == 1, (out, err)
    assert wait_gone(px.pid, 5) and wait_gone(succ, 5)
    deadline = time.monotonic() + 10
    while family_pids(px) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert family_pids(px) == []
    assert not os.path.exists(shm)
    assert sorted(os.listdir(px.runtime_dir)) == ["proxyd.log"]
