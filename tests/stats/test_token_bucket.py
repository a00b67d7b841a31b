"""The shared token bucket in the stats file: processes share its tokens, it refills at
its rate, and folding an exited worker's slot leaves it alone."""
from __future__ import annotations

import multiprocessing
import time

from proxyd.stats.store import StatsStore
from proxyd.stats.token_bucket import SharedTokenBucket


MAX_TOKENS = 20000


def _take(path, n, go, out):
    store = StatsStore.attach(path)
    bucket = SharedTokenBucket(store, "k", MAX_TOKENS, 1, 3600.0)
    go.wait(30)
    out.put(sum(bucket.consume() for _ in range(n)))


def test_four_processes_racing_grant_exactly_max_tokens(tmp_path):
    """All four start at once and ask for 2x the bucket: without the lock, lost updates
    grant more than MAX_TOKENS (seen: all 40000 asked for, twice the bucket)."""
    path = str(tmp_path / "s.stats")
    StatsStore.create(path, max_rows=256, max_slots=8)
    mp = multiprocessing.get_context("spawn")
    go, out = mp.Event(), mp.Queue()
    procs = [mp.Process(target=_take, args=(path, MAX_TOKENS // 2, go, out)) for _ in range(4)]
    for p in procs:
        p.start()
    time.sleep(1.0)
    go.set()
    granted = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(10)
    assert sum(granted) == MAX_TOKENS


def test_refill_and_fold_keep_the_word(tmp_path):
    store = StatsStore.create(str(tmp_path / "s.stats"), max_rows=256, max_slots=4)
    slot = store.claim_slot(0)
    store.bind(slot)
    bucket = SharedTokenBucket(store, "r", 2, 1, 0.1)
    assert [bucket.consume() for _ in range(3)] == [True, True, False]
    store.counter("some.counter").inc(7)
    store.retire_slot(slot)                 # folds counters into the retired slot
    assert not bucket.consume()             # the bucket is still empty
    time.sleep(0.15)
    assert bucket.consume() and not bucket.consume()
    assert store.counter("some.counter").value() == 7
