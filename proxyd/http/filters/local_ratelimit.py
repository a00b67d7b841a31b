"""envoy.filters.http.local_ratelimit: a token bucket in front of the router.

One bucket per filter config (and one per route that configures its own), shared by every
worker process through the stats file (`proxyd.stats.token_bucket`), as Envoy shares it
across worker threads. What Envoy 1.40 does, and this does:
- `filter_enabled` / `filter_enforced` default to 0 %: a filter enabling neither counts
  nothing; enabled but not enforced counts `rate_limited` and forwards the request with
  `request_headers_to_add_when_not_enforced`;
- a limited request gets `status` (429 when unset or below 400), body
  `local_rate_limited`, details `local_rate_limited`, flag RL and
  `response_headers_to_add`; no `x-envoy-ratelimited` (1.40 does not send it for local
  limits, only the global ratelimit filter does);
- stats at the root scope under the stat_prefix of the config that held the bucket:
  `<stat_prefix>.http_local_rate_limit.{enabled,enforced,rate_limited,ok,shadow_mode}`;
- a per-route LocalRateLimit replaces the filter's config on that route and needs its own
  `token_bucket`; without one at filter level every request passes.
"""
from __future__ import annotations

import hashlib

from proxyd.http.filter import FilterHeadersStatus, StreamDecoderFilter
from proxyd.http.headers import Headers
from proxyd.router.header_mutation import HeaderMutation
from proxyd.stats.token_bucket import SharedTokenBucket

BODY = "local_rate_limited"
DETAILS = "local_rate_limited"
FLAG = "RL"
MIN_FILL_INTERVAL_S = 0.05
_DENOMINATORS = {0: 100, 1: 10000, 2: 1000000}   # FractionalPercent: HUNDRED, TEN_THOUSAND, MILLION
_COUNTERS = ("enabled", "enforced", "rate_limited", "ok", "shadow_mode")


class _Fraction:
    """A RuntimeFractionalPercent: on for numerator/denominator of requests."""
    __slots__ = ("key", "numerator", "denominator")

    def __init__(self, msg, present: bool):
        d = msg.default_value
        self.key = msg.runtime_key if present else ""
        self.numerator = d.numerator if present else 0
        self.denominator = _DENOMINATORS.get(d.denominator, 100)

    def enabled(self, runtime) -> bool:
        return runtime.fractional_percent_enabled(self.key, self.numerator, self.denominator)


def validate(msg, path: str) -> None:
    """Envoy's checks beyond the proto's rules."""
    if msg.HasField("token_bucket"):
        interval = msg.token_bucket.fill_interval
        if interval.seconds + interval.nanos / 1e9 < MIN_FILL_INTERVAL_S:
            raise ValueError(f"{path}.token_bucket.fill_interval: local rate limit token "
                             f"bucket fill timer must be >= 50ms")
    HeaderMutation(msg.response_headers_to_add, (), path, "response_headers_to_add", "")


class RateLimitConfig:
    """One LocalRateLimit message, compiled: its bucket, fractions, reply and stats."""

    def __init__(self, msg, store, key: str, path: str):
        validate(msg, path)
        self.bucket = None
        if msg.HasField("token_bucket"):
            tb = msg.token_bucket
            interval = tb.fill_interval.seconds + tb.fill_interval.nanos / 1e9
            per_fill = tb.tokens_per_fill.value if tb.HasField("tokens_per_fill") else 1
            digest = hashlib.sha1(msg.SerializeToString(deterministic=True)).hexdigest()[:16]
            self.bucket = SharedTokenBucket(store, f"{key}:{digest}", tb.max_tokens, per_fill,
                                            interval)
        code = msg.status.code if msg.HasField("status") else 0
        self.status = code if code >= 400 else 429
        self.filter_enabled = _Fraction(msg.filter_enabled, msg.HasField("filter_enabled"))
        self.filter_enforced = _Fraction(msg.filter_enforced, msg.HasField("filter_enforced"))
        self.response_headers = HeaderMutation(msg.response_headers_to_add, (), path,
                                               "response_headers_to_add", "")
        self.not_enforced_headers = HeaderMutation(
            msg.request_headers_to_add_when_not_enforced, (), path,
            "request_headers_to_add_when_not_enforced", "")
        prefix = "%s.http_local_rate_limit." % msg.stat_prefix
        for name in _COUNTERS:
            setattr(self, name, store.counter(prefix + name))


class LocalRateLimitFilter(StreamDecoderFilter):
    def __init__(self, config: RateLimitConfig):
        self.config = config

    def decode_headers(self, headers, end_stream: bool):
        cb = self.decoder_callbacks
        cfg = cb.per_route_config() or self.config
        runtime = cb.runtime
        if not cfg.filter_enabled.enabled(runtime):
            return FilterHeadersStatus.CONTINUE
        cfg.enabled.inc()
        if cfg.bucket is None or cfg.bucket.consume():
            cfg.ok.inc()
            return FilterHeadersStatus.CONTINUE
        cfg.rate_limited.inc()
        if not cfg.filter_enforced.enabled(runtime):
            cfg.not_enforced_headers.apply(headers, cb.stream_info)
            return FilterHeadersStatus.CONTINUE
        cfg.enforced.inc()
        reply = None
        if cfg.response_headers:
            h = Headers()
            cfg.response_headers.apply(h, cb.stream_info)
            reply = h.items
        cb.stream_info.response_flags.append(FLAG)
        cb.send_local_reply(cfg.status, BODY, DETAILS, reply)
        return FilterHeadersStatus.STOP_ITERATION


class LocalRateLimitFactory:
    """The FilterFactoryCb; also what per-route configs are compiled against."""

    def __init__(self, config: RateLimitConfig, store, key: str):
        self.config = config
        self.store = store
        self.key = key

    def __call__(self, chain) -> None:
        chain.add_stream_decoder_filter(LocalRateLimitFilter(self.config))


def create(msg, ctx) -> LocalRateLimitFactory:
    store = ctx.worker.stats
    key = "%s%s" % (ctx.stats.prefix, ctx.filter_name)
    return LocalRateLimitFactory(RateLimitConfig(msg, store, key, ctx.filter_name), store, key)


def create_route_config(msg, factory) -> RateLimitConfig | None:
    """`factory` is None under `proxyd check`, which only validates."""
    if not msg.HasField("token_bucket"):
        raise ValueError("local rate limit token bucket must be set for per filter configs")
    if factory is None:
        validate(msg, "typed_per_filter_config")
        return None
    return RateLimitConfig(msg, factory.store, factory.key + ":route", "typed_per_filter_config")
