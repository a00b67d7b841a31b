#!/usr/bin/env python3
"""Stats hot-path and scrape cost: ns per counter inc / gauge inc / histogram record, and
the time to render /stats/prometheus for 10,000 series written by 4 slots.

usage: python scripts/bench_stats.py [--series 10000] [--slots 4]
"""

import argparse
import os
import sys
import tempfile
import time
import timeit

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from proxyd.stats import StatsStore  # noqa: E402
from proxyd.stats.prometheus import render  # noqa: E402
from proxyd.stats.render import stats_text  # noqa: E402


def ns_per_op(stmt, setup_globals, number=1_000_000, repeat=5) -> float:
    best = min(timeit.repeat(stmt, globals=setup_globals, number=number, repeat=repeat))
    return best / number * 1e9


def fill(path, series, slots):
    """Counters, gauges and one histogram per 40 clusters, like a proxy with many clusters."""
    writers = [StatsStore.attach(path) for _ in range(slots)]
    for i, writer in enumerate(writers):
        writer.bind(writer.claim_slot(os.getpid(), f"worker_{i}"))
    count, cluster = 0, 0
    while count < series:
        prefix = f"cluster.c{cluster}"
        for writer in writers:
            writer.counter(f"{prefix}.upstream_rq_total").inc(cluster + 1)
            writer.counter(f"{prefix}.upstream_rq_200").inc()
            writer.counter(f"{prefix}.upstream_rq_2xx").inc()
            writer.gauge(f"{prefix}.upstream_cx_active").inc()
        count += 4
        if cluster % 40 == 0:
            for writer in writers:
                writer.histogram(f"{prefix}.upstream_rq_time").record(cluster % 300)
            count += 22  # 20 buckets + sum + count
        cluster += 1
    return count


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--series", type=int, default=10000)
    parser.add_argument("--slots", type=int, default=4)
    args = parser.parse_args()
    directory = "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()
    path = os.path.join(directory, f"proxyd-bench-{os.getpid()}.stats")
    store = StatsStore.create(path)
    try:
        store.bind(store.claim_slot(os.getpid(), "master"))
        env = {"c": store.counter("cluster.web.upstream_rq_total"), "g": store.gauge("cluster.web.upstream_cx_active"),
               "h": store.histogram("cluster.web.upstream_rq_time")}
        print(f"counter.inc()        {ns_per_op('c.inc()', env):7.1f} ns/op")
        print(f"counter.inc(5)       {ns_per_op('c.inc(5)', env):7.1f} ns/op")
        print(f"gauge.inc()          {ns_per_op('g.inc()', env):7.1f} ns/op")
        print(f"gauge.set(7)         {ns_per_op('g.set(7)', env):7.1f} ns/op")
        print(f"histogram.record(12.5) {ns_per_op('h.record(12.5)', env):5.1f} ns/op")
        print(f"baseline: empty call {ns_per_op('f()', {'f': lambda: None}):7.1f} ns/op")

        series = fill(path, args.series, args.slots)
        first = time.perf_counter()
        body = render(store.snapshot(), [("master", os.getpid())])
        first = time.perf_counter() - first
        timings = []
        for _ in range(10):
            started = time.perf_counter()
            snap = store.snapshot()
            render(snap, [("master", os.getpid())])
            timings.append(time.perf_counter() - started)
        snap_t = min(timeit.repeat(store.snapshot, number=1, repeat=10))
        text_t = min(timeit.repeat(lambda: stats_text(store.snapshot()), number=1, repeat=10))
        timings.sort()
        print(f"/stats/prometheus, {series} series in {args.slots} worker slots + master + retired "
              f"({len(body) // 1024} KiB): first scrape {first * 1000:.1f} ms (fills tag cache), "
              f"then median {timings[len(timings) // 2] * 1000:.1f} ms, best {timings[0] * 1000:.1f} ms")
        print(f"  of which snapshot (sum of slots) {snap_t * 1000:.1f} ms; /stats text {text_t * 1000:.1f} ms")
    finally:
        store.unlink()


if __name__ == "__main__":
    main()
