"""envoy.filters.http.csrf: refuses cross-origin state-changing requests, as Envoy's
csrf_filter.cc does.

Only POST, PUT, DELETE and PATCH are checked. The source origin is the Origin header's
host and port, else the Referer's (a value that is not an absolute URL, such as `null`,
counts as missing); it must equal the request's Host / :authority or match one of
`additional_origins`. A request without one counts `missing_source_origin`, one from
elsewhere `request_invalid` (both refused), a good one `request_valid`. With `filter_enabled`
the refusal is 403 `Invalid origin` (details `csrf_origin_mismatch`); with only
`shadow_enabled` the stats count and the request goes on. A CsrfPolicy in
`typed_per_filter_config` replaces the filter's on a route (most specific level wins).
Stats `http.<prefix>.csrf.{missing_source_origin,request_invalid,request_valid}`.
"""
from __future__ import annotations

from urllib.parse import urlsplit

from proxyd.http.filter import FilterHeadersStatus, StreamDecoderFilter
from proxyd.router.matchers import string_matcher

_DENOMINATORS = (100, 10_000, 1_000_000)
_MODIFY = frozenset({"POST", "PUT", "DELETE", "PATCH"})


def _fraction(rfp) -> tuple[str, int, int]:
    d = rfp.default_value
    return rfp.runtime_key, d.numerator, _DENOMINATORS[d.denominator]


class Policy:
    def __init__(self, msg, path: str = "CsrfPolicy"):
        self.filter_enabled = _fraction(msg.filter_enabled)
        self.shadow_enabled = _fraction(msg.shadow_enabled) \
            if msg.HasField("shadow_enabled") else None
        self.additional = [string_matcher(m, "%s.additional_origins[%d]" % (path, i))
                           for i, m in enumerate(msg.additional_origins)]

    def enabled(self, runtime) -> bool:
        return runtime.fractional_percent_enabled(*self.filter_enabled)

    def shadow(self, runtime) -> bool:
        return self.shadow_enabled is not None and \
            runtime.fractional_percent_enabled(*self.shadow_enabled)


def host_and_port(value: str | None) -> str:
    """The authority of an absolute URL; "" for anything else ("null" included), as
    Envoy 1.40 reads Origin and Referer."""
    if not value or "://" not in value:
        return ""
    try:
        parts = urlsplit(value)
    except ValueError:
        return ""
    return parts.netloc.rpartition("@")[2] if parts.scheme and parts.netloc else ""


class CsrfFilter(StreamDecoderFilter):
    quiet_end = True

    def __init__(self, policy: Policy, stats):
        self.policy = policy
        self.stats = stats

    def decode_headers(self, headers, end_stream: bool):
        cb = self.decoder_callbacks
        route_policy = cb.per_route_config()
        policy = route_policy if isinstance(route_policy, Policy) else self.policy
        runtime = cb.runtime
        enabled = policy.enabled(runtime)
        if not enabled and not policy.shadow(runtime):
            return FilterHeadersStatus.CONTINUE
        if headers.get(":method") not in _MODIFY:
            return FilterHeadersStatus.CONTINUE
        source = host_and_port(headers.get("origin")) or host_and_port(headers.get("referer"))
        if not source:
            self.stats.missing_source_origin.inc()
        elif source == headers.get(":authority") or any(m(source) for m in policy.additional):
            self.stats.request_valid.inc()
            return FilterHeadersStatus.CONTINUE
        else:
            self.stats.request_invalid.inc()
        if not enabled:
            return FilterHeadersStatus.CONTINUE   # shadow mode: counted only
        cb.send_local_reply(403, b"Invalid origin", "csrf_origin_mismatch")
        return FilterHeadersStatus.STOP_ITERATION


def create(msg, ctx):
    stats = ctx.scope("csrf.", counters=("missing_source_origin", "request_invalid",
                                         "request_valid"))
    policy = Policy(msg)
    return lambda chain: chain.add_stream_decoder_filter(CsrfFilter(policy, stats))


def create_route_config(msg, factory) -> Policy:
    return Policy(msg)
