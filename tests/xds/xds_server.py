"""A management server for the tests, on grpcio and the xds-protos service definitions,
following go-control-plane's test server: it serves snapshots (per type: a version and
its resources) over SotW ADS, delta ADS and per-type streams, answers each request the
way the xDS spec says, and records every request so tests can assert ACK/NACK sequences,
nonces and versions exactly.
"""
from __future__ import annotations

import hashlib
import itertools
import queue
import threading
import time
from concurrent import futures

import grpc
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import any_pb2

from proxyd.xds import resources as R

_SERVICES = {
    "envoy.service.discovery.v3.AggregatedDiscoveryService":
        (None, "StreamAggregatedResources", "DeltaAggregatedResources"),
    "envoy.service.listener.v3.ListenerDiscoveryService": (R.LISTENER, "StreamListeners", "DeltaListeners"),
    "envoy.service.cluster.v3.ClusterDiscoveryService": (R.CLUSTER, "StreamClusters", "DeltaClusters"),
    "envoy.service.route.v3.RouteDiscoveryService": (R.ROUTE, "StreamRoutes", "DeltaRoutes"),
    "envoy.service.endpoint.v3.EndpointDiscoveryService": (R.ENDPOINT, "StreamEndpoints", "DeltaEndpoints"),
    "envoy.service.runtime.v3.RuntimeDiscoveryService": (R.RUNTIME, "StreamRuntime", "DeltaRuntime"),
}


def _any(msg) -> any_pb2.Any:
    if isinstance(msg, any_pb2.Any):
        return msg
    a = any_pb2.Any()
    a.Pack(msg)
    return a


def _name(a: any_pb2.Any) -> str:
    msg = R.MESSAGES[a.type_url]()
    a.Unpack(msg)
    return R.resource_name(a.type_url, msg)


class Recorded:
    """One request as received: the stream it came on and the request message."""

    def __init__(self, stream: int, method: str, req):
        self.stream, self.method, self.req = stream, method, req
        self.time = time.monotonic()

    @property
    def is_nack(self) -> bool:
        return self.req.HasField("error_detail")

    def __repr__(self):
        r = self.req
        if isinstance(r, discovery_pb2.DiscoveryRequest):
            return "<%d %s v=%r nonce=%r names=%s%s>" % (
                self.stream, R.SHORT.get(r.type_url, r.type_url), r.version_info, r.response_nonce,
                list(r.resource_names), " NACK %r" % r.error_detail.message if self.is_nack else "")
        return "<%d delta %s nonce=%r +%s -%s init=%s%s>" % (
            self.stream, R.SHORT.get(r.type_url, r.type_url), r.response_nonce,
            list(r.resource_names_subscribe), list(r.resource_names_unsubscribe),
            dict(r.initial_resource_versions),
            " NACK %r" % r.error_detail.message if self.is_nack else "")


class _Watch:
    def __init__(self):
        self.names: set[str] = set()
        self.wildcard = False
        self.nonce = ""          # last nonce sent
        self.sent_version = None
        self.sent_names = None
        self.pending = False
        self.known: dict[str, str] = {}   # delta: what the client holds


class _Stream:
    def __init__(self, server, sid: int, method: str, fixed_type, delta: bool):
        self.server, self.id, self.method, self.fixed_type, self.delta = server, sid, method, fixed_type, delta
        self.out: queue.Queue = queue.Queue()
        self.watches: dict[str, _Watch] = {}
        self.lock = threading.Lock()

    def on_request(self, req) -> None:
        type_url = req.type_url or self.fixed_type
        with self.lock:
            w = self.watches.setdefault(type_url, _Watch())
            if self.delta:
                self._delta_request(type_url, w, req)
            else:
                self._sotw_request(type_url, w, req)

    def _sotw_request(self, type_url, w, req) -> None:
        if req.response_nonce and req.response_nonce != w.nonce:
            return  # stale: a newer response is outstanding
        w.wildcard = type_url in R.WILDCARD or not req.resource_names
        w.names = set(req.resource_names)
        w.pending = True
        if req.HasField("error_detail"):
            return  # NACK: resend only when the snapshot changes (no NACK loop)
        version = self.server.versions.get(type_url)
        if version is not None and (version != req.version_info or
                                    (w.sent_names is not None and w.names != w.sent_names)):
            self._sotw_respond(type_url, w)

    def _sotw_respond(self, type_url, w) -> None:
        version = self.server.versions.get(type_url)
        if version is None or not w.pending:
            return
        res = [a for a in self.server.resources.get(type_url, [])
               if w.wildcard or _name(a) in w.names]
        w.nonce = str(next(self.server.nonces))
        w.sent_version, w.sent_names, w.pending = version, set(w.names), False
        self.out.put(discovery_pb2.DiscoveryResponse(version_info=version, resources=res,
                                                     type_url=type_url, nonce=w.nonce))

    def _delta_request(self, type_url, w, req) -> None:
        if not w.nonce and not req.response_nonce and not w.pending:
            w.wildcard = not req.resource_names_subscribe or "*" in req.resource_names_subscribe
            w.known = dict(req.initial_resource_versions)
            w.pending = True
        w.names |= set(req.resource_names_subscribe) - {"*"}
        for n in req.resource_names_unsubscribe:
            w.names.discard(n)
            w.known.pop(n, None)
        self._delta_respond(type_url, w)

    def _delta_respond(self, type_url, w) -> None:
        if self.server.versions.get(type_url) is None:
            return
        current = {}
        for a in self.server.resources.get(type_url, []):
            current[_name(a)] = a
        resp = discovery_pb2.DeltaDiscoveryResponse(type_url=type_url,
                                                    system_version_info=self.server.versions[type_url])
        for name, a in sorted(current.items()):
            if not (w.wildcard or name in w.names):
                continue
            version = hashlib.sha1(a.SerializeToString()).hexdigest()[:8]
            if w.known.get(name) != version:
                resp.resources.add(name=name, version=version, resource=a)
                w.known[name] = version
        for name in sorted(w.known):
            if (w.wildcard or name in w.names) and name not in current:
                resp.removed_resources.append(name)
                del w.known[name]
        if resp.resources or resp.removed_resources or not w.nonce:
            w.nonce = resp.nonce = str(next(self.server.nonces))
            self.out.put(resp)

    def on_snapshot(self, type_url) -> None:
        with self.lock:
            w = self.watches.get(type_url)
            if w is None:
                return
            if self.delta:
                self._delta_respond(type_url, w)
            elif w.sent_version != self.server.versions.get(type_url):
                self._sotw_respond(type_url, w)

    def send_raw(self, resp) -> None:
        with self.lock:
            w = self.watches.setdefault(resp.type_url, _Watch())
            w.nonce = resp.nonce = str(next(self.server.nonces))
            w.pending = False
            self.out.put(resp)


class XdsServer:
    """`set(type_url, version, [resources])` publishes; `requests` records every request."""

    def __init__(self, port: int | None = None):
        self.port = port
        self.versions: dict[str, str] = {}
        self.resources: dict[str, list] = {}
        self.requests: list[Recorded] = []
        self.streams: list[_Stream] = []
        self.nonces = itertools.count(1)
        self._ids = itertools.count(1)
        self.lock = threading.Lock()
        self.server = None

    # --- publishing --------------------------------------------------------------------
    def set(self, type_url: str, version: str, resources) -> None:
        with self.lock:
            self.resources[type_url] = [_any(m) for m in resources]
            self.versions[type_url] = version
            streams = list(self.streams)
        for s in streams:
            s.on_snapshot(type_url)

    def send_raw(self, resp) -> None:
        """Push a hand-made response (e.g. with a duplicate name) on every live stream that
        carries its type; the nonce is assigned here."""
        for s in list(self.streams):
            if resp.type_url in s.watches:
                r = type(resp)()
                r.CopyFrom(resp)
                s.send_raw(r)

    # --- inspection ----------------------------------------------------------------------
    def of_type(self, type_url: str, since: int = 0) -> list[Recorded]:
        return [r for r in self.requests[since:] if (r.req.type_url or "") == type_url]

    def wait_for(self, pred, timeout: float = 10.0, what: str = "condition"):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = pred()
            if got:
                return got
            time.sleep(0.02)
        raise AssertionError("timed out waiting for %s; requests: %s" % (what, self.requests))

    # --- gRPC plumbing -----------------------------------------------------------------
    def _handler(self, method: str, fixed_type, delta: bool):
        def handle(request_iterator, context):
            s = _Stream(self, next(self._ids), method, fixed_type, delta)
            with self.lock:
                self.streams.append(s)

            def read():
                try:
                    for req in request_iterator:
                        self.requests.append(Recorded(s.id, method, req))
                        s.on_request(req)
                except grpc.RpcError:
                    pass
                s.out.put(None)

            threading.Thread(target=read, daemon=True).start()
            try:
                while context.is_active():
                    try:
                        item = s.out.get(timeout=0.2)
                    except queue.Empty:
                        continue
                    if item is None:
                        return
                    yield item
            finally:
                with self.lock:
                    if s in self.streams:
                        self.streams.remove(s)
        return handle

    def start(self) -> "XdsServer":
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=32),
                             options=[("grpc.so_reuseport", 0)])
        handlers = []
        for service, (fixed_type, sotw, delta) in _SERVICES.items():
            methods = {
                sotw: grpc.stream_stream_rpc_method_handler(
                    self._handler(sotw, fixed_type, False),
                    request_deserializer=discovery_pb2.DiscoveryRequest.FromString,
                    response_serializer=discovery_pb2.DiscoveryResponse.SerializeToString),
                delta: grpc.stream_stream_rpc_method_handler(
                    self._handler(delta, fixed_type, True),
                    request_deserializer=discovery_pb2.DeltaDiscoveryRequest.FromString,
                    response_serializer=discovery_pb2.DeltaDiscoveryResponse.SerializeToString),
            }
            handlers.append(grpc.method_handlers_generic_handler(service, methods))
        server.add_generic_rpc_handlers(handlers)
        self.port = server.add_insecure_port("127.0.0.1:%d" % (self.port or 0))
        server.start()
        self.server = server
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop(0)
            self.server = None
            for s in list(self.streams):
                s.out.put(None)
            self.streams.clear()
