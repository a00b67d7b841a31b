"""envoy.filters.http.rbac: allow or deny a request by policies over who sent it
(principals) and what it asks for (permissions), as Envoy's RoleBasedAccessControlEngine.

A policy matches when any of its permissions and any of its principals match. ALLOW rules
let a request through when some policy matches, DENY rules when none does; `rules` absent
means no enforcement, present with no policies means ALLOW nothing / DENY nothing.
`shadow_rules` are evaluated first and only counted (`shadow_allowed` / `shadow_denied`)
and written to dynamic metadata (`envoy.filters.http.rbac`: `shadow_effective_policy_id`,
`shadow_engine_result`). A denied request gets Envoy 1.40's 403 `RBAC: access denied`,
details `rbac_access_denied_matched_policy[<policy>|none]`, no response flag. Policies are
tried in name order (Envoy keeps them in a std::map), so the named policy is the first
matching one by name. Stats: `http.<stat_prefix>.rbac.{allowed,denied,shadow_allowed,
shadow_denied}`. `RBACPerRoute` replaces the rules on a route; one without `rbac` turns
the filter off there. Principals: `remote_ip` and `source_ip` are the downstream address as proxyd sees it
(the proxy_protocol header's source when there is one; proxyd trusts no X-Forwarded-For
hops), `direct_remote_ip` the physical peer.
"""
from __future__ import annotations

import ipaddress

from proxyd.http.filter import FilterHeadersStatus, StreamDecoderFilter
from proxyd.router.matchers import header_matcher, string_matcher

METADATA_NS = "envoy.filters.http.rbac"
BODY = "RBAC: access denied"
ALLOW, DENY = 0, 1


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port) if port.isdigit() else 0


class _Request:
    """What the matchers read: the head, the peer's IP, and the local IP and port."""
    __slots__ = ("head", "remote_ip", "direct_ip", "local_ip", "local_port", "path")

    def __init__(self, head, info):
        self.head = head
        remote, _ = _split(info.downstream_remote_address or "")
        self.remote_ip = _ip(remote)
        direct = info.downstream_direct_remote_address
        self.direct_ip = self.remote_ip if direct == info.downstream_remote_address \
            else _ip(_split(direct or "")[0])
        local, self.local_port = _split(info.downstream_local_address or "")
        self.local_ip = _ip(local)
        self.path = (head.path or "").partition("?")[0].partition("#")[0]


def _ip(text: str):
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _cidr(msg, path: str):
    plen = msg.prefix_len.value if msg.HasField("prefix_len") else None
    try:
        net = ipaddress.ip_network(msg.address_prefix if plen is None
                                   else "%s/%d" % (msg.address_prefix, plen), strict=False)
    except ValueError as e:
        raise ValueError(f"{path}: malformed IP address: {msg.address_prefix} ({e})") from None
    return lambda ip: ip is not None and ip.version == net.version and ip in net


def _path(msg, path: str):
    if msg.WhichOneof("rule") != "path":
        raise ValueError(f"{path}: a path matcher needs 'path'")
    match = string_matcher(msg.path, path + ".path")
    return lambda r: match(r.path)


def _header(msg, path: str):
    match, _ = header_matcher(msg, path)
    return lambda r: match(r.head)


def permission(msg, path: str):
    """An rbac.v3.Permission as `f(request) -> bool`."""
    which = msg.WhichOneof("rule")
    p = f"{path}.{which}"
    if which == "any":
        return lambda r: True
    if which in ("and_rules", "or_rules"):
        parts = [permission(m, f"{p}.rules[{i}]") for i, m in enumerate(msg.and_rules.rules
                                                                      if which == "and_rules"
                                                                      else msg.or_rules.rules)]
        if which == "and_rules":
            return lambda r: all(f(r) for f in parts)
        return lambda r: any(f(r) for f in parts)
    if which == "not_rule":
        inner = permission(msg.not_rule, p)
        return lambda r: not inner(r)
    if which == "header":
        return _header(msg.header, p)
    if which == "url_path":
        return _path(msg.url_path, p)
    if which == "destination_ip":
        inside = _cidr(msg.destination_ip, p)
        return lambda r: inside(r.local_ip)
    if which == "destination_port":
        port = msg.destination_port
        return lambda r: r.local_port == port
    if which == "destination_port_range":
        lo, hi = msg.destination_port_range.start, msg.destination_port_range.end
        return lambda r: lo <= r.local_port < hi
    raise ValueError(f"{p}: permission rule {which or '(none)'} is not supported by proxyd")


def principal(msg, path: str):
    """An rbac.v3.Principal as `f(request) -> bool`."""
    which = msg.WhichOneof("identifier")
    p = f"{path}.{which}"
    if which == "any":
        return lambda r: True
    if which in ("and_ids", "or_ids"):
        parts = [principal(m, f"{p}.ids[{i}]") for i, m in enumerate(getattr(msg, which).ids)]
        if which == "and_ids":
            return lambda r: all(f(r) for f in parts)
        return lambda r: any(f(r) for f in parts)
    if which == "not_id":
        inner = principal(msg.not_id, p)
        return lambda r: not inner(r)
    if which == "direct_remote_ip":   # the physical peer, even behind proxy_protocol
        inside = _cidr(msg.direct_remote_ip, p)
        return lambda r: inside(r.direct_ip)
    if which in ("source_ip", "remote_ip"):
        inside = _cidr(getattr(msg, which), p)
        return lambda r: inside(r.remote_ip)
    if which == "header":
        return _header(msg.header, p)
    if which == "url_path":
        return _path(msg.url_path, p)
    raise ValueError(f"{p}: principal {which or '(none)'} is not supported by proxyd")


class Engine:
    """One RBAC message (rules or shadow_rules): its action and policies in name order."""

    def __init__(self, msg, path: str):
        self.allow = msg.action == ALLOW
        self.policies = []
        for name in sorted(msg.policies):
            pol = msg.policies[name]
            pp = f"{path}.policies[{name}]"
            perms = [permission(m, f"{pp}.permissions[{i}]") for i, m in enumerate(pol.permissions)]
            princ = [principal(m, f"{pp}.principals[{i}]") for i, m in enumerate(pol.principals)]
            self.policies.append((name, perms, princ))

    def evaluate(self, request) -> tuple[bool, str | None]:
        """(allowed, the matching policy's name or None)."""
        for name, perms, princ in self.policies:
            if any(f(request) for f in perms) and any(f(request) for f in princ):
                return self.allow, name
        return not self.allow, None


class RbacConfig:
    """The filter's (or a route's) engines; `msg` None: neither (the filter is off)."""

    def __init__(self, msg, path: str):
        has = msg.HasField if msg is not None else (lambda _: False)
        self.rules = Engine(msg.rules, path + ".rules") if has("rules") else None
        self.shadow = Engine(msg.shadow_rules, path + ".shadow_rules") \
            if has("shadow_rules") else None


class RbacFilter(StreamDecoderFilter):
    def __init__(self, factory: "RbacFactory"):
        self.factory = factory

    def decode_headers(self, headers, end_stream: bool):
        cb = self.decoder_callbacks
        cfg = cb.per_route_config() or self.factory.config
        if cfg.rules is None and cfg.shadow is None:
            return FilterHeadersStatus.CONTINUE
        stats = self.factory.stats
        request = _Request(headers, cb.stream_info)
        if cfg.shadow is not None:
            allowed, policy = cfg.shadow.evaluate(request)
            (stats.shadow_allowed if allowed else stats.shadow_denied).inc()
            meta = {"shadow_engine_result": "allowed" if allowed else "denied"}
            if policy is not None:
                meta["shadow_effective_policy_id"] = policy
            cb.stream_info.set_dynamic_metadata(METADATA_NS, meta)
        if cfg.rules is None:
            return FilterHeadersStatus.CONTINUE
        allowed, policy = cfg.rules.evaluate(request)
        if allowed:
            stats.allowed.inc()
            return FilterHeadersStatus.CONTINUE
        stats.denied.inc()
        cb.send_local_reply(403, BODY, "rbac_access_denied_matched_policy[%s]"
                            % (policy if policy is not None else "none"))
        return FilterHeadersStatus.STOP_ITERATION


class RbacFactory:
    def __init__(self, config: RbacConfig, stats):
        self.config = config
        self.stats = stats

    def __call__(self, chain) -> None:
        chain.add_stream_decoder_filter(RbacFilter(self))


def create(msg, ctx) -> RbacFactory:
    stats = ctx.scope("rbac.", counters=("allowed", "denied", "shadow_allowed", "shadow_denied"))
    return RbacFactory(RbacConfig(msg, ctx.filter_name), stats)


def create_route_config(msg, factory) -> RbacConfig:
    """RBACPerRoute: its `rbac` replaces the filter's; without one the filter is off."""
    return RbacConfig(msg.rbac if msg.HasField("rbac") else None, "typed_per_filter_config.rbac")
