"""The xDS agent: `python -m proxyd.xds.agent --fd N`, a child of the master.

gRPC does not survive fork and the master forks workers at any time, so the master never
creates a gRPC channel: this process does, with plain grpcio and threads (it never forks).
It speaks xDS (ADS or per-type streams, state-of-the-world or delta, and REST-JSON
long-polling) and watches `path_config_source` files, checks every resource with the same validation as
`proxyd check`, and sends each good update to the master, which applies it or refuses it
(a listener that cannot bind, a changed listener address). The master's verdict decides
the ACK or NACK, so the control plane hears about every failure, not only about syntax.

Master -> agent (ipc.Channel frames):
  {"kind": "config", "node": bytes, "ads_config": bytes|None, "targets": {cluster: [(ip, port)]}}
  {"kind": "subscribe", "source": ConfigSource bytes, "type_url", "names": list|None,
   "version": str, "versions": {name: version}}
  {"kind": "verdict", "id", "error": str|None}
Agent -> master:
  {"kind": "update", "id", "type_url", "version", "resources": {name: (version, bytes)},
   "removed": [...], "full_state": bool, "watched": [names subscribed] (SotW by name)}
  {"kind": "rejected", "type_url", "error"}   (NACKed here; the master counts it)
  {"kind": "failed", "type_url", "error"}     (a REST fetch failed; the master counts it)
  {"kind": "connected", "stream", "up": bool, "type_urls": [...]}
"""
from __future__ import annotations

import argparse
import http.client
import os
import queue
import random
import socket
import sys
import threading

from envoy.config.core.v3 import base_pb2, config_source_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import json_format

from proxyd.ipc import Channel
from proxyd.observability.logging import configure_logging, get_logger

from . import resources as R
from .file_source import FileSource
from .state import Session, Update

BACKOFF_BASE = 0.5
BACKOFF_MAX = 30.0

_ADS = "envoy.service.discovery.v3.AggregatedDiscoveryService"
_SERVICES = {
    R.LISTENER: ("envoy.service.listener.v3.ListenerDiscoveryService", "Listeners"),
    R.CLUSTER: ("envoy.service.cluster.v3.ClusterDiscoveryService", "Clusters"),
    R.ROUTE: ("envoy.service.route.v3.RouteDiscoveryService", "Routes"),
    R.ENDPOINT: ("envoy.service.endpoint.v3.EndpointDiscoveryService", "Endpoints"),
    R.RUNTIME: ("envoy.service.runtime.v3.RuntimeDiscoveryService", "Runtime"),
    R.SECRET: ("envoy.service.secret.v3.SecretDiscoveryService", "Secrets"),
}
_REST_PATHS = {
    R.LISTENER: "/v3/discovery:listeners",
    R.CLUSTER: "/v3/discovery:clusters",
    R.ROUTE: "/v3/discovery:routes",
    R.ENDPOINT: "/v3/discovery:endpoints",
    R.RUNTIME: "/v3/discovery:runtime",
    R.SECRET: "/v3/discovery:secrets",
}
DEFAULT_REQUEST_TIMEOUT = 1.0
_API = config_source_pb2.ApiConfigSource
_DELTA = {_API.DELTA_GRPC, _API.AGGREGATED_DELTA_GRPC}
_AGGREGATED = {_API.AGGREGATED_GRPC, _API.AGGREGATED_DELTA_GRPC}


def method_path(type_url: str | None, delta: bool) -> str:
    """The gRPC method: ADS when type_url is None, else the per-type service."""
    if type_url is None:
        return "/%s/%s" % (_ADS, "DeltaAggregatedResources" if delta else "StreamAggregatedResources")
    service, noun = _SERVICES[type_url]
    return "/%s/%s%s" % (service, "Delta" if delta else "Stream", noun)


def backoff_delay(attempt: int, rng=random.random) -> float:
    """Full jitter over 0.5 s * 2^attempt, capped at 30 s (Envoy's xDS retry policy)."""
    return max(0.05, rng() * min(BACKOFF_MAX, BACKOFF_BASE * (2 ** attempt)))


class Stream:
    """One gRPC stream (ADS, or one resource type), reconnected with jittered backoff and
    resubscribed with the last accepted versions."""

    def __init__(self, agent, key, target_cluster: str, method: str, delta: bool):
        self.agent = agent
        self.key = key
        self.target_cluster = target_cluster
        self.method = method
        self.delta = delta
        self.session = Session(agent.node, delta)
        self.lock = threading.Lock()
        self.q: queue.Queue = queue.Queue()
        self.up = False
        self._token = None
        self.log = agent.log.bind(stream=method.rsplit("/", 1)[1], target=target_cluster)

    def subscribe(self, type_url, names, version="", versions=None) -> None:
        with self.lock:
            st = self.session.types.get(type_url)
            if st is None:
                reqs = self.session.subscribe(type_url, names, version, versions)
            else:
                reqs = self.session.subscribe(type_url, names)
            for r in reqs:
                self.q.put(r)

    def start(self) -> None:
        threading.Thread(target=self._run, name="xds:" + self.method, daemon=True).start()

    def _run(self) -> None:
        import grpc
        attempt = 0
        while True:
            try:
                channel = self.agent.channel(self.target_cluster)
            except ValueError as e:
                self.log.error("xds_no_target", error=str(e))
                threading.Event().wait(backoff_delay(attempt))
                attempt += 1
                continue
            if self.delta:
                req_ser, resp_de = (discovery_pb2.DeltaDiscoveryRequest.SerializeToString,
                                    discovery_pb2.DeltaDiscoveryResponse.FromString)
            else:
                req_ser, resp_de = (discovery_pb2.DiscoveryRequest.SerializeToString,
                                    discovery_pb2.DiscoveryResponse.FromString)
            rpc = channel.stream_stream(self.method, request_serializer=req_ser,
                                        response_deserializer=resp_de)
            q: queue.Queue = queue.Queue()
            with self.lock:
                self.q = q
                for r in self.session.connect():
                    q.put(r)
            token = self._token = object()
            first = True
            try:
                responses = rpc(iter(q.get, None))
                threading.Thread(target=self._await_ready, args=(channel, token), daemon=True).start()
                for resp in responses:
                    if first:
                        first, attempt = False, 0
                        self.log.info("xds_stream_up")
                        self._set_up(token, True)
                    self._on_response(resp)
            except grpc.RpcError as e:
                code = e.code() if hasattr(e, "code") else None
                self.log.warning("xds_stream_closed", code=str(code), details=(
                    e.details() if hasattr(e, "details") else str(e)))
            finally:
                q.put(None)
            self._set_up(token, False)
            self._token = None
            delay = backoff_delay(attempt)
            attempt += 1
            self.log.info("xds_reconnect_backoff", delay_s=round(delay, 3))
            threading.Event().wait(delay)

    def _on_response(self, resp) -> None:
        with self.lock:
            update, nack = self.session.handle(resp)
        if nack is not None:
            self.log.warning("xds_update_rejected", type_url=resp.type_url,
                             error=nack.error_detail.message)
            self.agent.send({"kind": "rejected", "type_url": resp.type_url,
                             "error": nack.error_detail.message})
            self.q.put(nack)
            return
        if update is None:
            return
        error = self.agent.submit(update)
        with self.lock:
            if error is None:
                req = self.session.accepted(update)
            else:
                self.log.warning("xds_update_refused", type_url=update.type_url, error=error)
                req = self.session.rejected(update, error)
        self.q.put(req)

    def _await_ready(self, channel, token) -> None:
        """Connected as soon as the channel is up (as Envoy: a server that has nothing new
        for our versions answers nothing, and we are connected all the same)."""
        import grpc
        try:
            grpc.channel_ready_future(channel).result(timeout=BACKOFF_MAX)
        except grpc.FutureTimeoutError:
            return
        self._set_up(token, True)

    def _set_up(self, token, up: bool) -> None:
        with self.lock:
            if token is not self._token or up == self.up:
                return
            self.up = up
            types = list(self.session.types)
        self.agent.send({"kind": "connected", "stream": repr(self.key), "up": up,
                         "type_urls": types})


def parse_response(data: bytes) -> discovery_pb2.DiscoveryResponse:
    """A proto3-JSON DiscoveryResponse (every `@type` resolved); ValueError says why not."""
    import json

    from proxyd.config import loader
    try:
        obj = json.loads(data)
        if not isinstance(obj, dict):
            raise ValueError("expected a JSON object")
        loader.resolve_types(obj)
        return loader.parse_dict(obj, discovery_pb2.DiscoveryResponse())
    except Exception as e:  # noqa: BLE001 - json_format raises more than ParseError
        raise ValueError("invalid DiscoveryResponse JSON: %s" % e) from None


def _seconds(d, default: float) -> float:
    return d.seconds + d.nanos / 1e9 if d.ByteSize() else default


class RestPoller:
    """REST-JSON xDS for one resource type: POST the DiscoveryRequest as proto3 JSON to
    `/v3/discovery:<type>` on the `cluster_names[0]` cluster, one request at a time, every
    `refresh_delay`. As in Envoy, every request carries `node`; the ACK or NACK of a response
    (version_info, response_nonce, error_detail) rides on the next poll; 304 means unchanged;
    a failed or timed-out fetch is retried at the next poll with the same request."""

    def __init__(self, agent, type_url: str, api):
        self.agent = agent
        self.type_url = type_url
        self.cluster = api.cluster_names[0]
        self.path = _REST_PATHS[type_url]
        self.refresh = max(0.05, _seconds(api.refresh_delay, 1.0))
        self.timeout = _seconds(api.request_timeout, DEFAULT_REQUEST_TIMEOUT) or DEFAULT_REQUEST_TIMEOUT
        self.session = Session(agent.node)
        self.lock = threading.Lock()
        self.wake = threading.Event()
        self.next_req = None
        self._target = 0
        self.log = agent.log.bind(rest=self.path, target=self.cluster)

    def subscribe(self, names, version="", versions=None) -> None:
        with self.lock:
            if self.type_url not in self.session.types:
                self.session.subscribe(self.type_url, names, version, versions)
                reqs = self.session.connect()
            else:
                reqs = self.session.subscribe(self.type_url, names)
            if reqs:
                self.next_req = reqs[-1]
                self.wake.set()

    def start(self) -> None:
        threading.Thread(target=self._run, name="rest:" + self.path, daemon=True).start()

    def _run(self) -> None:
        while True:
            self.wake.clear()
            with self.lock:
                st = self.session.types[self.type_url]
                req = self.next_req if st.wildcard or st.names else None
            if req is not None:
                self._poll(req)
            self.wake.wait(self.refresh)

    def _poll(self, req) -> None:
        if self.agent.node is not None:
            req.node.CopyFrom(self.agent.node)
        body = json_format.MessageToJson(req, preserving_proto_field_name=True, indent=None).encode()
        try:
            status, data = self._post(body)
        except (OSError, http.client.HTTPException, ValueError) as e:
            self._failed("%s %s: %s" % (self.cluster, self.path, e or type(e).__name__))
            return
        if status == 304:
            return
        if status != 200:
            self._failed("%s %s: HTTP %d" % (self.cluster, self.path, status))
            return
        try:
            resp = parse_response(data)
        except ValueError as e:
            self._reject(Update(self.type_url, "", ""), str(e))
            return
        if resp.type_url and resp.type_url != self.type_url:
            self._reject(Update(self.type_url, "", resp.nonce), "response of type %s to a %s request"
                         % (resp.type_url, self.type_url))
            return
        resp.type_url = self.type_url
        with self.lock:
            update, nack = self.session.handle(resp)
        if nack is not None:
            self._rejected(nack)
            return
        if update is None:
            return
        error = self.agent.submit(update)
        with self.lock:
            if error is None:
                self.next_req = self.session.accepted(update)
                return
        self.log.warning("xds_update_refused", type_url=self.type_url, error=error)
        self._reject(update, error)

    def _post(self, body: bytes):
        addrs = self.agent.targets.get(self.cluster) or []
        if not addrs:
            raise ValueError("no addresses for xDS cluster %r" % self.cluster)
        ip, port = addrs[self._target % len(addrs)]
        conn = http.client.HTTPConnection(ip, port, timeout=self.timeout)
        try:
            conn.request("POST", self.path, body, {"Host": self.cluster,
                                                   "Content-Type": "application/json"})
            resp = conn.getresponse()
            return resp.status, resp.read()
        except (OSError, http.client.HTTPException):
            self._target += 1
            raise
        finally:
            conn.close()

    def _reject(self, update, error: str) -> None:
        with self.lock:
            nack = self.session.rejected(update, error)
        self._rejected(nack)

    def _rejected(self, nack) -> None:
        with self.lock:
            self.next_req = nack
        error = nack.error_detail.message
        self.log.warning("xds_update_rejected", type_url=self.type_url, error=error)
        self.agent.send({"kind": "rejected", "type_url": self.type_url, "error": error})

    def _failed(self, error: str) -> None:
        self.log.warning("xds_rest_fetch_failed", type_url=self.type_url, error=error)
        self.agent.send({"kind": "failed", "type_url": self.type_url, "error": error})


class Agent:
    def __init__(self, channel: Channel):
        self.ch = channel
        self.log = get_logger("xds")
        self.node = None
        self.ads_config = None
        self.targets: dict = {}
        self.streams: dict = {}
        self.files: dict = {}
        self.grpc_channels: dict = {}
        self._send_lock = threading.Lock()
        self._next_id = 0
        self._waiting: dict = {}
        self._id_lock = threading.Lock()

    # --- master link ----------------------------------------------------------------
    def send(self, msg) -> None:
        with self._send_lock:
            try:
                self.ch.send(msg)
            except OSError:
                os._exit(0)

    def submit(self, update) -> str | None:
        """Send an update to the master and wait for its verdict (None = applied)."""
        with self._id_lock:
            self._next_id += 1
            rid = self._next_id
            box = self._waiting[rid] = [threading.Event(), None]
        self.send({"kind": "update", "id": rid, "type_url": update.type_url,
                   "version": update.version, "full_state": update.full_state,
                   "removed": list(update.removed), "watched": list(update.watched),
                   "resources": {n: (v, m.SerializeToString()) for n, (v, m) in
                                 update.resources.items()}})
        box[0].wait()
        return box[1]

    def run(self) -> None:
        while True:
            try:
                msg, _fds = self.ch.recv()
            except EOFError:
                os._exit(0)
            kind = msg["kind"]
            if kind == "verdict":
                with self._id_lock:
                    box = self._waiting.pop(msg["id"], None)
                if box is not None:
                    box[1] = msg["error"]
                    box[0].set()
            elif kind == "config":
                self.node = base_pb2.Node.FromString(msg["node"]) if msg.get("node") else None
                if msg.get("ads_config"):
                    self.ads_config = config_source_pb2.ApiConfigSource.FromString(msg["ads_config"])
                self.targets = msg["targets"]
            elif kind == "subscribe":
                try:
                    self.subscribe(config_source_pb2.ConfigSource.FromString(msg["source"]),
                                   msg["type_url"], msg["names"], msg.get("version", ""),
                                   msg.get("versions") or {})
                except ValueError as e:
                    self.log.error("xds_subscription_failed", type_url=msg["type_url"], error=str(e))

    # --- sources ------------------------------------------------------------------
    def channel(self, cluster: str):
        import grpc
        ch = self.grpc_channels.get(cluster)
        if ch is None:
            addrs = self.targets.get(cluster) or []
            if not addrs:
                raise ValueError("no addresses for xDS cluster %r" % cluster)
            if all(":" in ip for ip, _ in addrs):
                target = "ipv6:" + ",".join("[%s]:%d" % a for a in addrs)
            else:
                target = "ipv4:" + ",".join("%s:%d" % a for a in addrs if ":" not in a[0])
            ch = self.grpc_channels[cluster] = grpc.insecure_channel(target)
        return ch

    def subscribe(self, source, type_url: str, names, version: str, versions: dict) -> None:
        kind = source.WhichOneof("config_source_specifier")
        if kind == "path_config_source":
            self._file(source.path_config_source, type_url, names)
            return
        if kind == "ads":
            api = self.ads_config
            if api is None:
                raise ValueError("ConfigSource ads {} but the bootstrap has no ads_config")
        elif kind == "api_config_source":
            api = source.api_config_source
            if api.api_type == _API.REST:
                self._rest(api, type_url, names, version, versions)
                return
        else:
            raise ValueError("unsupported ConfigSource %s" % kind)
        if not api.grpc_services or not api.grpc_services[0].envoy_grpc.cluster_name:
            raise ValueError("api_config_source needs grpc_services[0].envoy_grpc.cluster_name")
        cluster = api.grpc_services[0].envoy_grpc.cluster_name
        delta = api.api_type in _DELTA
        aggregated = kind == "ads" or api.api_type in _AGGREGATED
        key = (api.SerializeToString(deterministic=True), None if aggregated else type_url)
        stream = self.streams.get(key)
        if stream is None:
            stream = self.streams[key] = Stream(self, key[1] or "ads", cluster,
                                                method_path(key[1], delta), delta)
            stream.subscribe(type_url, names, version, versions)
            stream.start()
        else:
            stream.subscribe(type_url, names, version, versions)

    def _rest(self, api, type_url: str, names, version: str, versions: dict) -> None:
        if len(api.cluster_names) != 1:
            raise ValueError("REST api_config_source needs exactly one cluster_names entry")
        key = (api.SerializeToString(deterministic=True), type_url)
        poller = self.streams.get(key)
        if poller is None:
            poller = self.streams[key] = RestPoller(self, type_url, api)
            poller.subscribe(names, version, versions)
            poller.start()
        else:
            poller.subscribe(names)

    def _file(self, pcs, type_url: str, names) -> None:
        key = (pcs.path, type_url)
        fs = self.files.get(key)
        if fs is not None:
            fs.set_names(names)
            return

        def on_error(t, error):
            self.log.warning("xds_file_rejected", path=pcs.path, error=error)
            self.send({"kind": "rejected", "type_url": t, "error": error, "path": pcs.path})

        fs = self.files[key] = FileSource(
            pcs.path, pcs.watched_directory.path, type_url, names, self.submit, on_error,
            lambda event, **kw: self.log.info(event, **kw))
        fs.start()


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="proxyd-xds-agent")
    ap.add_argument("--fd", type=int, required=True)
    ap.add_argument("--log-level", default="info")
    ap.add_argument("--log-format", default="text")
    args = ap.parse_args(argv)
    configure_logging(args.log_level, args.log_format, role="xds")
    sock = socket.socket(fileno=args.fd)
    sock.setblocking(True)   # the master's end is a gevent (non-blocking) socket
    Agent(Channel(sock)).run()
    sys.exit(0)


if __name__ == "__main__":
    main()
