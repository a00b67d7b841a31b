"""A fleet under one control plane: the go-control-plane management server of
tests/peers/xds-server (snapshot cache) drives two proxyd instances (ADS state of the world
and ADS delta) and one real Envoy (ADS state of the world) at once. Listeners, routes,
clusters and endpoints are pushed; a version is rolled to every node; a bad listener and a
bad cluster are NACKed by every node with the old config kept; a proxyd is restarted and
resyncs; the control plane goes away and comes back. proxyd's NACKs and stats are held
against Envoy's."""
from __future__ import annotations

import pytest

import harness as H
import real_envoy
import xds_builders as B
from envoy.extensions.filters.http.router.v3 import router_pb2
from go_xds_server import GoXdsServer, binary, wait
from proxyd.xds import resources as R

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
