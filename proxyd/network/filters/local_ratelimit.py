"""envoy.filters.network.local_ratelimit: one token per new connection; with none left the
connection is closed at once and no later filter sees it (Envoy's behaviour).

The bucket is shared by every worker process (`proxyd.stats.token_bucket`), as Envoy's
is by its worker threads. Filters with the same `share_key` and the same `token_bucket`
share one bucket, as in Envoy; without a share_key each distinct config has its own (two
filter chains with byte-identical configs share one here, where Envoy would keep two).
`runtime_enabled` (default on) turns the limit off without a config change. Stat, as Envoy
1.40 emits it (its docs say `local_ratelimit.`): `local_rate_limit.<stat_prefix>.rate_limited`.
"""
from __future__ import annotations

import hashlib

from proxyd.network.filter import FilterStatus
from proxyd.stats.token_bucket import SharedTokenBucket

MIN_FILL_INTERVAL_S = 0.05


class LocalRateLimitFilter:
    __slots__ = ("config", "callbacks")

    def __init__(self, config: "LocalRateLimit"):
        self.config = config

    def initialize_read_filter_callbacks(self, callbacks) -> None:
        self.callbacks = callbacks

    def on_new_connection(self) -> FilterStatus:
        cfg = self.config
        if not cfg.enabled() or cfg.bucket.consume():
            return FilterStatus.CONTINUE
        cfg.rate_limited.inc()
        self.callbacks.connection.close()
        return FilterStatus.STOP_ITERATION

    def on_data(self, data: bytes, end_stream: bool) -> FilterStatus:
        return FilterStatus.CONTINUE


class LocalRateLimit:
    """The compiled config, and the FilterFactoryCb adding one filter per connection."""

    def __init__(self, msg, ctx):
        tb = msg.token_bucket
        interval = tb.fill_interval.seconds + tb.fill_interval.nanos / 1e9
        if interval < MIN_FILL_INTERVAL_S:
            raise ValueError("local rate limit token bucket fill timer must be >= 50ms")
        per_fill = tb.tokens_per_fill.value if tb.HasField("tokens_per_fill") else 1
        shared = msg.share_key or msg.SerializeToString(deterministic=True).hex()
        digest = hashlib.sha1((shared + tb.SerializeToString(deterministic=True).hex())
                              .encode()).hexdigest()[:16]
        self.bucket = SharedTokenBucket(ctx.stats, "network:" + digest, tb.max_tokens,
                                        per_fill, interval)
        self.rate_limited = ctx.stats.counter("local_rate_limit.%s.rate_limited"
                                              % msg.stat_prefix)
        flag = msg.runtime_enabled
        self.runtime_key = flag.runtime_key if msg.HasField("runtime_enabled") else ""
        self.default_on = flag.default_value.value if msg.HasField("runtime_enabled") else True
        self.ctx = ctx

    def enabled(self) -> bool:
        if not self.runtime_key:
            return self.default_on
        return self.ctx.runtime.get_bool(self.runtime_key, self.default_on)

    def __call__(self, filter_manager) -> None:
        filter_manager.add_read_filter(LocalRateLimitFilter(self))


def create(msg, ctx) -> LocalRateLimit:
    return LocalRateLimit(msg, ctx)
