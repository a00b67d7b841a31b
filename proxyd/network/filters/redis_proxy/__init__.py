"""envoy.filters.network.redis_proxy: a Redis proxy with Envoy's command splitter,
prefix routes, faults, auth and stats (see filter.py)."""
from __future__ import annotations

from proxyd.network.filters.redis_proxy.config import ProxyConfig
from proxyd.network.filters.redis_proxy.filter import ProxyFilter


def create(config, ctx):
    proxy_config = ProxyConfig(config, ctx)

    def factory(filter_manager) -> None:
        filter_manager.add_read_filter(ProxyFilter(proxy_config))
    return factory
