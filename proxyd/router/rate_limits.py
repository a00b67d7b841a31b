"""Route and virtual-host `rate_limits` (envoy.config.route.v3.RateLimit): the descriptors
a request produces for the global rate-limit filter, as Envoy's RateLimitPolicyEntryImpl.

Each RateLimit entry yields one descriptor, its entries in action order, or nothing when
any action cannot produce its entry (a missing header without `skip_if_absent`, a
header_value_match that does not match as expected). Actions implemented:
source_cluster, destination_cluster, request_headers, remote_address,
masked_remote_address, generic_key, header_value_match; the others are refused by `proxyd check`.
"""
from __future__ import annotations

import ipaddress

from proxyd.router.matchers import header_getter, header_matcher


class RateLimitPolicy:
    """One RateLimit entry, compiled."""
    __slots__ = ("stage", "disable_key", "actions")

    def __init__(self, msg, path: str):
        self.stage = msg.stage.value if msg.HasField("stage") else 0
        self.disable_key = msg.disable_key
        if not msg.actions:
            raise ValueError(f"{path}.actions: value must contain at least 1 item(s)")
        self.actions = tuple(_action(a, "%s.actions[%d]" % (path, i))
                             for i, a in enumerate(msg.actions))

    def descriptor(self, req, remote_ip: str, route_cluster: str, local_cluster: str):
        """[(key, value)] for this request, or None when an action produced nothing."""
        out = []
        for fn in self.actions:
            kv = fn(req, remote_ip, route_cluster, local_cluster)
            if kv is None:
                return None
            if kv is not _SKIP:
                out.append(kv)
        return out or None


_SKIP = object()


def _action(a, path: str):
    which = a.WhichOneof("action_specifier")
    if which == "source_cluster":
        return lambda req, ip, rc, lc: ("source_cluster", lc)
    if which == "destination_cluster":
        return lambda req, ip, rc, lc: ("destination_cluster", rc)
    if which == "remote_address":
        return lambda req, ip, rc, lc: ("remote_address", ip) if ip else None
    if which == "masked_remote_address":
        m = a.masked_remote_address
        v4 = m.v4_prefix_mask_len.value if m.HasField("v4_prefix_mask_len") else 32
        v6 = m.v6_prefix_mask_len.value if m.HasField("v6_prefix_mask_len") else 128
        if v4 > 32 or v6 > 128:
            raise ValueError(f"{path}.masked_remote_address: prefix length out of range")

        def masked(req, ip, rc, lc):
            if not ip:
                return None
            try:
                addr = ipaddress.ip_address(ip)
            except ValueError:
                return None
            net = ipaddress.ip_network("%s/%d" % (ip, v6 if addr.version == 6 else v4),
                                       strict=False)
            return ("masked_remote_address", str(net))
        return masked
    if which == "generic_key":
        g = a.generic_key
        if not g.descriptor_value:
            raise ValueError(f"{path}.generic_key.descriptor_value: value length must be at "
                             f"least 1 characters")
        kv = (g.descriptor_key or "generic_key", g.descriptor_value)
        return lambda req, ip, rc, lc: kv
    if which == "request_headers":
        rh = a.request_headers
        if not rh.header_name or not rh.descriptor_key:
            raise ValueError(f"{path}.request_headers: header_name and descriptor_key are "
                             f"required")
        get = header_getter(rh.header_name.lower())
        key, skip = rh.descriptor_key, rh.skip_if_absent

        def request_headers(req, ip, rc, lc):
            v = get(req)
            if v is None:
                return _SKIP if skip else None
            return (key, v)
        return request_headers
    if which == "header_value_match":
        hv = a.header_value_match
        if not hv.descriptor_value:
            raise ValueError(f"{path}.header_value_match.descriptor_value: value length must "
                             f"be at least 1 characters")
        matchers = tuple(header_matcher(h, "%s.header_value_match.headers[%d]" % (path, i))[0]
                         for i, h in enumerate(hv.headers))
        expect = hv.expect_match.value if hv.HasField("expect_match") else True
        kv = (hv.descriptor_key or "header_match", hv.descriptor_value)

        def header_value_match(req, ip, rc, lc):
            return kv if all(m(req) for m in matchers) == expect else None
        return header_value_match
    raise ValueError(f"{path}: rate limit action {which or '(none)'} is not supported by proxyd")


class RouteRateLimits:
    """What a route carries: its own policies, its virtual host's, include_vh_rate_limits."""
    __slots__ = ("route", "vhost", "include_vh")

    def __init__(self, route: tuple, vhost: tuple, include_vh: bool):
        self.route = route
        self.vhost = vhost
        self.include_vh = include_vh


NONE = RouteRateLimits((), (), False)


def compile_route(route_action, vh_policies: tuple, path: str) -> RouteRateLimits:
    """The RouteRateLimits of a route (`route_action` None for redirects and direct
    responses, which are never rate limited by the global filter)."""
    if route_action is None:
        return NONE if not vh_policies else RouteRateLimits((), vh_policies, False)
    own = tuple(RateLimitPolicy(m, "%s.rate_limits[%d]" % (path, i))
                for i, m in enumerate(route_action.rate_limits))
    include = (route_action.include_vh_rate_limits.value
               if route_action.HasField("include_vh_rate_limits") else False)
    if not own and not vh_policies:
        return NONE
    return RouteRateLimits(own, vh_policies, include)


def compile_policies(msgs, path: str) -> tuple:
    return tuple(RateLimitPolicy(m, "%s.rate_limits[%d]" % (path, i)) for i, m in enumerate(msgs))
