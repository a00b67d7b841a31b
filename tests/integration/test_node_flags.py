"""Envoy's --service-node/--service-cluster/--service-zone override the bootstrap node."""
import json
import urllib.request

from harness import bootstrap, free_port, listener


def test_service_flags_override_bootstrap_node(proxyd_factory):
    admin = free_port()
    px = proxyd_factory(bootstrap([listener(free_port(), routes=[])], admin_port=admin),
                        extra_args=["--service-node", "edge-7", "--service-cluster", "edge",
                                    "--service-zone", "z1"])
    info = json.load(urllib.request.urlopen(px.admin_url + "/server_info", timeout=5))
    assert (info["node"]["id"], info["node"]["cluster"]) == ("edge-7", "edge")
    assert info["node"]["locality"]["zone"] == "z1"
