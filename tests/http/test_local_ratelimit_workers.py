"""envoy.filters.http.local_ratelimit with 4 worker processes (`--concurrency 4`): one
token bucket for all of them, as Envoy has one for all its worker threads
(proxyd/stats/token_bucket.py: a shared word updated under a record lock, so the stated
overshoot bound is zero). Requests on many connections, spread by the shared accept queue
over every worker, get exactly `max_tokens` 200s in the fill interval; the filter's stats,
the access log's RL flags and each worker's share agree with what the clients saw."""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from harness import Proxyd, free_port, http, write_config
from test_local_ratelimit import access_lines, config, per_worker, rl_stats, stats

WORKERS = 4
TOKENS = 5  # the HCM-level bucket of config(): top_rl, 5 tokens, one per hour


@pytest.fixture(scope="module")
def px4(upstream, tmp_path_factory):
    d = tmp_path_factory.mktemp("local_ratelimit_4")
    log = str(d / "access.log")
    p = Proxyd(write_config(d, config(free_port(), free_port(), upstream.port, log)),
               concurrency=WORKERS)
    p.start()
    p.access_log = log
    yield p
    p.cleanup()


def test_four_workers_grant_exactly_the_bucket(px4):
    """Batches of 64 requests, each on its own connection, 16 at a time, until every
    worker served at least 4 of them: 5 OK in all (an hour's fill), the rest 429 RL."""
    codes = []
    deadline = time.monotonic() + 120
    with ThreadPoolExecutor(16) as pool:
        while True:
            base = len(codes)
            codes += [r.status for r in pool.map(
                lambda i: http(px4.port, "GET", "/shared/%d" % (base + i)), range(64))]
            shares = per_worker(px4, "http.ing.downstream_rq_total")
            if (len(shares) == WORKERS and min(shares) >= 4) or time.monotonic() > deadline:
                break
    assert len(shares) == WORKERS and min(shares) >= 4, shares  # all four took connections
    n = len(codes)
    assert codes.count(200) == TOKENS and codes.count(429) == n - TOKENS
    assert rl_stats(px4, "top_rl") == {"enabled": n, "enforced": n - TOKENS,
                                       "rate_limited": n - TOKENS, "ok": TOKENS}
    # each worker counts its own part; their sums are the filter's totals
    assert sum(per_worker(px4, "top_rl.http_local_rate_limit.ok")) == TOKENS
    assert sum(per_worker(px4, "top_rl.http_local_rate_limit.rate_limited")) == n - TOKENS
    s = stats(px4)
    assert int(s["http.ing.downstream_rq_2xx"]) >= TOKENS
    assert int(s["http.ing.downstream_rq_4xx"]) >= n - TOKENS
    lines = access_lines(px4, "/shared/", n)
    assert sum(" 429 RL local_rate_limited" in ln for ln in lines) == n - TOKENS
    assert sum(" 200 - via_upstream" in ln for ln in lines) == TOKENS


def test_rate_holds_across_four_workers(px4):
    """16 clients hammer the 5-token bucket refilled at 10/s for ~2 s: the four workers
    together grant no more than max_tokens + rate x elapsed (zero overshoot), and more
    than max_tokens (the refill is shared too)."""
    before = rl_stats(px4, "rate_rl")
    t0 = time.monotonic()
    stop = t0 + 2.0

    def client(_):
        out = []
        while time.monotonic() < stop:
            out.append(http(px4.port, "GET", "/rate/x").status)
        return out

    with ThreadPoolExecutor(16) as pool:
        codes = [c for cs in pool.map(client, range(16)) for c in cs]
    elapsed = time.monotonic() - t0
    ok = codes.count(200)
    assert set(codes) == {200, 429}
    assert 5 < ok <= 5 + 10 * elapsed, (ok, elapsed, len(codes))
    after = rl_stats(px4, "rate_rl")
    assert after["ok"] - before["ok"] == ok
    assert after["rate_limited"] - before["rate_limited"] == codes.count(429)
