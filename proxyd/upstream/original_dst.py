"""ORIGINAL_DST clusters: the upstream host is where the downstream connection was going.

As Envoy's OriginalDstCluster load balancer: with `original_dst_lb_config.use_http_header`
the request header `x-envoy-original-dst-host` (or `http_header_name`) names the host
(`ip:port`, `[ipv6]:port`; an unparsable value counts `original_dst_host_invalid` and
falls back); otherwise the downstream connection's local address, if a listener filter
restored it (original_dst's SO_ORIGINAL_DST, or proxy_protocol's destination); else no
host (503 UH / tcp_proxy closes). `upstream_port_override` replaces the port. Hosts are
made on first use and dropped once unused for a `cleanup_interval` (default 5 s).

Each worker keeps its own hosts (Envoy shares them between its workers); the membership
gauges are those of the worker that reports membership.
"""
from __future__ import annotations

import ipaddress
import time

DEFAULT_CLEANUP = 5.0
DEFAULT_HEADER = "x-envoy-original-dst-host"


def parse_host(value: str):
    """(ip, port) from 'ip:port' or '[ipv6]:port'; None if it is not one."""
    host, sep, port = value.strip().rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        return None
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        want = 6
    else:
        want = 4
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    if ip.version != want:
        return None
    return str(ip), int(port)


class OriginalDstHosts:
    def __init__(self, cluster, config):
        lb = config.original_dst_lb_config
        self.cluster = cluster
        self.use_header = lb.use_http_header
        self.header = (lb.http_header_name or DEFAULT_HEADER).lower()
        self.port_override = lb.upstream_port_override.value \
            if lb.HasField("upstream_port_override") else None
        ci = config.cleanup_interval
        self.cleanup_interval = (ci.seconds + ci.nanos / 1e9) \
            if config.HasField("cleanup_interval") else DEFAULT_CLEANUP
        self.invalid = cluster.stats.original_dst_host_invalid
        self.used: dict = {}          # (ip, port) -> Host, used since the last cleanup
        self.hosts: dict = {}         # (ip, port) -> Host
        self.next_cleanup = time.monotonic() + self.cleanup_interval

    def choose(self, downstream=None, headers=None):
        dst = None
        if self.use_header and headers is not None:
            value = headers.get(self.header)
            if value is not None:
                dst = parse_host(value)
                if dst is None:
                    self.invalid.inc()
        if dst is None and downstream is not None:
            dst = getattr(getattr(downstream, "downstream", downstream), "original_dst", None)
        if dst is None:
            return None
        if self.port_override is not None:
            dst = (dst[0], self.port_override)
        now = time.monotonic()
        if now >= self.next_cleanup:
            self._cleanup(now)
        host = self.hosts.get(dst)
        if host is None:
            host = self.hosts[dst] = self.cluster.new_host(dst[0], dst[1], 1, "")
            self.cluster.set_hosts(list(self.hosts.values()), changed=True)
        self.used[dst] = host
        return host

    def _cleanup(self, now: float) -> None:
        """Drop hosts not chosen since the last cleanup and not busy (Envoy's used flag)."""
        self.next_cleanup = now + self.cleanup_interval
        keep = {k: h for k, h in self.hosts.items()
                if k in self.used or h.cx_active.value() or h.rq_active.value()}
        gone = [h for k, h in self.hosts.items() if k not in keep]
        self.used = {}
        if gone:
            self.hosts = keep
            for h in gone:
                h.pool.close_idle()
                if h.h2pool is not None:
                    h.h2pool.close_idle()
            self.cluster.set_hosts(list(keep.values()), changed=True)
