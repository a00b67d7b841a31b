"""envoy.filters.http.ratelimit: global rate limits decided by a rate-limit service
(`envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`) over the internal gRPC
client (`proxyd/upstream/grpc_client.py`: the service cluster's HTTP/2 pool and stats).

As Envoy 1.40's filter:
- descriptors come from the route's `rate_limits` of the filter's `stage` (and its
  virtual host's: when the route has none, or always with `include_vh_rate_limits` /
  RateLimitPerRoute INCLUDE; never with IGNORE), built by `proxyd/router/rate_limits.py`;
  no descriptor means no call and the request goes on;
- the call has `timeout` (20 ms by default); while it runs the chain stops;
- OK: the service's `request_headers_to_add` go upstream, `response_headers_to_add` (and
  the X-RateLimit-* headers with `enable_x_ratelimit_headers: DRAFT_VERSION_03`) to the
  client; stat `cluster.<route cluster>.ratelimit.ok`;
- OVER_LIMIT: `ratelimit.over_limit`; enforced (runtime `ratelimit.http_filter_enforcing`,
  default 100 %) it answers `rate_limited_status` (429) with the service's `raw_body`
  and headers, `x-envoy-ratelimited: true` (unless `disable_x_envoy_ratelimited_header`),
  flag RL, details `request_rate_limited`, and charges the 429 to the route's cluster
  (`upstream_rq_429`); gRPC requests get RESOURCE_EXHAUSTED with
  `rate_limited_as_resource_exhausted`, else UNAVAILABLE as for any 429;
- an error (timeout, no host, a failed call): `ratelimit.error`; with
  `failure_mode_deny` the request gets `status_on_error` (500), flag RLSE, details
  `rate_limiter_error`; otherwise `ratelimit.failure_mode_allowed` and it goes on.
`filter_enabled` / `filter_enforced` (else runtime `ratelimit.http_filter_enabled` /
`ratelimit.http_filter_enforcing`, default 100 %) turn the filter or its enforcement off;
`response_headers_to_add` go on limited responses only.
"""
from __future__ import annotations

from proxyd.http.filter import FilterHeadersStatus, StreamFilter
from proxyd.http.headers import Headers
from proxyd.observability.logging import get_logger
from proxyd.router import rate_limits as rl
from proxyd.router.header_mutation import HeaderMutation

_log = get_logger("http.ratelimit")
METHOD = "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit"
DEFAULT_TIMEOUT = 0.02
COUNTERS = ("ok", "over_limit", "error", "failure_mode_allowed")
OK, OVER_LIMIT, ERROR = 1, 2, 0
RESOURCE_EXHAUSTED = 8
_UNITS = {1: 1, 2: 60, 3: 3600, 4: 86400, 5: 604800, 6: 2592000, 7: 31536000}
VH_OVERRIDE, VH_INCLUDE, VH_IGNORE = 0, 1, 2


def _seconds(d) -> float:
    return d.seconds + d.nanos / 1e9


class Decision:
    __slots__ = ("code", "statuses", "request_headers", "response_headers", "body", "reason")

    def __init__(self, code: int, reason: str = ""):
        self.code = code
        self.statuses = ()
        self.request_headers: list = []
        self.response_headers: list = []
        self.body = b""
        self.reason = reason


def should_rate_limit(client, domain: str, descriptors: list, hits_addend: int = 0,
                      timeout: float | None = -1.0) -> Decision:
    """One ShouldRateLimit call, blocking the calling greenlet."""
    from envoy.service.ratelimit.v3 import rls_pb2
    from proxyd.upstream.grpc_client import GrpcError
    req = rls_pb2.RateLimitRequest(domain=domain, hits_addend=hits_addend)
    for item in descriptors:
        entries, hits = item if isinstance(item, tuple) else (item, 0)
        d = req.descriptors.add()
        if hits:
            d.hits_addend.value = hits
        for k, v in entries:
            e = d.entries.add()
            e.key, e.value = k, v
    try:
        resp = client.unary(METHOD, req, rls_pb2.RateLimitResponse, timeout)
    except GrpcError as e:
        return Decision(ERROR, str(e))
    code = resp.overall_code
    if code not in (OK, OVER_LIMIT):
        return Decision(ERROR, "overall_code %d" % code)
    dec = Decision(code)
    dec.statuses = tuple(resp.statuses)
    dec.request_headers = [(h.key.lower(), h.value) for h in resp.request_headers_to_add]
    dec.response_headers = [(h.key.lower(), h.value) for h in resp.response_headers_to_add]
    dec.body = resp.raw_body
    return dec


def x_ratelimit_headers(statuses) -> list:
    """DRAFT_VERSION_03 X-RateLimit-{Limit,Remaining,Reset} from the descriptor statuses,
    as Envoy's XRateLimitHeaderUtils: the status with the least remaining leads."""
    best = None
    policy = ""
    for s in statuses:
        if not s.HasField("current_limit"):
            continue
        if best is None or s.limit_remaining < best.limit_remaining:
            best = s
        window = _UNITS.get(s.current_limit.unit, 0)
        if window:
            policy += ", %d;w=%d" % (s.current_limit.requests_per_unit, window)
            if s.current_limit.name:
                policy += ';name="%s"' % s.current_limit.name
    if best is None:
        return []
    out = [("x-ratelimit-limit", "%d%s" % (best.current_limit.requests_per_unit, policy)),
           ("x-ratelimit-remaining", str(best.limit_remaining))]
    if best.HasField("duration_until_reset"):
        out.append(("x-ratelimit-reset", str(best.duration_until_reset.seconds)))
    return out


class RateLimitConfig:
    def __init__(self, msg, ctx, path: str = "ratelimit"):
        if not msg.domain:
            raise ValueError(f"{path}.domain: value length must be at least 1 characters")
        if not msg.HasField("rate_limit_service"):
            raise ValueError(f"{path}.rate_limit_service: value is required")
        gs = msg.rate_limit_service.grpc_service
        if gs.WhichOneof("target_specifier") != "envoy_grpc":
            raise ValueError(f"{path}.rate_limit_service.grpc_service: only envoy_grpc is "
                             f"supported by proxyd")
        self.domain = msg.domain
        self.stage = msg.stage
        self.request_type = msg.request_type or "both"
        if self.request_type not in ("internal", "external", "both"):
            raise ValueError(f"{path}.request_type: value must be in list [internal external both]")
        self.timeout = _seconds(msg.timeout) if msg.HasField("timeout") else DEFAULT_TIMEOUT
        self.failure_mode_deny = msg.failure_mode_deny
        self.as_resource_exhausted = msg.rate_limited_as_resource_exhausted
        self.x_headers = msg.enable_x_ratelimit_headers == 1
        self.x_envoy_header = not msg.disable_x_envoy_ratelimited_header
        code = msg.rate_limited_status.code if msg.HasField("rate_limited_status") else 0
        self.limited_status = code if code >= 400 else 429
        code = msg.status_on_error.code if msg.HasField("status_on_error") else 0
        self.status_on_error = code if code >= 400 else 500
        self.filter_enabled = _fraction(msg, "filter_enabled", "ratelimit.http_filter_enabled")
        self.filter_enforced = _fraction(msg, "filter_enforced",
                                         "ratelimit.http_filter_enforcing")
        self.limited_headers = HeaderMutation(msg.response_headers_to_add, (), path,
                                              "response_headers_to_add", "")
        self.store = ctx.worker.stats if ctx is not None else None
        self.node_cluster = ""
        self.client = None
        if ctx is not None:
            node = getattr(ctx.worker, "node", None)
            self.node_cluster = node.cluster if node is not None else ""
            from proxyd.upstream.grpc_client import GrpcClient
            self.client = GrpcClient.from_config(gs, ctx.cluster_manager, self.timeout)
            self.client.timeout = self.timeout   # the filter's timeout is the call's
        self._cluster_stats: dict = {}

    def cluster_stats(self, name: str) -> dict:
        s = self._cluster_stats.get(name)
        if s is None:
            if len(self._cluster_stats) > 1024:
                self._cluster_stats.clear()
            c = self.store.counter
            s = self._cluster_stats[name] = {n: c("cluster.%s.ratelimit.%s" % (name, n))
                                             for n in COUNTERS}
        return s


def _fraction(msg, field: str, fallback_key: str):
    """(runtime key, numerator, denominator) of a RuntimeFractionalPercent field, or the
    runtime key Envoy falls back to (100 % by default) when it is unset."""
    if not msg.HasField(field):
        return (fallback_key, 100, 100)
    f = getattr(msg, field)
    d = f.default_value
    return (f.runtime_key, d.numerator, {0: 100, 1: 10000, 2: 1000000}.get(d.denominator, 100))


def _on(runtime, fraction) -> bool:
    return runtime.fractional_percent_enabled(*fraction)


class PerRoute:
    __slots__ = ("vh_option", "domain")

    def __init__(self, msg):
        self.vh_option = msg.vh_rate_limits
        self.domain = msg.domain


class RateLimitFilter(StreamFilter):
    def __init__(self, cfg: RateLimitConfig):
        self.cfg = cfg
        self.cluster = None
        self.response_headers = None

    def _descriptors(self, route, head, per_route) -> tuple[list, int]:
        limits = route.rate_limits
        stage = self.cfg.stage
        policies = [p for p in limits.route if p.stage == stage]
        option = VH_INCLUDE if limits.include_vh else (
            per_route.vh_option if per_route is not None else VH_OVERRIDE)
        if option == VH_INCLUDE or (option == VH_OVERRIDE and not limits.route):
            policies += [p for p in limits.vhost if p.stage == stage]
        out = []
        ip = (self.decoder_callbacks.stream_info.downstream_remote_address or "").rpartition(":")[0]
        ip = ip.strip("[]")
        for p in policies:
            d = p.descriptor(head, ip, self.cluster or "", self.cfg.node_cluster)
            if d is not None:   # hits_addend is not sent: Envoy 1.40 sends none either
                out.append(d)
        return out, 0

    def decode_headers(self, headers, end_stream: bool):
        cb = self.decoder_callbacks
        cfg = self.cfg
        route = cb.route()
        if route is None or route.kind != "cluster" or route.rate_limits is rl.NONE:
            return FilterHeadersStatus.CONTINUE
        if not _on(cb.runtime, cfg.filter_enabled):
            return FilterHeadersStatus.CONTINUE
        if cfg.request_type != "both":
            internal = headers.headers.get("x-envoy-internal") == "true"
            if internal != (cfg.request_type == "internal"):
                return FilterHeadersStatus.CONTINUE
        self.cluster = route.cluster_for(headers)
        per_route = cb.per_route_config()
        descriptors, hits = self._descriptors(route, headers, per_route)
        if not descriptors:
            return FilterHeadersStatus.CONTINUE
        self.head = headers
        domain = per_route.domain if per_route is not None and per_route.domain else cfg.domain
        client = cfg.client
        cb.run_blocking(lambda: should_rate_limit(client, domain, descriptors, hits), self._done)
        return FilterHeadersStatus.STOP_ALL_ITERATION_AND_WATERMARK

    def _done(self, dec, err) -> None:
        cfg = self.cfg
        cb = self.decoder_callbacks
        if err is not None:
            _log.error("rate limit call raised", error=repr(err), exc_info=err)
            dec = Decision(ERROR, repr(err))
        stats = cfg.cluster_stats(self.cluster)
        if dec.code == ERROR:
            stats["error"].inc()
            if cfg.failure_mode_deny:
                cb.stream_info.response_flags.append("RLSE")
                cb.send_local_reply(cfg.status_on_error, b"", "rate_limiter_error")
                return
            stats["failure_mode_allowed"].inc()
            cb.continue_decoding()
            return
        extra = list(dec.response_headers)
        if cfg.x_headers:
            extra += x_ratelimit_headers(dec.statuses)
        if dec.code == OVER_LIMIT:
            stats["over_limit"].inc()
            if _on(cb.runtime, cfg.filter_enforced):
                status = cfg.limited_status
                c = cfg.store.counter
                p = "cluster.%s." % self.cluster
                c("%supstream_rq_%d" % (p, status)).inc()
                c("%supstream_rq_%dxx" % (p, status // 100)).inc()
                c(p + "upstream_rq_completed").inc()
                if cfg.x_envoy_header:
                    extra.append(("x-envoy-ratelimited", "true"))
                if cfg.limited_headers:
                    h = Headers(extra)
                    cfg.limited_headers.apply(h, cb.stream_info)
                    extra = h.items
                cb.stream_info.response_flags.append("RL")
                cb.send_local_reply(status, dec.body, "request_rate_limited", extra,
                                    RESOURCE_EXHAUSTED if cfg.as_resource_exhausted else None)
                return
        else:
            stats["ok"].inc()
        for k, v in dec.request_headers:
            self.head.add(k, v)
        if extra:
            self.response_headers = extra
        cb.continue_decoding()

    def encode_headers(self, headers, end_stream: bool):
        if self.response_headers:
            for k, v in self.response_headers:
                headers.add(k, v)
        return FilterHeadersStatus.CONTINUE


class RateLimitFactory:
    def __init__(self, cfg: RateLimitConfig):
        self.cfg = cfg

    def __call__(self, chain) -> None:
        chain.add_stream_filter(RateLimitFilter(self.cfg))


def create(msg, ctx) -> RateLimitFactory:
    return RateLimitFactory(RateLimitConfig(msg, ctx, ctx.filter_name))


def create_route_config(msg, factory) -> PerRoute:
    if msg.rate_limits:
        raise ValueError("typed_per_filter_config.rate_limits: per-route rate_limits are not "
                         "supported by proxyd (use the route's rate_limits)")
    return PerRoute(msg)
