"""The stats file travels as an fd (to workers and to a successor master), so hot restart
and worker respawns do not depend on its path: here the file is renamed away from its
/dev/shm path mid-life (what a tmpfs mounted over /dev/shm does to the path) and later
another file appears there; reloads and a respawned worker keep counting in the original
file, and the final stop leaves no process or socket behind and does not remove the
file that is not ours."""
import os
import signal
import time

from harness import free_port, http
from hr_helpers import (alive, config, counters, family_pids, reload, stats_file, status, stop,
                        wait_gone)

RQ = "http.ingress_http.downstream_rq_total"


def test_reload_and_respawn_without_the_stats_path(upstream, proxyd_factory):
    port = free_port()
    px = proxyd_factory(config(port, upstream.port, admin_port=free_port()), concurrency=2)
    shm = stats_file(px)
    moved = shm + ".shadowed"
    sent = 0

    def traffic(n=5):
        nonlocal sent
        for _ in range(n):
            assert http(port, path="/up").status == 200
        sent += n
        assert counters(px, moved)[RQ] == sent

    try:
        for _ in range(5):
            assert http(port, path="/up").status == 200
        sent = 5
        os.rename(shm, moved)
        traffic()

        # A worker that dies is respawned and attaches through the master's fd.
        victim = status(px)["workers"][0]
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 15
        while True:
            workers = status(px)["workers"]
            if victim not in workers and all(alive(p) for p in workers):
                break
            assert time.monotonic() < deadline, px.log()[-3000:]
            time.sleep(0.05)
        time.sleep(1.0)   # a worker that cannot attach exits at once and is respawned again
        assert status(px)["workers"] == workers and all(alive(p) for p in workers)
        assert px.log().count("worker_exited") == 1, px.log()[-3000:]
        traffic(10)

        masters = [px.pid]
        r = reload(px)
        assert r.rc == 0, r
        masters.append(r.pid)
        assert wait_gone(masters[0], 15)
        assert not os.path.exists(shm), "a successor re-created the stats file at its path"
        traffic()

        # Another file at the path now: neither attached to nor removed.
        with open(shm, "wb") as f:
            f.write(b"not a stats file of this family")
        r = reload(px)
        assert r.rc == 0, r
        masters.append(r.pid)
        assert wait_gone(masters[1], 15)
        st = status(px)
        assert (st["pid"], st["epoch"], st["state"]) == (masters[-1], 2, "LIVE")
        traffic()

        cp = stop(px)
        assert cp.returncode == 0, cp.stderr
        for pid in masters:
            assert wait_gone(pid, 5)
        assert family_pids(px) == []
        assert sorted(os.listdir(px.runtime_dir)) == ["proxyd.log"]
        with open(shm, "rb") as f:
            assert f.read() == b"not a stats file of this family"
        assert counters(px, moved)[RQ] == sent
    finally:
        for path in (moved, shm):
            if os.path.exists(path):
                os.unlink(path)
