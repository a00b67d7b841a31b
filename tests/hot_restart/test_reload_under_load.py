"""Reload under load: `proxyd reload` ten times while a load generator (wrk where
installed, else Python keep-alive clients; PROXYD_LOAD=python forces the latter) runs
through a 2-worker proxyd. No request fails, no counter ever goes backwards, and the
totals add up to what the clients completed.

A second listener with its own stat prefix and cluster carries a small Python "probe"
load whose every request is accounted for, so the counters are checked for exact
equality even when wrk (which abandons its in-flight requests when stopped) is the
main load. Counters are read through the admin endpoint (/stats, whose socket is
handed over too) before and after each reload and at the end, and sampled from the
stats region every 50 ms throughout. Both loads pause between requests so the proxy
runs below its capacity, as a production proxy would, rather than flat out."""
import os
import time

from harness import cluster, free_port, listener, route
from hr_helpers import (CounterWatch, PythonLoad, Wrk, admin_counters, config, counters, decreased,
                        have_wrk, pid_file_pid, reload, status, wait_gone)

RELOADS = 10
CONNECTIONS = 32
PROBE_CONNECTIONS = 4
THINK_S = 0.05
BASELINE_S = 3.0


def _kind() -> str:
    return "python" if os.environ.get("PROXYD_LOAD") == "python" or not have_wrk() else "wrk"


def _start(kind: str, port: int):
    if kind == "wrk":
        return Wrk(port, CONNECTIONS, think_s=THINK_S)
    return PythonLoad(port, CONNECTIONS, think_s=THINK_S).start()


def _finish(kind: str, load) -> dict:
    """{requests, errors, p99_ms, detail} of one load run."""
    if kind == "wrk":
        r = load.stop()
        return {"requests": r["requests"], "errors": r["errors"], "p99_ms": r["p99_ms"],
                "detail": r}
    load.stop()
    return {"requests": load.completed, "errors": len(load.failures), "p99_ms": load.p99_ms(),
            "detail": {"failures": load.failures[:10], "connects": load.connects,
                       "connection_close": load.closes}}


def test_reload_under_load(upstream_factory, proxyd_factory, record_property):
    kind = _kind()
    up = upstream_factory("load")
    port, probe_port = free_port(), free_port()
    cfg = config(port, up.port,
                 extra_listeners=[listener(probe_port, name="probe", stat_prefix="probe_http",
                                           routes=[route("/", cluster="probe")])],
                 extra_clusters=[cluster("probe", [up.address])], admin_port=free_port())
    px = proxyd_factory(cfg, concurrency=2, drain_time_s=10)

    load = _start(kind, port)
    time.sleep(BASELINE_S)
    base = _finish(kind, load)
    assert base["errors"] == 0, base
    assert base["requests"] > 0

    watch = CounterWatch(lambda: counters(px))                 # the stats region itself
    admin_watch = CounterWatch(lambda: admin_counters(px), 0.2)   # what an operator polls
    watch.start()
    admin_watch.start()
    probe = PythonLoad(probe_port, PROBE_CONNECTIONS, path="/probe", think_s=THINK_S).start()
    load = _start(kind, port)
    time.sleep(0.5)
    masters = [px.pid]
    epoch = 0
    reload_secs = []
    t0 = time.monotonic()
    for _ in range(RELOADS):
        before = admin_counters(px)
        r = reload(px)
        after = admin_counters(px)
        assert r.rc == 0, r
        assert r.pid is not None and r.epoch == epoch + 1, r
        assert r.pid not in masters
        assert pid_file_pid(px) == r.pid
        assert not decreased(before, after), decreased(before, after)
        masters.append(r.pid)
        epoch = r.epoch
        reload_secs.append(r.seconds)
        time.sleep(0.2)
    phase_s = time.monotonic() - t0 + 0.5
    res = _finish(kind, load)
    probe.stop()
    watch.finish()
    admin_watch.finish()

    st = status(px)
    assert (st["pid"], st["epoch"], st["state"]) == (masters[-1], RELOADS, "LIVE")
    for pid in masters[:-1]:
        assert wait_gone(pid, 15), "old master %d still running" % pid
    px.proc.poll()

    assert res["errors"] == 0, res
    assert probe.failures == [], probe.failures[:10]
    assert res["requests"] > 0 and probe.completed > 0
    assert watch.samples > 10 and not watch.violations, watch.violations[:3]
    assert admin_watch.samples > 10 and not admin_watch.violations, admin_watch.violations[:3]
    assert admin_watch.errors == [], admin_watch.errors[:3]

    final = admin_counters(px)
    main_total = final["http.ingress_http.downstream_rq_total"]
    probe_total = final["http.probe_http.downstream_rq_total"]
    upstream_seen = up.stats()["requests"]
    assert probe_total == final["cluster.probe.upstream_rq_total"] == probe.completed
    assert main_total == final["cluster.upstream.upstream_rq_total"]
    assert main_total + probe_total == upstream_seen
    client = base["requests"] + res["requests"]
    if kind == "python":
        assert main_total == client
    else:
        # wrk abandons what is in flight when it stops (at most one request per
        # connection, per run); everything it completed was counted.
        assert client <= main_total <= client + 2 * CONNECTIONS, (client, main_total)

    numbers = {"generator": kind, "connections": CONNECTIONS + PROBE_CONNECTIONS,
               "reloads": RELOADS, "requests": client + probe.completed,
               "requests_during_reloads": res["requests"] + probe.completed,
               "failed_requests": base["errors"] + res["errors"] + len(probe.failures),
               "p99_ms_without_reloads": round(base["p99_ms"], 1),
               "p99_ms_during_reloads": round(res["p99_ms"], 1),
               "rps_without_reloads": round(base["requests"] / BASELINE_S),
               "rps_during_reloads": round(res["requests"] / phase_s),
               "reload_s_mean": round(sum(reload_secs) / len(reload_secs), 2),
               "reload_s_max": round(max(reload_secs), 2),
               "counter_samples": watch.samples, "admin_stats_samples": admin_watch.samples}
    for k, v in numbers.items():
        record_property(k, v)
    print("\nreload under load:", numbers, res["detail"])
