"""LEAST_REQUEST with active requests summed over workers vs each worker's own count.

Three upstreams (threaded HTTP servers in this process): two answer in FAST_MS, one in
SLOW_MS. proxyd runs with --concurrency WORKERS in front of them (choice_count 2, the
default) and wrk keeps CONNECTIONS requests in flight for SECONDS. Reported per mode:
throughput, the slow host's share of requests (lower is better: least request should
steer around it) and wrk's latency. Also the cost of one pick in each mode, in process.

    python3 scripts/bench_least_request.py [SECONDS]

Results on the shared 2-core box (2 workers, 16 connections, 10 s, 2 ms / 100 ms hosts,
two runs each; the box was CPU-bound, so the fast hosts were not fast):

    pick (3 hosts)   summed 13.9-22.3 us   worker 7.2-10.7 us
    slow host share  summed 17.6 %         worker 19.9-20.0 %
    throughput       summed 275-282 rps    worker 251-263 rps
    p50 / p99        summed 48-50 / 153-161 ms   worker 51-53 / 172-222 ms

Summed counts cost ~6 us more per pick (a strided read over the stats file's slot table
per sampled host) and steer more load away from the slow host; proxyd uses them
(docs/ARCHITECTURE.md, "Load balancing").
"""
import http.server
import os
import re
import socketserver
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path[:0] = [REPO, os.path.join(REPO, "tests")]

from harness import Proxyd, bootstrap, cluster, free_port, listener, write_config  # noqa: E402

FAST_MS, SLOW_MS = 2, 100
WORKERS, CONNECTIONS = 2, 16


def serve(name: str, delay_ms: int, counts: dict):
    class H(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            time.sleep(delay_ms / 1000.0)
            counts[name] = counts.get(name, 0) + 1
            body = name.encode()
            self.send_response(200)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    class S(socketserver.ThreadingMixIn, http.server.HTTPServer):
        daemon_threads = True
        request_queue_size = 512
    s = S(("127.0.0.1", 0), H)
    threading.Thread(target=s.serve_forever, daemon=True).start()
    return s


def run(mode: str, seconds: int) -> dict:
    counts: dict = {}
    servers = [serve("fast0", FAST_MS, counts), serve("fast1", FAST_MS, counts),
               serve("slow", SLOW_MS, counts)]
    port = free_port()
    c = cluster("upstream", [("127.0.0.1", s.server_address[1]) for s in servers],
                lb_policy="LEAST_REQUEST")
    d = tempfile.mkdtemp(prefix="bench-lr-")
    env = dict(os.environ, PROXYD_BENCH_LEAST_REQUEST_COUNTS=mode, PYTHONPATH=REPO)
    p = Proxyd(write_config(d, bootstrap([listener(port)], [c])), concurrency=WORKERS,
               env=env).start()
    try:
        out = subprocess.run(["wrk", "-t", "2", "-c", str(CONNECTIONS), "-d", "%ds" % seconds,
                              "--latency", "http://127.0.0.1:%d/" % port],
                             capture_output=True, text=True, check=True).stdout
    finally:
        p.cleanup()
        for s in servers:
            s.shutdown()
    total = sum(counts.values())
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p50 = re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1)
    p99 = re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1)
    return {"mode": mode, "rps": rps, "slow_share": counts.get("slow", 0) / max(total, 1),
            "p50": p50, "p99": p99, "requests": total}


def pick_cost() -> dict:
    """Microseconds per pick over 3 hosts, in process, against a real stats file."""
    from envoy.config.cluster.v3 import cluster_pb2
    from proxyd.stats import StatsStore
    from proxyd.upstream import lb
    from proxyd.upstream.host import Host
    path = "/dev/shm/bench-lr-%d.stats" % os.getpid()
    store = StatsStore.create(path)
    try:
        store.bind(store.claim_slot(os.getpid()))
        hosts = [Host("127.0.0.1", 10000 + i, 1, "", store, "c") for i in range(3)]
        out = {}
        for mode in ("summed", "worker"):
            lb.LEAST_REQUEST_COUNTS = mode
            b = lb.ClusterLb(cluster_pb2.Cluster(name="c", lb_policy=lb.LEAST_REQUEST),
                             [(h, 0, None) for h in hosts], store)
            n = 100_000
            t0 = time.perf_counter()
            for _ in range(n):
                b.choose()
            out[mode] = (time.perf_counter() - t0) / n * 1e6
        return out
    finally:
        store.close()
        os.unlink(path)


def main() -> int:
    seconds = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    print("pick cost (us):", {k: round(v, 2) for k, v in pick_cost().items()})
    for mode in ("summed", "worker"):
        print(run(mode, seconds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
