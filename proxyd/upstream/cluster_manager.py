"""The worker's clusters by name, rebuilt from each config snapshot."""
from __future__ import annotations

from proxyd.transport import secrets
from proxyd.transport.tls import client_tls
from proxyd.upstream.cluster import Cluster


class ClusterManager:
    def __init__(self, store, membership: bool = True):
        """`membership`: this process reports the clusters' membership stats (one worker does)."""
        self._store = store
        self._membership = membership
        self.clusters: dict[str, Cluster] = {}

    def get(self, name: str):
        return self.clusters.get(name)

    def apply(self, cluster_configs: list, endpoints: dict) -> None:
        """Apply a snapshot: unchanged clusters keep their objects (and pools), changed
        ones are rebuilt, missing ones are closed. `endpoints` maps cluster name to
        [(ip, port, weight, hostname)]."""
        new = {}
        for cfg in cluster_configs:
            eps = endpoints.get(cfg.name, [])
            cur = self.clusters.get(cfg.name)
            if cur is not None and cur.config == cfg:
                cur.update_hosts(eps)
                new[cfg.name] = cur
            elif cur is not None and secrets.uses_sds(cfg) and \
                    secrets.strip_material(cfg) == secrets.strip_material(cur.config):
                # an SDS rotation: new connections use the new context, pools stay
                cur.tls = client_tls(cfg)
                cur.config = cfg
                cur.update_hosts(eps)
                new[cfg.name] = cur
            else:
                if cur is not None:
                    cur.close()
                new[cfg.name] = Cluster(cfg, eps, self._store, self._membership)
        for name, cur in self.clusters.items():
            if name not in new:
                cur.close()
        self.clusters = new
