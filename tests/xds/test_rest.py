"""REST-JSON xDS end to end: proxyd with only a bootstrap whose LDS, CDS, EDS and RDS come
from a REST management server (long-poll POSTs of DiscoveryRequest JSON)."""
from __future__ import annotations

import copy

import pytest
from envoy.config.core.v3 import config_source_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2)
from google.protobuf import json_format

import harness as H
import xds_builders as B
from proxyd.xds import resources as R
from rest_server import RestXdsServer
from test_xds_e2e import get, served_by, wait

pytestmark = pytest.mark.timeout(60)

REST_SOURCE = {"api_config_source": {"api_type": "REST", "transport_api_version": "V3",
                                     "cluster_names": ["xds_rest"], "refresh_delay": "0.1s",
                                     "request_timeout": "1s"},
               "resource_api_version": "V3"}


def rest_bootstrap(port: int) -> dict:
    return {"node": {"id": "proxyd-rest", "cluster": "tests"},
            "dynamic_resources": {"lds_config": copy.deepcopy(REST_SOURCE),
                                  "cds_config": copy.deepcopy(REST_SOURCE)},
            "static_resources": {"clusters": [H.cluster("xds_rest", [("127.0.0.1", port)])]}}


def rest_listener(name: str, port: int, rds: str, http_filters: bool = True):
    lst = B.listener(name, port, rds=rds, ads=False)
    hcm = hcm_pb2.HttpConnectionManager()
    lst.filter_chains[0].filters[0].typed_config.Unpack(hcm)
    json_format.ParseDict(REST_SOURCE, hcm.rds.config_source)
    if not http_filters:
        del hcm.http_filters[:]
    lst.filter_chains[0].filters[0].typed_config.Pack(hcm)
    return lst


def rest_cluster(name: str):
    c = B.eds_cluster(name, ads=False)
    c.eds_cluster_config.eds_config.CopyFrom(
        json_format.ParseDict(REST_SOURCE, config_source_pb2.ConfigSource()))
    return c


def stats(proxy) -> dict:
    from proxyd.master.arbiter import stats_path
    from proxyd.stats import StatsStore

    class O:
        runtime_dir = proxy.runtime_dir
        base_id = 0
    store = StatsStore.attach(stats_path(O))
    try:
        return {name: value for name, _kind, value in store.items()}
    finally:
        store.close()


def test_rest_lds_cds_eds_rds_update_and_nack(tmp_path):
    server = RestXdsServer().start()
    up1, up2 = H.Upstream("u1"), H.Upstream("u2")
    proxy = H.Proxyd(H.write_config(tmp_path, rest_bootstrap(server.port)), concurrency=1)
    try:
        port = H.free_port()
        server.set(R.CLUSTER, "1", [rest_cluster("svc")])
        server.set(R.ENDPOINT, "1", [B.cla("svc", [up1.address])])
        server.set(R.LISTENER, "1", [rest_listener("l1", port, "r1")])
        server.set(R.ROUTE, "1", [B.route_config("r1", cluster="svc")])
        proxy.start(wait=False)
        proxy.wait_live(timeout=20)
        assert served_by(port, "u1")

        # Each type polled its own path; every POST is proto3 JSON with the node.
        assert {r.path for r in server.requests} == {
            "/v3/discovery:clusters", "/v3/discovery:endpoints", "/v3/discovery:listeners",
            "/v3/discovery:routes"}
        for r in server.requests:
            assert r.headers["Content-Type"] == "application/json"
            assert r.body["node"]["id"] == "proxyd-rest"
            assert r.body["type_url"] == r.type_url
        for t in (R.CLUSTER, R.ENDPOINT, R.LISTENER, R.ROUTE):
            assert server.of_type(t)[0].body.get("version_info", "") == ""
            # The ACK is the next poll, which may come after the proxy went live.
            acks = server.wait_for(lambda: [r for r in server.of_type(t)
                                            if r.body.get("version_info") == "1"],
                                   what="the first %s poll with version 1" % t)
            assert not acks[0].is_nack and acks[0].body["response_nonce"]
        assert server.of_type(R.ROUTE)[0].body["resource_names"] == ["r1"]
        assert server.of_type(R.ENDPOINT)[0].body["resource_names"] == ["svc"]

        # A version change is picked up at the next poll (endpoints, then routes).
        server.set(R.ENDPOINT, "2", [B.cla("svc", [up2.address])])
        wait(lambda: served_by(port, "u2"), what="EDS v2 over REST")
        server.set(R.ROUTE, "2", [B.route_config("r1", direct=204)])
        wait(lambda: get(port).status == 204, what="RDS v2 over REST")
        server.set(R.ROUTE, "3", [B.route_config("r1", cluster="svc")])
        wait(lambda: served_by(port, "u2"), what="RDS v3 over REST")

        # A bad listener is NACKed in the next poll: previous version, error_detail.
        n = len(server.requests)
        server.set(R.LISTENER, "2", [rest_listener("l1", port, "r1", http_filters=False)])
        nack = server.wait_for(lambda: [r for r in server.of_type(R.LISTENER, n) if r.is_nack],
                               what="LDS NACK")[0]
        assert nack.body["version_info"] == "1" and nack.body["response_nonce"]
        msg = nack.body["error_detail"]["message"]
        assert "lds 'l1'" in msg and "http_filters" in msg, msg
        assert served_by(port, "u2")
        st = stats(proxy)
        assert st["listener_manager.lds.update_rejected"] == 1
        assert st["listener_manager.lds.update_success"] >= 1
        assert st["cluster_manager.cds.update_success"] >= 1

        # Fixed: the next version is ACKed without error_detail.
        server.set(R.LISTENER, "3", [rest_listener("l1", port, "r1")])
        server.wait_for(lambda: [r for r in server.of_type(R.LISTENER, n)
                                 if r.body.get("version_info") == "3" and not r.is_nack],
                        what="LDS v3 ACK")
        assert served_by(port, "u2")
    finally:
        proxy.cleanup()
        server.stop()
        up1.stop()
        up2.stop()


def test_rest_server_down_keeps_serving_and_counts_failures(tmp_path):
    server = RestXdsServer().start()
    up = H.Upstream("u1")
    proxy = H.Proxyd(H.write_config(tmp_path, rest_bootstrap(server.port)), concurrency=1)
    try:
        port = H.free_port()
        server.set(R.CLUSTER, "1", [rest_cluster("svc")])
        server.set(R.ENDPOINT, "1", [B.cla("svc", [up.address])])
        server.set(R.LISTENER, "1", [rest_listener("l1", port, "r1")])
        server.set(R.ROUTE, "1", [B.route_config("r1", cluster="svc")])
        proxy.start(wait=False)
        proxy.wait_live(timeout=20)
        server.stop()
        wait(lambda: stats(proxy)["cluster_manager.cds.update_failure"] >= 1, what="CDS fetch failure")
        assert served_by(port, "u1")
    finally:
        proxy.cleanup()
        server.stop()
        up.stop()


def test_rest_config_checks(tmp_path):
    """REST needs refresh_delay and exactly one cluster_names entry, as in Envoy."""
    bs = rest_bootstrap(H.free_port())
    del bs["dynamic_resources"]["lds_config"]["api_config_source"]["refresh_delay"]
    proxy = H.Proxyd(H.write_config(tmp_path, bs))
    try:
        proxy.start(wait=False)
        assert proxy.wait_exit(timeout=15) != 0
        assert "refresh_delay is required" in proxy.log()
    finally:
        proxy.cleanup()
