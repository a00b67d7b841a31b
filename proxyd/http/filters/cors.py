"""envoy.filters.http.cors: answers browser preflights and adds CORS response headers.

The filter config (`Cors`) is empty; the policy (`CorsPolicy`) comes from
typed_per_filter_config at route, virtual host or route configuration level and is
resolved field by field, most specific level first, as Envoy's cors_filter.cc does; with
no typed policy, the deprecated `cors` of the route action and virtual host serve. A
request without a matched route, on a direct-response or redirect route (as Envoy, whose
filter needs a route entry) or without `Origin` is left alone. An allowed preflight
(OPTIONS with Origin and Access-Control-Request-Method) is answered here with 200
(details `cors_response`); a preflight from an origin no policy allows goes upstream
unless `forward_not_matching_preflights` is false (then 200 without allow-origin).
`allow_private_network_access` answers Access-Control-Request-Private-Network. Stats
`http.<prefix>.cors.origin_valid` and `origin_invalid` count requests with an Origin.
"""
from __future__ import annotations

from proxyd.http.filter import FilterHeadersStatus, StreamFilter
from proxyd.http.headers import Headers
from proxyd.http.message import ResponseHead
from proxyd.router.matchers import string_matcher

_DENOMINATORS = (100, 10_000, 1_000_000)
_UNSET = object()


class Policy:
    """One level's CorsPolicy; a field left unset is `_UNSET` (the next level decides)."""

    def __init__(self, msg, path: str = "CorsPolicy"):
        self.origins = [string_matcher(m, "%s.allow_origin_string_match[%d]" % (path, i))
                        for i, m in enumerate(msg.allow_origin_string_match)] or _UNSET
        self.allow_methods = msg.allow_methods or _UNSET
        self.allow_headers = msg.allow_headers or _UNSET
        self.expose_headers = msg.expose_headers or _UNSET
        self.max_age = msg.max_age or _UNSET
        self.forward_not_matching_preflights = (
            msg.forward_not_matching_preflights.value
            if msg.HasField("forward_not_matching_preflights") else _UNSET)
        self.allow_private_network_access = (
            msg.allow_private_network_access.value
            if msg.HasField("allow_private_network_access") else _UNSET)
        self.allow_credentials = (msg.allow_credentials.value
                                  if msg.HasField("allow_credentials") else _UNSET)
        self.filter_enabled = _fraction(msg.filter_enabled) if msg.HasField("filter_enabled") \
            else None
        self.shadow_enabled = _fraction(msg.shadow_enabled) if msg.HasField("shadow_enabled") \
            else None

    def enabled(self, runtime) -> bool:
        if self.filter_enabled is None:
            return self.shadow_enabled is None   # neither set: enforced at 100 %
        return runtime.fractional_percent_enabled(*self.filter_enabled)

    def shadow(self, runtime) -> bool:
        return self.shadow_enabled is not None and \
            runtime.fractional_percent_enabled(*self.shadow_enabled)


def _fraction(rfp) -> tuple[str, int, int]:
    d = rfp.default_value
    return rfp.runtime_key, d.numerator, _DENOMINATORS[d.denominator]


class CorsFilter(StreamFilter):
    def __init__(self, stats):
        self.stats = stats
        self.origin = None      # set when this is a CORS request to answer on the response
        self.policies = ()

    def _field(self, name, default=None):
        for p in self.policies:
            v = getattr(p, name)
            if v is not _UNSET:
                return v
        return default

    def decode_headers(self, headers, end_stream: bool):
        cb = self.decoder_callbacks
        route = cb.route()
        if route is None or route.kind != "cluster":   # Envoy skips direct/redirect routes
            return FilterHeadersStatus.CONTINUE
        self.policies = [p for p in reversed(cb.per_route_configs()) if isinstance(p, Policy)] \
            or route.cors_policies
        if not self.policies:
            return FilterHeadersStatus.CONTINUE
        first = self.policies[0]
        enabled, shadow = first.enabled(cb.runtime), first.shadow(cb.runtime)
        if not enabled and not shadow:
            return FilterHeadersStatus.CONTINUE
        origin = headers.get("origin")
        if not origin:
            return FilterHeadersStatus.CONTINUE
        request_method = headers.get("access-control-request-method")
        preflight = headers.get(":method") == "OPTIONS" and bool(request_method)
        # a matcher that matches "*" allows every origin (Envoy's isOriginAllowed)
        if not any(m("*") or m(origin) for m in self._field("origins", ())):
            self.stats.origin_invalid.inc()
            if enabled and preflight and not self._field("forward_not_matching_preflights", True):
                self._answer_preflight(headers, None, request_method)
                return FilterHeadersStatus.STOP_ITERATION
            return FilterHeadersStatus.CONTINUE
        self.stats.origin_valid.inc()
        if not enabled:
            return FilterHeadersStatus.CONTINUE
        self.origin = origin
        if not preflight:
            return FilterHeadersStatus.CONTINUE
        self._answer_preflight(headers, origin, request_method)
        return FilterHeadersStatus.STOP_ITERATION

    def _answer_preflight(self, headers, origin, request_method) -> None:
        """200 from the proxy; without allow-origin for an origin no policy allows."""
        cb = self.decoder_callbacks
        reply = [("access-control-allow-origin", origin)] if origin else []
        if origin and self._field("allow_credentials", False):
            reply.append(("access-control-allow-credentials", "true"))
        methods = self._field("allow_methods")
        if methods:
            reply.append(("access-control-allow-methods",
                          request_method if methods == "*" else methods))
        allow_headers = self._field("allow_headers")
        if allow_headers:
            if allow_headers == "*":
                allow_headers = headers.get("access-control-request-headers")
            if allow_headers:
                reply.append(("access-control-allow-headers", allow_headers))
        max_age = self._field("max_age")
        if max_age:
            reply.append(("access-control-max-age", max_age))
        if self._field("allow_private_network_access", False) and \
                headers.get("access-control-request-private-network") == "true":
            reply.append(("access-control-allow-private-network", "true"))
        # answered like Envoy's encodeHeaders(..., end_stream): no content-length yet (the
        # codec frames it), so the compressor sees a headers-only response
        cb.stream_info.response_code_details = "cors_response"
        cb.encode_headers(ResponseHead(200, Headers(reply)), True)

    def encode_headers(self, headers, end_stream: bool):
        if self.origin is None:
            return FilterHeadersStatus.CONTINUE
        headers.set("access-control-allow-origin", self.origin)
        if self._field("allow_credentials", False):
            headers.set("access-control-allow-credentials", "true")
        expose = self._field("expose_headers")
        if expose:
            headers.set("access-control-expose-headers", expose)
        return FilterHeadersStatus.CONTINUE


def create(config, ctx):
    stats = ctx.scope("cors.", counters=("origin_valid", "origin_invalid"))
    return lambda chain: chain.add_stream_filter(CorsFilter(stats))


def create_route_config(msg, factory) -> Policy:
    return Policy(msg)
