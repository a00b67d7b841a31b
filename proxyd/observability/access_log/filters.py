"""`envoy.config.accesslog.v3.AccessLogFilter` compiled to `f(info) -> bool`.

Compiled once per config so the per-request decision is a couple of closure calls.
Runtime-backed values (ComparisonFilter.value, RuntimeFilter) read the worker's layered
runtime on each decision (`ctx.runtime.get_int(key, default)`, proxyd/runtime.py), so
a snapshot with new values changes them; without a runtime the configured default
applies, as in Envoy with an empty runtime.
"""
from __future__ import annotations

import random
import time
from typing import Callable

Filter = Callable[[object], bool]

# FractionalPercent denominators: HUNDRED, TEN_THOUSAND, MILLION
_DENOMINATORS = {0: 100, 1: 10_000, 2: 1_000_000}


def _runtime_int(ctx, key: str, default: int) -> Callable[[], int]:
    runtime = getattr(ctx, "runtime", None) if ctx is not None else None
    if not key or runtime is None:
        return lambda: default
    return lambda: runtime.get_int(key, default)


def _comparison(cmp, ctx, path: str) -> Callable[[int], bool]:
    value = _runtime_int(ctx, cmp.value.runtime_key, cmp.value.default_value)
    op = cmp.op
    if op == 0:
        return lambda x: x == value()
    if op == 1:
        return lambda x: x >= value()
    if op == 2:
        return lambda x: x <= value()
    if op == 3:
        return lambda x: x != value()
    raise ValueError(f"{path}.op: unknown comparison operator {op}")


def _duration_ms(info) -> int:
    end = info.end_mono if info.end_mono is not None else time.monotonic()
    return int((end - info.start_mono) * 1000)


def _request_id_bucket(info) -> int | None:
    """Envoy's UUID request-id modBy: the first 8 hex digits as an integer, so several
    loggers sampling the same request agree (use_independent_randomness: false)."""
    rid = info.request_id
    if rid is None and info.request is not None:
        rid = info.request.headers.get("x-request-id")
    if not rid:
        return None
    try:
        return int(rid[:8], 16)
    except ValueError:
        return None


def compile_filter(msg, ctx=None, path: str = "filter") -> Filter:
    """Compile an AccessLogFilter message; raise ValueError for unsupported kinds."""
    which = msg.WhichOneof("filter_specifier")
    if which == "status_code_filter":
        cmp = _comparison(msg.status_code_filter.comparison, ctx, f"{path}.status_code_filter")
        return lambda info: cmp(info.response_code)
    if which == "duration_filter":
        cmp = _comparison(msg.duration_filter.comparison, ctx, f"{path}.duration_filter")
        return lambda info: cmp(_duration_ms(info))
    if which == "not_health_check_filter":
        return lambda info: not info.is_health_check
    if which == "traceable_filter":
        return lambda info: info.trace is not None and getattr(info.trace, "sampled", True)
    if which == "runtime_filter":
        rf = msg.runtime_filter
        denom = _DENOMINATORS.get(rf.percent_sampled.denominator)
        if denom is None:
            raise ValueError(f"{path}.runtime_filter.percent_sampled.denominator: unknown")
        numerator = _runtime_int(ctx, rf.runtime_key, rf.percent_sampled.numerator)
        independent = rf.use_independent_randomness
        rand = random.randrange

        def sample(info) -> bool:
            bucket = None if independent else _request_id_bucket(info)
            if bucket is None:
                bucket = rand(denom)
            return bucket % denom < min(numerator(), denom)
        return sample
    if which in ("and_filter", "or_filter"):
        subs = [compile_filter(f, ctx, f"{path}.{which}.filters[{i}]")
                for i, f in enumerate(getattr(msg, which).filters)]
        if len(subs) < 2:
            raise ValueError(f"{path}.{which}.filters: needs at least 2 filters")
        if which == "and_filter":
            return lambda info: all(f(info) for f in subs)
        return lambda info: any(f(info) for f in subs)
    if which == "response_flag_filter":
        wanted = frozenset(msg.response_flag_filter.flags)
        if wanted:
            return lambda info: not wanted.isdisjoint(info.response_flags)
        return lambda info: bool(info.response_flags)
    if which == "header_filter":
        from proxyd.router.matchers import header_matcher
        match, _ = header_matcher(msg.header_filter.header, f"{path}.header_filter.header")
        return lambda info: info.request is not None and match(info.request)
    if which is None:
        raise ValueError(f"{path}: filter_specifier is required")
    raise ValueError(f"{path}.{which}: access log filter not supported")
