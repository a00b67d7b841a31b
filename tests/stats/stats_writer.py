"""A real writer process for the stats tests: attach, bind a slot, write, report on stdout.

usage: stats_writer.py PATH SLOT MODE [ARGS...]
  count N               N x (rq_total, rq_200, histogram, bytes +3); gauge +1; then exit
  names N SEED          register and increment N shared names in a shuffled order
  hold N                like count, then print "ready" and sleep until killed
  loop SECONDS          increment rq_total as fast as possible for SECONDS
  watch SECONDS         read rq_total repeatedly; print "backwards" on any decrease
"""

import os
import random
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

from proxyd.stats import StatsStore  # noqa: E402

RQ_TOTAL = "cluster.web.upstream_rq_total"
RQ_200 = "cluster.web.upstream_rq_200"
RQ_TIME = "cluster.web.upstream_rq_time"
TX_BYTES = "cluster.web.upstream_cx_tx_bytes_total"
CX_ACTIVE = "cluster.web.upstream_cx_active"
LATENCIES_MS = (0.2, 0.5, 3, 12.5, 250, 99999999)


def count(store, n):
    total, ok, hist, tx = (store.counter(RQ_TOTAL), store.counter(RQ_200),
                           store.histogram(RQ_TIME), store.counter(TX_BYTES))
    store.gauge(CX_ACTIVE).inc()
    for i in range(n):
        total.inc()
        ok.inc()
        tx.inc(3)
        hist.record(LATENCIES_MS[i % len(LATENCIES_MS)])


def main():
    path, slot, mode, *args = sys.argv[1:]
    store = StatsStore.attach(path)
    store.bind(int(slot))
    if mode == "count":
        count(store, int(args[0]))
    elif mode == "names":
        names = [f"cluster.c{i}.upstream_rq_total" for i in range(int(args[0]))]
        random.Random(int(args[1])).shuffle(names)
        for name in names:
            store.counter(name).inc()
    elif mode == "hold":
        count(store, int(args[0]))
        print("ready", flush=True)
        time.sleep(600)
    elif mode == "loop":
        counter, deadline = store.counter(RQ_TOTAL), time.monotonic() + float(args[0])
        while time.monotonic() < deadline:
            for _ in range(1000):
                counter.inc()
    elif mode == "watch":
        counter, deadline, last, reads = store.counter(RQ_TOTAL), time.monotonic() + float(args[0]), 0, 0
        while time.monotonic() < deadline:
            value = counter.value()
            reads += 1
            if value < last:
                print(f"backwards {last} -> {value}", flush=True)
            last = value
        print(f"reads {reads} last {last}", flush=True)


if __name__ == "__main__":
    main()
