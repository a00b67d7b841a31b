"""The shared-memory store with real processes writing the same stats at the same time."""

import fcntl
import os
import signal
import subprocess
import sys
import time

import pytest

from proxyd.stats import BUCKETS_MS, OVERFLOW_STAT, IncompatibleStatsFile, StatsStore

from stats_writer import CX_ACTIVE, LATENCIES_MS, RQ_200, RQ_TIME, RQ_TOTAL, TX_BYTES

N = 5000
WORKERS = 4


def master_store(path, **kw):
    store = StatsStore.create(path, **kw)
    store.bind(store.claim_slot(os.getpid(), "master"))
    return store


def run_writers(store, spawn_writer, mode, *args, workers=WORKERS):
    slots = [store.claim_slot(0, "worker") for _ in range(workers)]
    procs = [spawn_writer(store.path, slot, mode, *args) for slot in slots]
    for proc, slot in zip(procs, slots):
        assert proc.wait(timeout=60) == 0
        store.set_slot_pid(slot, proc.pid)
    return slots


def expected_histogram(n_per_worker, workers):
    values = [LATENCIES_MS[i % len(LATENCIES_MS)] for i in range(n_per_worker)] * workers
    cumulative = [sum(1 for v in values if v <= bound) for bound in BUCKETS_MS] + [len(values)]
    return cumulative, sum(int(v * 1000) for v in values) / 1000


def test_exact_sums_from_concurrent_processes(stats_path, spawn_writer):
    store = master_store(stats_path)
    run_writers(store, spawn_writer, "count", N)
    assert store.counter(RQ_TOTAL).value() == WORKERS * N
    assert store.counter(RQ_200).value() == WORKERS * N
    assert store.counter(TX_BYTES).value() == 3 * WORKERS * N
    assert store.gauge(CX_ACTIVE).value() == WORKERS
    hist = store.histogram(RQ_TIME).value()
    buckets, total = expected_histogram(N, WORKERS)
    assert hist.count == WORKERS * N
    assert hist.buckets == buckets
    assert hist.sum == pytest.approx(total)


def test_retire_folds_counters_and_drops_gauges(stats_path, spawn_writer):
    store = master_store(stats_path)
    slots = run_writers(store, spawn_writer, "count", N)
    before = {name: value for name, _, value in store.items()}
    for i, slot in enumerate(slots, 1):
        store.retire_slot(slot)
        assert store.counter(RQ_TOTAL).value() == WORKERS * N
        assert store.histogram(RQ_TIME).value() == before[RQ_TIME]
        assert store.gauge(CX_ACTIVE).value() == WORKERS - i
    assert {s["role"] for s in store.slots()} == {"master"}
    # A replacement worker reuses a freed slot and adds on top of the retired totals.
    run_writers(store, spawn_writer, "count", N, workers=1)
    assert store.counter(RQ_TOTAL).value() == (WORKERS + 1) * N
    assert store.gauge(CX_ACTIVE).value() == 1


def test_totals_never_go_backwards_while_slots_retire(stats_path, spawn_writer):
    store = master_store(stats_path)
    watcher = spawn_writer(stats_path, store.claim_slot(0, "watcher"), "watch", 3)
    deadline = time.monotonic() + 2.5
    generations = 0
    while time.monotonic() < deadline:
        slots = [store.claim_slot(0) for _ in range(2)]
        procs = [spawn_writer(stats_path, slot, "loop", 0.2) for slot in slots]
        for proc, slot in zip(procs, slots):
            assert proc.wait(timeout=30) == 0
            store.retire_slot(slot)
        generations += 1
    out, _ = watcher.communicate(timeout=30)
    assert "backwards" not in out, out
    assert generations >= 2
    reads, last = out.split()[1], int(out.split()[3])
    assert int(reads) > 100 and last > 0


def test_sigkilled_writer_is_reaped(stats_path, spawn_writer):
    store = master_store(stats_path)
    slot = store.claim_slot(0)
    proc = spawn_writer(stats_path, slot, "hold", 1000)
    assert proc.stdout.readline().strip() == "ready"
    assert store.gauge(CX_ACTIVE).value() == 1
    assert store.reap_dead_slots() == []
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    assert store.reap_dead_slots() == [slot]
    assert store.counter(RQ_TOTAL).value() == 1000
    assert store.gauge(CX_ACTIVE).value() == 0
    assert slot not in [s["slot"] for s in store.slots()]


def test_concurrent_registration_gives_one_row_per_name(stats_path, spawn_writer):
    store = master_store(stats_path)
    run_writers(store, spawn_writer, "names", 300, 1, workers=1)  # warm nothing: all racing below
    slots = [store.claim_slot(0) for _ in range(WORKERS)]
    procs = [spawn_writer(stats_path, slot, "names", 600, seed) for seed, slot in enumerate(slots)]
    for proc in procs:
        assert proc.wait(timeout=60) == 0
    names = [name for name, _, _ in store.items()]
    assert len(names) == len(set(names)) == 600 + 1  # + server.stats_overflow
    values = dict((name, value) for name, _, value in store.items())
    for i in range(600):
        assert values[f"cluster.c{i}.upstream_rq_total"] == WORKERS + (1 if i < 300 else 0)


def test_overflow_is_counted_and_handles_still_work(stats_path):
    store = master_store(stats_path, max_rows=29)
    kept = [store.counter(f"c{i}") for i in range(8)]
    extra = store.histogram("h.too.many")      # 9 rows used, 21 more do not fit in 29
    extra.record(5)
    more = store.counter("c.more")             # counters still fit
    more.inc()
    assert all(h.recorded for h in kept) and more.recorded and not extra.recorded
    assert extra.value().count == 1            # works, but only locally
    for i in range(30):
        store.gauge(f"g{i}").inc()
    assert store.counter(OVERFLOW_STAT).value() >= 2
    assert "h.too.many" not in [name for name, _, _ in store.items()]


def test_overflow_counted_before_bind(stats_path):
    store = StatsStore.create(stats_path, max_rows=2)
    store.counter("a")
    store.counter("b").inc()
    assert store.counter(OVERFLOW_STAT).value() == 1


def test_attach_keeps_values_and_checks_layout(stats_path, tmp_path):
    store = master_store(stats_path)
    store.counter("x.total").inc(41)
    store.histogram("x.time").record(7)
    again = StatsStore.attach(stats_path)
    again.bind(again.claim_slot(os.getpid(), "master"))
    again.counter("x.total").inc()
    assert again.counter("x.total").value() == 42
    assert again.histogram("x.time").value().count == 1
    assert again.master_generation == 2
    bogus = tmp_path / "bogus.stats"
    bogus.write_bytes(b"\0" * 8192)
    with pytest.raises(IncompatibleStatsFile):
        StatsStore.attach(str(bogus))
    fresh = StatsStore.create(stats_path)
    assert fresh.counter("x.total").value() == 0


def test_attach_fd_ignores_the_path_and_unlink_removes_only_its_own_file(stats_path):
    import fcntl
    store = master_store(stats_path)
    store.counter("x.total").inc(3)
    os.rename(stats_path, stats_path + ".moved")
    try:
        again = StatsStore.attach_fd(os.dup(store.fileno()), stats_path)
        assert again.path == stats_path and again.counter("x.total").value() == 3
        # An own open file description: its flock excludes the sender's.
        with again._region.lock():
            with pytest.raises(BlockingIOError):
                fcntl.flock(store.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        with open(stats_path, "wb") as f:
            f.write(b"someone else's")
        again.unlink()
        assert os.path.exists(stats_path) and os.path.exists(stats_path + ".moved")
    finally:
        os.unlink(stats_path + ".moved")
    os.unlink(stats_path)
    fresh = StatsStore.create(stats_path)
    fresh.unlink()
    assert not os.path.exists(stats_path)


def test_hot_path_needs_no_lock_and_a_dead_lock_holder_frees_the_catalog(stats_path):
    store = master_store(stats_path)
    counter = store.counter("held.total")
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import fcntl,os,sys,time; fd=os.open(sys.argv[1], os.O_RDWR); fcntl.flock(fd, fcntl.LOCK_EX);"
         "print('locked', flush=True); time.sleep(600)", stats_path],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        counter.inc(3)  # writes do not wait for the name lock
        assert store._region.values(store.slot)[counter._i] == 3
        fd = os.open(stats_path, os.O_RDWR)
        with pytest.raises(BlockingIOError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.close(fd)
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=10)
        store.counter("added.after.holder.died").inc()  # the kernel released the flock
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
        holder.stdout.close()


def test_reset_counters_zeroes_counters_only(stats_path, spawn_writer):
    store = master_store(stats_path)
    run_writers(store, spawn_writer, "count", 100, workers=2)
    store.reset_counters()
    assert store.counter(RQ_TOTAL).value() == 0
    assert store.gauge(CX_ACTIVE).value() == 2
    assert store.histogram(RQ_TIME).value().count == 200
    store.counter(RQ_TOTAL).inc()
    assert store.counter(RQ_TOTAL).value() == 1


def test_names_have_no_length_limit_and_kinds_are_checked(stats_path):
    store = master_store(stats_path)
    name = "cluster." + "x" * 10000 + ".upstream_rq_total"
    store.counter(name).inc()
    assert dict((n, v) for n, _, v in store.items())[name] == 1
    with pytest.raises(ValueError):
        store.gauge(name)


def test_histogram_bucket_edges_and_quantiles(stats_path):
    store = master_store(stats_path)
    hist = store.histogram("edge.time")
    for value in (0.5, 0.5001, 1, 3600000, 3600001):
        hist.record(value)
    value = hist.value()
    assert value.buckets[:3] == [1, 3, 3]
    assert value.buckets[-2:] == [4, 5]
    assert value.count == 5
    assert value.quantile(0.5) == pytest.approx(0.875)  # rank 2.5: 0.5 + 0.5 * 1.5 / 2
    assert value.quantile(1.0) == 3600000


def test_handles_made_before_bind_follow_the_bind(stats_path):
    store = StatsStore.create(stats_path)
    early = store.counter("early.total")
    early.inc(5)  # before bind: scratch, not recorded
    store.bind(store.claim_slot(os.getpid(), "master"))
    early.inc(2)
    assert early.value() == 2
