"""A redis_proxy filter config, compiled once per filter chain: stats, prefix routes,
faults, downstream auth, and how each route's cluster picks a host for a key."""
from __future__ import annotations

import random

from proxyd.proto import unpack
from proxyd.network.filters.redis_proxy import commands, hashing
from proxyd.network.filters.redis_proxy.redis_cluster import SlotMap, is_redis_cluster
from proxyd.network.filters.redis_proxy.upstream import ClientPool

PROTOCOL_OPTIONS = "envoy.filters.network.redis_proxy"


def _seconds(d) -> float:
    return d.seconds + d.nanos / 1e9


def _data_source(ds) -> bytes:
    which = ds.WhichOneof("specifier")
    if which == "inline_string":
        return ds.inline_string.encode()
    if which == "inline_bytes":
        return ds.inline_bytes
    if which == "filename":
        with open(ds.filename, "rb") as f:
            return f.read()
    return b""


class CommandStats:
    __slots__ = ("total", "success", "error", "error_fault", "delay_fault", "latency")

    def __init__(self, store, prefix: str):
        for n in ("total", "success", "error", "error_fault", "delay_fault"):
            setattr(self, n, store.counter(prefix + n))
        self.latency = store.histogram(prefix + "latency")


class ProxyStats:
    _COUNTERS = ("downstream_cx_drain_close", "downstream_cx_protocol_error",
                 "downstream_cx_rx_bytes_total", "downstream_cx_total",
                 "downstream_cx_tx_bytes_total", "downstream_rq_total", "downstream_rq_noproto")
    _GAUGES = ("downstream_cx_active", "downstream_cx_rx_bytes_buffered",
               "downstream_cx_tx_bytes_buffered", "downstream_rq_active")

    def __init__(self, store, stat_prefix: str):
        p = "redis.%s." % stat_prefix
        for n in self._COUNTERS:
            setattr(self, n, store.counter(p + n))
        for n in self._GAUGES:
            setattr(self, n, store.gauge(p + n))
        self.invalid_request = store.counter(p + "splitter.invalid_request")
        self.unsupported_command = store.counter(p + "splitter.unsupported_command")
        # Envoy creates every supported command's stats at load; so does proxyd.
        self.commands = {c: CommandStats(store, "%scommand.%s." % (p, c))
                         for c in commands.WITH_STATS}


class Fault:
    __slots__ = ("error", "delay", "numerator", "denominator", "runtime_key", "commands")

    def __init__(self, proto):
        self.error = proto.fault_type == proto.ERROR
        self.delay = _seconds(proto.delay) if proto.HasField("delay") else 0.0
        fe = proto.fault_enabled
        self.numerator = fe.default_value.numerator
        self.denominator = (100, 10000, 1000000)[fe.default_value.denominator]
        self.runtime_key = fe.runtime_key
        self.commands = frozenset(c.lower() for c in proto.commands)

    def applies(self, command: str, runtime) -> bool:
        if self.commands:
            if command not in self.commands:
                return False
        elif command in ("auth", "ping"):
            return False
        if self.runtime_key and runtime is not None:
            return runtime.fractional_percent_enabled(self.runtime_key, self.numerator,
                                                      self.denominator)
        return random.randrange(self.denominator) < self.numerator


class Mirror:
    __slots__ = ("upstream", "exclude_read", "numerator", "denominator")

    def __init__(self, proto, upstream):
        self.upstream = upstream
        self.exclude_read = proto.exclude_read_commands
        if proto.HasField("runtime_fraction"):
            dv = proto.runtime_fraction.default_value
            self.numerator, self.denominator = dv.numerator, (100, 10000, 1000000)[dv.denominator]
        else:
            self.numerator, self.denominator = 1, 1

    def should_mirror(self, command: str) -> bool:
        if self.exclude_read and command not in commands.WRITE:
            return False
        return random.randrange(self.denominator) < self.numerator


class Upstream:
    """A route's cluster: picks the host for a key as the cluster's lb_policy says
    (RING_HASH or MAGLEV on Envoy's key hash; otherwise the cluster's own balancer,
    which ignores the key, as Envoy's round robin does)."""

    __slots__ = ("name", "ctx", "hashtagging", "pool", "_cluster", "_hosts", "_lb", "_slots")

    def __init__(self, name: str, ctx, hashtagging: bool, pool: ClientPool):
        self.name = name
        self.ctx = ctx
        self.hashtagging = hashtagging
        self.pool = pool
        self._cluster = None
        self._hosts = None
        self._lb = None
        self._slots = None

    def cluster(self):
        return self.ctx.cluster_manager.get(self.name)

    def _balancer(self, cluster):
        if cluster is not self._cluster or cluster.hosts is not self._hosts:
            if cluster is not self._cluster:
                self._slots = SlotMap(cluster, self.pool) if is_redis_cluster(cluster) else None
            self._cluster, self._hosts = cluster, cluster.hosts
            cfg = cluster.config
            policy = cfg.LbPolicy.Name(cfg.lb_policy)
            if self._slots is not None:
                self._lb = self._slots
            elif policy == "RING_HASH":
                rc = cfg.ring_hash_lb_config
                self._lb = hashing.RingHash(
                    cluster.hosts,
                    rc.minimum_ring_size.value if rc.HasField("minimum_ring_size")
                    else hashing.DEFAULT_MIN_RING_SIZE,
                    rc.maximum_ring_size.value if rc.HasField("maximum_ring_size")
                    else hashing.DEFAULT_MAX_RING_SIZE,
                    murmur=rc.hash_function == rc.MURMUR_HASH_2)
            elif policy == "MAGLEV":
                mc = cfg.maglev_lb_config
                self._lb = hashing.Maglev(cluster.hosts, mc.table_size.value
                                          if mc.HasField("table_size")
                                          else hashing.DEFAULT_MAGLEV_TABLE_SIZE)
            else:
                self._lb = None
        return self._lb

    def host_for(self, key: bytes):
        cluster = self.cluster()
        if cluster is None:
            return None, None
        lb = self._balancer(cluster)
        if lb is None:
            return cluster, cluster.choose_host()
        if lb is self._slots:
            addr = lb.address_for(key)
            if addr is None:
                return cluster, cluster.choose_host()
            return cluster, self.pool.host_at(cluster, *addr)
        return cluster, lb.choose(hashing.murmur_hash2(hashing.hashtag(key, self.hashtagging)))

    def moved(self, cluster, slot: int, ip: str, port: int) -> None:
        if self._slots is not None and self._cluster is cluster:
            self._slots.moved(slot, ip, port)

    def client_for(self, key: bytes, resp3: bool):
        cluster, host = self.host_for(key)
        if host is None:
            return None
        return self.pool.client(cluster, host, resp3)

    def all_clients(self, resp3: bool) -> list:
        """A client for every host (for a Redis Cluster: every primary it learnt)."""
        cluster = self.cluster()
        if cluster is None:
            return []
        self._balancer(cluster)
        slots = self._slots
        if slots is not None and slots.primaries is not None:
            return [self.pool.client(cluster, self.pool.host_at(cluster, *a), resp3)
                    for a in sorted(set(slots.primaries))]
        return [self.pool.client(cluster, h, resp3) for h in cluster.hosts]


class Route:
    __slots__ = ("prefix", "remove_prefix", "upstream", "mirrors")

    def __init__(self, prefix: bytes, remove_prefix: bool, upstream, mirrors):
        self.prefix = prefix
        self.remove_prefix = remove_prefix
        self.upstream = upstream
        self.mirrors = mirrors


class PrefixRouter:
    """Longest matching prefix wins; then the catch-all route, if any."""

    def __init__(self, proto, make_upstream):
        def build(r, prefix=b""):
            return Route(prefix, getattr(r, "remove_prefix", False), make_upstream(r.cluster),
                         [Mirror(m, make_upstream(m.cluster)) for m in r.request_mirror_policy])
        self.case_insensitive = proto.case_insensitive
        routes = [build(r, r.prefix.encode()) for r in proto.routes]
        if self.case_insensitive:
            for r in routes:
                r.prefix = r.prefix.lower()
        self.routes = sorted(routes, key=lambda r: len(r.prefix), reverse=True)
        self.catch_all = build(proto.catch_all_route) if proto.HasField("catch_all_route") else None

    def route(self, key: bytes):
        """(route, key as sent upstream) or (None, key)."""
        if self.routes:
            k = key.lower() if self.case_insensitive else key
            for r in self.routes:
                if k.startswith(r.prefix):
                    return r, (key[len(r.prefix):] if r.remove_prefix else key)
        return self.catch_all, key


class ProxyConfig:
    def __init__(self, proto, ctx):
        self.ctx = ctx
        self.stats = ProxyStats(ctx.stats, proto.stat_prefix)
        s = proto.settings
        self.op_timeout = _seconds(s.op_timeout)
        self.hashtagging = s.enable_hashtagging
        self.redirection = s.enable_redirection
        self.latency_in_micros = proto.latency_in_micros
        self.passwords = [_data_source(p) for p in proto.downstream_auth_passwords]
        if proto.HasField("downstream_auth_password"):
            self.passwords.append(_data_source(proto.downstream_auth_password))
        self.username = _data_source(proto.downstream_auth_username) \
            if proto.HasField("downstream_auth_username") else None
        self.auth_required = bool(self.passwords)
        self.faults = [Fault(f) for f in proto.faults]
        # Upstream clients live as long as the worker, shared by every config with the
        # same op_timeout, so a config push does not reconnect to every Redis host.
        pools = ctx.__dict__.setdefault("redis_client_pools", {})
        pool = pools.get(self.op_timeout)
        if pool is None:
            pool = pools[self.op_timeout] = ClientPool(upstream_auth, self.op_timeout)
        upstreams = {}

        def make_upstream(name):
            up = upstreams.get(name)
            if up is None:
                up = upstreams[name] = Upstream(name, ctx, self.hashtagging, pool)
            return up
        self.router = PrefixRouter(proto.prefix_routes, make_upstream)

def upstream_auth(cluster):
    """(username or None, password) from the cluster's RedisProtocolOptions, or None."""
    auth = None
    opts = cluster.config.typed_extension_protocol_options.get(PROTOCOL_OPTIONS)
    if opts is not None:
        o = unpack(opts)
        if o.HasField("auth_password"):
            user = _data_source(o.auth_username) if o.HasField("auth_username") else None
            auth = (user, _data_source(o.auth_password))
    return auth
