"""A token bucket shared by every process of the family, as Envoy shares one local rate
limit bucket across its worker threads: two workers together grant `max_tokens`, not 2x.

The state is one 64-bit word, Envoy's AtomicTokenBucketImpl (1.31+, no timer): the
monotonic time (ns) at which the bucket was empty, refilled since at `fill_rate` tokens per
second, so `tokens = min(max_tokens, (now - word) * fill_rate)` and a grant moves the word
forward by `1 / fill_rate`. A fresh word (0) is a full bucket. CLOCK_MONOTONIC is one clock
for every process of the machine, so every worker reads the same tokens.

Envoy updates the word with compare-and-swap; Python has no CAS on shared memory, so the
read-modify-write holds a POSIX record lock (fcntl F_SETLKW) on the word's own 8 bytes:
- exact: concurrent workers never grant more than the bucket holds (zero overshoot);
- two fcntl calls per request (~2 us), contended only by the same bucket's users, never by
  the catalog's whole-file flock (flock and record locks are independent on Linux);
- the kernel drops the lock when its holder dies, so a SIGKILLed worker cannot wedge it;
- nothing between lock and unlock yields to gevent, so no greenlet waits on its own process.

The word lives in the retired slot's block under a hidden catalog name (`_rl:<key>`, a
gauge: folds and /reset_counters never rewrite gauge rows there; `_` names are not
rendered), so it survives worker restarts and hot restarts like every other stat.
"""
from __future__ import annotations

import fcntl
import time

INTERNAL = "_rl:"


class SharedTokenBucket:
    __slots__ = ("max_tokens", "fill_rate", "_words", "_row", "_fd", "_offset")

    def __init__(self, store, key: str, max_tokens: int, tokens_per_fill: int,
                 fill_interval_s: float):
        self.max_tokens = max_tokens
        self.fill_rate = tokens_per_fill / fill_interval_s   # tokens per second
        # fd None: the stats table was full, the word is this process's own
        self._words, self._row, self._fd, self._offset = store.shared_word(INTERNAL + key)

    def consume(self) -> bool:
        """Take one token if the bucket holds one."""
        fd, offset = self._fd, self._offset
        if fd is None:
            return self._take(time.monotonic_ns())
        fcntl.lockf(fd, fcntl.LOCK_EX, 8, offset)
        try:
            return self._take(time.monotonic_ns())
        finally:
            fcntl.lockf(fd, fcntl.LOCK_UN, 8, offset)

    def _take(self, now: int) -> bool:
        words, row = self._words, self._row
        empty_at = words[row]
        tokens = float(self.max_tokens)
        if empty_at:     # 0: never used, full (the clock may not be max/rate old yet)
            tokens = min(tokens, (now - empty_at) * self.fill_rate / 1e9)
        if tokens < 1.0:
            return False
        words[row] = now - int((tokens - 1.0) / self.fill_rate * 1e9)
        return True
