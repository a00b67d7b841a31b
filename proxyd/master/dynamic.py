"""Dynamic config in the master: the listeners, clusters, route configs, endpoints and runtime
layers that arrived over xDS (or watched files), their warming, and the *effective* config
the workers run.

Workers need no notion of xDS: the effective config is a copy of the bootstrap whose
static_resources also hold the active dynamic listeners and clusters, with every HCM `rds`
replaced by the fetched route_config inline, plus endpoints for EDS clusters. Each accepted
update that changes it becomes one worker snapshot (atomic per worker).

Warming (xDS spec): a cluster serves once its endpoints arrived, a listener once all of its
route configs arrived, either once the SDS secrets its TLS contexts name arrived (Envoy's
init targets), or once their initial_fetch_timeout (default 15 s, 0 = forever)
expired; a context whose secret never came refuses handshakes (secrets_not_ready).
Secrets are inlined into the listeners and clusters workers get (proxyd/transport/secrets.py). While a new version warms, the previous one keeps serving. The master is not
LIVE until the initial LDS/CDS/RTDS fetches are done (or timed out) and nothing warms.

An update is all or nothing: if any resource in it is refused (a static name, a changed
listener address, an address in use, a bind failure) nothing changes and the agent NACKs
with the reason.
"""
from __future__ import annotations

import hashlib
import time

import gevent
from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import config_source_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2)

from proxyd.master import endpoints as eps
from proxyd.master.sockets import BindError, address_key, bind_listener
from proxyd.master.xds_client import AgentProcess
from proxyd.observability.logging import get_logger
from proxyd.transport import secrets as S
from proxyd.xds import resources as R

DEFAULT_INITIAL_FETCH_TIMEOUT = 15.0
HCM_URL = "type.googleapis.com/" + hcm_pb2.HttpConnectionManager.DESCRIPTOR.full_name
_EDS = cluster_pb2.Cluster.EDS
_API = config_source_pb2.ApiConfigSource


class Refused(Exception):
    """The master cannot apply an update; the message goes into the NACK."""


class Resource:
    __slots__ = ("msg", "version", "updated")

    def __init__(self, msg, version: str, updated: float):
        self.msg, self.version, self.updated = msg, version, updated


def fetch_timeout(source) -> float | None:
    """initial_fetch_timeout of a ConfigSource in seconds; None = wait forever."""
    if not source.HasField("initial_fetch_timeout"):
        return DEFAULT_INITIAL_FETCH_TIMEOUT
    d = source.initial_fetch_timeout
    t = d.seconds + d.nanos / 1e9
    return t or None


def version_hash(version: str) -> int:
    """The `version` gauge: a 52-bit hash of version_info, as Envoy reports a hash."""
    return int(hashlib.sha1(version.encode()).hexdigest()[:13], 16) if version else 0


def hcm_filters(listener):
    """(filter, HttpConnectionManager) for each HCM of a listener."""
    for chain in listener.filter_chains:
        for f in chain.filters:
            if f.typed_config.type_url == HCM_URL:
                hcm = hcm_pb2.HttpConnectionManager()
                f.typed_config.Unpack(hcm)
                yield f, hcm


def rds_refs(listener):
    """[(route config name, ConfigSource, stat_prefix)] a listener fetches over RDS."""
    return [(hcm.rds.route_config_name, hcm.rds.config_source, hcm.stat_prefix)
            for _f, hcm in hcm_filters(listener) if hcm.HasField("rds")]


def sds_refs(msg) -> list:
    """[(secret name, ConfigSource)] a Listener or Cluster fetches over SDS."""
    return [(ref.name, ref.sds_config) for _k, ref, _p in S.refs(msg) if ref.HasField("sds_config")]


def tls_problems(secret) -> list:
    from proxyd.transport.tls import secret_problems
    return secret_problems(secret, ())


def listener_stat_name(lst) -> str:
    sa = lst.address.socket_address
    return "listener.%s_%d." % (sa.address, sa.port_value)


def eds_name(cluster) -> str:
    return cluster.eds_cluster_config.service_name or cluster.name


def cla_health(cla) -> tuple:
    """The endpoints' EDS health_status, in order: a change must reach the master's
    health words (proxyd/master/health.py) even when the endpoints stay the same."""
    return tuple(lbe.health_status for locality in cla.endpoints for lbe in locality.lb_endpoints)


def cla_endpoints(cla) -> list:
    out = []
    for ep, w, priority, locality in eps.lb_endpoints(cla):
        sa = ep.address.socket_address
        out.append((sa.address, sa.port_value, w, ep.hostname, priority, locality))
    return out


def _src(source) -> bytes:
    return source.SerializeToString(deterministic=True)


class DynamicConfig:
    def __init__(self, master):
        self.m = master
        self.bs = master.bootstrap
        self.log = get_logger("master")
        dyn = self.bs.dynamic_resources
        self.has_ads = dyn.HasField("ads_config")
        self.static_listeners = {lst.name for lst in self.bs.static_resources.listeners}
        self.static_clusters = {c.name: c for c in self.bs.static_resources.clusters}
        self.static_secrets = {s.name: s for s in self.bs.static_resources.secrets}
        # latest accepted / version in service
        self.listeners: dict[str, Resource] = {}
        self.active_listeners: dict[str, Resource] = {}
        self.clusters: dict[str, Resource] = {}
        self.active_clusters: dict[str, Resource] = {}
        self.routes: dict[str, Resource] = {}
        self.cla: dict[str, Resource] = {}
        self.runtime: dict[str, Resource] = {}
        self.secrets: dict[str, Resource] = {}
        self._sds_started: list[str] = []   # secret names in subscription order
        self._secret_seen: dict[str, bytes] = {}   # name -> last content offered
        # name -> (the secret with its files read, [(path, content)] as last read)
        self._resolved: dict[str, tuple] = {}
        self.dns_endpoints: dict[str, list] = {}
        self._dns_greenlets: dict[str, gevent.Greenlet] = {}
        self.versions: dict[str, str] = {}          # type_url -> last accepted version_info
        self.updated: dict[str, float] = {}
        self.timed_out: set[tuple[str, str]] = set()  # (type_url, name) given up on
        self._timers: set[tuple[str, str]] = set()
        self.socks: dict[str, tuple[str, object]] = {}   # dynamic listener -> (key, socket)
        self.closing: list = []                          # [key, socket, version or None]
        self.initial_pending: set[str] = set()
        self.connected: set[str] = set()
        self._pushed = None
        self._snapshot = None
        self._pushed_health = None  # EDS health_status last pushed (cla_health)
        self.agent = AgentProcess(master.options, self.on_message)
        self.agent.version_of = self._version_of
        self._stats_init()

    # --- start ----------------------------------------------------------------------
    def start(self) -> None:
        """Start the agent and the top-level subscriptions (LDS, CDS, RTDS layers, and RDS/EDS
        for static listeners and clusters). Raises Refused for a config source that cannot
        work (ads {} without ads_config, a gRPC cluster that is not static)."""
        dyn = self.bs.dynamic_resources
        if self.has_ads:
            if dyn.ads_config.api_type == _API.REST:
                raise Refused("ads_config: api_type REST cannot be used for ADS")
            self._check_source(config_source_pb2.ConfigSource(api_config_source=dyn.ads_config),
                               "ads_config")
        for field in ("cds_config", "lds_config"):
            if dyn.HasField(field):
                self._check_source(getattr(dyn, field), field)
        for layer in self.bs.layered_runtime.layers:
            if layer.HasField("rtds_layer"):
                self._check_source(layer.rtds_layer.rtds_config, "rtds_layer '%s'" % layer.name)
        targets = {name: [(ip, port) for ip, port, *_ in self.m.endpoints.get(name, [])]
                   for name in self.static_clusters}
        self.agent.start({"kind": "config",
                          "node": self.bs.node.SerializeToString() if self.bs.HasField("node") else b"",
                          "ads_config": dyn.ads_config.SerializeToString() if self.has_ads else None,
                          "targets": targets})
        for field, type_url in (("cds_config", R.CLUSTER), ("lds_config", R.LISTENER)):
            if dyn.HasField(field):
                source = getattr(dyn, field)
                self.initial_pending.add(type_url)
                self.agent.subscribe(_src(source), type_url, None, *self._version_of(type_url, None))
                self._start_timer(type_url, "", fetch_timeout(source))
        for layer in self.bs.layered_runtime.layers:
            if layer.HasField("rtds_layer"):
                rl = layer.rtds_layer
                self.initial_pending.add("rtds:" + rl.name)
                self.agent.subscribe(_src(rl.rtds_config), R.RUNTIME, [rl.name])
                self._start_timer(R.RUNTIME, rl.name, fetch_timeout(rl.rtds_config))
        self.m.load_runtime()
        self._reconcile()
        gevent.spawn(self._close_loop)
        gevent.spawn(self._watch_secret_files)

    def _check_source(self, source, what: str) -> None:
        if source.HasField("ads") and not self.has_ads:
            raise Refused("%s uses ads {} but the bootstrap has no dynamic_resources.ads_config" % what)
        if source.HasField("api_config_source"):
            api = source.api_config_source
            if api.api_type == _API.REST:
                if len(api.cluster_names) != 1 or api.grpc_services:
                    raise Refused("%s: api_type REST needs exactly one cluster_names entry and no "
                                  "grpc_services" % what)
                if not api.HasField("refresh_delay"):
                    raise Refused("%s: refresh_delay is required for REST API configuration sources"
                                  % what)
                names = list(api.cluster_names)
            else:
                if api.cluster_names or not api.grpc_services:
                    raise Refused("%s: api_type %s needs grpc_services and no cluster_names"
                                  % (what, _API.ApiType.Name(api.api_type)))
                names = [g.envoy_grpc.cluster_name for g in api.grpc_services[:1]]
            for name in names:
                if name not in self.static_clusters:
                    raise Refused("%s: %s cluster '%s' is not a static cluster"
                                  % (what, "REST" if api.api_type == _API.REST else "grpc_services", name))

    def stop(self) -> None:
        self.agent.stop()

    @property
    def initialized(self) -> bool:
        return not self.initial_pending and not self.warming_listeners() and \
            not self.warming_clusters() and all(
                self._secrets_ready(m) for m in list(self.bs.static_resources.listeners)
                + list(self.bs.static_resources.clusters))

    # --- messages from the agent ----------------------------------------------------
    def on_message(self, msg):
        kind = msg["kind"]
        if kind == "update":
            return {"kind": "verdict", "id": msg["id"], "error": self.on_update(msg)}
        if kind == "rejected":
            for p in self._prefixes(msg["type_url"], None):
                self._count(p, "update_attempt")
                self._count(p, "update_rejected")
            self.log.warning("xds_rejected", type_url=msg["type_url"], error=msg["error"],
                             path=msg.get("path"))
        elif kind == "failed":
            for p in self._prefixes(msg["type_url"], None):
                self._count(p, "update_attempt")
                self._count(p, "update_failure")
        elif kind == "connected":
            (self.connected.add if msg["up"] else self.connected.discard)(msg["stream"])
            if not msg["up"]:
                for t in msg["type_urls"]:
                    for p in self._prefixes(t, None):
                        self._count(p, "update_failure")
            self.m.stats.gauge("control_plane.connected_state").set(1 if self.connected else 0)
        elif kind == "agent_exited":
            self.connected.clear()
            self.m.stats.gauge("control_plane.connected_state").set(0)
        return None

    def on_update(self, msg) -> str | None:
        t = msg["type_url"]
        now = time.time()
        cls = R.MESSAGES[t]
        res = {n: Resource(cls.FromString(b), v or msg["version"], now)
               for n, (v, b) in msg["resources"].items()}
        # every SDS subscription of a state-of-the-world stream counts each response of its
        # type, whether or not it holds that secret (Envoy's watch map)
        names = sorted(set(res) | set(msg.get("watched") or ())) if t == R.SECRET else list(res)
        prefixes = self._prefixes(t, names or None)
        for p in prefixes:
            self._count(p, "update_attempt")
        try:
            if t == R.LISTENER:
                self._apply_listeners(res, msg["removed"], msg["full_state"])
            elif t == R.CLUSTER:
                self._apply_clusters(res, msg["removed"], msg["full_state"])
            else:
                table = self._table(t)
                changed = self._changed_secrets(res) if t == R.SECRET else res
                for name in msg["removed"]:
                    if t != R.ROUTE:   # a removed route config keeps serving (see report)
                        table.pop(name, None)
                table.update(changed)
                if t == R.SECRET:
                    self._count_rotations(changed)
        except Refused as e:
            if t == R.SECRET:
                self._count_before_failure(names, getattr(e, "secrets", ()))
            for p in prefixes:
                self._count(p, "update_rejected")
            self.log.warning("xds_refused", type_url=t, version=msg["version"], error=str(e))
            return str(e)
        for p in prefixes:
            self._count(p, "update_success")
            self.m.stats.gauge(p + "version").set(version_hash(msg["version"]))
            if t == R.SECRET:
                self.m.stats.gauge(p + "update_time").set(int(now * 1000))
        self.versions[t] = msg["version"]
        self.updated[t] = now
        self.initial_pending.discard(t)
        if t == R.RUNTIME:
            self.initial_pending.difference_update("rtds:" + name for name in res)
            self.m.load_runtime()
        self.log.info("xds_update_applied", type_url=t, version=msg["version"],
                      resources=len(res), removed=len(msg["removed"]))
        self._reconcile()
        return None

    # --- LDS ----------------------------------------------------------------------
    def _secret_errors(self, what: str, msg) -> list:
        """Envoy's load-time errors for the secrets a listener or cluster names."""
        out = []
        for _k, ref, _p in S.refs(msg):
            if not ref.HasField("sds_config"):
                if ref.name not in self.static_secrets:
                    out.append("%s: Unknown static secret: %s" % (what, ref.name))
                continue
            if not (self.bs.node.id and self.bs.node.cluster):
                out.append("%s: TlsCertificateSdsApi: node 'id' and 'cluster' are required" % what)
            try:
                self._check_source(ref.sds_config, "%s sds_config of secret '%s'" % (what, ref.name))
            except Refused as e:
                out.append(str(e))
        return out

    def _apply_listeners(self, res: dict, removed: list, full_state: bool) -> None:
        gone = set(self.listeners) - set(res) if full_state else set(removed) & set(self.listeners)
        errors = [e for name, r in sorted(res.items())
                  for e in self._secret_errors("listener '%s'" % name, r.msg)]
        if errors:
            raise Refused("; ".join(errors))
        in_use = {address_key(lst.address.socket_address): lst.name
                  for lst in self.bs.static_resources.listeners}
        for name, (key, _s) in self.socks.items():
            if name not in gone and name not in res:
                in_use[key] = name
        new_socks, errors = {}, []
        for name, r in sorted(res.items()):
            lst = r.msg
            if name in self.static_listeners:
                errors.append("listener '%s' is a static listener and cannot be changed by LDS" % name)
                continue
            for rc_name, source, _prefix in rds_refs(lst):
                try:
                    self._check_source(source, "listener '%s' rds '%s'" % (name, rc_name))
                except Refused as e:
                    errors.append(str(e))
            key = address_key(lst.address.socket_address)
            cur = self.listeners.get(name)
            if cur is not None:
                old = address_key(cur.msg.address.socket_address)
                if old != key:
                    errors.append("error updating listener '%s': it has a different address '%s' "
                                  "from the existing listener address '%s'" % (name, key[6:], old[6:]))
                    continue
            if key in in_use and in_use[key] != name:
                errors.append("listener '%s': address %s is already used by listener '%s'"
                              % (name, key[6:], in_use[key]))
                continue
            in_use[key] = name
            if cur is None:
                try:
                    new_socks[name] = (key, self._bind(key, lst))
                except BindError as e:
                    errors.append("listener '%s': %s" % (name, e))
        if errors:
            for name, (key, sock) in new_socks.items():
                self._release(key, sock)
            raise Refused("; ".join(errors))
        stats = self.m.stats
        for name, r in res.items():
            cur = self.listeners.get(name)
            if cur is None:
                stats.counter("listener_manager.listener_added").inc()
            elif cur.msg != r.msg:
                stats.counter("listener_manager.listener_modified").inc()
            else:
                r = cur   # unchanged: keep its version and time, nothing to warm
            self.listeners[name] = r
        self.socks.update(new_socks)
        for name in gone:
            stats.counter("listener_manager.listener_removed").inc()
            del self.listeners[name]
            self.active_listeners.pop(name, None)
            key, sock = self.socks.pop(name)
            if self.m.listener_keys.get(name) == key:
                del self.m.listener_keys[name]
                for w in self.m.workers:
                    w.sent_listeners.discard(name)
                self.closing.append([key, sock, None])
            else:
                self._release(key, sock)
            self.log.info("listener_removed", listener=name)

    def _bind(self, key: str, lst):
        for entry in self.closing:
            if entry[0] == key:      # removed and re-added before the old one drained
                self.closing.remove(entry)
                return entry[1]
        spare = getattr(self.m, "spare_sockets", None) or {}
        if key in spare:             # inherited from a predecessor on hot restart
            return spare.pop(key)
        return bind_listener(lst.address.socket_address)

    def _release(self, key: str, sock) -> None:
        if self.m.listen_socks.get(key) is sock:
            del self.m.listen_socks[key]
        sock.close()

    def _close_loop(self) -> None:
        """Close the master's copy of a removed listener's socket once every worker has
        applied the snapshot without it (they stopped accepting and drain its connections),
        so its port refuses new connections."""
        while not self.m.stopping:
            gevent.sleep(0.1)
            live = [w for w in self.m.workers if w.proc is not None and w.proc.returncode is None]
            for entry in list(self.closing):
                key, sock, version = entry
                if version is not None and all(w.applied_version >= version for w in live):
                    self.closing.remove(entry)
                    self._release(key, sock)
                    self.log.info("listener_socket_closed", address=key)

    # --- CDS ----------------------------------------------------------------------
    def _apply_clusters(self, res: dict, removed: list, full_state: bool) -> None:
        gone = set(self.clusters) - set(res) if full_state else set(removed) & set(self.clusters)
        errors = []
        for name, r in sorted(res.items()):
            c = r.msg
            errors += self._secret_errors("cluster '%s'" % name, c)
            if name in self.static_clusters:
                errors.append("cluster '%s' is a static cluster and cannot be changed by CDS" % name)
            elif c.type == _EDS:
                if not c.eds_cluster_config.HasField("eds_config"):
                    errors.append("cluster '%s': type EDS needs eds_cluster_config.eds_config" % name)
                else:
                    try:
                        self._check_source(c.eds_cluster_config.eds_config, "cluster '%s' eds_config" % name)
                    except Refused as e:
                        errors.append(str(e))
        if errors:
            raise Refused("; ".join(errors))
        stats = self.m.stats
        for name, r in res.items():
            cur = self.clusters.get(name)
            if cur is None:
                stats.counter("cluster_manager.cluster_added").inc()
            elif cur.msg != r.msg:
                stats.counter("cluster_manager.cluster_modified").inc()
            else:
                r = cur
            if cur is not r:
                self._stop_dns(name)
                if eps.is_dns(r.msg):
                    self._dns_greenlets[name] = gevent.spawn(self._dns_loop, name, r.msg)
            self.clusters[name] = r
        for name in gone:
            stats.counter("cluster_manager.cluster_removed").inc()
            del self.clusters[name]
            self.active_clusters.pop(name, None)
            self._stop_dns(name)
            self.log.info("cluster_removed", cluster=name)

    def _stop_dns(self, name: str) -> None:
        g = self._dns_greenlets.pop(name, None)
        if g is not None:
            g.kill(block=False)
        self.dns_endpoints.pop(name, None)

    def _dns_loop(self, name: str, cluster) -> None:
        while True:
            try:
                new = eps.resolve(cluster)
            except OSError as e:
                self.log.warning("dns_resolution_failed", cluster=name, error=str(e))
                new = self.dns_endpoints.get(name, [])
            if new != self.dns_endpoints.get(name) or name not in self.dns_endpoints:
                self.dns_endpoints[name] = new
                self._reconcile()
            gevent.sleep(eps.refresh_rate(cluster))

    # --- warming ----------------------------------------------------------------------
    def _secrets_ready(self, msg) -> bool:
        return all(n in self.secrets or (R.SECRET, n) in self.timed_out for n, _s in sds_refs(msg))

    def _cluster_ready(self, c) -> bool:
        if not self._secrets_ready(c):
            return False
        if c.type == _EDS:
            n = eds_name(c)
            return n in self.cla or (R.ENDPOINT, n) in self.timed_out
        if eps.is_dns(c):
            return c.name in self.dns_endpoints
        return True

    def _listener_ready(self, lst) -> bool:
        return self._secrets_ready(lst) and all(n in self.routes or (R.ROUTE, n) in self.timed_out for n, _s, _p in rds_refs(lst))

    def warming_listeners(self) -> list:
        return [n for n, r in self.listeners.items() if self.active_listeners.get(n) is not r]

    def warming_clusters(self) -> list:
        return [n for n, r in self.clusters.items() if self.active_clusters.get(n) is not r]

    def _start_timer(self, type_url: str, name: str, timeout: float | None) -> None:
        if timeout is None or (type_url, name) in self._timers:
            return
        self._timers.add((type_url, name))
        gevent.spawn_later(timeout, self._fetch_timeout, type_url, name)

    def _fetch_timeout(self, type_url: str, name: str) -> None:
        have = {R.ROUTE: self.routes, R.ENDPOINT: self.cla, R.RUNTIME: self.runtime,
                R.SECRET: self.secrets}.get(type_url)
        if name == "" and type_url in self.initial_pending:
            self.log.warning("xds_initial_fetch_timeout", type_url=type_url)
            self.initial_pending.discard(type_url)
        elif have is not None and name not in have:
            self.log.warning("xds_initial_fetch_timeout", type_url=type_url, name=name)
            self.timed_out.add((type_url, name))
            self.initial_pending.discard("rtds:" + name)
            if type_url == R.SECRET:
                self._count("sds.%s." % name, "init_fetch_timeout")
        self._reconcile()

    # --- reconcile: warming -> active, subscriptions, snapshot ----------------------------
    def _reconcile(self) -> None:
        for name, r in self.clusters.items():
            if self.active_clusters.get(name) is not r and self._cluster_ready(r.msg):
                self.active_clusters[name] = r
                self.log.info("cluster_active", cluster=name, version=r.version)
        for name, r in self.listeners.items():
            if self.active_listeners.get(name) is not r and self._listener_ready(r.msg):
                self.active_listeners[name] = r
                key, sock = self.socks[name]
                self.m.listen_socks[key] = sock
                self.m.listener_keys[name] = key
                self.log.info("listener_active", listener=name, version=r.version, address=key[6:])
        self._subscribe_children()
        self._gauges()
        snap = self._build()
        health = tuple((n, cla_health(r.msg)) for n, r in sorted(self.cla.items()))
        if snap != self._pushed or health != self._pushed_health:
            self._pushed_health = health
            self._pushed = snap
            self._snapshot = (snap[0], snap[1])
            self.m.push_snapshot()
            for entry in self.closing:
                if entry[2] is None:
                    entry[2] = self.m.version

    def _all_listeners(self):
        yield from self.bs.static_resources.listeners
        for r in self.listeners.values():
            yield r.msg
        for r in self.active_listeners.values():
            yield r.msg

    def _all_clusters(self):
        yield from self.bs.static_resources.clusters
        for r in self.clusters.values():
            yield r.msg
        for r in self.active_clusters.values():
            yield r.msg

    def _subscribe_children(self) -> None:
        """RDS names follow the listeners, EDS names the clusters (per config source)."""
        for type_url, wanted in ((R.ROUTE, self._route_sources()), (R.ENDPOINT, self._eds_sources()),
                                 (R.SECRET, self._sds_sources())):
            for (src, t), msg in list(self.agent.subscriptions.items()):
                if t == type_url and src not in wanted:
                    wanted[src] = (set(), None)
            for src, (names, timeout) in wanted.items():
                self.agent.subscribe(src, type_url, names, *self._version_of(type_url, names))
                for n in names:
                    self._start_timer(type_url, n, timeout)

    def _route_sources(self) -> dict:
        out: dict = {}
        for lst in self._all_listeners():
            for name, source, _p in rds_refs(lst):
                out.setdefault(_src(source), (set(), fetch_timeout(source)))[0].add(name)
        return out

    def _sds_sources(self) -> dict:
        out: dict = {}
        for msg in list(self._all_listeners()) + list(self._all_clusters()):
            for name, source in sds_refs(msg):
                if name not in self._sds_started:
                    self._sds_started.append(name)
                    self._sds_stats(name, counts_start=not source.HasField("path_config_source"))
                out.setdefault(_src(source), (set(), fetch_timeout(source)))[0].add(name)
        return out

    def _sds_stats(self, name: str, counts_start: bool) -> None:
        """A secret's stats, at its first subscription: Envoy's gRPC subscription counts
        an update_attempt when it starts (a watched file does not)."""
        s, p = self.m.stats, "sds.%s." % name
        for n in ("update_attempt", "update_success", "update_rejected", "update_failure",
                  "init_fetch_timeout", "key_rotation_failed"):
            s.counter(p + n)
        if counts_start:
            s.counter(p + "update_attempt").inc()
        s.gauge(p + "version")
        s.gauge(p + "update_time")

    def _table(self, type_url: str) -> dict:
        return {R.LISTENER: self.listeners, R.CLUSTER: self.clusters, R.ROUTE: self.routes,
                R.ENDPOINT: self.cla, R.RUNTIME: self.runtime, R.SECRET: self.secrets}[type_url]

    def _changed_secrets(self, res: dict) -> dict:
        """The secrets of an update whose content changed, loaded; raises Refused when one
        does not load. As Envoy's SdsApi, the content's hash is kept before it is loaded:
        an unchanged one (even one that failed before) keeps what serves, its version
        and time, and is no rotation."""
        changed = {}
        for n, r in res.items():
            raw = r.msg.SerializeToString(deterministic=True)
            if self._secret_seen.get(n) != raw:
                changed[n] = r
            self._secret_seen[n] = raw
        errors, failed, resolved = [], set(), {}
        for n, r in sorted(changed.items()):
            problems = tls_problems(r.msg)
            if not problems:
                try:
                    resolved[n] = S.resolve(r.msg)
                except ValueError as e:   # TlsConfigError: a file went away meanwhile
                    problems = [((), str(e))]
            if problems:
                failed.add(n)
                errors += ["sds '%s': %s" % (n, reason) for _p, reason in problems]
        if errors:
            e = Refused("; ".join(errors))
            e.secrets = failed
            raise e
        self._resolved.update(resolved)
        return changed

    def _watch_secret_files(self) -> None:
        """Key rotation: the files a dynamic secret names are re-read when they change
        (Envoy watches them); a new content that does not load counts
        `sds.<name>.key_rotation_failed` and the last good one keeps serving."""
        while not self.m.stopping:
            gevent.sleep(0.5)
            for name, (_cur, files) in list(self._resolved.items()):
                r = self.secrets.get(name)
                if r is None or not files:
                    continue
                now = {}
                for path, _c in files:
                    try:
                        with open(path, "rb") as f:
                            now[path] = f.read()
                    except OSError:
                        now[path] = None
                if now == dict(files):
                    continue
                # Envoy has a watch per data source: each one whose file changed re-reads
                moved = sum(1 for path, content in files if now[path] != content)
                try:
                    new = S.resolve(r.msg)
                    ok = not tls_problems(new[0])
                except ValueError:
                    ok = False
                if not ok:
                    for _ in range(moved):
                        self._count("sds.%s." % name, "key_rotation_failed")
                    self._resolved[name] = (self._resolved[name][0],
                                            [(path, now[path]) for path, _c in files])
                    self.log.warning("sds_key_rotation_failed", secret=name)
                    continue
                self._resolved[name] = new
                self._count_rotations({name: r})
                self.log.info("sds_key_rotated", secret=name)
                self._reconcile()

    def _count_before_failure(self, names, failed) -> None:
        """Envoy hands a response to its SDS subscriptions newest first: those before the
        one whose secret fails to load have counted a success before the whole response
        is rejected."""
        for n in reversed(self._sds_started):
            if n in failed:
                return
            if n in names:
                self._count("sds.%s." % n, "update_attempt")
                self._count("sds.%s." % n, "update_success")

    def _count_rotations(self, changed: dict) -> None:
        if not changed:
            return
        lsts = {lst.name: lst for lst in self.bs.static_resources.listeners}
        lsts.update((n, r.msg) for n, r in self.listeners.items())
        for lst in lsts.values():
            for name, _src_ in sds_refs(lst):
                if name in changed:
                    self._count(listener_stat_name(lst) + "server_ssl_socket_factory.",
                                "ssl_context_update_by_sds")
        cls = dict(self.static_clusters)
        cls.update((n, r.msg) for n, r in self.clusters.items())
        for c in cls.values():
            for name, _src_ in sds_refs(c):
                if name in changed:
                    self._count("cluster.%s.client_ssl_socket_factory." % c.name,
                                "ssl_context_update_by_sds")

    def _eds_sources(self) -> dict:
        out: dict = {}
        for c in self._all_clusters():
            if c.type == _EDS:
                source = c.eds_cluster_config.eds_config
                out.setdefault(_src(source), (set(), fetch_timeout(source)))[0].add(eds_name(c))
        return out

    def _version_of(self, type_url: str, names):
        """What a (re)started agent resubscribes with: the SotW version and, for delta,
        the versions of the resources held."""
        table = self._table(type_url) if type_url in R.MESSAGES else {}
        return self.versions.get(type_url, ""), {
            n: r.version for n, r in table.items() if names is None or n in names}

    # --- the effective config --------------------------------------------------------------
    def _secret(self, kind, ref):
        if ref.HasField("sds_config"):
            r = self._resolved.get(ref.name) if ref.name in self.secrets else None
            return r[0] if r is not None else None
        return self.static_secrets.get(ref.name)

    def _compose_listener(self, lst):
        lst = S.inline(lst, self._secret)
        refs = rds_refs(lst)
        if not refs:
            return lst
        out = type(lst)()
        out.CopyFrom(lst)
        for f, hcm in hcm_filters(out):
            if hcm.HasField("rds"):
                name = hcm.rds.route_config_name
                r = self.routes.get(name)
                hcm.route_config.CopyFrom(r.msg if r is not None else route_pb2.RouteConfiguration(name=name))
                f.typed_config.Pack(hcm)
        return out

    def _build(self):
        bs = bootstrap_pb2.Bootstrap()
        bs.CopyFrom(self.bs)
        sr = bs.static_resources
        del sr.listeners[:]
        for lst in self.bs.static_resources.listeners:
            sr.listeners.add().CopyFrom(self._compose_listener(lst))
        for name in sorted(self.active_listeners):
            sr.listeners.add().CopyFrom(self._compose_listener(self.active_listeners[name].msg))
        for name in sorted(self.active_clusters):
            sr.clusters.add().CopyFrom(self.active_clusters[name].msg)
        for i, c in enumerate(sr.clusters):
            composed = S.inline(c, self._secret)
            if composed is not c:
                sr.clusters[i].CopyFrom(composed)
        endpoints = {}
        for c in sr.clusters:
            if c.type == _EDS:
                r = self.cla.get(eds_name(c))
                endpoints[c.name] = cla_endpoints(r.msg) if r is not None else []
                if r is not None and r.msg.HasField("policy"):
                    # the worker's balancer reads the overprovisioning factor there
                    c.load_assignment.policy.CopyFrom(r.msg.policy)
            elif c.name in self.dns_endpoints:
                endpoints[c.name] = self.dns_endpoints[c.name]
            elif c.name in self.active_clusters:
                endpoints[c.name] = eps.static_endpoints(c)
        return bs.SerializeToString(deterministic=True), endpoints, self.m.runtime_entries

    def snapshot(self):
        """(serialized effective Bootstrap, endpoints) for Master._snapshot_message."""
        if self._snapshot is None:
            return self.m._static_bytes(), dict(self.m.endpoints)
        bs_bytes, dyn_eps = self._snapshot
        endpoints = dict(self.m.endpoints)
        endpoints.update(dyn_eps)
        return bs_bytes, endpoints

    # --- stats ------------------------------------------------------------------------
    def _stats_init(self) -> None:
        s = self.m.stats
        s.gauge("control_plane.connected_state").set(0)
        for n in ("listener_added", "listener_removed", "listener_modified"):
            s.counter("listener_manager." + n)
        for n in ("cluster_added", "cluster_modified", "cluster_removed"):
            s.counter("cluster_manager." + n)
        prefixes = ["listener_manager.lds.", "cluster_manager.cds."]
        if any(layer.HasField("rtds_layer") for layer in self.bs.layered_runtime.layers):
            prefixes.append("runtime.")
        for p in prefixes:
            for n in ("update_attempt", "update_success", "update_rejected", "update_failure"):
                s.counter(p + n)
            s.gauge(p + "version")

    def _count(self, prefix: str, name: str) -> None:
        self.m.stats.counter(prefix + name).inc()

    def _prefixes(self, type_url: str, names) -> list:
        """Envoy's stat scopes for an update of `names` (None: everything subscribed)."""
        if type_url == R.LISTENER:
            return ["listener_manager.lds."]
        if type_url == R.CLUSTER:
            return ["cluster_manager.cds."]
        if type_url == R.RUNTIME:
            return ["runtime."]
        if type_url == R.SECRET:
            subscribed = {n for (_src_, t), st in self.agent.subscriptions.items() if t == R.SECRET
                          for n in (st.get("names") or ())} if names is None else set(names)
            return sorted("sds.%s." % n for n in subscribed)
        out = []
        if type_url == R.ROUTE:
            for lst in self._all_listeners():
                for n, _s, prefix in rds_refs(lst):
                    if names is None or n in names:
                        out.append("http.%s.rds.%s." % (prefix, n))
        elif type_url == R.ENDPOINT:
            for c in self._all_clusters():
                if c.type == _EDS and (names is None or eds_name(c) in names):
                    out.append("cluster.%s." % c.name)
        return sorted(set(out))

    def _gauges(self) -> None:
        s = self.m.stats
        s.gauge("listener_manager.total_listeners_active").set(
            len(self.static_listeners) + len(self.active_listeners))
        s.gauge("listener_manager.total_listeners_warming").set(len(self.warming_listeners()))
        s.gauge("cluster_manager.active_clusters").set(len(self.static_clusters) + len(self.active_clusters))
        s.gauge("cluster_manager.warming_clusters").set(len(self.warming_clusters()))

    # --- admin -----------------------------------------------------------------------
    def clusters_status(self) -> list:
        """/clusters entries of the active dynamic clusters (Master.clusters_status)."""
        endpoints = self.snapshot()[1]
        out = []
        for name in sorted(self.active_clusters):
            hosts = [{"address": ("[%s]:%d" if ":" in ip else "%s:%d") % (ip, port),
                      "hostname": hostname, "health_flags": "healthy", "weight": weight}
                     for ip, port, weight, hostname, *_ in endpoints.get(name, [])]
            out.append({"name": name, "added_via_api": True, "hosts": hosts})
        return out

    def rtds_layers(self) -> dict:
        """{RTDS resource name: its Runtime.layer Struct} as received."""
        return {name: r.msg.layer for name, r in self.runtime.items()}

    def config_dump_sections(self, stamp_of):
        """admin.v3 ListenersConfigDump, ClustersConfigDump, RoutesConfigDump,
        EndpointsConfigDump with static and dynamic resources, versions and update times.
        `stamp_of(unix time) -> Timestamp`."""
        from envoy.admin.v3 import config_dump_shared_pb2 as cd
        boot_time = self.m.epoch_start_time
        ls = cd.ListenersConfigDump(version_info=self.versions.get(R.LISTENER, ""))
        for lst in self.bs.static_resources.listeners:
            ls.static_listeners.add(last_updated=stamp_of(boot_time)).listener.Pack(lst)
        for name in sorted(self.listeners):
            d = ls.dynamic_listeners.add(name=name)
            act, latest = self.active_listeners.get(name), self.listeners[name]
            if act is not None:
                d.active_state.version_info = act.version
                d.active_state.listener.Pack(act.msg)
                d.active_state.last_updated.CopyFrom(stamp_of(act.updated))
            if act is not latest:
                d.warming_state.version_info = latest.version
                d.warming_state.listener.Pack(latest.msg)
                d.warming_state.last_updated.CopyFrom(stamp_of(latest.updated))
        cs = cd.ClustersConfigDump(version_info=self.versions.get(R.CLUSTER, ""))
        for c in self.bs.static_resources.clusters:
            cs.static_clusters.add(last_updated=stamp_of(boot_time)).cluster.Pack(c)
        for name in sorted(self.clusters):
            act, latest = self.active_clusters.get(name), self.clusters[name]
            if act is not None:
                e = cs.dynamic_active_clusters.add(version_info=act.version,
                                                   last_updated=stamp_of(act.updated))
                e.cluster.Pack(act.msg)
            if act is not latest:
                e = cs.dynamic_warming_clusters.add(version_info=latest.version,
                                                    last_updated=stamp_of(latest.updated))
                e.cluster.Pack(latest.msg)
        rs = cd.RoutesConfigDump()
        for lst in self.bs.static_resources.listeners:
            for _f, hcm in hcm_filters(lst):
                if hcm.HasField("route_config"):
                    rs.static_route_configs.add(last_updated=stamp_of(boot_time)).route_config.Pack(
                        hcm.route_config)
        for name in sorted(self.routes):
            r = self.routes[name]
            e = rs.dynamic_route_configs.add(version_info=r.version, last_updated=stamp_of(r.updated))
            e.route_config.Pack(r.msg)
        es = cd.EndpointsConfigDump()
        for name in sorted(self.cla):
            r = self.cla[name]
            # Envoy 1.40 leaves version_info empty here (its EDS dump is the cluster's
            # load assignment, not the resource received)
            e = es.dynamic_endpoint_configs.add(last_updated=stamp_of(r.updated))
            e.endpoint_config.Pack(r.msg)
        return [ls, cs, rs, es, self.secrets_dump(stamp_of)]

    def secrets_dump(self, stamp_of):
        """admin.v3 SecretsConfigDump: static secrets, the dynamic ones received (active) and
        those subscribed to that have not arrived (warming, name only, as Envoy's)."""
        from envoy.admin.v3 import config_dump_pb2
        out = config_dump_pb2.SecretsConfigDump()
        for sec in self.bs.static_resources.secrets:
            out.static_secrets.add(name=sec.name).secret.Pack(sec)
        wanted = set()
        for msg in list(self._all_listeners()) + list(self._all_clusters()):
            wanted.update(n for n, _s in sds_refs(msg))
        for name in sorted(wanted | set(self.secrets)):
            r = self.secrets.get(name)
            if r is None:
                out.dynamic_warming_secrets.add(name=name)
                continue
            e = out.dynamic_active_secrets.add(name=name, version_info=r.version,
                                               last_updated=stamp_of(r.updated))
            # as Envoy's: the secret as it serves, its files read (keys redacted by admin)
            e.secret.Pack(self._resolved.get(name, (r.msg,))[0])
        return out


def needs_dynamic(bootstrap) -> bool:
    """True if the bootstrap fetches anything over xDS or from watched files."""
    if bootstrap.HasField("dynamic_resources"):
        dyn = bootstrap.dynamic_resources
        if dyn.HasField("lds_config") or dyn.HasField("cds_config") or dyn.HasField("ads_config"):
            return True
    if any(layer.HasField("rtds_layer") for layer in bootstrap.layered_runtime.layers):
        return True
    if any(c.type == _EDS or sds_refs(c) for c in bootstrap.static_resources.clusters):
        return True
    return any(rds_refs(lst) or sds_refs(lst) for lst in bootstrap.static_resources.listeners)
