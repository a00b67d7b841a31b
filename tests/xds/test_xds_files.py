"""path_config_source: atomic rename of the file, symlink swap in watched_directory (as a
Kubernetes ConfigMap), and a broken file that leaves the last good config serving."""
from __future__ import annotations

import json
import os
import re
import time

import pytest
import yaml
from google.protobuf import json_format

import harness as H
import xds_builders as B
from test_xds_e2e import wait
from proxyd.xds import resources as R

pytestmark = pytest.mark.timeout(90)


def response_yaml(type_url, version, msgs) -> str:
    resources = []
    for m in msgs:
        d = json.loads(json_format.MessageToJson(m, preserving_proto_field_name=True))
        d["@type"] = type_url
        resources.append(d)
    return yaml.safe_dump({"version_info": version, "type_url": type_url, "resources": resources})


def replace(path, text):
    tmp = str(path) + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.rename(tmp, path)


def listeners(port, direct, body):
    return response_yaml(R.LISTENER, body, [B.listener("l1", port, rc=B.route_config(
        "local", direct=direct, body=body))])


def body_of(port):
    r = H.http(port, timeout=3)
    return r.status, r.body.decode()


def test_rename_in_place_and_broken_file(tmp_path):
    port = H.free_port()
    lds = tmp_path / "lds.yaml"
    lds.write_text(listeners(port, 200, "one"))
    cfg = H.write_config(tmp_path, {"node": {"id": "n", "cluster": "c"}, "dynamic_resources": {
        "lds_config": {"path_config_source": {"path": str(lds)}, "resource_api_version": "V3"}}})
    p = H.Proxyd(cfg, concurrency=1)
    try:
        p.start(timeout=20)
        assert body_of(port) == (200, "one")
        replace(lds, listeners(port, 201, "two"))
        wait(lambda: body_of(port) == (201, "two"), what="renamed file applied")
        replace(lds, "version_info: [broken")
        time.sleep(1.0)
        assert body_of(port) == (201, "two")
        replace(lds, listeners(port, 500, "bad").replace("http_filters", "http_filterz"))
        time.sleep(1.0)
        assert body_of(port) == (201, "two")
        log = p.log()
        assert "xds_rejected" in log and "%s:1:15: invalid YAML" % lds in log
        # Located like `proxyd check`: FILE:LINE:COL: path: reason.
        assert re.search(r"%s:\d+:\d+: resources\[0\]\.filter_chains\[0\]\.filters\[0\]"
                         r"\.typed_config\.http_filterz: unknown field 'http_filterz'" % re.escape(str(lds)),
                         log), log
        replace(lds, listeners(port, 202, "three"))
        wait(lambda: body_of(port) == (202, "three"), what="good file after broken ones")
    finally:
        p.cleanup()


def test_symlink_swap_in_watched_directory(tmp_path):
    """The ConfigMap layout: cfg/lds.yaml -> ..data/lds.yaml, ..data -> ..v1; an update
    writes ..v2 and renames a new ..data symlink over the old one."""
    port = H.free_port()
    cm = tmp_path / "cm"
    (cm / "..v1").mkdir(parents=True)
    (cm / "..v1" / "lds.yaml").write_text(listeners(port, 200, "v1"))
    os.symlink("..v1", cm / "..data")
    os.symlink("..data/lds.yaml", cm / "lds.yaml")
    cfg = H.write_config(tmp_path, {"node": {"id": "n", "cluster": "c"}, "dynamic_resources": {
        "lds_config": {"path_config_source": {"path": str(cm / "lds.yaml"),
                                              "watched_directory": {"path": str(cm)}},
                       "resource_api_version": "V3"}}})
    p = H.Proxyd(cfg, concurrency=1)
    try:
        p.start(timeout=20)
        assert body_of(port) == (200, "v1")
        (cm / "..v2").mkdir()
        (cm / "..v2" / "lds.yaml").write_text(listeners(port, 200, "v2"))
        os.symlink("..v2", cm / "..data_tmp")
        os.rename(cm / "..data_tmp", cm / "..data")
        wait(lambda: body_of(port) == (200, "v2"), what="symlink swap applied")
    finally:
        p.cleanup()


def test_modified_listener_drains_connections_on_the_old_chain(tmp_path):
    """A keep-alive connection accepted before a listener change gets `Connection: close`
    on its next response (answered by the old chain); a new connection gets the new one."""
    port = H.free_port()
    lds = tmp_path / "lds.yaml"
    lds.write_text(listeners(port, 200, "old"))
    cfg = H.write_config(tmp_path, {"node": {"id": "n", "cluster": "c"}, "dynamic_resources": {
        "lds_config": {"path_config_source": {"path": str(lds)}, "resource_api_version": "V3"}}})
    p = H.Proxyd(cfg, concurrency=1)
    try:
        p.start(timeout=20)
        with H.Conn(port) as c:
            r = c.request("GET", "/")
            assert (r.status, r.body, r.header("connection")) == (200, b"old", None)
            replace(lds, listeners(port, 201, "new"))
            wait(lambda: body_of(port) == (201, "new"), what="modified listener applied")
            r = c.request("GET", "/")
            assert (r.status, r.body, r.header("connection")) == (200, b"old", "close")
    finally:
        p.cleanup()
