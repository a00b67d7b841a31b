"""CPU per proxied HTTP/1.1 request through the worker's own code, in memory.

The downstream and upstream sockets are stand-ins that return a canned request and
response, so this measures only proxyd's Python path (codec, HCM, route, router, pool,
stats): no syscalls, no greenlet switches. Compare with a bare gevent relay (recv/send
both ways, no parsing) under wrk to see how much of a request is ours.

    python3 scripts/bench_h1_path.py [N] [--profile] [--chain]

--chain also runs the same requests with a network RBAC filter in front of the HCM (the
HCM as terminal read filter, its codec reading through `proxyd/network/chain_socket.py`)
and prints both figures.
"""
from gevent import monkey

monkey.patch_all()

import os  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from proxyd.config import load_bootstrap, unpack  # noqa: E402
from proxyd.stats import StatsStore  # noqa: E402
from proxyd.worker.main import WorkerContext  # noqa: E402
from proxyd.http.conn_manager import HttpConnectionManager  # noqa: E402
from proxyd.http.http1_connection import Http1Connection  # noqa: E402
from proxyd.master.endpoints import static_endpoints  # noqa: E402
from proxyd.upstream.pool_http1 import UpstreamConnection  # noqa: E402

CONFIG = """
static_resources:
  listeners:
  - name: bench
    address: {socket_address: {address: 127.0.0.1, port_value: 18000}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: bench
          route_config:
            virtual_hosts: [{name: all, domains: ["*"], routes: [{match: {prefix: /}, route: {cluster: upstream}}]}]
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}
  clusters:
  - name: upstream
    type: STATIC
    load_assignment:
      cluster_name: upstream
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 18080}}}}]}]
"""
with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
    f.write(CONFIG)
bs = load_bootstrap(f.name)
os.unlink(f.name)
path = "/dev/shm/microbench-%s.stats" % uuid.uuid4().hex
st = StatsStore.create(path); st.bind(st.claim_slot(os.getpid()))
ctx = WorkerContext(0, 1, st)
ctx.cluster_manager.apply(list(bs.static_resources.clusters), {c.name: static_endpoints(c) for c in bs.static_resources.clusters})
hcm = HttpConnectionManager(unpack(bs.static_resources.listeners[0].filter_chains[0].filters[0].typed_config), ctx)

REQ = b"GET /small HTTP/1.1\r\nHost: 127.0.0.1:18000\r\n\r\n"
RESP = b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Thu, 26 Nov 2026 02:47:00 GMT\r\nContent-Type: application/octet-stream\r\nContent-Length: 20\r\nConnection: keep-alive\r\n\r\n01234567890123456789"
N = int(sys.argv[1]) if len(sys.argv) > 1 and sys.argv[1].isdigit() else 20000

class Downstream:
    """The client: `n` requests, one per recv, then EOF; counts responses."""

    def __init__(self, n):
        self.n = n
        self.out = 0

    def recv(self, size):
        if self.n == 0:
            return b""
        self.n -= 1
        return REQ

    def send(self, data):
        self.out += 1
        return len(data)

    def sendall(self, data):
        self.out += 1

    def settimeout(self, t):
        pass

    def close(self):
        pass

    def shutdown(self, how):
        pass


class Upstream:
    """A keep-alive upstream that answers every request with RESP. Its fd is one end of
    a quiet socketpair, so the pool's idle checks (FIONREAD, a read watcher) see no
    bytes and no EOF."""

    _sock = None
    _pair = socket.socketpair()

    def fileno(self):
        return self._pair[0].fileno()

    def recv(self, size):
        return RESP

    def send(self, data):
        return len(data)

    def sendall(self, data):
        pass

    def getsockname(self):
        return ("127.0.0.1", 5555)

    def settimeout(self, t):
        pass

    def close(self):
        pass


class Listener:
    draining = False
    address = "127.0.0.1:18000"
    generation = 0
    port = 18000


class Connection:
    id = 1
    remote_ip = "127.0.0.1"
    remote_address = "127.0.0.1:4444"
    local_address = "127.0.0.1:18000"
    scheme = "http"
    listener = Listener()
    protocol = None
    draining = False
    requested_server_name = ""
    direct_remote_address = "127.0.0.1:4444"

    def __init__(self, n):
        self.sock = Downstream(n)


cluster = ctx.cluster_manager.get("upstream")
for h in cluster.hosts:
    h.pool._idle.append(UpstreamConnection(Upstream(), h, cluster))


def run(n):
    c = Connection(n)
    Http1Connection(hcm, c).serve()
    assert c.sock.out == n, c.sock.out


def run_chain(n):
    from proxyd.network.connection import FilterChainConnection
    c = Connection(n)
    FilterChainConnection(c, [rbac, hcm]).serve_pulled()
    assert c.sock.out == n, c.sock.out


rbac = None
if "--chain" in sys.argv:
    from envoy.extensions.filters.network.rbac.v3.rbac_pb2 import RBAC
    from proxyd.config import loader
    from proxyd.network.filters.rbac import NetworkRbac
    rbac = NetworkRbac(loader.parse_dict({"stat_prefix": "b", "rules": {
        "action": "DENY", "policies": {"p": {"permissions": [{"any": True}], "principals": [
            {"direct_remote_ip": {"address_prefix": "127.0.0.2", "prefix_len": 32}}]}}}},
        RBAC()), ctx)

run(100)
if rbac is not None:
    run_chain(100)
if "--profile" in sys.argv:
    import cProfile
    import pstats
    cProfile.run("run_chain(N)" if rbac is not None else "run(N)", "/tmp/mb.prof")
    pstats.Stats("/tmp/mb.prof").sort_stats("tottime").print_stats(30)
elif rbac is not None:
    alone, chained = [], []
    for _ in range(5):   # interleaved: the machine's load moves both alike
        t = time.process_time(); run(N // 5); alone.append(time.process_time() - t)
        t = time.process_time(); run_chain(N // 5); chained.append(time.process_time() - t)
    per = lambda xs: min(xs) / (N // 5) * 1e6  # noqa: E731
    print("%.1f us per proxied request (CPU, in memory), HCM alone" % per(alone))
    print("%.1f us per proxied request with network RBAC in front of the HCM" % per(chained))
else:
    t = time.process_time(); run(N); dt = time.process_time() - t
    print("%.1f us per proxied request (CPU, in memory)" % (dt / N * 1e6))
st.unlink()
