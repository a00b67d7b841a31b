"""The sans-IO xDS session: the protocol rules of envoy-reference.md section 2.3."""
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2

from proxyd.xds import resources as R
from proxyd.xds.state import Session

import xds_builders as build

NODE = base_pb2.Node(id="n1", cluster="c1")


def sotw(type_url, version, nonce, *msgs):
    resp = discovery_pb2.DiscoveryResponse(type_url=type_url, version_info=version, nonce=nonce)
    for m in msgs:
        resp.resources.add().Pack(m)
    return resp


def delta(type_url, nonce, *msgs, removed=(), version="sys"):
    resp = discovery_pb2.DeltaDiscoveryResponse(type_url=type_url, nonce=nonce,
                                                system_version_info=version,
                                                removed_resources=list(removed))
    for name, ver, m in msgs:
        r = resp.resources.add(name=name, version=ver)
        r.resource.Pack(m)
    return resp


def test_node_on_first_request_only_and_make_before_break_order():
    s = Session(NODE)
    assert s.subscribe(R.LISTENER) == []          # not connected yet
    s.subscribe(R.CLUSTER)
    reqs = s.connect()
    assert [r.type_url for r in reqs] == [R.CLUSTER, R.LISTENER]
    assert reqs[0].node.id == "n1" and not reqs[1].HasField("node")
    assert list(reqs[0].resource_names) == [] and reqs[0].version_info == "" and reqs[0].response_nonce == ""


def test_ack_echoes_version_and_nonce_nack_keeps_previous_version():
    s = Session(NODE)
    s.subscribe(R.CLUSTER)
    s.connect()
    up, nack = s.handle(sotw(R.CLUSTER, "v1", "n-1", build.static_cluster("a", [("127.0.0.1", 1)])))
    assert nack is None and up.full_state and set(up.resources) == {"a"}
    ack = s.accepted(up)
    assert (ack.version_info, ack.response_nonce, ack.HasField("error_detail")) == ("v1", "n-1", False)
    bad = build.static_cluster("b", [("not-an-ip", 1)])
    up, nack = s.handle(sotw(R.CLUSTER, "v2", "n-2", bad))
    assert up is None
    assert (nack.version_info, nack.response_nonce) == ("v1", "n-2")
    assert "cds 'b'" in nack.error_detail.message and "socket_address.address" in nack.error_detail.message
    assert nack.error_detail.code == 3


def test_duplicate_name_is_nacked():
    s = Session(NODE)
    s.subscribe(R.CLUSTER)
    s.connect()
    c = build.static_cluster("a", [("127.0.0.1", 1)])
    up, nack = s.handle(sotw(R.CLUSTER, "v1", "n1", c, c))
    assert up is None and "duplicate CDS resource name 'a'" in nack.error_detail.message
    assert nack.version_info == ""


def test_master_rejection_is_a_nack():
    s = Session(NODE)
    s.subscribe(R.LISTENER)
    s.connect()
    up, _ = s.handle(sotw(R.LISTENER, "1", "x", build.listener("l", 1)))
    nack = s.rejected(up, "cannot bind")
    assert (nack.version_info, nack.response_nonce, nack.error_detail.message) == ("", "x", "cannot bind")


def test_wrong_resource_type_is_nacked():
    s = Session(NODE)
    s.subscribe(R.LISTENER)
    s.connect()
    _, nack = s.handle(sotw(R.LISTENER, "1", "x", build.static_cluster("a", [])))
    assert "envoy.config.cluster.v3.Cluster in a" in nack.error_detail.message


def test_named_subscriptions_ignore_unrequested_and_update_names():
    s = Session(NODE)
    s.subscribe(R.ROUTE, ["r1"])
    first = s.connect()[0]
    assert list(first.resource_names) == ["r1"] and first.node.id == "n1"
    up, _ = s.handle(sotw(R.ROUTE, "7", "a", build.route_config("r1"), build.route_config("zz")))
    assert set(up.resources) == {"r1"} and not up.full_state
    s.accepted(up)
    [req] = s.subscribe(R.ROUTE, ["r1", "r2"])
    assert (list(req.resource_names), req.version_info, req.response_nonce) == (["r1", "r2"], "7", "a")
    assert not req.HasField("node")
    assert s.subscribe(R.ROUTE, ["r2", "r1"]) == []
    # once names were sent, an empty list unsubscribes everything
    [req] = s.subscribe(R.ROUTE, [])
    assert list(req.resource_names) == []


def test_named_type_without_names_is_not_requested_on_a_new_stream():
    s = Session(NODE)
    s.subscribe(R.LISTENER)
    s.subscribe(R.ROUTE, [])
    assert [r.type_url for r in s.connect()] == [R.LISTENER]
    [req] = s.subscribe(R.ROUTE, ["r"])
    assert list(req.resource_names) == ["r"]


def test_reconnect_resends_last_accepted_version_without_nonce():
    s = Session(NODE)
    s.subscribe(R.CLUSTER)
    s.connect()
    up, _ = s.handle(sotw(R.CLUSTER, "v9", "n9"))
    s.accepted(up)
    [req] = s.connect()
    assert (req.version_info, req.response_nonce, req.node.id) == ("v9", "", "n1")


def test_subscribe_while_connected_sends_initial_request():
    s = Session(NODE)
    s.subscribe(R.LISTENER)
    s.connect()
    [req] = s.subscribe(R.CLUSTER)
    assert req.type_url == R.CLUSTER and not req.HasField("node")


def test_delta_initial_versions_removed_and_acks():
    s = Session(NODE, delta=True)
    s.subscribe(R.CLUSTER, versions={"a": "3"})
    [req] = s.connect()
    assert isinstance(req, discovery_pb2.DeltaDiscoveryRequest)
    assert dict(req.initial_resource_versions) == {"a": "3"} and list(req.resource_names_subscribe) == []
    up, _ = s.handle(delta(R.CLUSTER, "n1", ("b", "1", build.static_cluster("b", [])), removed=["a"]))
    assert set(up.resources) == {"b"} and up.removed == ["a"] and not up.full_state
    ack = s.accepted(up)
    assert ack.response_nonce == "n1" and not ack.HasField("error_detail")
    [req] = s.connect()
    assert dict(req.initial_resource_versions) == {"b": "1"}


def test_delta_named_subscribe_unsubscribe_and_nack():
    s = Session(NODE, delta=True)
    s.subscribe(R.ENDPOINT, ["a"])
    [req] = s.connect()
    assert list(req.resource_names_subscribe) == ["a"]
    up, _ = s.handle(delta(R.ENDPOINT, "n1", ("a", "1", build.cla("a", [("127.0.0.1", 1)]))))
    s.accepted(up)
    [req] = s.subscribe(R.ENDPOINT, ["b"])
    assert list(req.resource_names_subscribe) == ["b"] and list(req.resource_names_unsubscribe) == ["a"]
    _, nack = s.handle(delta(R.ENDPOINT, "n2", ("b", "1", build.cla("b", [])), ("b", "2", build.cla("b", []))))
    assert nack.response_nonce == "n2" and "duplicate EDS resource name 'b'" in nack.error_detail.message
    [req] = s.connect()
    assert dict(req.initial_resource_versions) == {}


def test_resource_wrapper_is_unwrapped():
    s = Session(NODE)
    s.subscribe(R.CLUSTER)
    s.connect()
    wrapped = discovery_pb2.Resource(name="a", version="1")
    wrapped.resource.Pack(build.static_cluster("a", []))
    resp = discovery_pb2.DiscoveryResponse(type_url=R.CLUSTER, version_info="1", nonce="n")
    resp.resources.add().Pack(wrapped)
    up, nack = s.handle(resp)
    assert nack is None and set(up.resources) == {"a"}


def test_backoff_is_jittered_between_half_a_second_and_thirty():
    from proxyd.xds.agent import backoff_delay, method_path
    assert backoff_delay(0, rng=lambda: 1.0) == 0.5
    assert backoff_delay(3, rng=lambda: 1.0) == 4.0
    assert backoff_delay(20, rng=lambda: 1.0) == 30.0
    assert 0 < backoff_delay(5, rng=lambda: 0.0) <= 0.05
    assert method_path(None, True) == "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources"
    assert method_path(R.ROUTE, False) == "/envoy.service.route.v3.RouteDiscoveryService/StreamRoutes"
