"""A fleet under one control plane: the go-control-plane management server of
tests/peers/xds-server (snapshot cache) drives two proxyd instances (ADS state of the world
and ADS delta) and one real Envoy (ADS state of the world) at once. Listeners, routes,
clusters and endpoints are pushed; a version is rolled to every node; a bad listener and a
bad cluster are NACKed by every node with the old config kept; a proxyd is restarted and
resyncs; the control plane goes away and comes back. proxyd's NACKs and stats are held
against Envoy's."""
from __future__ import annotations

import http.client
import json
import os
import ssl
import sys
import threading
import time
import urllib.request

import pytest

import harness as H
import real_envoy
import xds_builders as B
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from google.protobuf import json_format
from go_xds_server import GoXdsServer, binary, wait
from proxyd.xds import resources as R

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tls"))
from certs import CA, cn_of  # noqa: E402

pytestmark = pytest.mark.timeout(150)

H2_OPTS = {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
    "explicit_http_config": {"http2_protocol_options": {}}}}


def bootstrap(node: str, xds_port: int, admin_port: int, api_type: str) -> dict:
    api = {"api_type": api_type, "transport_api_version": "V3",
           "grpc_services": [{"envoy_grpc": {"cluster_name": "xds"}}]}
    src = {"ads": {}, "resource_api_version": "V3"}
    return {"node": {"id": node, "cluster": "fleet"},
            "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
            "dynamic_resources": {"lds_config": src, "cds_config": src, "ads_config": api},
            "static_resources": {"clusters": [dict(H.cluster("xds", [("127.0.0.1", xds_port)]),
                                                   typed_extension_protocol_options=H2_OPTS)]}}


class Node:
    def __init__(self, name, kind, api_type, tmp_path, xds_port):
        self.name, self.kind, self.api_type = name, kind, api_type
        self.port, self.admin = H.free_port(), H.free_port()
        self.port2 = H.free_port()
        self.dir = tmp_path / name
        self.dir.mkdir()
        self.cfg = bootstrap(name, xds_port, self.admin, api_type)
        self.proc = None

    @property
    def delta(self):
        return "DELTA" in self.api_type

    def start(self):
        if self.kind == "envoy":
            self.proc = real_envoy.Envoy.of(self.cfg, self.dir, self.admin)
            self.proc.start(timeout=30)
        else:
            self.proc = H.Proxyd(H.write_config(self.dir, self.cfg), concurrency=1, drain_time_s=1.0)
            self.proc.start(wait=False)
        return self

    def stop(self):
        if self.proc is not None:
            self.proc.cleanup()
            self.proc = None

    def stats(self) -> dict:
        return real_envoy.admin_stats(self.admin)

    def body(self):
        r = H.http(self.port, timeout=5)
        return r.status, r.body


def resources(node: Node, version: str, ups: dict, *, route_to="svc", clusters=("svc",),
              bad_listener=False, bad_cluster=False, lds_cds_version=None) -> dict:
    lv = lds_cds_version or version
    cl = [B.eds_cluster(c) for c in clusters]
    if bad_cluster:   # connect_timeout must be > 0 (Envoy's PGV rule)
        cl[-1].connect_timeout.FromMilliseconds(-1000)
    lst = B.listener("l1", node.port, rds="r1")
    if bad_listener:  # a network filter whose typed_config is an HTTP filter's (the router's)
        f = lst.filter_chains[0].filters.add(name="bad")
        f.typed_config.Pack(router_pb2.Router())
    return {R.CLUSTER: (lv, cl),
            R.ENDPOINT: (version, [B.cla(c, [ups[c].address]) for c in clusters]),
            R.LISTENER: (lv, [lst]),
            R.ROUTE: (version, [B.route_config("r1", cluster=route_to)])}


def served_by(node: Node, upstream: str) -> bool:
    status, body = node.body()
    return status == 200 and b'"server": "%s"' % upstream.encode() in body.replace(b'":"', b'": "')


def acked(server, node: Node, type_url: str, version: str, since: int = 0) -> bool:
    for r in server.requests(since):
        if r["node"] == node.name and r["type_url"] == type_url and not r["has_error"] and r["nonce"]:
            if node.delta or r["version"] == version:
                return True
    return False


def nacks(server, node: Node, type_url: str, since: int) -> list[dict]:
    return [r for r in server.requests(since)
            if r["node"] == node.name and r["type_url"] == type_url and r["has_error"]]


@pytest.fixture
def fleet(tmp_path):
    if real_envoy.unusable_reason():
        pytest.skip(real_envoy.unusable_reason())
    exe, why = binary()
    if exe is None:
        pytest.skip(why)
    server = GoXdsServer(exe).start()
    ups = {"svc": H.Upstream("u1"), "svc2": H.Upstream("u2")}
    nodes = [Node("proxyd-a", "proxyd", "GRPC", tmp_path, server.grpc_port),
             Node("proxyd-b", "proxyd", "DELTA_GRPC", tmp_path, server.grpc_port),
             Node("envoy-0", "envoy", "GRPC", tmp_path, server.grpc_port)]
    state = {"server": server}
    try:
        yield state, nodes, ups
    finally:
        for n in nodes:
            n.stop()
        state["server"].stop()
        for u in ups.values():
            u.stop()


def config_dump(node: Node, query: str = "") -> dict:
    with urllib.request.urlopen("http://127.0.0.1:%d/config_dump%s" % (node.admin, query),
                                timeout=5) as r:
        return {c["@type"].rsplit(".", 1)[1]: c for c in json.load(r)["configs"]}



def common(a, b, path=""):
    """The parts of two JSON values that both show: dicts cut to their shared keys, lists
    pairwise; (projection of a, projection of b, [keys only one side has])."""
    if isinstance(a, dict) and isinstance(b, dict):
        keys = sorted(set(a) & set(b))
        only = ["%s.%s (%s)" % (path, k, "proxyd" if k in a else "envoy") for k in set(a) ^ set(b)]
        pa, pb = {}, {}
        for k in keys:
            x, y, o = common(a[k], b[k], path + "." + k)
            pa[k], pb[k] = x, y
            only += o
        return pa, pb, only
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        out_a, out_b, only = [], [], []
        for i, (x, y) in enumerate(zip(a, b)):
            x, y, o = common(x, y, "%s[%d]" % (path, i))
            out_a.append(x)
            out_b.append(y)
            only += o
        return out_a, out_b, only
    return a, b, []


def dynamic_shape(dump: dict, versions: bool = True) -> dict:
    """Per section, the dynamic resources as both dump them, with what differs between
    nodes by construction (listener ports, update times) taken out."""
    out = {}
    for section, key, res in (("ClustersConfigDump", "dynamic_active_clusters", "cluster"),
                              ("ListenersConfigDump", "dynamic_listeners", None),
                              ("RoutesConfigDump", "dynamic_route_configs", "route_config"),
                              ("EndpointsConfigDump", "dynamic_endpoint_configs", "endpoint_config")):
        items = json.loads(json.dumps(dump.get(section, {}).get(key, [])))
        for item in items:
            for st in (item, item.get("active_state") or {}):
                st.pop("last_updated", None)
                if not versions:
                    st.pop("version_info", None)
            lst = (item.get("active_state") or {}).get("listener")
            if lst:
                lst["address"]["socket_address"].pop("port_value", None)
        out[section] = items
    return out


class Trickle(threading.Thread):
    """An upstream answering one request with a chunked body, 1000 bytes every 0.1 s,
    until `release` is set."""

    def __init__(self):
        import socket
        super().__init__(daemon=True)
        self.lsock = socket.create_server(("127.0.0.1", 0))
        self.port = self.lsock.getsockname()[1]
        self.release = threading.Event()
        self.sent = 0
        self.start()

    def body(self) -> bytes:
        return (b"0123456789abcdef" * (self.sent // 16 + 1))[:self.sent]

    def run(self):
        conn, _ = self.lsock.accept()
        with conn:
            f = conn.makefile("rb")
            while f.readline() not in (b"\r\n", b""):
                pass
            conn.sendall(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
            while not self.release.is_set():
                data = (b"0123456789abcdef" * ((self.sent + 1000) // 16 + 1))[self.sent:self.sent + 1000]
                conn.sendall(b"%x\r\n%s\r\n" % (len(data), data))
                self.sent += len(data)
                time.sleep(0.1)
            conn.sendall(b"0\r\n\r\n")
            f.close()
        self.lsock.close()


def publish(server, nodes, version, ups, **kw):
    for n in nodes:
        server.set_snapshot(n.name, resources(n, version, ups, **kw))


def test_fleet_under_go_control_plane(fleet):
    state, nodes, ups = fleet
    server = state["server"]
    proxyds = [n for n in nodes if n.kind == "proxyd"]
    # v1: everything pushed before the nodes connect; every node serves u1 through RDS/EDS.
    publish(server, nodes, "1", ups)
    for n in nodes:
        n.start()
    for n in proxyds:
        n.proc.wait_live(timeout=30)
    for n in nodes:
        wait(lambda: served_by(n, "u1"), what="%s serves v1" % n.name)
        for t in (R.CLUSTER, R.ENDPOINT, R.LISTENER, R.ROUTE):
            wait(lambda: acked(server, n, t, "1"), what="%s ACKs %s v1" % (n.name, t))
    for n in nodes:
        assert n.stats()["control_plane.connected_state"] == 1, n.name
    assert {s["node"] for s in server.streams()} == {n.name for n in nodes}, (server.streams(), [(r["stream"], r["node"], r["type_url"][-12:]) for r in server.requests()])

    # v2 rolled to every node: a new cluster and the route moved to it.
    mark = len(server.requests())
    publish(server, nodes, "2", ups, clusters=("svc", "svc2"), route_to="svc2")
    for n in nodes:
        wait(lambda: served_by(n, "u2"), what="%s serves v2" % n.name)
        for t in (R.CLUSTER, R.ENDPOINT, R.ROUTE):
            wait(lambda: acked(server, n, t, "2", mark), what="%s ACKs %s v2" % (n.name, t))
    before = {n.name: n.stats() for n in nodes}

    # v3 is bad: a listener whose network filter is an HTTP filter and a cluster with a negative connect_timeout.
    # Every node NACKs both (error_detail set, last good version kept) and keeps serving v2.
    mark = len(server.requests())
    publish(server, nodes, "2", ups, clusters=("svc", "svc2"), route_to="svc2",
            bad_listener=True, bad_cluster=True, lds_cds_version="3")
    for n in nodes:
        for t in (R.LISTENER, R.CLUSTER):
            got = wait(lambda: nacks(server, n, t, mark), what="%s NACKs %s v3" % (n.name, t))
            assert got[0]["error"], (n.name, t, got[0])
            if not n.delta:
                assert got[0]["version"] == "2", (n.name, t, got[0])
    for n in nodes:
        wait(lambda: n.stats()["listener_manager.lds.update_rejected"]
             > before[n.name]["listener_manager.lds.update_rejected"], what="%s lds rejected" % n.name)
        wait(lambda: n.stats()["cluster_manager.cds.update_rejected"]
             > before[n.name]["cluster_manager.cds.update_rejected"], what="%s cds rejected" % n.name)
        assert served_by(n, "u2"), n.name
    # v4 fixes it and rolls back to u1 everywhere.
    bad_mark = mark
    mark = len(server.requests())
    publish(server, nodes, "4", ups, clusters=("svc", "svc2"), route_to="svc")
    for n in nodes:
        wait(lambda: served_by(n, "u1"), what="%s serves v4" % n.name)
        for t in (R.CLUSTER, R.LISTENER, R.ROUTE):
            wait(lambda: acked(server, n, t, "4", mark), what="%s ACKs %s v4" % (n.name, t))
    # go-control-plane's SotW snapshot cache answers a NACK (version "2" != "3") with v3
    # again, so SotW nodes NACK in a loop until v4; the delta server does not resend. Every
    # node, proxyd as Envoy, counts exactly one update_rejected per NACK it sent.
    for n in nodes:
        for t, stat in ((R.LISTENER, "listener_manager.lds.update_rejected"),
                        (R.CLUSTER, "cluster_manager.cds.update_rejected")):
            sent = len(nacks(server, n, t, bad_mark))
            wait(lambda: n.stats()[stat] - before[n.name][stat] == sent,
                 what="%s %s == its %d NACKs (%d)" % (n.name, stat, sent, n.stats()[stat]))

    # /config_dump: the resources delivered, as proxyd and Envoy both show them (Envoy's
    # EDS dump adds the defaults it filled in; a delta node's versions are per resource)
    dumps = {n.name: dynamic_shape(config_dump(n, "?include_eds"), versions=not n.delta)
             for n in nodes}
    for n in proxyds:
        for section in dumps[n.name]:
            a, b, only = common(dumps[n.name][section], dumps["envoy-0"][section], section)
            assert a == b, (n.name, section, a, b)
            assert [o for o in only if o.endswith("(proxyd)")] == [], (n.name, only)
            assert len(a) == {"ClustersConfigDump": 2, "ListenersConfigDump": 1,
                              "RoutesConfigDump": 1, "EndpointsConfigDump": 2}[section], (n.name, a)

    # A proxyd restarted from cold resyncs: it asks from version "" and ACKs v4.
    a = proxyds[0]
    mark = len(server.requests())
    a.stop()
    a.start()
    a.proc.wait_live(timeout=30)
    wait(lambda: served_by(a, "u1"), what="restarted node serves v4")
    mine = [r for r in server.requests(mark) if r["node"] == a.name]
    first_cds = [r for r in mine if r["type_url"] == R.CLUSTER][0]
    assert first_cds["version"] == "" and first_cds["nonce"] == ""
    for t in (R.CLUSTER, R.ENDPOINT, R.LISTENER, R.ROUTE):
        wait(lambda: acked(server, a, t, "4", mark), what="restarted node ACKs %s v4" % t)

    # The control plane goes away: connected_state drops to 0 on every node (as Envoy's),
    # traffic goes on; it comes back on the same port with the same snapshots: 1 again.
    port = server.grpc_port
    server.stop()
    for n in nodes:
        wait(lambda: n.stats()["control_plane.connected_state"] == 0, what="%s disconnected" % n.name)
        assert served_by(n, "u1"), n.name
    server = state["server"] = GoXdsServer(server.exe, grpc_port=port).start()
    publish(server, nodes, "4", ups, clusters=("svc", "svc2"), route_to="svc")
    for n in nodes:
        wait(lambda: n.stats()["control_plane.connected_state"] == 1, timeout=40,
             what="%s reconnected" % n.name)
        wait(lambda: acked(server, n, R.CLUSTER, "4"), timeout=40, what="%s resynced" % n.name)
        assert served_by(n, "u1"), n.name

    # v5 adds a route /stream to a cluster whose one host trickles a response until told
    # to finish. A hot restart (`proxyd reload`) of the delta node while it streams: the
    # stream completes from the old master; the new one resyncs on its own xDS stream.
    trickle = Trickle()
    b = proxyds[1]
    v5 = {R.CLUSTER: ("5", [B.eds_cluster(c) for c in ("svc", "svc2", "trickle")]),
          R.ENDPOINT: ("5", [B.cla(c, [ups[c].address]) for c in ("svc", "svc2")]
                       + [B.cla("trickle", [("127.0.0.1", trickle.port)])]),
          R.LISTENER: ("5", [B.listener("l1", b.port, rds="r1")]),
          R.ROUTE: ("5", [json_format.ParseDict({"name": "r1", "virtual_hosts": [{
              "name": "vh", "domains": ["*"], "routes": [
                  {"match": {"prefix": "/stream"}, "route": {"cluster": "trickle"}},
                  {"match": {"prefix": "/"}, "route": {"cluster": "svc"}}]}]},
              route_pb2.RouteConfiguration())])}
    mark = len(server.requests())
    server.set_snapshot(b.name, v5)
    wait(lambda: acked(server, b, R.ROUTE, "5", mark), what="delta node ACKs v5")
    conn = H.Conn(b.port, timeout=60)
    conn.request("GET", "/stream", read=False)
    got = {}
    reader = threading.Thread(target=lambda: got.update(resp=conn.read_response()), daemon=True)
    reader.start()
    wait(lambda: trickle.sent > 0, what="the stream started")
    mark = len(server.requests())
    r = H.run_cli("reload", "--runtime-dir", b.proc.runtime_dir, timeout=60)
    assert r.returncode == 0, (r.stdout, r.stderr)
    wait(lambda: acked(server, b, R.ROUTE, "5", mark), what="the new master resyncs v5")
    wait(lambda: served_by(b, "u1"), what="the new master serves")
    assert "resp" not in got and trickle.sent > 0
    trickle.release.set()
    reader.join(30)
    assert got["resp"].status == 200 and got["resp"].body == trickle.body(), got
    conn.close()


# --- SDS: secrets pushed by the control plane -------------------------------------------

def sds_resources(node: Node, version: str, ups: dict, secrets: dict, second=False,
                  sds_version=None) -> dict:
    """l1 (and with `second` l2) terminate TLS with SDS secrets fetched over ADS;
    `secrets`: {name: (cert PEM, key PEM)} in the snapshot."""
    lsts = [B.with_sds_tls(B.listener("l1", node.port, rds="r1"), "server_cert")]
    clusters = [B.eds_cluster("svc")]
    if second:   # and a cluster whose UpstreamTlsContext trusts the CA of secret upstream_ca
        lsts.append(B.with_sds_tls(B.listener("l2", node.port2, rds="r1", stat_prefix="ingress2"),
                                   "cert2"))
        clusters.append(B.with_sds_ca(B.static_cluster("tlsc", [ups["svc"].address]), "upstream_ca"))
    return {R.CLUSTER: (version, clusters),
            R.ENDPOINT: (version, [B.cla("svc", [ups["svc"].address])]),
            R.LISTENER: (version, lsts),
            R.ROUTE: (version, [B.route_config("r1", cluster="svc")]),
            R.SECRET: (sds_version or version,
                       [B.secret(n, ca_pem=v) if isinstance(v, bytes) else B.secret(n, *v)
                        for n, v in sorted(secrets.items())])}


def https(port) -> http.client.HTTPSConnection:
    conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=5,
                                       context=ssl._create_unverified_context())
    conn.connect()
    return conn


def https_get(conn) -> tuple[int, str | None]:
    """(status, Connection header) of GET / on an open connection; the body must be u1's."""
    conn.request("GET", "/", headers={"Host": "example.com"})
    r = conn.getresponse()
    body = r.read()
    assert b"u1" in body, body
    return r.status, r.getheader("connection")


def served_cn(port) -> str:
    conn = https(port)
    try:
        assert https_get(conn)[0] == 200
        return cn_of(conn.sock.getpeercert(binary_form=True))
    finally:
        conn.close()


def sds_stats(node: Node) -> dict:
    """sds.* counters and every listener's server_ssl_socket_factory counters, by listener
    name (the addresses differ between nodes)."""
    st = node.stats()
    out = {k: v for k, v in st.items() if k.startswith("sds.") and
           not k.endswith(("update_time", ".version"))}
    for lname, p in (("l1", "listener.127.0.0.1_%d.server_ssl_socket_factory." % node.port),
                     ("l2", "listener.127.0.0.1_%d.server_ssl_socket_factory." % node.port2),
                     ("tlsc", "cluster.tlsc.client_ssl_socket_factory.")):
        out.update({lname + "." + k[len(p):]: v for k, v in st.items() if k.startswith(p)})
    return out


def secrets_dump(node: Node) -> dict:
    with urllib.request.urlopen("http://127.0.0.1:%d/config_dump" % node.admin, timeout=5) as r:
        dump = json.load(r)
    return [c for c in dump["configs"] if c["@type"].endswith("SecretsConfigDump")][0]


def test_sds_secrets_from_go_control_plane(fleet, tmp_path):
    state, nodes, ups = fleet
    server = state["server"]
    proxyds = [n for n in nodes if n.kind == "proxyd"]
    envoy = [n for n in nodes if n.kind == "envoy"][0]
    ca = CA(tmp_path)
    pem = {}
    for stem in ("a", "b", "c"):
        crt, key = ca.issue(stem, ["%s.sds.test" % stem])
        pem[stem] = (crt.read_bytes(), key.read_bytes())
    ca_pem = ca.cert_path.read_bytes()

    def publish_sds(version, secrets, second=False, sds_version=None):
        for n in nodes:
            server.set_snapshot(n.name, sds_resources(n, version, ups, secrets, second, sds_version))

    # v1: l1 with secret server_cert (a); every node serves a.sds.test
    publish_sds("1", {"server_cert": pem["a"]})
    for n in nodes:
        n.start()
    for n in proxyds:
        n.proc.wait_live(timeout=30)
    for n in nodes:
        wait(lambda: served_cn(n.port) == "a.sds.test", what="%s serves secret v1" % n.name)
        wait(lambda: acked(server, n, R.SECRET, "1"), what="%s ACKs SDS v1" % n.name)
    held = {n.name: https(n.port) for n in nodes}
    for n in nodes:
        assert https_get(held[n.name]) == (200, None), n.name

    # v2: l2 names cert2 and cluster tlsc names upstream_ca, which the control plane does
    # not have: l2 and tlsc warm on every node.
    # The secrets keep version 1, so no node hears of SDS before v3 (Envoy counts an SDS
    # response for every secret subscribed when it lands: no race with l2's subscription).
    publish_sds("2", {"server_cert": pem["a"]}, second=True, sds_version="1")
    for n in nodes:
        wait(lambda: n.stats().get("listener_manager.total_listeners_warming") == 1,
             what="%s warms l2" % n.name)
        wait(lambda: n.stats().get("cluster_manager.warming_clusters") == 1,
             what="%s warms tlsc" % n.name)
        assert served_cn(n.port) == "a.sds.test", n.name
    # v3: cert2 arrives: l2 serves b.sds.test
    publish_sds("3", {"server_cert": pem["a"], "cert2": pem["b"], "upstream_ca": ca_pem},
                second=True)
    for n in nodes:
        wait(lambda: n.stats().get("listener_manager.total_listeners_warming") == 0,
             what="%s l2 active" % n.name)
        wait(lambda: n.stats().get("cluster_manager.warming_clusters") == 0,
             what="%s tlsc active" % n.name)
        wait(lambda: served_cn(n.port2) == "b.sds.test", what="%s l2 serves cert2" % n.name)

    # v4 rotates server_cert to c: new connections get c, the held one goes on undrained
    publish_sds("4", {"server_cert": pem["c"], "cert2": pem["b"], "upstream_ca": ca_pem},
                second=True)
    for n in nodes:
        wait(lambda: served_cn(n.port) == "c.sds.test", what="%s rotated server_cert" % n.name)
        assert https_get(held[n.name]) == (200, None), n.name
        assert cn_of(held[n.name].sock.getpeercert(binary_form=True)) == "a.sds.test"
        assert served_cn(n.port2) == "b.sds.test", n.name
    for n in nodes:
        wait(lambda: acked(server, n, R.SECRET, "4"), what="%s ACKs SDS v4" % n.name)
    got = {n.name: sds_stats(n) for n in nodes}
    assert got["proxyd-a"] == got[envoy.name], got
    assert got["proxyd-a"]["l1.ssl_context_update_by_sds"] == 2, got

    # v5: a server_cert that does not load is NACKed by every node; c keeps serving
    mark = len(server.requests())
    before = {n.name: n.stats() for n in nodes}
    publish_sds("5", {"server_cert": (b"not a certificate", b"not a key"), "cert2": pem["b"],
                      "upstream_ca": ca_pem}, second=True)
    for n in nodes:
        got_nack = wait(lambda: nacks(server, n, R.SECRET, mark), what="%s NACKs SDS v5" % n.name)
        assert got_nack[0]["error"], (n.name, got_nack[0])
        wait(lambda: n.stats()["sds.server_cert.update_rejected"]
             > before[n.name]["sds.server_cert.update_rejected"], what="%s sds rejected" % n.name)
        assert served_cn(n.port) == "c.sds.test", n.name
        assert https_get(held[n.name]) == (200, None), n.name
    publish_sds("6", {"server_cert": pem["c"], "cert2": pem["b"], "upstream_ca": ca_pem},
                second=True)
    for n in nodes:
        wait(lambda: acked(server, n, R.SECRET, "6", mark), what="%s ACKs SDS v6" % n.name)
        assert served_cn(n.port) == "c.sds.test", n.name

    # /config_dump: the same dynamic secrets, versions and redaction on proxyd and Envoy
    def shape(node):
        d = secrets_dump(node)
        return sorted((s["name"], s.get("version_info"),
                       s["secret"].get("tls_certificate", {}).get("certificate_chain"),
                       s["secret"].get("tls_certificate", {}).get("private_key"),
                       s["secret"].get("validation_context"))
                      for s in d.get("dynamic_active_secrets", []))
    got = {n.name: sds_stats(n) for n in nodes}
    assert got["proxyd-a"] == got[envoy.name], got
    assert [s[:2] for s in shape(proxyds[0])] == [s[:2] for s in shape(envoy)]
    assert shape(proxyds[0]) == shape(envoy)
    assert len(shape(envoy)) == 3
    assert shape(proxyds[1])[0][3] == shape(envoy)[0][3]   # the key is redacted alike
    for conn in held.values():
        conn.close()
