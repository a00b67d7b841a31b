"""The HTTP connection manager's side of tracing, as Envoy's ConnectionManagerImpl and
HttpTracerUtility do it, shared by every tracer (the drivers: zipkin.py, opentelemetry.py).

- The decision (Envoy's mutateTracingRequestHeader): the x-request-id UUID carries the
  trace reason in its 15th character ('9' sampled, 'a' forced, 'b' client, else not
  traced), so a decision made at the edge survives the hops behind it. A request not yet
  traced is traced when it has x-client-trace-id and `tracing.client_enabled`
  (client_sampling) says so, else when it has x-envoy-force-trace and is internal, else
  when `tracing.random_sampling` (random_sampling) says so for the request id's first
  eight hex digits modulo 10000; then `tracing.global_enabled` (overall_sampling) can
  take it back. An x-request-id that is not a UUID is never traced. Each request counts
  one of `http.<stat_prefix>.tracing.{random_sampling,service_forced,client_enabled,
  not_traceable,health_check}`.
- custom_tags (literal, environment, request_header, metadata) and max_path_tag_length
  (default 256: the path part of `http.url` is cut there), verbose and spawn_upstream_span
  are read here and handed to the driver; `operation` (a substitution format) renames the
  HCM span when it ends, `upstream_operation` the upstream spans.
"""
from __future__ import annotations

import os
import random

from proxyd import registry

NOT_TRACEABLE = "not_traceable"
SAMPLING = "random_sampling"
SERVICE_FORCED = "service_forced"
CLIENT_FORCED = "client_enabled"
HEALTH_CHECK = "health_check"
REASONS = (SAMPLING, SERVICE_FORCED, CLIENT_FORCED, NOT_TRACEABLE, HEALTH_CHECK)

_TRACE_BYTE = 14
_CHAR_REASON = {"9": SAMPLING, "a": SERVICE_FORCED, "b": CLIENT_FORCED}
_REASON_CHAR = {SAMPLING: "9", SERVICE_FORCED: "a", CLIENT_FORCED: "b", NOT_TRACEABLE: "4"}
DEFAULT_MAX_PATH_TAG_LENGTH = 256


def trace_reason(rid: str | None) -> str:
    if rid is None or len(rid) != 36:
        return NOT_TRACEABLE
    return _CHAR_REASON.get(rid[_TRACE_BYTE], NOT_TRACEABLE)


def _with_reason(rid: str, reason: str) -> str:
    if len(rid) != 36:
        return rid
    return rid[:_TRACE_BYTE] + _REASON_CHAR[reason] + rid[_TRACE_BYTE + 1:]


def _rid_integer(rid: str | None) -> int | None:
    if rid is None or len(rid) < 8:
        return None
    try:
        return int(rid[:8], 16)
    except ValueError:
        return None


def _ten_thousandths(tracing, field: str) -> int:
    """A Percent as Envoy keeps it: a FractionalPercent over TEN_THOUSAND."""
    return round(getattr(tracing, field).value * 100) if tracing.HasField(field) else 10000


class _NoRuntime:
    @staticmethod
    def fractional_percent_enabled(key, numerator, denominator=100, random_value=None):
        if random_value is None:
            random_value = random.getrandbits(64)
        return random_value % denominator < numerator


def build_url(req, max_path: int) -> str:
    path = req.path
    if len(path) > max_path:
        path = path[:max_path]
    return f"{req.scheme}://{req.authority}{path}"


class CustomTag:
    """One HCM custom_tags entry; `value(info)` is None when the tag is not set."""

    def __init__(self, cfg):
        self.tag = cfg.tag
        kind = cfg.WhichOneof("type")
        if kind is None:
            raise ValueError(f"custom_tags[{cfg.tag}]: one of literal, environment, "
                             "request_header, metadata is required")
        self.kind = kind
        if kind == "literal":
            self.fixed = cfg.literal.value
        elif kind == "environment":
            # read once, at config load, as Envoy
            self.fixed = os.environ.get(cfg.environment.name, cfg.environment.default_value)
            if not self.fixed:
                self.fixed = None
        elif kind == "request_header":
            self.name = cfg.request_header.name.lower()
            self.default = cfg.request_header.default_value or None
        elif kind == "metadata":
            md = cfg.metadata
            mk = md.kind.WhichOneof("kind") or "request"
            if mk != "request":
                raise ValueError(f"custom_tags[{cfg.tag}].metadata.kind: only request "
                                 "(dynamic metadata) is supported by proxyd")
            self.namespace = md.metadata_key.key
            self.path = [p.key for p in md.metadata_key.path]
            if not self.path:
                raise ValueError(f"custom_tags[{cfg.tag}].metadata.metadata_key.path: "
                                 "at least one key is required")
            self.default = md.default_value or None
        else:
            raise ValueError(f"custom_tags[{cfg.tag}].{kind}: not supported by proxyd")

    def value(self, info) -> str | None:
        kind = self.kind
        if kind in ("literal", "environment"):
            return self.fixed
        if kind == "request_header":
            req = info.request
            v = req.headers.get(self.name) if req is not None else None
            return v if v is not None else self.default
        d = (info._dynamic_metadata or {}).get(self.namespace)
        for key in self.path:
            if not isinstance(d, dict) or key not in d:
                return self.default
            d = d[key]
        if d is None:
            return self.default
        if isinstance(d, bool):
            return "true" if d else "false"
        if isinstance(d, float) and d.is_integer():
            return str(int(d))
        if isinstance(d, (dict, list)):
            import orjson
            return orjson.dumps(d).decode()
        return str(d)


class HcmTracer:
    """What the HCM holds as `hcm.tracer`: decides per request and drives the tracer."""

    def __init__(self, hcm_tracing, driver, ctx, stat_prefix: str = "", hcm=None):
        self.driver = driver
        self.hcm = hcm
        self.ctx = ctx
        self.random_sampling = _ten_thousandths(hcm_tracing, "random_sampling")
        self.client_sampling = _ten_thousandths(hcm_tracing, "client_sampling")
        self.overall_sampling = _ten_thousandths(hcm_tracing, "overall_sampling")
        self.max_path_tag_length = (hcm_tracing.max_path_tag_length.value
                                    if hcm_tracing.HasField("max_path_tag_length")
                                    else DEFAULT_MAX_PATH_TAG_LENGTH)
        self.verbose = hcm_tracing.verbose
        self.spawn_upstream_span = (hcm_tracing.spawn_upstream_span.value
                                    if hcm_tracing.HasField("spawn_upstream_span") else False)
        self.custom_tags = [CustomTag(t) for t in hcm_tracing.custom_tags]
        # operation / upstream_operation: substitution formats naming the spans at finish
        from proxyd.observability.access_log.formatter import compile_text
        self.operation = (compile_text(hcm_tracing.operation).format
                          if hcm_tracing.operation else None)
        self.upstream_operation = (compile_text(hcm_tracing.upstream_operation).format
                                   if hcm_tracing.upstream_operation else None)
        stats = ctx.stats
        self.counters = {r: stats.counter(f"http.{stat_prefix}.tracing.{r}") for r in REASONS}
        driver.configure(self)

    @property
    def runtime(self):
        return getattr(self.ctx, "runtime", None) or _NoRuntime

    def decide(self, info, req) -> bool:
        """Envoy's mutateTracingRequestHeader + shouldTraceRequest: True when traced;
        rewrites x-request-id's trace character."""
        headers = req.headers
        if info.is_health_check:
            self.counters[HEALTH_CHECK].inc()
            return False
        rid = headers.get("x-request-id")
        result = _rid_integer(rid)
        if result is not None:
            result %= 10000
            rt = self.runtime
            reason = trace_reason(rid)
            new = reason
            if reason == NOT_TRACEABLE:
                if ("x-client-trace-id" in headers and rt.fractional_percent_enabled(
                        "tracing.client_enabled", self.client_sampling, 10000)):
                    new = CLIENT_FORCED
                elif "x-envoy-force-trace" in headers and self._internal(req, info):
                    new = SERVICE_FORCED
                elif rt.fractional_percent_enabled("tracing.random_sampling",
                                                   self.random_sampling, 10000, result):
                    new = SAMPLING
            if not rt.fractional_percent_enabled("tracing.global_enabled",
                                                 self.overall_sampling, 10000, result):
                new = NOT_TRACEABLE
            if new != reason:
                rid = _with_reason(rid, new)
                headers.set("x-request-id", rid)
                if info.request_id is not None:
                    info.request_id = rid
        reason = trace_reason(rid)
        self.counters[reason].inc()
        return reason != NOT_TRACEABLE

    def _internal(self, req, info) -> bool:
        hcm = self.hcm
        if hcm is None:
            return True
        addr = info.downstream_remote_address or ""
        ip = addr[1:].partition("]")[0] if addr.startswith("[") else addr.rpartition(":")[0]
        return hcm.is_internal(req, ip or addr)

    # -- the three calls the HCM and the router make ---------------------------------
    def start(self, info, req):
        return self.driver.start(info, req, self.decide(info, req))

    def inject(self, span, headers) -> None:
        self.driver.inject(span, headers)

    def finish(self, span, info) -> None:
        tags = []
        for t in self.custom_tags:
            v = t.value(info)
            if v is not None:
                tags.append((t.tag, v))
        if self.operation is not None:
            span.name = self.operation(info)
        self.driver.finish(span, info, tags)


def build_tracer(hcm_tracing, ctx, stat_prefix: str = "", hcm=None) -> HcmTracer | None:
    """From HttpConnectionManager.tracing; None when no provider is configured."""
    if hcm_tracing is None or not hcm_tracing.HasField("provider"):
        return None
    provider = hcm_tracing.provider
    if not provider.HasField("typed_config"):
        raise ValueError("tracing.provider.typed_config: required")
    from proxyd.config import unpack
    type_url = provider.typed_config.type_url
    if not registry.known(type_url):
        raise ValueError(f"tracing.provider: unsupported tracer {type_url}")
    msg = unpack(provider.typed_config)
    module = registry.factory(msg.DESCRIPTOR.full_name)
    try:
        driver = module.create(msg, ctx, hcm_tracing)
        return HcmTracer(hcm_tracing, driver, ctx, stat_prefix, hcm)
    except ValueError as e:
        raise ValueError(f"tracing.provider.typed_config.{e}") from None
