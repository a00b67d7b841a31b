"""proxyd started with only a bootstrap pointing at a management server: ADS (SotW and
delta) and per-type streams, warming, updates under load, NACKs, server restarts."""
from __future__ import annotations

import json
import os
import signal
import threading
import time

import pytest
import yaml

import harness as H
import xds_builders as B
from proxyd.xds import resources as R
from xds_server import XdsServer

pytestmark = pytest.mark.timeout(120)


def xds_bootstrap(xds_port: int, api_type: str = "AGGREGATED_GRPC", ads: bool = True) -> dict:
    api = {"api_type": api_type, "transport_api_version": "V3",
           "grpc_services": [{"envoy_grpc": {"cluster_name": "xds"}}]}
    src = {"ads": {}, "resource_api_version": "V3"} if ads else \
        {"api_config_source": api, "resource_api_version": "V3"}
    dyn = {"lds_config": src, "cds_config": src}
    if ads:
        dyn["ads_config"] = api
    return {"node": {"id": "proxyd-test", "cluster": "tests"},
            "dynamic_resources": dyn,
            "static_resources": {"clusters": [dict(H.cluster("xds", [("127.0.0.1", xds_port)]),
                                                   http2_protocol_options={})]}}


class Env:
    def __init__(self, tmp_path, api_type="AGGREGATED_GRPC", ads=True, concurrency=2):
        self.server = XdsServer().start()
        self.upstreams = []
        path = H.write_config(tmp_path, xds_bootstrap(self.server.port, api_type, ads))
        self.proxy = H.Proxyd(path, concurrency=concurrency, drain_time_s=3.0)
        self.ads = ads

    def upstream(self, name):
        u = H.Upstream(name)
        self.upstreams.append(u)
        return u

    def stats(self) -> dict:
        from proxyd.stats import StatsStore
        from proxyd.master.arbiter import stats_path

        class O:
            runtime_dir = self.proxy.runtime_dir
            base_id = 0
        store = StatsStore.attach(stats_path(O))
        try:
            return {name: value for name, _kind, value in store.items()}
        finally:
            store.close()

    def close(self):
        self.proxy.cleanup()
        self.server.stop()
        for u in self.upstreams:
            u.stop()


@pytest.fixture
def env(tmp_path):
    e = Env(tmp_path)
    yield e
    e.close()


def wait(pred, timeout=15.0, what="condition"):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = pred()
            if last:
                return last
        except OSError as e:
            last = e
        time.sleep(0.05)
    raise AssertionError("timed out waiting for %s (last: %r)" % (what, last))


def get(port, path="/"):
    return H.http(port, path=path, timeout=5)


def publish_basic(server, port, up, version="1", rds="r1", cluster="svc"):
    server.set(R.CLUSTER, version, [B.eds_cluster(cluster)])
    server.set(R.ENDPOINT, version, [B.cla(cluster, [up.address])])
    server.set(R.LISTENER, version, [B.listener("l1", port, rds=rds)])
    server.set(R.ROUTE, version, [B.route_config(rds, cluster=cluster)])


def served_by(port, name):
    r = get(port)
    return r.status == 200 and r.json()["server"] == name


def test_ads_sotw_end_to_end_and_ack_sequence(env):
    up = env.upstream("u1")
    port = H.free_port()
    env.proxy.start(wait=False)
    publish_basic(env.server, port, up)
    env.proxy.wait_live(timeout=20)
    assert served_by(port, "u1")
    s = env.server
    # Every type was ACKed with the version and nonce it was sent.
    for t in (R.CLUSTER, R.ENDPOINT, R.LISTENER, R.ROUTE):
        reqs = s.of_type(t)
        assert reqs[0].req.version_info == "" and reqs[0].req.response_nonce == ""
        acks = [r for r in reqs if r.req.version_info == "1"]
        assert acks and not acks[0].is_nack and acks[0].req.response_nonce
    first = s.requests[0].req
    assert first.node.id == "proxyd-test" and first.type_url == R.CLUSTER
    assert all(not r.req.HasField("node") for r in s.requests[1:] if r.stream == s.requests[0].stream)
    assert list(s.of_type(R.ROUTE)[0].req.resource_names) == ["r1"]
    assert list(s.of_type(R.ENDPOINT)[0].req.resource_names) == ["svc"]
    st = env.stats()
    assert st["control_plane.connected_state"] == 1
    assert st["listener_manager.lds.update_success"] >= 1
    assert st["cluster_manager.cds.update_success"] >= 1
    assert st["listener_manager.total_listeners_active"] == 1
    assert st["cluster_manager.active_clusters"] == 2
    assert st["http.ingress.rds.r1.update_success"] >= 1
    assert st["cluster.svc.update_success"] >= 1


def test_eds_priorities_and_overprovisioning_factor_reach_the_balancer(env):
    """A CLA's priorities and its policy's overprovisioning_factor: at 50 each healthy
    level is only 50 % available, so the load splits between priority 0 and 1."""
    u1, u2 = env.upstream("u1"), env.upstream("u2")
    port = H.free_port()
    env.proxy.start(wait=False)
    publish_basic(env.server, port, u1)
    env.proxy.wait_live(timeout=20)
    cla = B.cla("svc", [u1.address])
    p1 = cla.endpoints.add(priority=1)
    sa = p1.lb_endpoints.add().endpoint.address.socket_address
    sa.address, sa.port_value = u2.address
    env.server.set(R.ENDPOINT, "2", [cla])
    wait(lambda: served_by(port, "u1"), what="priority 0 serving")
    assert all(served_by(port, "u1") for _ in range(10))   # factor 140: P0 takes it all
    cla.policy.overprovisioning_factor.value = 50
    env.server.set(R.ENDPOINT, "3", [cla])
    wait(lambda: served_by(port, "u2"), what="load spilling to priority 1")


def test_routes_and_endpoints_change_under_load_without_errors(env):
    u1, u2 = env.upstream("u1"), env.upstream("u2")
    port = H.free_port()
    env.proxy.start(wait=False)
    publish_basic(env.server, port, u1)
    env.proxy.wait_live(timeout=20)
    failures, done, count = [], threading.Event(), [0]

    def load():
        while not done.is_set():
            try:
                with H.Conn(port, timeout=5) as c:
                    for _ in range(20):
                        r = c.request()
                        count[0] += 1
                        if r.status != 200:
                            failures.append(r.status)
                        if r.header("connection") == "close":
                            break
            except OSError as e:
                failures.append(repr(e))
    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.5)
        env.server.set(R.ENDPOINT, "2", [B.cla("svc", [u2.address])])
        wait(lambda: served_by(port, "u2"), what="endpoints switch to u2")
        env.server.set(R.CLUSTER, "3", [B.eds_cluster("svc"), B.eds_cluster("other")])
        env.server.set(R.ENDPOINT, "3", [B.cla("svc", [u2.address]), B.cla("other", [u1.address])])
        # make-before-break, as a control plane orders it: the route moves once the cluster is warm
        wait(lambda: env.stats()["cluster_manager.active_clusters"] == 3, what="cluster other warm")
        assert failures == []
        env.server.set(R.ROUTE, "3", [B.route_config("r1", cluster="other")])
        wait(lambda: served_by(port, "u1"), what="route switch to cluster other")
        time.sleep(0.5)
    finally:
        done.set()
        for t in threads:
            t.join()
    assert count[0] > 50
    assert failures == []


def test_bad_resource_is_nacked_and_traffic_unaffected(env):
    up = env.upstream("u1")
    port = H.free_port()
    env.proxy.start(wait=False)
    publish_basic(env.server, port, up)
    env.proxy.wait_live(timeout=20)
    bad = B.listener("l1", port, rds="r1")
    hcm_any = bad.filter_chains[0].filters[0].typed_config
    from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2
    hcm = http_connection_manager_pb2.HttpConnectionManager()
    hcm_any.Unpack(hcm)
    del hcm.http_filters[:]
    hcm_any.Pack(hcm)
    n = len(env.server.requests)
    env.server.set(R.LISTENER, "2", [bad])
    nack = env.server.wait_for(lambda: [r for r in env.server.of_type(R.LISTENER, n) if r.is_nack],
                               what="LDS NACK")[0]
    assert nack.req.version_info == "1"
    msg = nack.req.error_detail.message
    assert "lds 'l1'" in msg and "http_filters" in msg and "router" in msg, msg
    assert served_by(port, "u1")
    st = env.stats()
    assert st["listener_manager.lds.update_rejected"] == 1
    # a duplicate name in one response is a NACK too
    n = len(env.server.requests)
    from envoy.service.discovery.v3 import discovery_pb2
    resp = discovery_pb2.DiscoveryResponse(type_url=R.CLUSTER, version_info="dup")
    resp.resources.add().Pack(B.eds_cluster("svc"))
    resp.resources.add().Pack(B.eds_cluster("svc"))
    env.server.send_raw(resp)
    nack = env.server.wait_for(lambda: [r for r in env.server.of_type(R.CLUSTER, n) if r.is_nack],
                               what="CDS NACK")[0]
    assert "duplicate CDS resource name 'svc'" in nack.req.error_detail.message
    assert nack.req.version_info == "1"
    assert served_by(port, "u1")


def test_listener_bind_conflict_is_nacked_by_the_master(env):
    up = env.upstream("u1")
    port = H.free_port()
    env.proxy.start(wait=False)
    publish_basic(env.server, port, up)
    env.proxy.wait_live(timeout=20)
    n = len(env.server.requests)
    env.server.set(R.LISTENER, "2", [B.listener("l1", port, rds="r1"), B.listener("l2", up.port, rds="r1")])
    nack = env.server.wait_for(lambda: [r for r in env.server.of_type(R.LISTENER, n) if r.is_nack],
                               what="LDS NACK")[0]
    assert "listener 'l2'" in nack.req.error_detail.message and "cannot bind" in nack.req.error_detail.message
    assert served_by(port, "u1")


def test_remove_listener_stops_accepting_and_inflight_finishes(env):
    up = env.upstream("u1")
    port, port2 = H.free_port(), H.free_port()
    env.proxy.start(wait=False)
    env.server.set(R.CLUSTER, "1", [B.eds_cluster("svc")])
    env.server.set(R.ENDPOINT, "1", [B.cla("svc", [up.address])])
    env.server.set(R.LISTENER, "1", [B.listener("l1", port, rds="r1"), B.listener("l2", port2, rds="r1")])
    env.server.set(R.ROUTE, "1", [B.route_config("r1", cluster="svc")])
    env.proxy.wait_live(timeout=20)
    assert served_by(port2, "u1")
    slow = {}

    def slow_request():
        slow["r"] = H.http(port2, path="/?delay=1.5", timeout=10)
    t = threading.Thread(target=slow_request)
    t.start()
    time.sleep(0.3)
    env.server.set(R.LISTENER, "2", [B.listener("l1", port, rds="r1")])

    def refused():
        try:
            H.http(port2, timeout=1)
        except OSError:
            return True
        return False
    wait(refused, what="removed listener's port refuses")
    t.join()
    assert slow["r"].status == 200
    assert served_by(port, "u1")
    st = env.stats()
    assert st["listener_manager.listener_removed"] == 1
    assert st["listener_manager.total_listeners_active"] == 1


def test_server_restart_keeps_serving_and_resubscribes(env):
    up = env.upstream("u1")
    port = H.free_port()
    env.proxy.start(wait=False)
    publish_basic(env.server, port, up)
    env.proxy.wait_live(timeout=20)
    xport = env.server.port
    env.server.stop()
    wait(lambda: env.stats()["control_plane.connected_state"] == 0, what="disconnected")
    assert served_by(port, "u1")
    new = XdsServer(port=xport)
    publish_basic(new, port, up)
    new.start()
    env.server = new
    first = new.wait_for(lambda: [r for r in new.requests if r.req.type_url == R.CLUSTER], what="resubscribe")[0]
    assert first.req.version_info == "1" and first.req.response_nonce == "" and first.req.node.id == "proxyd-test"
    wait(lambda: env.stats()["control_plane.connected_state"] == 1, what="reconnected")
    assert env.stats()["cluster_manager.cds.update_failure"] >= 1
    assert served_by(port, "u1")


def test_worker_killed_after_stream_is_up_is_replaced_with_current_config(env):
    up = env.upstream("u1")
    port = H.free_port()
    env.proxy.start(wait=False)
    publish_basic(env.server, port, up)
    env.proxy.wait_live(timeout=20)
    env.server.set(R.ROUTE, "2", [B.route_config("r1", direct=203, body="v2")])
    wait(lambda: get(port).status == 203, what="route v2")
    old = env.proxy.worker_pids()
    for pid in old:
        os.kill(pid, signal.SIGKILL)
    wait(lambda: len(set(env.proxy.worker_pids()) - set(old)) == 2, what="workers replaced")
    for _ in range(10):
        assert get(port).status == 203


@pytest.mark.parametrize("api_type,ads", [("AGGREGATED_DELTA_GRPC", True), ("GRPC", False),
                                          ("DELTA_GRPC", False)])
def test_other_transports(tmp_path, api_type, ads):
    e = Env(tmp_path, api_type, ads)
    try:
        up = e.upstream("u1")
        port = H.free_port()
        e.proxy.start(wait=False)
        if not ads:
            # per-type streams: RDS and EDS config sources are the same api_config_source
            src = xds_bootstrap(e.server.port, api_type, ads)["dynamic_resources"]["lds_config"]
            from google.protobuf import json_format
            from envoy.config.core.v3 import config_source_pb2
            cs = json_format.ParseDict(src, config_source_pb2.ConfigSource())
            c = B.eds_cluster("svc", ads=False)
            c.eds_cluster_config.eds_config.CopyFrom(cs)
            lst = B.listener("l1", port, rds="r1", ads=False)
            from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2
            hcm = http_connection_manager_pb2.HttpConnectionManager()
            lst.filter_chains[0].filters[0].typed_config.Unpack(hcm)
            hcm.rds.config_source.CopyFrom(cs)
            lst.filter_chains[0].filters[0].typed_config.Pack(hcm)
            e.server.set(R.CLUSTER, "1", [c])
            e.server.set(R.ENDPOINT, "1", [B.cla("svc", [up.address])])
            e.server.set(R.LISTENER, "1", [lst])
            e.server.set(R.ROUTE, "1", [B.route_config("r1", cluster="svc")])
        else:
            publish_basic(e.server, port, up)
        e.proxy.wait_live(timeout=20)
        assert served_by(port, "u1")
        methods = {r.method for r in e.server.requests}
        delta = "DELTA" in api_type
        if ads:
            assert methods == {"DeltaAggregatedResources"}
        else:
            assert methods == ({"DeltaClusters", "DeltaEndpoints", "DeltaListeners", "DeltaRoutes"} if delta
                               else {"StreamClusters", "StreamEndpoints", "StreamListeners", "StreamRoutes"})
        # delete the cluster's endpoints and add a direct response: updates still flow
        e.server.set(R.ROUTE, "2", [B.route_config("r1", direct=204)])
        wait(lambda: get(port).status == 204, what="route update over " + api_type)
        if delta:
            e.server.set(R.LISTENER, "3", [])
            wait(lambda: not _accepts(port), what="delta listener removal")
    finally:
        e.close()


def _accepts(port):
    try:
        H.http(port, timeout=1)
        return True
    except OSError:
        return False


def test_warming_and_initial_fetch_timeout(env):
    """Not LIVE while a listener waits for its route config; initial_fetch_timeout lets
    start-up proceed (the listener then answers 404 with its empty route table)."""
    port = H.free_port()
    env.proxy.start(wait=False)
    lst = B.listener("l1", port, rds="missing")
    from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2
    hcm = http_connection_manager_pb2.HttpConnectionManager()
    lst.filter_chains[0].filters[0].typed_config.Unpack(hcm)
    hcm.rds.config_source.initial_fetch_timeout.FromSeconds(2)
    lst.filter_chains[0].filters[0].typed_config.Pack(hcm)
    env.server.set(R.CLUSTER, "1", [])
    env.server.set(R.LISTENER, "1", [lst])
    env.server.wait_for(lambda: env.server.of_type(R.ROUTE), what="RDS subscription")
    time.sleep(0.5)
    assert env.proxy.status()["state"] == "INITIALIZING"
    assert env.stats()["listener_manager.total_listeners_warming"] == 1
    assert not _accepts(port)
    env.proxy.wait_live(timeout=10)
    assert get(port).status == 404
    env.server.set(R.ROUTE, "1", [B.route_config("missing", direct=200)])
    wait(lambda: get(port).status == 200, what="late route config")
