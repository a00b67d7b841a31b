"""RTDS end to end: a layered runtime with a static layer and an rtds_layer fed over ADS;
`GET /runtime` shows both layers and the final values, updates apply, a bad Runtime is
NACKed, and the runtime.* stats are Envoy's."""
from __future__ import annotations

import json

import pytest
from envoy.service.runtime.v3 import rtds_pb2
from google.protobuf import json_format

import harness as H
from proxyd.xds import resources as R
from test_rest import stats
from test_xds_e2e import wait
from xds_server import XdsServer

pytestmark = pytest.mark.timeout(60)


def runtime(name: str, layer: dict) -> rtds_pb2.Runtime:
    return json_format.ParseDict({"name": name, "layer": layer}, rtds_pb2.Runtime())


def rtds_bootstrap(xds_port: int, admin_port: int) -> dict:
    api = {"api_type": "AGGREGATED_GRPC", "transport_api_version": "V3",
           "grpc_services": [{"envoy_grpc": {"cluster_name": "xds"}}]}
    return {"node": {"id": "proxyd-rtds", "cluster": "tests"},
            "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
            "layered_runtime": {"layers": [
                {"name": "base", "static_layer": {
                    "shared": "static", "only_static": 1,
                    "health_check": {"min_interval": 5},
                    "frac": {"numerator": 5, "denominator": "HUNDRED"}}},
                {"name": "rt0", "rtds_layer": {"name": "rt0", "rtds_config": {
                    "ads": {}, "resource_api_version": "V3"}}}]},
            "dynamic_resources": {"ads_config": api},
            "static_resources": {"clusters": [dict(H.cluster("xds", [("127.0.0.1", xds_port)]),
                                                   http2_protocol_options={})]}}


def get_runtime(admin_port: int) -> dict:
    r = H.http(admin_port, path="/runtime", timeout=5)
    assert r.status == 200
    return json.loads(r.body)


def test_rtds_layers_updates_and_nack(tmp_path):
    server = XdsServer().start()
    admin = H.free_port()
    proxy = H.Proxyd(H.write_config(tmp_path, rtds_bootstrap(server.port, admin)))
    try:
        server.set(R.RUNTIME, "1", [runtime("rt0", {"shared": "rtds", "x": 7, "flag": True,
                                                   "health_check": {"min_interval": 2.5}})])
        proxy.start(wait=False)
        proxy.wait_live(timeout=20)
        first = server.of_type(R.RUNTIME)[0].req
        assert list(first.resource_names) == ["rt0"] and first.node.id == "proxyd-rtds"

        rt = get_runtime(admin)
        assert rt["layers"] == ["base", "rt0"]
        e = rt["entries"]
        assert e["shared"] == {"layer_values": ["static", "rtds"], "final_value": "rtds"}
        assert e["only_static"] == {"layer_values": ["1", ""], "final_value": "1"}
        assert e["x"] == {"layer_values": ["", "7"], "final_value": "7"}
        assert e["flag"]["final_value"] == "true"
        assert e["health_check.min_interval"] == {"layer_values": ["5", "2.5"], "final_value": "2.5"}
        assert "frac" in e and "frac.numerator" not in e

        st = stats(proxy)
        assert st["runtime.update_success"] == 1 and st["runtime.update_attempt"] == 1
        assert st["runtime.update_rejected"] == 0 and st["runtime.version"] != 0
        assert st["runtime.num_layers"] == 2
        assert st["runtime.num_keys"] == 6   # shared only_static health_check.min_interval frac x flag
        assert st["runtime.load_success"] == 2 and st["runtime.load_error"] == 0

        # An update replaces the layer: x goes away, shared changes.
        server.set(R.RUNTIME, "2", [runtime("rt0", {"shared": "v2"})])
        wait(lambda: get_runtime(admin)["entries"]["shared"]["final_value"] == "v2", what="RTDS v2")
        e = get_runtime(admin)["entries"]
        assert "x" not in e and e["shared"]["layer_values"] == ["static", "v2"]
        st = stats(proxy)
        assert st["runtime.num_keys"] == 4 and st["runtime.load_success"] == 3

        # A list value is invalid in a runtime layer (as in Envoy): NACK, layer untouched.
        n = len(server.requests)
        server.set(R.RUNTIME, "3", [runtime("rt0", {"shared": "v3", "bad": [1, 2]})])
        nack = server.wait_for(lambda: [r for r in server.of_type(R.RUNTIME, n) if r.is_nack],
                               what="RTDS NACK")[0]
        assert nack.req.version_info == "2"
        msg = nack.req.error_detail.message
        assert "rtds 'rt0'" in msg and "layer.bad" in msg and "invalid runtime entry value" in msg, msg
        assert get_runtime(admin)["entries"]["shared"]["final_value"] == "v2"
        st = stats(proxy)
        assert st["runtime.update_rejected"] == 1 and st["runtime.load_success"] == 3
    finally:
        proxy.cleanup()
        server.stop()


def test_static_layer_list_value_is_a_config_error(tmp_path):
    from proxyd.config import ConfigError, load_bootstrap
    bs = rtds_bootstrap(H.free_port(), H.free_port())
    bs["layered_runtime"]["layers"][0]["static_layer"]["bad"] = {"inner": [1]}
    with pytest.raises(ConfigError) as e:
        load_bootstrap(H.write_config(tmp_path, bs))
    assert "layered_runtime.layers[0].static_layer.bad.inner: invalid runtime entry value for " \
           "bad.inner (list)" in str(e.value)
