"""Chaos benchmark: a pool of upstreams where some die and come back during a steady
load, through proxyd and through real Envoy 1.40, with retries + outlier detection +
active health checks on ("resilient"), each alone ("retries", "checks") and all off
("plain"). Prints the share of failed
requests (any answer but 200, or no answer) per proxy and mode. A measurement, not a
test: the figures depend on timing and on the machine.

    cd <repo> && PYTHONPATH=.:tests:tests/upstream_health:tests/conformance \\
        python tests/upstream_health/bench_chaos.py [--seconds 12] [--proxy both]
"""
from __future__ import annotations

import argparse
import http.client
import json
import tempfile
import threading
import time
from pathlib import Path

import yaml

from harness import Proxyd, cluster, free_port, simple_config
from health_helpers import Flaky

HOSTS = 4
CLIENTS = 4


MODES = ("plain", "checks", "retries", "resilient", "outlier", "hc")


def config(ports, mode: str, listen: int, admin: int) -> dict:
    """plain: nothing; checks: outlier detection + health checks; retries: retries only;
    resilient: all three; outlier, hc: one of the two checks alone."""
    extra = {}
    route = {"cluster": "upstream"}
    if mode in ("checks", "resilient", "outlier"):
        extra["outlier_detection"] = {"consecutive_5xx": 2, "interval": "0.5s",
                                      "base_ejection_time": "2s", "max_ejection_percent": 50}
    if mode in ("checks", "resilient", "hc"):
        extra["health_checks"] = [{"timeout": "0.3s", "interval": "0.5s",
                                   "no_traffic_interval": "0.5s", "unhealthy_threshold": 1,
                                   "healthy_threshold": 1,
                                   "http_health_check": {"path": "/hc"}}]
    if mode in ("retries", "resilient"):
        route["retry_policy"] = {"retry_on": "connect-failure,reset,5xx", "num_retries": 2,
                                 "retry_host_predicate": [{
                                     "name": "envoy.retry_host_predicates.previous_hosts",
                                     "typed_config": {"@type": "type.googleapis.com/envoy.extensions."
                                                      "retry.host.previous_hosts.v3.PreviousHostsPredicate"}}],
                                 "host_selection_retry_max_attempts": 3}
    cfg = simple_config(listen, admin_port=admin,
                        clusters=[cluster("upstream", [("127.0.0.1", p) for p in ports],
                                          connect_timeout="0.25s", **extra)],
                        routes=[{"match": {"prefix": "/"}, "route": route}])
    return cfg


def load(port: int, stop: threading.Event, out: dict) -> None:
    conn = None
    while not stop.is_set():
        try:
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/x")
            r = conn.getresponse()
            r.read()
            key = "ok" if r.status == 200 else "status_%d" % r.status
            if r.getheader("connection", "").lower() == "close":
                conn.close()
                conn = None
        except (OSError, http.client.HTTPException):
            key = "no_answer"
            if conn is not None:
                conn.close()
            conn = None
        with out["lock"]:
            out[key] = out.get(key, 0) + 1
        time.sleep(0.002)


def chaos(hosts: list, stop: threading.Event, period: float) -> None:
    """Kill one host, bring it back `period` later, move to the next; one down at a time."""
    i = 0
    while not stop.wait(period):
        h = hosts[i % len(hosts)]
        h.kill()
        if stop.wait(period):
            h.start()
            return
        h.start()
        i += 1


def run(proxy: str, mode: str, seconds: float, period: float) -> dict:
    hosts = [Flaky(1) for _ in range(HOSTS)]
    listen, admin = free_port(), free_port()
    work = Path(tempfile.mkdtemp(prefix="chaos-"))
    path = work / "bootstrap.yaml"
    path.write_text(yaml.safe_dump(config([h.ports[0] for h in hosts], mode, listen, admin)))
    if proxy == "envoy":
        from real_envoy import Envoy
        px = Envoy(path, admin, work).start()
    else:
        px = Proxyd(path, concurrency=2, drain_time_s=1.0).start()
    out = {"lock": threading.Lock()}
    stop = threading.Event()
    try:
        time.sleep(1.0)
        clients = [threading.Thread(target=load, args=(listen, stop, out)) for _ in range(CLIENTS)]
        monkey = threading.Thread(target=chaos, args=(hosts, stop, period))
        for t in clients:
            t.start()
        monkey.start()
        time.sleep(seconds)
        stop.set()
        for t in clients + [monkey]:
            t.join()
        from health_helpers import stats
        st = stats(admin)
        picked = {k.split(".", 2)[2]: int(v) for k, v in st.items() if k.startswith("cluster.upstream.")
                  and k.split(".", 2)[2] in ("upstream_rq_retry", "upstream_cx_connect_fail",
                                             "outlier_detection.ejections_enforced_total",
                                             "outlier_detection.ejections_overflow",
                                             "health_check.failure", "lb_healthy_panic")}
    finally:
        px.cleanup()
        for h in hosts:
            h.kill()
    del out["lock"]
    total = sum(out.values())
    failed = total - out.get("ok", 0)
    return {"proxy": proxy, "mode": mode, "requests": total,
            "failed": failed, "failed_share_pct": round(100.0 * failed / max(total, 1), 3),
            "by_outcome": out, "stats": picked}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=12.0)
    ap.add_argument("--period", type=float, default=1.5, help="seconds a host stays down / up")
    ap.add_argument("--proxy", choices=("both", "proxyd", "envoy"), default="both")
    ap.add_argument("--modes", default=",".join(MODES))
    args = ap.parse_args()
    proxies = ("proxyd", "envoy") if args.proxy == "both" else (args.proxy,)
    for proxy in proxies:
        for mode in args.modes.split(","):
            print(json.dumps(run(proxy, mode, args.seconds, args.period)), flush=True)


if __name__ == "__main__":
    main()
