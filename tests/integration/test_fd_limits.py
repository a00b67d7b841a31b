"""At the file-descriptor limit and under Envoy's connection limits: a worker whose
RLIMIT_NOFILE is tiny (set in the test, inherited from the master) rides out a
connection flood without a traceback and serves again; the overload manager's global
limit and the per-listener runtime limit reject what is over them, count it under
Envoy's names, and keep descriptors for an exempt listener's clients."""
from __future__ import annotations

import resource
import socket
import time

from harness import Proxyd, bootstrap, cluster, free_port, http, listener, route, write_config

DCX = ("type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3."
       "DownstreamConnectionsConfig")


def counters(px) -> dict[str, int]:
    from proxyd.master.arbiter import stats_path
    from proxyd.stats import StatsStore

    class Options:
        base_id = 0
        runtime_dir = px.runtime_dir
    store = StatsStore.attach(stats_path(Options))
    try:
        return {n: v for n, kind, v in store.items(include_internal=False) if kind == "counter"}
    finally:
        store.close()


def _limit_fds(n: int):
    return lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (n, n))


def _flood(port: int, n: int) -> list[socket.socket]:
    out = []
    for _ in range(n):
        out.append(socket.create_connection(("127.0.0.1", port), timeout=5))
    return out


def _closed_by_peer(socks, wait_s: float = 1.0) -> int:
    """How many of `socks` the proxy closed (EOF or reset within `wait_s`)."""
    closed = 0
    deadline = time.monotonic() + wait_s
    for s in socks:
        s.settimeout(max(deadline - time.monotonic(), 0.01))
        try:
            if s.recv(1) == b"":
                closed += 1
        except socket.timeout:
            pass
        except OSError:
            closed += 1
    return closed


def _served(port: int, timeout: float = 10.0) -> int:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return http(port, path="/x").status
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_flood_past_the_fd_limit_pauses_accepting_without_tracebacks(upstream, tmp_path):
    port = free_port()
    cfg = bootstrap([listener(port, routes=[route("/")])],
                    [cluster("upstream", [("127.0.0.1", upstream.port)])])
    px = Proxyd(write_config(tmp_path, cfg), concurrency=1, preexec_fn=_limit_fds(64))
    try:
        px.start()
        worker = px.worker_pids()[0]
        flood = _flood(port, 300)     # the kernel's backlog takes what the worker cannot
        time.sleep(2.0)               # several accept pauses of 0.5 s
        for s in flood:
            s.close()
        assert _served(port) == 200
        log = px.log()
        assert "Traceback" not in log, log[-3000:]
        bursts = [ln for ln in log.splitlines() if "resources_exhausted" in ln]
        assert len(bursts) == 1 and "error=EMFILE" in bursts[0] and "fd_limit=64" in bursts[0], bursts
        assert px.worker_pids() == [worker]
    finally:
        px.cleanup()


def test_global_and_per_listener_connection_limits(upstream, tmp_path):
    flood_port, exempt_port = free_port(), free_port()
    exempt = listener(exempt_port, name="exempt", stat_prefix="exempt", routes=[route("/")])
    exempt["ignore_global_conn_limit"] = True
    cfg = bootstrap([listener(flood_port, routes=[route("/")]), exempt],
                    [cluster("upstream", [("127.0.0.1", upstream.port)])])
    cfg["overload_manager"] = {"resource_monitors": [{
        "name": "envoy.resource_monitors.global_downstream_max_connections",
        "typed_config": {"@type": DCX, "max_active_downstream_connections": 20}}]}
    cfg["layered_runtime"] = {"layers": [{"name": "static", "static_layer": {
        "envoy.resource_limits.listener.exempt.connection_limit": 3}}]}
    px = Proxyd(write_config(tmp_path, cfg), concurrency=1, preexec_fn=_limit_fds(256))
    try:
        px.start()
        c = counters(px)
        flood_stat = "listener.127.0.0.1_%d." % flood_port
        exempt_stat = "listener.127.0.0.1_%d." % exempt_port
        for p in (flood_stat, exempt_stat):
            assert c[p + "downstream_cx_overflow"] == 0
            assert c[p + "downstream_global_cx_overflow"] == 0

        flood = _flood(flood_port, 60)
        try:
            assert _closed_by_peer(flood) == 40        # 20 fit under the global limit
            # The exempt listener is not under the global limit: served during the flood,
            # up to its own runtime limit of 3 connections.
            held = _flood(exempt_port, 5)
            assert _closed_by_peer(held) == 2
            for s in held:
                s.close()
            assert _served(exempt_port) == 200
        finally:
            for s in flood:
                s.close()
        c = counters(px)
        assert c[flood_stat + "downstream_global_cx_overflow"] == 40
        assert c[flood_stat + "downstream_cx_overflow"] == 0
        assert c[exempt_stat + "downstream_cx_overflow"] == 2
        assert c[exempt_stat + "downstream_global_cx_overflow"] == 0
        assert _served(flood_port) == 200             # places free again once the flood left
        assert "Traceback" not in px.log()
    finally:
        px.cleanup()
