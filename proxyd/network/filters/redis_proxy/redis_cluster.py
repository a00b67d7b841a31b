"""envoy.clusters.redis: a Redis Cluster's slot map, learnt with `CLUSTER SLOTS`.

The cluster's endpoints are seeds (the master resolves them like a STATIC cluster's);
each worker asks a known node for the slots every `cluster_refresh_rate` (5 s), and at
once after a MOVED, and sends a key to the primary that serves its slot (CRC16 of the
key or its {hashtag}). Before the first answer, keys go to a seed."""
from __future__ import annotations

import random
import time

from proxyd.proto import unpack
from proxyd.network.filters.redis_proxy import codec, hashing

CLUSTER_TYPE = "envoy.clusters.redis"
DEFAULT_REFRESH_RATE = 5.0
_CLUSTER_SLOTS = codec.encode_command([b"CLUSTER", b"SLOTS"])


def is_redis_cluster(cluster) -> bool:
    cfg = cluster.config
    return cfg.WhichOneof("cluster_discovery_type") == "cluster_type" and \
        cfg.cluster_type.name == CLUSTER_TYPE


def _refresh_rate(cluster) -> float:
    tc = cluster.config.cluster_type.typed_config
    if not tc.type_url:
        return DEFAULT_REFRESH_RATE
    cfg = unpack(tc)
    if cfg.HasField("cluster_refresh_rate"):
        d = cfg.cluster_refresh_rate
        return d.seconds + d.nanos / 1e9
    return DEFAULT_REFRESH_RATE


class SlotMap:
    """One worker's view of a Redis Cluster's slots, per proxyd Cluster object."""

    def __init__(self, cluster, pool):
        self.cluster = cluster
        self.pool = pool
        self.refresh_rate = _refresh_rate(cluster)
        self.primaries: list | None = None      # slot -> (ip, port)
        self.next_refresh = 0.0
        self.in_flight = False

    def address_for(self, key: bytes):
        """(ip, port) of the primary serving `key`'s slot, or None before discovery."""
        if time.monotonic() >= self.next_refresh:
            self.refresh()
        primaries = self.primaries
        return primaries[hashing.key_slot(key)] if primaries is not None else None

    def refresh(self) -> None:
        if self.in_flight:
            return
        self.in_flight = True
        self.next_refresh = time.monotonic() + self.refresh_rate
        known = sorted(set(self.primaries)) if self.primaries else \
            [h.address for h in self.cluster.hosts]
        if not known:
            self.in_flight = False
            return
        ip, port = random.choice(known)
        client = self.pool.client(self.cluster, self.pool.host_at(self.cluster, ip, port), False)
        client.request(_CLUSTER_SLOTS, lambda reply: self._learn(reply, ip))

    def moved(self, slot: int, ip: str, port: int) -> None:
        """A MOVED names the slot's new primary: use it now, and re-learn the map."""
        if self.primaries is not None:
            self.primaries[slot] = (ip, port)
        self.next_refresh = 0.0

    def _learn(self, reply, asked_ip: str):
        self.in_flight = False
        if reply is None:
            return None
        try:
            ranges = codec.parse(reply)[0]
            primaries = [None] * hashing.SLOTS
            for entry in ranges:
                start, end, node = entry[0], entry[1], entry[2]
                ip = node[0].decode() or asked_ip
                primaries[start:end + 1] = [(ip, int(node[1]))] * (end - start + 1)
        except (TypeError, IndexError, ValueError, AttributeError):
            return None
        if None in primaries:  # slots not all served: keep what we had
            return None
        self.primaries = primaries
        return None
