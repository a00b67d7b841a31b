"""The thrift_proxy route table: first match wins, by method name or service prefix.

As Envoy's RouteMatcher: `method_name` is an exact match ("" matches any method);
`service_name` gets a ':' appended when it lacks one and prefix-matches the method
(TMultiplexedProtocol sends `Service:method`; "" matches any); `invert` negates either;
`headers` (header transport info headers, keys lower-cased) must all match as well.
"""
from __future__ import annotations

import random

from proxyd.http.headers import Headers
from proxyd.router.matchers import header_matcher


class _Request:
    """What the HTTP header matchers read: `.headers`."""
    __slots__ = ("headers",)

    def __init__(self, headers: dict):
        self.headers = Headers([(k.lower(), v) for k, v in headers.items()])


class Route:
    __slots__ = ("method", "service", "invert", "headers", "cluster", "weighted", "total",
                 "strip_service", "mirrors")

    def __init__(self, cfg, path: str):
        m = cfg.match
        self.headers = [header_matcher(h, "%s.match.headers[%d]" % (path, i))[0]
                        for i, h in enumerate(m.headers)]
        which = m.WhichOneof("match_specifier")
        self.method = m.method_name if which == "method_name" else None
        svc = m.service_name if which == "service_name" else None
        if svc and not svc.endswith(":"):
            svc += ":"
        self.service = svc
        self.invert = m.invert
        a = cfg.route
        self.strip_service = a.strip_service_name
        self.mirrors = [(p.cluster,) + _fraction(p) for p in a.request_mirror_policies]
        if a.WhichOneof("cluster_specifier") == "weighted_clusters":
            self.cluster = None
            self.weighted = [(c.name, c.weight.value) for c in a.weighted_clusters.clusters
                             if c.weight.value]
            self.total = sum(w for _, w in self.weighted)
        else:
            self.cluster = a.cluster
            self.weighted, self.total = [], 0

    def matches(self, method: str, request: _Request) -> bool:
        if self.method is not None:
            hit = not self.method or method == self.method
        else:
            hit = not self.service or method.startswith(self.service)
        return hit != self.invert and all(h(request) for h in self.headers)

    def pick_cluster(self) -> str:
        if self.cluster is not None:
            return self.cluster
        r = random.randrange(self.total)
        for name, w in self.weighted:
            if r < w:
                return name
            r -= w
        return self.weighted[-1][0]


_DENOMINATORS = {0: 100, 1: 10000, 2: 1000000}


def _fraction(policy) -> tuple[int, int, str]:
    """(numerator, denominator, runtime key) of a mirror policy. As in Envoy, a policy
    without a runtime key always mirrors, whatever its default_value."""
    rf = policy.runtime_fraction
    if not rf.runtime_key:
        return 100, 100, ""
    d = rf.default_value
    return d.numerator, _DENOMINATORS.get(d.denominator, 100), rf.runtime_key


class RouteTable:
    def __init__(self, route_config):
        self.name = route_config.name
        self.routes = [Route(r, "route_config.routes[%d]" % i)
                       for i, r in enumerate(route_config.routes)]
        self.matches_headers = any(r.headers for r in self.routes)

    def route(self, method: str, headers: dict) -> Route | None:
        request = _Request(headers) if self.matches_headers else None
        for r in self.routes:
            if r.matches(method, request):
                return r
        return None
