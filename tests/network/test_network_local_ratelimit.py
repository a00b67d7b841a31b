"""envoy.filters.network.local_ratelimit end to end: 2 workers, the filter before
tcp_proxy to a real upstream. The bucket is shared: 3 tokens admit exactly 3 of 12
connections spread over both workers; the rest are closed before any byte goes up."""
from __future__ import annotations

import socket
from concurrent.futures import ThreadPoolExecutor
import urllib.request

import pytest

from harness import Proxyd, bootstrap, cluster, free_port, write_config
from proxyd.master.arbiter import stats_path
from proxyd.stats.catalog import Catalog
from proxyd.stats.region import Region
from proxyd.stats.store import StatsStore

NLRL = "type.googleapis.com/envoy.extensions.filters.network.local_ratelimit.v3.LocalRateLimit"
TCP = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"


@pytest.fixture(scope="module")
def px(upstream, tmp_path_factory):
    d = tmp_path_factory.mktemp("net_local_ratelimit")
    listener = {"name": "tcp", "address": {"socket_address": {"address": "127.0.0.1",
                                                              "port_value": free_port()}},
                "filter_chains": [{"filters": [
                    {"name": "rl", "typed_config": {
                        "@type": NLRL, "stat_prefix": "tcp_rl",
                        "token_bucket": {"max_tokens": 3, "fill_interval": "3600s"}}},
                    {"name": "tcp", "typed_config": {"@type": TCP, "stat_prefix": "tcp",
                                                     "cluster": "upstream"}}]}]}
    p = Proxyd(write_config(d, bootstrap([listener],
                                         [cluster("upstream", [("127.0.0.1", upstream.port)])],
                                         free_port())), concurrency=2)
    p.start()
    yield p
    p.cleanup()


def exchange(port) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        try:
            s.sendall(b"GET /n HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        except OSError:
            return b""
        out = b""
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                return out
            if not chunk:
                return out
            out += chunk


def per_worker(px, name) -> list[int]:
    """Each worker's own share of counter `name`, from its slot of the stats file."""
    class Options:
        base_id = 0
        runtime_dir = px.runtime_dir
    path = stats_path(Options)
    store, region = StatsStore.attach(path), Region.attach(path)
    try:
        _, row = Catalog(region).lookup(name)
        return [region.values(s["slot"])[row] for s in store.slots() if s["role"] == "worker"]
    finally:
        store.close()
        region.close()


def test_shared_bucket_admits_exactly_max_tokens(px):
    with ThreadPoolExecutor(4) as pool:
        replies = list(pool.map(lambda _: exchange(px.port), range(12)))
    admitted = [r for r in replies if r.startswith(b"HTTP/1.1 200")]
    assert len(admitted) == 3
    assert all(r == b"" for r in replies if not r.startswith(b"HTTP/1.1 200"))
    text = urllib.request.urlopen(px.admin_url + "/stats", timeout=5).read().decode()
    stats = dict(line.split(": ", 1) for line in text.splitlines() if ": " in line)
    assert stats["local_rate_limit.tcp_rl.rate_limited"] == "9"
    assert stats["tcp.tcp.downstream_cx_total"] == "12"   # as Envoy: counted before the limit
    shares = per_worker(px, "listener.127.0.0.1_%d.downstream_cx_total" % px.port)
    assert len(shares) == 2 and all(n > 0 for n in shares), shares
