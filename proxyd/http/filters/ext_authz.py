"""envoy.filters.http.ext_authz: ask an external service whether a request may go on.

Two service modes, as Envoy's:
- gRPC (`grpc_service`): `envoy.service.auth.v3.Authorization/Check` with a CheckRequest
  (AttributeContext: peers, the request head as a header map, optionally the body,
  context_extensions, metadata_context) over the internal gRPC client
  (`proxyd/upstream/grpc_client.py`: the cluster's HTTP/2 pool, TLS and stats);
- raw HTTP (`http_service`): the request head (Method, Path with `path_prefix`, Host,
  Authorization and the allowed headers, Content-Length 0 unless the body is sent) to
  `server_uri.cluster` through the async HTTP client; 200 allows, a 5xx is an error, any
  other status denies with that status, the service's (allowed) headers and body.

The check runs in a helper greenlet (`run_blocking`) while the chain stops
(StopAllIterationAndWatermark, or StopIteration while `with_request_body` buffers it);
its answer resumes the chain in the stream's greenlet:
- OK: request header mutations (set / add / append / remove; `:`-headers and Host are
  never removed), response headers for the client, dynamic metadata under
  `envoy.filters.http.ext_authz`, `clear_route_cache`;
- denied: the service's status (403 by default), headers and body, flag UAEX, details
  `ext_authz_denied`; the status is charged to the route's cluster (`upstream_rq_<code>`);
- error (timeout, no host, reset, 5xx from an HTTP service): `status_on_error` (403) with
  flag UAEX and details `ext_authz_error`, unless `failure_mode_allow` lets it through
  (`failure_mode_allow_header_add` then adds `x-envoy-auth-failure-mode-allowed: true`).
Stats, both `http.<hcm>.ext_authz.[<stat_prefix>.]<name>` and
`cluster.<route cluster>.ext_authz.<name>`: ok, denied, error, failure_mode_allowed,
disabled (the HCM scope only). A request without a route is not checked; per route,
`ExtAuthzPerRoute.disabled` skips the check, `check_settings` adds context_extensions
(merged from the least to the most specific level) and may turn body buffering off.
"""
from __future__ import annotations

import time
from urllib.parse import quote

from google.protobuf import json_format
from google.protobuf.timestamp_pb2 import Timestamp

from proxyd.http.filter import FilterDataStatus, FilterHeadersStatus, StreamFilter
from proxyd.observability.logging import get_logger
from proxyd.router.matchers import string_matcher

_log = get_logger("http.ext_authz")
NAMESPACE = "envoy.filters.http.ext_authz"
CHECK_METHOD = "/envoy.service.auth.v3.Authorization/Check"
FLAG = "UAEX"
DENIED_DETAILS = "ext_authz_denied"
ERROR_DETAILS = "ext_authz_error"
DEFAULT_TIMEOUT = 0.2
FAILURE_MODE_HEADER = "x-envoy-auth-failure-mode-allowed"
PARTIAL_BODY_HEADER = "x-envoy-auth-partial-body"
HEADERS_TO_REMOVE = "x-envoy-auth-headers-to-remove"
COUNTERS = ("ok", "denied", "error", "failure_mode_allowed", "disabled")
CLUSTER_COUNTERS = ("ok", "denied", "error", "failure_mode_allowed")
_DENOMINATORS = {0: 100, 1: 10000, 2: 1000000}
_UNREMOVABLE = frozenset((":method", ":path", ":authority", ":scheme", ":status", "host"))
# the headers of an HTTP service's answer that never reach the client or the upstream
_HTTP_DROPPED = frozenset(("content-length", "transfer-encoding", "connection", "date",
                           "x-envoy-upstream-service-time", "server", ":status", "host"))
OK, DENIED, ERROR = 0, 1, 2
# HeaderValueOption.HeaderAppendAction
APPEND_IF_EXISTS_OR_ADD, ADD_IF_ABSENT, OVERWRITE_IF_EXISTS_OR_ADD, OVERWRITE_IF_EXISTS = range(4)
_SET, _ADD, _APPEND, _ADD_IF_ABSENT, _SET_IF_EXISTS = range(5)


def _seconds(d) -> float:
    return d.seconds + d.nanos / 1e9


def _mutation_op(hvo) -> int:
    """What a HeaderValueOption from the service does. As Envoy 1.40 reads them here: the
    deprecated `append` decides when set (true appends to an existing value with a comma,
    false overwrites); without it `append_action` does, its default overwriting."""
    if hvo.HasField("append"):
        return _APPEND if hvo.append.value else _SET
    action = hvo.append_action
    if action == ADD_IF_ABSENT:
        return _ADD_IF_ABSENT
    if action == OVERWRITE_IF_EXISTS:
        return _SET_IF_EXISTS
    # APPEND_IF_EXISTS_OR_ADD is also the unset value: overwrite, as an unset `append`
    return _SET


def apply_mutation(headers, op: int, key: str, value: str) -> None:
    """One header mutation on a RequestHead / ResponseHead / Headers (`headers.set` etc.)."""
    if op == _SET:
        headers.set(key, value)
    elif op == _ADD:
        headers.add(key, value)
    elif op == _APPEND:
        cur = headers.get(key)
        if cur is None:
            headers.add(key, value)
        else:
            headers.set(key, cur + "," + value)
    elif op == _ADD_IF_ABSENT:
        if headers.get(key) is None:
            headers.add(key, value)
    elif headers.get(key) is not None:   # _SET_IF_EXISTS
        headers.set(key, value)


class Result:
    """A check's outcome, whichever the service mode (Envoy's ExtAuthz::Response)."""
    __slots__ = ("status", "code", "body", "request_mutations", "remove", "response_headers",
                 "local_headers", "metadata", "reason")

    def __init__(self, status: int, code: int = 0, body: bytes = b"", reason: str = ""):
        self.status = status
        self.code = code
        self.body = body
        self.request_mutations: list = []    # (op, key, value) for the upstream request
        self.remove: list = []               # header names to remove from the request
        self.response_headers: list = []     # (op, key, value) for the client's response
        self.local_headers: list = []        # (key, value) of a denied response
        self.metadata: dict | None = None
        self.reason = reason


def result_from_grpc(resp) -> Result:
    """A CheckResponse, as Envoy's GrpcClientImpl::onSuccess reads it."""
    if resp.status.code == 0:
        r = Result(OK)
        if resp.HasField("ok_response"):
            ok = resp.ok_response
            r.request_mutations = [(_mutation_op(h), h.header.key.lower(), h.header.value)
                                   for h in ok.headers]
            r.response_headers = [(_mutation_op(h), h.header.key.lower(), h.header.value)
                                  for h in ok.response_headers_to_add]
            r.remove = [n.lower() for n in ok.headers_to_remove]
    elif resp.HasField("error_response"):
        er = resp.error_response
        r = Result(ERROR, er.status.code, er.body.encode(), "error_response")
        r.local_headers = [(h.header.key.lower(), h.header.value) for h in er.headers]
    else:
        r = Result(DENIED, 403)
        if resp.HasField("denied_response"):
            d = resp.denied_response
            if d.status.code:
                r.code = d.status.code
            r.body = d.body.encode()
            r.local_headers = [(h.header.key.lower(), h.header.value) for h in d.headers]
    md = (resp.ok_response.dynamic_metadata
          if resp.HasField("ok_response") and resp.ok_response.HasField("dynamic_metadata")
          else resp.dynamic_metadata if resp.HasField("dynamic_metadata") else None)
    if md is not None and md.fields:
        r.metadata = json_format.MessageToDict(md)
    return r


def _list_matcher(msg, path: str):
    """A ListStringMatcher as `f(name) -> bool` (None when it has no patterns)."""
    if not msg.patterns:
        return None
    fns = [string_matcher(p, "%s.patterns[%d]" % (path, i)) for i, p in enumerate(msg.patterns)]
    return lambda v: any(f(v) for f in fns)


class _Fraction:
    __slots__ = ("key", "numerator", "denominator")

    def __init__(self, msg):
        d = msg.default_value
        self.key = msg.runtime_key
        self.numerator = d.numerator
        self.denominator = _DENOMINATORS.get(d.denominator, 100)

    def enabled(self, runtime) -> bool:
        return runtime.fractional_percent_enabled(self.key, self.numerator, self.denominator)


class HttpService:
    """The raw HTTP mode's request and response rules (Envoy's RawHttpClientImpl)."""

    def __init__(self, msg, top_allowed, path: str):
        uri = msg.server_uri
        if not uri.cluster:
            raise ValueError(f"{path}.server_uri.cluster: value length must be at least 1 characters")
        self.cluster = uri.cluster
        self.timeout = _seconds(uri.timeout) if uri.HasField("timeout") else DEFAULT_TIMEOUT
        self.path_prefix = msg.path_prefix
        req = msg.authorization_request
        allowed = top_allowed
        if allowed is None:
            allowed = _list_matcher(req.allowed_headers,
                                    path + ".authorization_request.allowed_headers")
        self.allowed = allowed
        self.headers_to_add = [(h.key.lower(), h.value) for h in req.headers_to_add]
        rp = path + ".authorization_response"
        resp = msg.authorization_response
        self.upstream = _list_matcher(resp.allowed_upstream_headers,
                                      rp + ".allowed_upstream_headers")
        self.upstream_append = _list_matcher(resp.allowed_upstream_headers_to_append,
                                             rp + ".allowed_upstream_headers_to_append")
        self.client = _list_matcher(resp.allowed_client_headers, rp + ".allowed_client_headers")
        self.client_on_success = _list_matcher(resp.allowed_client_headers_on_success,
                                               rp + ".allowed_client_headers_on_success")
        self.metadata_from = _list_matcher(resp.dynamic_metadata_from_headers,
                                           rp + ".dynamic_metadata_from_headers")

    def request(self, head, body: bytes | None, partial: bool | None):
        """(method, path, headers, body) of the authorization request."""
        allowed = self.allowed
        out = [("authorization", v) for v in head.headers.get_all("authorization")]
        for k, v in head.headers.items:
            if k in ("host", "authorization", "content-length", "transfer-encoding"):
                continue
            if allowed is not None and allowed(k):
                out.append((k, v))
        if partial is not None:
            out.append((PARTIAL_BODY_HEADER, "true" if partial else "false"))
        for k, v in self.headers_to_add:
            out = [kv for kv in out if kv[0] != k]
            out.append((k, v))
        return head.method, self.path_prefix + head.path, out, body or b""

    def result(self, resp) -> Result:
        status = resp.status
        if status >= 500:
            return Result(ERROR, reason="authorization server answered %d" % status)
        items = [(k, v) for k, v in resp.headers.items if k not in _HTTP_DROPPED]
        if status == 200:
            r = Result(OK)
            for k, v in items:
                if k == HEADERS_TO_REMOVE:
                    r.remove.extend(n.strip().lower() for n in v.split(",") if n.strip())
                    continue
                if self.upstream is not None and self.upstream(k):
                    r.request_mutations.append((_SET, k, v))
                if self.upstream_append is not None and self.upstream_append(k):
                    r.request_mutations.append((_APPEND, k, v))
                if self.client_on_success is not None and self.client_on_success(k):
                    r.response_headers.append((_ADD, k, v))
            if self.metadata_from is not None:
                md = {k: v for k, v in items if self.metadata_from(k)}
                r.metadata = md or None
            return r
        r = Result(DENIED, status, resp.body)
        client = self.client
        r.local_headers = [(k, v) for k, v in items
                           if k != HEADERS_TO_REMOVE and (client is None or client(k))]
        return r


class ExtAuthzConfig:
    def __init__(self, msg, ctx, path: str = "ext_authz"):
        self.store = ctx.worker.stats if ctx is not None else None
        self.cluster_manager = ctx.cluster_manager if ctx is not None else None
        which = msg.WhichOneof("services")
        if which is None:
            raise ValueError(f"{path}: one of grpc_service or http_service is required")
        self.allowed = _list_matcher(msg.allowed_headers, path + ".allowed_headers")
        self.disallowed = _list_matcher(msg.disallowed_headers, path + ".disallowed_headers")
        self.grpc = None
        self.http = None
        if which == "grpc_service":
            gs = msg.grpc_service
            if gs.WhichOneof("target_specifier") != "envoy_grpc":
                raise ValueError(f"{path}.grpc_service: only envoy_grpc is supported by proxyd")
            self.grpc_service = gs
            self.timeout = _seconds(gs.timeout) if gs.HasField("timeout") else DEFAULT_TIMEOUT
            if self.cluster_manager is not None:
                from proxyd.upstream.grpc_client import GrpcClient
                self.grpc = GrpcClient.from_config(gs, self.cluster_manager, DEFAULT_TIMEOUT)
        else:
            self.http = HttpService(msg.http_service, self.allowed, path + ".http_service")
            self.timeout = self.http.timeout
            if self.cluster_manager is not None:
                from proxyd.upstream.async_client import AsyncClient
                self.http_client = AsyncClient(self.cluster_manager)
        self.failure_mode_allow = msg.failure_mode_allow
        self.failure_mode_allow_header_add = msg.failure_mode_allow_header_add
        code = msg.status_on_error.code if msg.HasField("status_on_error") else 0
        self.status_on_error = code if code else 403
        self.with_body = msg.HasField("with_request_body")
        wb = msg.with_request_body
        self.max_request_bytes = wb.max_request_bytes
        self.allow_partial = wb.allow_partial_message
        self.pack_as_bytes = wb.pack_as_bytes
        if self.with_body and not wb.max_request_bytes:
            raise ValueError(f"{path}.with_request_body.max_request_bytes: value must be greater than 0")
        self.clear_route_cache = msg.clear_route_cache
        self.metadata_namespaces = tuple(msg.metadata_context_namespaces)
        self.filter_enabled = _Fraction(msg.filter_enabled) if msg.HasField("filter_enabled") else None
        self.deny_at_disable = msg.deny_at_disable if msg.HasField("deny_at_disable") else None
        prefix = "ext_authz.%s" % (msg.stat_prefix + "." if msg.stat_prefix else "")
        self.stats = ctx.scope(prefix, counters=COUNTERS) if ctx is not None else None
        self._cluster_stats: dict = {}

    def cluster_stats(self, name: str):
        s = self._cluster_stats.get(name)
        if s is None:
            if len(self._cluster_stats) > 1024:
                self._cluster_stats.clear()
            c = self.store.counter
            s = self._cluster_stats[name] = {
                n: c("cluster.%s.ext_authz.%s" % (name, n)) for n in CLUSTER_COUNTERS}
        return s

    def denied_at_disable(self, runtime) -> bool:
        d = self.deny_at_disable
        if d is None:
            return False
        default = d.default_value.value
        return runtime.get_bool(d.runtime_key, default) if d.runtime_key else default


class PerRoute:
    __slots__ = ("disabled", "context_extensions", "skip_body")

    def __init__(self, msg):
        self.disabled = msg.disabled
        cs = msg.check_settings
        self.context_extensions = dict(cs.context_extensions)
        self.skip_body = cs.disable_request_body_buffering


def _peer(address: str, msg) -> None:
    if not address:
        return
    host, _, port = address.rpartition(":")
    sa = msg.address.socket_address
    sa.address = host.strip("[]")
    if port.isdigit():
        sa.port_value = int(port)


def check_request(cfg, cb, head, body, partial, context_extensions):
    """The CheckRequest for a request (Envoy's CheckRequestUtils::createHttpCheck)."""
    from envoy.service.auth.v3.external_auth_pb2 import CheckRequest
    req = CheckRequest()
    attrs = req.attributes
    info = cb.stream_info
    _peer(info.downstream_remote_address, attrs.source)
    _peer(info.downstream_local_address, attrs.destination)
    ts = Timestamp()
    ts.FromNanoseconds(int(getattr(info, "start_time", time.time()) * 1e9))
    attrs.request.time.CopyFrom(ts)
    http = attrs.request.http
    http.id = head.headers.get("x-request-id") or str(info.connection_id)
    http.method = head.method
    http.path = head.path
    http.host = head.authority or head.headers.get("host") or ""
    http.scheme = head.scheme or "http"
    http.protocol = "HTTP/2" if head.version == "HTTP/2" else head.version
    cl = head.headers.get("content-length")
    http.size = int(cl) if cl and cl.isdigit() else (len(body) if body else -1)
    allowed, disallowed = cfg.allowed, cfg.disallowed
    hdrs = http.headers
    pseudo = ((":authority", http.host), (":method", head.method), (":path", head.path),
              (":scheme", http.scheme))
    for k, v in pseudo + tuple(head.headers.items):
        if k == "host":
            continue
        if (allowed is not None and not allowed(k)) or (disallowed is not None and disallowed(k)):
            continue
        hdrs[k] = hdrs[k] + "," + v if k in hdrs else v
    if partial is not None:
        hdrs[PARTIAL_BODY_HEADER] = "true" if partial else "false"
    if body:
        if cfg.pack_as_bytes:
            http.raw_body = body
        else:
            http.body = body.decode("utf-8", "replace")
    for k, v in context_extensions.items():
        attrs.context_extensions[k] = v
    md = info._dynamic_metadata
    if md and cfg.metadata_namespaces:
        for ns in cfg.metadata_namespaces:
            if ns in md:
                json_format.ParseDict(md[ns], attrs.metadata_context.filter_metadata[ns])
    return req


def run_check(cfg, cb, head, body, partial, context_extensions) -> Result:
    """One check, blocking the calling (helper) greenlet."""
    if cfg.grpc is not None:
        from envoy.service.auth.v3.external_auth_pb2 import CheckResponse
        from proxyd.upstream.grpc_client import GrpcError
        try:
            resp = cfg.grpc.unary(CHECK_METHOD, check_request(cfg, cb, head, body, partial,
                                                              context_extensions), CheckResponse)
        except GrpcError as e:
            return Result(ERROR, reason=str(e))
        return result_from_grpc(resp)
    from proxyd.upstream.async_client import AsyncClientError
    svc = cfg.http
    method, path, headers, data = svc.request(head, body, partial)
    try:
        resp = cfg.http_client.send(svc.cluster, method, path, headers, data, svc.timeout,
                                    head.authority or head.headers.get("host"))
    except AsyncClientError as e:
        return Result(ERROR, reason=str(e))
    return svc.result(resp)


class ExtAuthzFilter(StreamFilter):
    def __init__(self, cfg: ExtAuthzConfig):
        self.cfg = cfg
        self.head = None
        self.buffering = False
        self.calling = False
        self.cluster = None
        self.response_headers = None

    def _per_route(self):
        cb = self.decoder_callbacks
        levels = cb.per_route_configs()
        if not levels:
            return False, False, {}
        most = levels[-1]
        ext = {}
        for lvl in levels:
            if lvl is not None:
                ext.update(lvl.context_extensions)
        return most.disabled, most.skip_body, ext

    def decode_headers(self, headers, end_stream: bool):
        cb = self.decoder_callbacks
        cfg = self.cfg
        route = cb.route()
        if route is None:
            return FilterHeadersStatus.CONTINUE
        disabled, skip_body, self.context_extensions = self._per_route()
        if disabled:
            return FilterHeadersStatus.CONTINUE
        if cfg.filter_enabled is not None and not cfg.filter_enabled.enabled(cb.runtime):
            cfg.stats.disabled.inc()
            if cfg.denied_at_disable(cb.runtime):
                cb.stream_info.response_flags.append(FLAG)
                cb.send_local_reply(cfg.status_on_error, b"", ERROR_DETAILS)
                return FilterHeadersStatus.STOP_ITERATION
            return FilterHeadersStatus.CONTINUE
        self.head = headers
        if route.kind == "cluster":
            self.cluster = route.cluster_for(headers)
        if cfg.with_body and not skip_body and not end_stream and not _is_upgrade(headers):
            self.buffering = True
            if not cfg.allow_partial:
                cb.set_buffer_limit(cfg.max_request_bytes)
            return FilterHeadersStatus.STOP_ITERATION
        self._call(None, None)
        return FilterHeadersStatus.STOP_ALL_ITERATION_AND_WATERMARK

    def decode_data(self, data, end_stream: bool):
        if not self.buffering:
            return FilterDataStatus.CONTINUE
        if self.calling:
            return FilterDataStatus.STOP_ITERATION_AND_BUFFER
        cb = self.decoder_callbacks
        cfg = self.cfg
        buf = cb.decoding_buffer()
        have = (len(buf) if buf else 0) + len(data)
        full = cfg.allow_partial and have >= cfg.max_request_bytes
        if end_stream or full:
            body = bytes(buf or b"") + bytes(data)
            partial = False
            if cfg.allow_partial and len(body) > cfg.max_request_bytes:
                body = body[:cfg.max_request_bytes]
                partial = True
            elif full and not end_stream:
                partial = True
            self._call(body, partial)
        return FilterDataStatus.STOP_ITERATION_AND_BUFFER

    def decode_trailers(self, trailers):
        from proxyd.http.filter import FilterTrailersStatus
        if self.buffering and not self.calling:
            buf = self.decoder_callbacks.decoding_buffer()
            self._call(bytes(buf or b""), False)
        return (FilterTrailersStatus.STOP_ITERATION if self.calling
                else FilterTrailersStatus.CONTINUE)

    def _call(self, body, partial) -> None:
        self.calling = True
        cfg, cb, head, ext = self.cfg, self.decoder_callbacks, self.head, self.context_extensions
        cb.run_blocking(lambda: run_check(cfg, cb, head, body, partial, ext), self._done)

    def _done(self, result, err) -> None:
        cfg = self.cfg
        cb = self.decoder_callbacks
        self.buffering = False
        if err is not None:
            _log.error("ext_authz check raised", error=repr(err), exc_info=err)
            result = Result(ERROR, reason=repr(err))
        cstats = cfg.cluster_stats(self.cluster) if self.cluster else None
        if result.metadata:
            cb.stream_info.set_dynamic_metadata(NAMESPACE, result.metadata)
        if result.status == OK:
            head = self.head
            changed = bool(result.request_mutations or result.remove)
            for op, k, v in result.request_mutations:
                apply_mutation(head, op, k, v)
            for k in result.remove:
                if k not in _UNREMOVABLE:
                    head.headers.remove(k)
            if result.response_headers:
                self.response_headers = result.response_headers
            if changed and cfg.clear_route_cache:
                cb.clear_route_cache()
            if cstats:
                cstats["ok"].inc()
            cfg.stats.ok.inc()
            cb.continue_decoding()
            return
        if result.status == DENIED:
            cfg.stats.denied.inc()
            if cstats:
                cstats["denied"].inc()
                _charge(cfg, self.cluster, result.code)
            cb.stream_info.response_flags.append(FLAG)
            cb.send_local_reply(result.code, result.body, DENIED_DETAILS,
                                _local_headers(result.local_headers))
            return
        if cstats:
            cstats["error"].inc()
        cfg.stats.error.inc()
        if cfg.failure_mode_allow:
            cfg.stats.failure_mode_allowed.inc()
            if cstats:
                cstats["failure_mode_allowed"].inc()
            if cfg.failure_mode_allow_header_add:
                self.head.headers.add(FAILURE_MODE_HEADER, "true")
            cb.continue_decoding()
            return
        cb.stream_info.response_flags.append(FLAG)
        code = result.code if result.reason == "error_response" and result.code else \
            cfg.status_on_error
        cb.send_local_reply(code, result.body if result.reason == "error_response" else b"",
                            ERROR_DETAILS, _local_headers(result.local_headers) or None)

    def encode_headers(self, headers, end_stream: bool):
        if self.response_headers:
            for op, k, v in self.response_headers:
                apply_mutation(headers, op, k, v)
        return FilterHeadersStatus.CONTINUE


def _local_headers(items) -> list:
    """A denied response's headers: the service's replace the local reply's own."""
    return [(k, v) for k, v in items if k not in ("content-length", "transfer-encoding")]


def _charge(cfg, cluster: str, code: int) -> None:
    """A denial is charged to the route's cluster as a response (Envoy's
    charge_cluster_response_stats): upstream_rq_<code>, _<N>xx, _completed."""
    c = cfg.store.counter
    p = "cluster.%s." % cluster
    c("%supstream_rq_%d" % (p, code)).inc()
    c("%supstream_rq_%dxx" % (p, code // 100)).inc()
    c(p + "upstream_rq_completed").inc()


def _is_upgrade(head) -> bool:
    return head.headers.get("upgrade") is not None or head.method == "CONNECT"


class ExtAuthzFactory:
    def __init__(self, cfg: ExtAuthzConfig):
        self.cfg = cfg

    def __call__(self, chain) -> None:
        chain.add_stream_filter(ExtAuthzFilter(self.cfg))


def create(msg, ctx) -> ExtAuthzFactory:
    return ExtAuthzFactory(ExtAuthzConfig(msg, ctx, ctx.filter_name))


def create_route_config(msg, factory) -> PerRoute:
    """ExtAuthzPerRoute (`factory` is None under `proxyd check`)."""
    cs = msg.check_settings
    if msg.HasField("check_settings") and (cs.HasField("grpc_service")
                                           or cs.HasField("http_service")
                                           or cs.HasField("with_request_body")):
        raise ValueError("typed_per_filter_config.check_settings: a per-route service or "
                         "body setting is not supported by proxyd")
    if msg.WhichOneof("override") is None:
        raise ValueError("typed_per_filter_config: ExtAuthzPerRoute needs disabled or check_settings")
    return PerRoute(msg)


def _quote(v: str) -> str:
    return quote(v, safe="")
