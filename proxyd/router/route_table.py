"""The route table: an envoy.config.route.v3.RouteConfiguration compiled for the hot path.

Built once per config snapshot, consulted per request by the HTTP connection manager
(`match`) and the router filter (the `RouteEntry` it returns). Building does all the
protobuf reading, validation and regex compilation, so a request costs one dict lookup
for the virtual host, then a walk over precompiled route predicates; nothing here
touches protobuf or does I/O per request.

Semantics follow Envoy's RouteMatcher / RouteEntryImplBase (see
/work/shared/research/envoy-reference.md section 5.1):
- virtual host by Host/:authority, ASCII case-insensitively, against the full value
  including any port (unless the route config sets ignore_port_in_host_matching; the
  HCM's strip_*_host_port options rewrite Host before `match`, see
  `matchers.strip_host_port`): exact, then the longest `*suffix`, then the longest
  `prefix*`, then `*`; a wildcard never matches an empty remainder;
- routes in order, first match wins; `prefix` is tested against the whole :path as
  Envoy does (identical to ignoring the query unless the prefix itself contains '?'),
  `path`, `path_separated_prefix` and `safe_regex` (full match) against the path with
  query and fragment removed; every header matcher must match too.
Which fields are implemented is said once, in `proxyd/config/supported.py`: a config
that sets any other is refused before it gets here.
"""
from __future__ import annotations

import bisect
import os
import random
from typing import Callable

from proxyd import regex
from proxyd.http.headers import Headers
from proxyd.http.message import RequestHead
from proxyd.http.per_filter_config import merge as merge_filter_levels
from proxyd.router.header_mutation import HeaderMutation, apply_all
from proxyd.router import shadow
from proxyd.router.hash_policy import HashPolicy
from proxyd.router.retry_policy import RetryPolicy
from proxyd.router.rate_limits import NONE as NO_RATE_LIMITS, compile_policies, compile_route
from proxyd.router.matchers import (
    ascii_lower, header_getter, header_matcher, port_start, regex_matcher, wire,
)

DEFAULT_TIMEOUT = 15.0
DEFAULT_MAX_DIRECT_RESPONSE_BODY = 4096
_NO_FILTER_CONFIG = ({}, {}, {})  # (per_filter_config, per_filter_levels, disabled_filters)

# RedirectAction.RedirectResponseCode enum value -> HTTP status
REDIRECT_STATUS = {0: 301, 1: 302, 2: 303, 3: 307, 4: 308}
# RouteAction.ClusterNotFoundResponseCode enum value -> HTTP status
CLUSTER_NOT_FOUND_STATUS = {0: 503, 1: 404, 2: 500}

def _legacy_cors(route, rpath: str, vhost, vpath: str) -> tuple:
    """The deprecated `cors` fields, route's first: the CORS filter falls back to them
    when no typed_per_filter_config policy applies (as Envoy 1.40 still does)."""
    from proxyd.http.filters.cors import Policy   # the filter owns the policy's meaning
    out = []
    if route.HasField("route") and route.route.HasField("cors"):
        out.append(Policy(route.route.cors, rpath + ".route.cors"))
    if vhost.HasField("cors"):
        out.append(Policy(vhost.cors, vpath + ".cors"))
    return tuple(out)


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _strip_query(path: str) -> str:
    """Envoy's PathUtil::removeQueryAndFragment."""
    q = path.find("?")
    if q >= 0:
        path = path[:q]
    h = path.find("#")
    return path[:h] if h >= 0 else path


def _seconds(duration) -> float:
    return duration.seconds + duration.nanos / 1e9


def _nonnegative(duration, path: str) -> float:
    t = _seconds(duration)
    if t < 0:
        raise ValueError(f"{path}: value must be greater than or equal to 0s")
    return t


def _is_connect_request(req) -> bool:
    return req.method == "CONNECT"


def _is_grpc_request(req) -> bool:
    """Envoy's Grpc::Common::isGrpcRequestHeaders: content-type application/grpc, or
    application/grpc+<codec> / ;<params> (gRPC-Web is not gRPC here)."""
    ct = req.headers.get("content-type")
    return ct is not None and (ct == "application/grpc" or
                               ct.startswith(("application/grpc+", "application/grpc;")))


class ConnectConfig:
    """RouteAction.UpgradeConfig.connect_config: proxyd terminates CONNECT (and, with
    allow_post, POST) and relays the payload over a TCP connection to the cluster."""
    __slots__ = ("allow_post",)

    def __init__(self, allow_post: bool):
        self.allow_post = allow_post


class RouteEntry:
    """What a matched route tells the connection manager and the router filter.

    Immutable and shared by every request that matches the route.
    """
    __slots__ = (
        "name", "virtual_host_name", "kind", "timeout", "max_grpc_timeout",
        "grpc_timeout_offset", "idle_timeout", "stream_duration", "stream_timeouts", "auto_host_rewrite", "retry_policy", "attempt_count_in_response",
        "attempt_count_in_request",
        "append_x_forwarded_host", "host_rewrite", "prefix_rewrite", "regex_rewrite",
        "cluster_not_found_status", "upgrades", "connect_config", "direct_status", "direct_body", "_cluster",
        "_cluster_header", "_weights", "_cum_weights", "_total_weight", "_matched_len",
        "_request_mutations", "_response_mutations", "_redirect",
        "per_filter_config", "per_filter_levels", "disabled_filters",
        "cors_policies",   # the deprecated RouteAction.cors, VirtualHost.cors (compiled)
        "hash_policy",     # proxyd.router.hash_policy.HashPolicy or None
        "mirror_policies",  # proxyd.router.shadow.MirrorPolicy, most specific level's
        "rate_limits",     # RouteRateLimits (router/rate_limits.py), for the ratelimit filter
        "decorator",       # Route.decorator: (operation, propagate) or None
    )

    def cluster_for(self, req: RequestHead) -> str:
        """The upstream cluster for this request ("" when cluster_header is absent: the
        router answers cluster_not_found_status, as Envoy)."""
        if self._cluster is not None:
            return self._cluster
        if self._weights is not None:
            i = bisect.bisect_right(self._cum_weights, random.random() * self._total_weight)
            return self._weights[min(i, len(self._weights) - 1)][0]
        return self._cluster_header(req) or ""

    @property
    def weighted_clusters(self) -> tuple[tuple[str, int], ...] | None:
        return self._weights

    def rewrite_request(self, req: RequestHead, insert_original_path: bool = True) -> None:
        """host_rewrite_literal then prefix_rewrite, as Envoy's finalizeRequestHeaders.

        The Host header is rewritten only where the request carries one (HTTP/1);
        `req.authority` always. `insert_original_path=False` is the router's
        suppress_envoy_headers.
        """
        host = self.host_rewrite
        if host:
            if self.append_x_forwarded_host and req.authority:
                xfh = req.headers.get("x-forwarded-host")
                req.headers.set("x-forwarded-host",
                                f"{xfh},{req.authority}" if xfh else req.authority)
            req.authority = host
            if "host" in req.headers:
                req.headers.set("host", host)
        if self.prefix_rewrite:
            path = req.path
            n = self._matched_len if self._matched_len >= 0 else len(_strip_query(path))
            if insert_original_path:
                req.headers.set("x-envoy-original-path", path)
            req.path = self.prefix_rewrite + path[n:]
        elif self.regex_rewrite is not None:
            # every match in the path (query and fragment kept as they are), on RE2
            pattern, substitution = self.regex_rewrite
            path = req.path
            bare = _strip_query(path)
            if insert_original_path:
                req.headers.set("x-envoy-original-path", path)
            req.path = pattern.sub(substitution, bare) + path[len(bare):]

    def apply_request_headers(self, req: RequestHead, info) -> None:
        """request_headers_to_remove/_add of route, virtual host and route config, in
        Envoy's order (most specific first unless most_specific_header_mutations_wins)."""
        if self._request_mutations:
            apply_all(self._request_mutations, req.headers, info)

    def apply_response_headers(self, headers: Headers, info) -> None:
        """response_headers_to_remove/_add, same order; also for redirects and direct
        responses, as Envoy applies them to those local replies too."""
        if self._response_mutations:
            apply_all(self._response_mutations, headers, info)

    def finalize_request(self, req: RequestHead, info, insert_original_path: bool = True) -> None:
        """Header mutations, then host and path rewrites: the order Envoy's router uses."""
        self.apply_request_headers(req, info)
        self.rewrite_request(req, insert_original_path)

    def redirect(self, req: RequestHead) -> tuple[int, str]:
        """(status, Location) for a redirect route (Envoy's Http::Utility::newUri)."""
        r = self._redirect
        if r is None:
            raise TypeError(f"route {self.name!r} is not a redirect")
        scheme, https, host_redirect, port, path_redirect, has_query, prefix, strip, status = r
        if scheme:
            final_scheme = scheme
        elif https:
            final_scheme = "https"
        else:
            final_scheme = req.scheme
        host = host_redirect or _request_host(req, final_scheme, port)
        path = req.path
        if prefix:
            n = self._matched_len if self._matched_len >= 0 else len(_strip_query(path))
            path = prefix + path[n:]
        if path_redirect:
            if has_query:
                path = path_redirect
            else:
                q = path.find("?")
                path = path_redirect + path[q:] if q >= 0 else path_redirect
        if not path.startswith("/"):
            path = "/" + path
        if strip and not has_query:
            q = path.find("?")
            if q >= 0:
                path = path[:q]
        return status, f"{final_scheme}://{host}{port}{path}"

    def direct_location(self, req: RequestHead) -> str | None:
        """Location Envoy adds to a direct_response of 201 or 3xx: the request's own URL."""
        s = self.direct_status
        if self.kind != "direct" or not (s == 201 or 300 <= s < 400):
            return None
        path = req.path if req.path.startswith("/") else "/" + req.path
        return f"{req.scheme}://{_request_host(req, req.scheme, '')}{path}"

    def __repr__(self) -> str:
        return f"RouteEntry({self.virtual_host_name!r}/{self.name!r}, {self.kind})"


def _request_host(req: RequestHead, new_scheme: str, new_port: str) -> str:
    """Envoy's processRequestHost: drop the request's port when a port_redirect replaces
    it, or when the scheme changes away from the one that port is the default of."""
    host = req.authority or ""
    if not host:
        return host
    if host[0] == "[":
        i = host.rfind("]:")
        if i >= 0:
            i += 1
    else:
        i = host.rfind(":")
    if i >= 0:
        port = host[i:]
        proto = req.headers.get("x-forwarded-proto") or req.scheme
        remove = bool(new_port)
        if new_scheme != proto:
            remove = remove or (proto == "https" and port == ":443") \
                or (proto == "http" and port == ":80")
        if remove:
            return host[:i]
    return host


class _Route:
    """One route's match predicates plus its entry."""
    __slots__ = ("index", "prefix", "path_match", "headers", "entry", "desc")

    def __init__(self, index, prefix, path_match, headers, entry, desc):
        self.index = index
        # The common case-sensitive `prefix` route is tested inline by match(), saving a
        # Python call per route walked; otherwise None and path_match decides.
        self.prefix = prefix
        self.path_match = path_match      # f(full_path, path_without_query) -> bool
        self.headers = headers            # tuple of f(req) -> bool
        self.entry = entry
        self.desc = desc                  # (path description, header descriptions)


class _VirtualHost:
    __slots__ = ("name", "routes")

    def __init__(self, name, routes):
        self.name = name
        self.routes = routes


def _path_matcher(m, path: str, ignore_params: bool) -> tuple[Callable[[str, str], bool], int, str]:
    """(f(full, bare), matched length for rewrites or -1 for "the whole bare path", text)."""
    which = m.WhichOneof("path_specifier")
    case = m.case_sensitive.value if m.HasField("case_sensitive") else True
    ci = "" if case else " (case-insensitive)"
    if which == "prefix":
        prefix = wire(m.prefix)
        n = len(prefix)
        if not prefix:
            f = lambda full, bare: True
        elif case:
            f = lambda full, bare: full.startswith(prefix)
        else:
            low = ascii_lower(prefix)
            f = lambda full, bare: ascii_lower(full[:n]) == low
        desc = f"prefix {m.prefix!r}{ci}"
    elif which == "path":
        exact = wire(m.path)
        n = len(exact)
        if case:
            f = lambda full, bare: bare == exact
        else:
            low = ascii_lower(exact)
            f = lambda full, bare: len(bare) == n and ascii_lower(bare) == low
        desc = f"path {m.path!r}{ci}"
    elif which == "path_separated_prefix":
        sp = m.path_separated_prefix
        if not sp or sp[-1] == "/" or any(c in sp for c in "?#"):
            raise ValueError(f"{path}.path_separated_prefix: value does not match regex "
                             f"pattern \"^[^?#]+[^?#/]$\"")
        prefix = wire(sp)
        n = len(prefix)
        low = ascii_lower(prefix)

        def f(full, bare):
            if len(bare) < n or (len(bare) > n and bare[n] != "/"):
                return False
            return bare.startswith(prefix) if case else ascii_lower(bare[:n]) == low
        desc = f"path_separated_prefix {sp!r}{ci}"
    elif which == "safe_regex":
        fullmatch = regex_matcher(m.safe_regex, f"{path}.safe_regex").fullmatch
        f = lambda full, bare: fullmatch(bare)
        n = -1
        desc = f"safe_regex {m.safe_regex.regex!r}"
    elif which == "connect_matcher":
        # CONNECT requests only (their method is tested with the headers); they carry no
        # :path, so this is the one path specifier that matches them
        f = lambda full, bare: True
        n = -1
        desc = "connect_matcher"
    else:
        raise ValueError(f"{path}: one of prefix, path, safe_regex, path_separated_prefix "
                         f"or connect_matcher is required" if which is None else f"{path}.{which}: not supported by proxyd")
    if ignore_params:
        inner = f

        def f(full, bare):
            i = full.find(";")
            if i >= 0:
                full = full[:i]
            i = bare.find(";")
            if i >= 0:
                bare = bare[:i]
            return inner(full, bare)
    return f, n, desc


def _data_source(ds, path: str, limit: int) -> bytes:
    which = ds.WhichOneof("specifier")
    if which == "inline_string":
        body = ds.inline_string.encode("utf-8")
    elif which == "inline_bytes":
        body = ds.inline_bytes
    elif which == "filename":
        try:
            with open(ds.filename, "rb") as fh:
                body = fh.read(limit + 1)
        except OSError as e:
            raise ValueError(f"{path}.filename: cannot read {ds.filename}: {e.strerror}") from None
    elif which == "environment_variable":
        value = os.environ.get(ds.environment_variable)
        if value is None:
            raise ValueError(f"{path}.environment_variable: "
                             f"{ds.environment_variable} is not set")
        body = value.encode("utf-8")
    else:
        raise ValueError(f"{path}: a data source specifier is required")
    if len(body) > limit:
        raise ValueError(f"{path}: response body size is {len(body)} bytes; maximum is {limit}")
    return body


class RouteTable:
    """A RouteConfiguration compiled for matching; see the module docstring."""

    def __init__(self, route_config, per_filter_config=None):
        """`per_filter_config(map, path) -> (configs, disabled)` compiles
        typed_per_filter_config (the HCM's PerFilterCompiler); without it none is allowed."""
        cfg = route_config
        self._per_filter = per_filter_config
        rc_level = self._filter_level(cfg, "")
        self.name = cfg.name
        self._ignore_port = cfg.ignore_port_in_host_matching
        ignore_params = cfg.ignore_path_parameters_in_path_matching
        body_limit = (cfg.max_direct_response_body_size_bytes.value
                      if cfg.HasField("max_direct_response_body_size_bytes")
                      else DEFAULT_MAX_DIRECT_RESPONSE_BODY)
        most_specific_wins = cfg.most_specific_header_mutations_wins
        global_req = HeaderMutation(cfg.request_headers_to_add, cfg.request_headers_to_remove,
                                    "", "request_headers_to_add", "request_headers_to_remove")
        global_resp = HeaderMutation(cfg.response_headers_to_add, cfg.response_headers_to_remove,
                                     "", "response_headers_to_add", "response_headers_to_remove")

        rc_mirror = shadow.compile_policies(cfg.request_mirror_policies, "")
        self._exact: dict[str, _VirtualHost] = {}
        suffix: dict[int, dict[str, _VirtualHost]] = {}
        prefix: dict[int, dict[str, _VirtualHost]] = {}
        self._default: _VirtualHost | None = None
        self._vhosts: list[_VirtualHost] = []
        names: set[str] = set()
        for vi, vh_cfg in enumerate(cfg.virtual_hosts):
            vpath = f"virtual_hosts[{vi}]"
            if not vh_cfg.name:
                raise ValueError(f"{vpath}.name: value length must be at least 1 characters")
            if vh_cfg.name in names:
                raise ValueError(f"{vpath}.name: Only unique values for name are permitted. "
                                 f"Duplicate entry of domain {vh_cfg.name}")
            names.add(vh_cfg.name)
            if not vh_cfg.domains:
                raise ValueError(f"{vpath}.domains: value must contain at least 1 item(s)")
            vh_req = HeaderMutation(vh_cfg.request_headers_to_add, vh_cfg.request_headers_to_remove,
                                    vpath, "request_headers_to_add", "request_headers_to_remove")
            vh_resp = HeaderMutation(vh_cfg.response_headers_to_add,
                                     vh_cfg.response_headers_to_remove, vpath,
                                     "response_headers_to_add", "response_headers_to_remove")
            vh_level = self._filter_level(vh_cfg, vpath)
            vh_retry = (RetryPolicy(vh_cfg.retry_policy, f"{vpath}.retry_policy")
                        if vh_cfg.HasField("retry_policy") else None)
            vh_mirror = (shadow.compile_policies(vh_cfg.request_mirror_policies, vpath)
                         or rc_mirror)
            vh_limits = compile_policies(vh_cfg.rate_limits, vpath)
            routes = []
            for ri, r_cfg in enumerate(vh_cfg.routes):
                rpath = f"{vpath}.routes[{ri}]"
                r_req = HeaderMutation(r_cfg.request_headers_to_add, r_cfg.request_headers_to_remove,
                                       rpath, "request_headers_to_add", "request_headers_to_remove")
                r_resp = HeaderMutation(r_cfg.response_headers_to_add,
                                        r_cfg.response_headers_to_remove, rpath,
                                        "response_headers_to_add", "response_headers_to_remove")
                # Envoy evaluates the most specific level first, so the least specific
                # wins overwrites, unless most_specific_header_mutations_wins.
                levels_req = (r_req, vh_req, global_req)
                levels_resp = (r_resp, vh_resp, global_resp)
                if most_specific_wins:
                    levels_req, levels_resp = levels_req[::-1], levels_resp[::-1]
                route = self._build_route(
                    ri, r_cfg, rpath, vh_cfg.name, ignore_params, body_limit,
                    tuple(m for m in levels_req if m), tuple(m for m in levels_resp if m))
                e = route.entry
                if e.retry_policy is None:  # the route's own policy replaces the vhost's
                    e.retry_policy = vh_retry
                if not e.mirror_policies:  # the most specific non-empty list, not merged
                    e.mirror_policies = vh_mirror
                e.attempt_count_in_response = vh_cfg.include_attempt_count_in_response
                e.attempt_count_in_request = vh_cfg.include_request_attempt_count
                levels = [lv for lv in (rc_level, vh_level, self._filter_level(r_cfg, rpath))
                          if lv is not None]
                e.per_filter_config, e.per_filter_levels, e.disabled_filters = (
                    merge_filter_levels(levels) if levels else _NO_FILTER_CONFIG)
                e.cors_policies = _legacy_cors(r_cfg, rpath, vh_cfg, vpath)
                e.rate_limits = compile_route(r_cfg.route if r_cfg.HasField("route") else None,
                                              vh_limits, rpath + ".route")
                routes.append(route)
            vh = _VirtualHost(vh_cfg.name, tuple(routes))
            self._vhosts.append(vh)
            for di, domain in enumerate(vh_cfg.domains):
                dpath = f"{vpath}.domains[{di}]"
                d = ascii_lower(wire(domain))
                if not d:
                    raise ValueError(f"{dpath}: value length must be at least 1 characters")
                if d == "*":
                    if self._default is not None:
                        raise ValueError(f"{dpath}: Only a single wildcard domain is permitted "
                                         f"in route {cfg.name}")
                    self._default = vh
                    continue
                if d.startswith("*"):
                    table, key = suffix.setdefault(len(d) - 1, {}), d[1:]
                elif d.endswith("*"):
                    table, key = prefix.setdefault(len(d) - 1, {}), d[:-1]
                else:
                    table, key = self._exact, d
                if key in table:
                    raise ValueError(f"{dpath}: Only unique values for domains are permitted. "
                                     f"Duplicate entry of domain {domain} in route {cfg.name}")
                table[key] = vh
        # Longest wildcard first, as Envoy's std::map<int, ..., std::greater<>>.
        self._suffix = tuple(sorted(suffix.items(), reverse=True))
        self._prefix = tuple(sorted(prefix.items(), reverse=True))
        self._only_default = not self._exact and not self._suffix and not self._prefix

    def _filter_level(self, msg, path: str):
        """One level's compiled typed_per_filter_config, or None when it has none."""
        if not msg.typed_per_filter_config:
            return None
        if self._per_filter is None:
            raise ValueError(f"{_join(path, 'typed_per_filter_config')}: not supported here")
        return self._per_filter(msg.typed_per_filter_config, path)

    def _build_route(self, index, r, path, vh_name, ignore_params, body_limit,
                     req_mut, resp_mut) -> _Route:
        if not r.HasField("match"):
            raise ValueError(f"{path}.match: value is required")
        path_match, matched_len, path_desc = _path_matcher(r.match, f"{path}.match", ignore_params)
        headers = []
        header_desc = []
        for hi, hm in enumerate(r.match.headers):
            fn, desc = header_matcher(hm, f"{path}.match.headers[{hi}]")
            headers.append(fn)
            header_desc.append(desc)
        if r.match.WhichOneof("path_specifier") == "connect_matcher":
            headers.insert(0, _is_connect_request)
        if r.match.HasField("grpc"):   # RouteMatch.grpc: gRPC requests only
            headers.append(_is_grpc_request)
            header_desc.append("grpc")

        e = RouteEntry()
        e.cors_policies = ()
        e.rate_limits = NO_RATE_LIMITS
        e.decorator = None
        if r.HasField("decorator"):
            if not r.decorator.operation:
                raise ValueError(f"{path}.decorator.operation: value length must be at least "
                                 f"1 characters")
            e.decorator = (r.decorator.operation, r.decorator.propagate.value
                           if r.decorator.HasField("propagate") else True)
        e.name = r.name or None
        e.virtual_host_name = vh_name
        e.timeout = DEFAULT_TIMEOUT
        e.max_grpc_timeout = None  # set: gRPC requests' grpc-timeout is the deadline
        e.grpc_timeout_offset = 0.0
        e.idle_timeout = None     # RouteAction.idle_timeout: overrides stream_idle_timeout
        # RouteAction.max_stream_duration, compiled: (max_stream_duration or None,
        # grpc_timeout_header_max or None, grpc_timeout_header_offset or None); None unset
        e.stream_duration = None
        e.stream_timeouts = False  # either is set: the HCM re-arms its stream timers
        e.retry_policy = None
        e.hash_policy = None
        e.mirror_policies = ()
        e.attempt_count_in_response = e.attempt_count_in_request = False
        e.auto_host_rewrite = False
        e.append_x_forwarded_host = False
        e.host_rewrite = ""
        e.prefix_rewrite = ""
        e.regex_rewrite = None  # (Regex, substitution)
        e.cluster_not_found_status = 503
        e.upgrades = None  # RouteAction.upgrade_configs: {type (lower case): enabled}
        e.connect_config = None  # its CONNECT entry's connect_config: ConnectConfig or None
        e.direct_status = 0
        e.direct_body = None
        e._cluster = None
        e._cluster_header = None
        e._weights = None
        e._cum_weights = None
        e._total_weight = 0
        e._matched_len = matched_len
        e._request_mutations = req_mut
        e._response_mutations = resp_mut
        e._redirect = None

        action = r.WhichOneof("action")
        if action == "route":
            e.kind = "cluster"
            self._build_action(e, r.route, f"{path}.route")
        elif action == "redirect":
            e.kind = "redirect"
            rd = r.redirect
            rp = f"{path}.redirect"
            status = REDIRECT_STATUS.get(rd.response_code)
            if status is None:
                raise ValueError(f"{rp}.response_code: value must be one of the defined enum values")
            if rd.port_redirect > 65535:
                raise ValueError(f"{rp}.port_redirect: value must be less than or equal to 65535")
            e._redirect = (
                wire(rd.scheme_redirect), rd.https_redirect, wire(rd.host_redirect),
                f":{rd.port_redirect}" if rd.port_redirect else "", wire(rd.path_redirect),
                "?" in rd.path_redirect, wire(rd.prefix_rewrite), rd.strip_query, status)
        elif action == "direct_response":
            e.kind = "direct"
            dr = r.direct_response
            dp = f"{path}.direct_response"
            if not 200 <= dr.status < 600:
                raise ValueError(f"{dp}.status: value must be inside range [200, 600)")
            e.direct_status = dr.status
            if dr.HasField("body"):
                e.direct_body = _data_source(dr.body, f"{dp}.body", body_limit)
        else:
            raise ValueError(f"{path}: one of route, redirect or direct_response is required")
        m = r.match
        inline_prefix = None
        if (m.WhichOneof("path_specifier") == "prefix" and not ignore_params
                and (not m.HasField("case_sensitive") or m.case_sensitive.value)):
            inline_prefix = wire(m.prefix)
        return _Route(index, inline_prefix, path_match, tuple(headers), e,
                      (path_desc, tuple(header_desc)))

    @staticmethod
    def _build_action(e: RouteEntry, a, path: str) -> None:
        spec = a.WhichOneof("cluster_specifier")
        if spec == "cluster":
            if not a.cluster:
                raise ValueError(f"{path}.cluster: value length must be at least 1 characters")
            e._cluster = a.cluster
        elif spec == "cluster_header":
            if not a.cluster_header:
                raise ValueError(f"{path}.cluster_header: value length must be at least 1 characters")
            e._cluster_header = header_getter(a.cluster_header.lower(), first_only=True)
        elif spec == "weighted_clusters":
            wp = f"{path}.weighted_clusters"
            if not a.weighted_clusters.clusters:
                raise ValueError(f"{wp}.clusters: value must contain at least 1 item(s)")
            weights = []
            for i, c in enumerate(a.weighted_clusters.clusters):
                if not c.name:
                    raise ValueError(f"{wp}.clusters[{i}].name: a cluster name is required")
                weights.append((c.name, c.weight.value))
            total = sum(w for _, w in weights)
            if total == 0:
                raise ValueError(f"{wp}: Sum of weights in the weighted_cluster must be greater than 0.")
            if total > 0xFFFFFFFF:
                raise ValueError(f"{wp}: The sum of weights of all weighted clusters of route "
                                 f"{e.name} exceeds 4294967295")
            cum, acc = [], 0
            for _, w in weights:
                acc += w
                cum.append(acc)
            e._weights = tuple(weights)
            e._cum_weights = tuple(cum)
            e._total_weight = total
        else:
            raise ValueError(f"{path}: one of cluster, cluster_header or weighted_clusters is required")
        status = CLUSTER_NOT_FOUND_STATUS.get(a.cluster_not_found_response_code)
        if status is None:
            raise ValueError(f"{path}.cluster_not_found_response_code: "
                             f"value must be one of the defined enum values")
        e.cluster_not_found_status = status
        if a.upgrade_configs:
            e.upgrades = {u.upgrade_type.lower(): u.enabled.value if u.HasField("enabled")
                          else True for u in a.upgrade_configs}
            for u in a.upgrade_configs:
                if u.HasField("connect_config"):
                    if u.upgrade_type.lower() != "connect":
                        raise ValueError(f"{path}: Non-CONNECT upgrade type "
                                         f"{u.upgrade_type} has ConnectConfig")
                    e.connect_config = ConnectConfig(u.connect_config.allow_post)
        if a.HasField("timeout"):
            t = _seconds(a.timeout)
            if t < 0:
                raise ValueError(f"{path}.timeout: value must be greater than or equal to 0s")
            e.timeout = t
        if a.HasField("retry_policy"):
            e.retry_policy = RetryPolicy(a.retry_policy, f"{path}.retry_policy")
        if a.hash_policy:
            e.hash_policy = HashPolicy(a.hash_policy, f"{path}.hash_policy")
        if a.request_mirror_policies:
            e.mirror_policies = shadow.compile_policies(a.request_mirror_policies, path)
        if a.HasField("max_grpc_timeout"):
            e.max_grpc_timeout = _seconds(a.max_grpc_timeout)
        if a.HasField("grpc_timeout_offset"):
            e.grpc_timeout_offset = _seconds(a.grpc_timeout_offset)
        if a.HasField("idle_timeout"):
            e.idle_timeout = _nonnegative(a.idle_timeout, f"{path}.idle_timeout")
            e.stream_timeouts = True
        if a.HasField("max_stream_duration"):
            # Envoy's "new timeouts": the stream's duration replaces the router's global
            # timeout, which is then none (route `timeout` and max_grpc_timeout are
            # ignored and no x-envoy-expected-rq-timeout-ms is sent; Envoy 1.40)
            m = a.max_stream_duration
            mp = f"{path}.max_stream_duration"
            e.stream_duration = tuple(
                _nonnegative(getattr(m, f), f"{mp}.{f}") if m.HasField(f) else None
                for f in ("max_stream_duration", "grpc_timeout_header_max",
                          "grpc_timeout_header_offset"))
            e.stream_timeouts = True
            e.timeout = 0.0
            e.max_grpc_timeout = None
        e.prefix_rewrite = wire(a.prefix_rewrite)
        if a.HasField("regex_rewrite"):
            rp = f"{path}.regex_rewrite"
            if a.prefix_rewrite:
                raise ValueError(f"{path}: Cannot specify both prefix_rewrite and regex_rewrite")
            pattern = regex_matcher(a.regex_rewrite.pattern, f"{rp}.pattern")
            regex.check_substitution(pattern, a.regex_rewrite.substitution, f"{rp}.substitution")
            e.regex_rewrite = (pattern, a.regex_rewrite.substitution)
        e.host_rewrite = wire(a.host_rewrite_literal)
        e.auto_host_rewrite = a.auto_host_rewrite.value
        e.append_x_forwarded_host = a.append_x_forwarded_host

    # -- per request -------------------------------------------------------------

    def _find_vhost(self, authority: str | None) -> _VirtualHost | None:
        if self._only_default:
            return self._default
        if authority is None:
            return None
        host = authority
        if self._ignore_port:
            i = port_start(host)
            if i >= 0:
                host = host[:i]
        host = host.lower() if host.isascii() else ascii_lower(host)
        vh = self._exact.get(host)
        if vh is not None:
            return vh
        n = len(host)
        for length, table in self._suffix:
            if length < n:
                vh = table.get(host[n - length:])
                if vh is not None:
                    return vh
        for length, table in self._prefix:
            if length < n:
                vh = table.get(host[:length])
                if vh is not None:
                    return vh
        return self._default

    def match(self, req: RequestHead) -> RouteEntry | None:
        """The first route of the request's virtual host that matches, or None (404 NR)."""
        vh = self._find_vhost(req.authority)
        if vh is None:
            return None
        full = req.path
        bare = full
        if "?" in full or "#" in full:
            bare = _strip_query(full)
        for route in vh.routes:
            prefix = route.prefix
            if full.startswith(prefix) if prefix is not None else route.path_match(full, bare):
                for h in route.headers:
                    if not h(req):
                        break
                else:
                    return route.entry
        return None

    # -- debugging -----------------------------------------------------------------

    def _explain_vhost(self, authority: str | None) -> tuple[_VirtualHost | None, str]:
        vh = self._find_vhost(authority)
        if vh is None:
            why = "no Host/:authority" if authority is None else "no domain matches and no '*' virtual host"
            return None, why
        if self._only_default:
            return vh, "*"
        host = authority
        if self._ignore_port and port_start(host) >= 0:
            host = host[:port_start(host)]
        host = ascii_lower(host)
        if self._exact.get(host) is vh:
            return vh, host
        n = len(host)
        for length, table in self._suffix:
            if length < n and table.get(host[n - length:]) is vh:
                return vh, "*" + host[n - length:]
        for length, table in self._prefix:
            if length < n and table.get(host[:length]) is vh:
                return vh, host[:length] + "*"
        return vh, "*"

    def describe(self, host: str | None, path: str, method: str = "GET",
                 headers=None, scheme: str = "http") -> dict:
        """Explain how a request would route: for the admin /route endpoint.

        `headers` is a mapping or an iterable of (name, value) pairs.
        """
        items = headers.items() if hasattr(headers, "items") else (headers or ())
        req = RequestHead(method, path, host, scheme, "HTTP/1.1",
                          Headers([(str(k).lower(), str(v)) for k, v in items]))
        out: dict = {"request": {"host": host, "path": path, "method": method},
                     "virtual_host": None, "domain": None, "route": None, "skipped": []}
        vh, domain = self._explain_vhost(host)
        if vh is None:
            out["reason"] = f"no virtual host: {domain}"
            return out
        out["virtual_host"] = vh.name
        out["domain"] = domain
        full = path
        bare = _strip_query(full)
        for route in vh.routes:
            path_desc, header_desc = route.desc
            if not route.path_match(full, bare):
                out["skipped"].append({"index": route.index, "name": route.entry.name,
                                       "reason": f"path does not match {path_desc}"})
                continue
            failed = [d for h, d in zip(route.headers, header_desc) if not h(req)]
            if failed:
                out["skipped"].append({"index": route.index, "name": route.entry.name,
                                       "reason": "header condition failed: " + "; ".join(failed)})
                continue
            out["route"] = self._describe_entry(route, req)
            out["reason"] = "matched"
            return out
        out["reason"] = f"no route in virtual host {vh.name!r} matches"
        return out

    @staticmethod
    def _describe_entry(route: _Route, req: RequestHead) -> dict:
        e = route.entry
        path_desc, header_desc = route.desc
        d = {"index": route.index, "name": e.name, "match": path_desc,
             "headers": list(header_desc), "kind": e.kind}
        if e.kind == "cluster":
            if e._cluster is not None:
                d["cluster"] = e._cluster
            elif e._weights is not None:
                d["weighted_clusters"] = [{"name": n, "weight": w} for n, w in e._weights]
            else:
                d["cluster"] = e.cluster_for(req)
            d["timeout"] = e.timeout
            if e.prefix_rewrite:
                d["prefix_rewrite"] = e.prefix_rewrite
            if e.host_rewrite:
                d["host_rewrite_literal"] = e.host_rewrite
            if e.auto_host_rewrite:
                d["auto_host_rewrite"] = True
        elif e.kind == "redirect":
            d["status"], d["location"] = e.redirect(req)
        else:
            d["status"] = e.direct_status
            d["body_bytes"] = len(e.direct_body) if e.direct_body is not None else 0
        return d

    @property
    def virtual_host_names(self) -> list[str]:
        return [vh.name for vh in self._vhosts]
