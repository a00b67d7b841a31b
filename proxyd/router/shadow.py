"""request_mirror_policies: a copy of a routed request to a shadow cluster, fire and forget.

Envoy's shadowing (RouteAction / VirtualHost / RouteConfiguration
`request_mirror_policies`, the most specific non-empty list wins, lists are not merged):

- each policy is applied when its `runtime_fraction` says so (no runtime_fraction:
  every request; a runtime key overrides the default value);
- the copy carries the request as the router sends it upstream (route header mutations
  and rewrites applied) with the Host / :authority suffixed `-shadow` before any port
  (`foo:8080` -> `foo-shadow:8080`), unless `disable_shadow_host_suffix_append`;
- the copy is marked `x-envoy-internal: true` and gets `192.0.2.2` appended to
  `x-forwarded-for`, as Envoy 1.40's shadows (sent through its async client) do;
- `trace_sampled` set: the copy's `x-b3-sampled` says so (unset: as the request);
- the shadow's answer is read and dropped; it never delays, fails or resets the main
  request: each copy runs in its own greenlet on the shadow cluster's own pool, bounded
  by the route timeout. The shadow cluster's usual `cluster.<name>.*` stats count it.

A request body is copied as the router reads it (up to the retry buffer limit, 1 MiB;
past it the copy is abandoned and `retry_or_shadow_abandoned` counts it, as in Envoy
before streaming shadows), and the copy leaves once the body is complete: a request
that fails before the router read all of its body sends no shadow (Envoy 1.40 streams
its shadows and would). proxyd sends shadows over HTTP/1.1 whatever the shadow
cluster's protocol options.

The router's hook is one call, `mirror(stream, route, headers)`, after it chose the
primary host (no primary cluster, no shadow: as Envoy since 1.13).
"""
from __future__ import annotations

import random
import time

import gevent

from proxyd.http.codec.http1 import DATA, END, HEAD, ProtocolError, ResponseParser, \
    encode_request_head
from proxyd.network.io import send_all
from proxyd.router.matchers import port_start
from proxyd.router.retry_policy import BUFFER_LIMIT
from proxyd.upstream.cluster import UpstreamConnectError
from proxyd.upstream.resource_manager import Overflow

_DENOMINATORS = {0: 100, 1: 10000, 2: 1000000}
ASYNC_CLIENT_ADDRESS = "192.0.2.2"  # what Envoy 1.40's shadows carry in x-forwarded-for
RECV_SIZE = 65536


class MirrorPolicy:
    __slots__ = ("cluster", "runtime_key", "numerator", "denominator", "trace_sampled",
                 "suffix")

    def __init__(self, msg, path: str):
        if not msg.cluster:
            raise ValueError(path + ".cluster: a shadow cluster name is required")
        self.cluster = msg.cluster
        self.runtime_key = ""
        self.numerator, self.denominator = 100, 100
        if msg.HasField("runtime_fraction"):
            rf = msg.runtime_fraction
            self.runtime_key = rf.runtime_key
            self.numerator = rf.default_value.numerator
            self.denominator = _DENOMINATORS.get(rf.default_value.denominator, 100)
        self.trace_sampled = msg.trace_sampled.value if msg.HasField("trace_sampled") else None
        self.suffix = not msg.disable_shadow_host_suffix_append

    def enabled(self, runtime) -> bool:
        """Envoy's featureEnabled(runtime_key, default_value)."""
        if runtime is not None and self.runtime_key:
            return runtime.fractional_percent_enabled(self.runtime_key, self.numerator,
                                                      self.denominator)
        return random.getrandbits(64) % self.denominator < self.numerator


def compile_policies(msgs, path: str) -> tuple:
    return tuple(MirrorPolicy(m, "%s.request_mirror_policies[%d]" % (path, i))
                 for i, m in enumerate(msgs))


def shadow_host(host: str) -> str:
    """Envoy's Utility::shadowAppendedHost."""
    i = port_start(host)
    return host + "-shadow" if i < 0 else host[:i] + "-shadow" + host[i:]


def mirror(stream, route, headers) -> None:
    """Start the route's shadows of this request (`headers`: what the router sends
    upstream). Returns at once."""
    policies = route.mirror_policies
    hcm = stream.hcm
    runtime = getattr(hcm, "runtime", None)
    cm = stream.ctx.cluster_manager
    req = stream.request
    todo = []
    for p in policies:
        if not p.enabled(runtime):
            continue
        cluster = cm.get(p.cluster)
        if cluster is None:
            continue
        h = headers.copy()
        h.remove("transfer-encoding")
        host = h.get("host") or req.authority or ""
        if p.suffix and host:
            h.set("host", shadow_host(host))
        # Envoy sends a shadow through its async client, whose router marks it internal
        # and appends that client's stand-in downstream address to XFF (seen on 1.40)
        xff = h.get("x-forwarded-for")
        h.set("x-forwarded-for", xff + "," + ASYNC_CLIENT_ADDRESS if xff else ASYNC_CLIENT_ADDRESS)
        h.set("x-envoy-internal", "true")
        if p.trace_sampled is not None and "x-b3-sampled" in h:
            h.set("x-b3-sampled", "1" if p.trace_sampled else "0")
        todo.append((cluster, h))
    if not todo:
        return
    timeout = route.timeout
    if not req.has_body:
        for cluster, h in todo:
            gevent.spawn(_send, cluster, req.method, req.path, h, (), timeout)
        return
    _Tee(stream, req, todo, timeout, stream.info)


class _Tee:
    """Stands in for the stream's read_body: keeps a copy of each chunk the router reads
    and sends the shadows once the body ended."""

    def __init__(self, stream, req, todo, timeout, info):
        self._stream = stream
        self._read = stream.read_body
        self._req = req
        self._todo = todo
        self._timeout = timeout
        self._chunks: list = []
        self._size = 0
        self._abandoned = False
        stream.read_body = self

    def __call__(self):
        data = self._read()
        if data is None:
            self._stream.read_body = self._read
            if not self._abandoned:
                req = self._req
                for cluster, h in self._todo:
                    h.set("content-length", str(self._size))
                    gevent.spawn(_send, cluster, req.method, req.path, h, self._chunks,
                                 self._timeout)
            return data
        if not self._abandoned:
            self._size += len(data)
            if self._size > BUFFER_LIMIT:
                self._abandoned = True
                self._chunks = []
                for cluster, _h in self._todo:
                    cluster.stats.retry_or_shadow_abandoned.inc()
            else:
                self._chunks.append(bytes(data))
        return data


class _Head:
    """The little of a RequestHead encode_request_head reads."""
    __slots__ = ("method", "path")

    def __init__(self, method, path):
        self.method = method
        self.path = path


def _send(cluster, method: str, path: str, headers, body, timeout) -> None:
    """One shadow exchange; every failure ends here, counted in the shadow cluster's stats."""
    try:
        with gevent.Timeout(timeout or None, False):
            _exchange(cluster, method, path, headers, body)
    except Exception:  # noqa: BLE001 - a shadow never propagates anything
        pass


def _exchange(cluster, method, path, headers, body) -> None:
    host = cluster.choose_host()
    cstats = cluster.stats
    if host is None:
        cstats.upstream_cx_none_healthy.inc()
        return
    requests = cluster.resources.requests
    if not requests.can_create():
        cstats.upstream_rq_active_overflow.inc()
        return
    try:
        conn = host.pool.acquire()
    except (UpstreamConnectError, Overflow):
        return
    requests.inc()
    cstats.upstream_rq_total.inc()
    cstats.upstream_rq_active.inc()
    host.rq_total.inc()
    host.rq_active.inc()
    t0 = time.monotonic()
    done = False
    try:
        sock = conn.sock
        data = encode_request_head(_Head(method, path), headers)
        send_all(sock, data)
        sent = len(data)
        for chunk in body:
            send_all(sock, chunk)
            sent += len(chunk)
        cstats.upstream_cx_tx_bytes_total.inc(sent)
        parser = ResponseParser(head_only=method == "HEAD")
        resp = None
        while True:
            data = sock.recv(RECV_SIZE)
            if data:
                cstats.upstream_cx_rx_bytes_total.inc(len(data))
                parser.feed(data)
            elif not parser.feed_eof():
                cstats.upstream_cx_destroy_remote.inc()
                cstats.upstream_rq_rx_reset.inc()
                return
            events = parser.events
            while events:
                kind, payload = events.popleft()
                if kind == HEAD and payload.status >= 200:
                    resp = payload
                elif kind == END:
                    code, cls = cstats.response(resp.status)
                    code.inc()
                    cls.inc()
                    cstats.upstream_rq_completed.inc()
                    cstats.upstream_rq_time.record((time.monotonic() - t0) * 1000.0)
                    (host.rq_error if resp.status >= 500 else host.rq_success).inc()
                    if resp.keep_alive and parser.done and not parser.extra:
                        host.pool.release(conn)
                    else:
                        conn.close()
                        cstats.upstream_cx_destroy_local.inc()
                    done = True
                    return
                elif kind == DATA:
                    pass
    except (OSError, ProtocolError):
        pass
    finally:
        requests.dec()
        cstats.upstream_rq_active.dec()
        host.rq_active.dec()
        if not done and conn.sock is not None:
            conn.close()
            cstats.upstream_cx_destroy_local.inc()
