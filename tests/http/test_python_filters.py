"""Python HTTP filters as an operator uses them: the README example (etc/filters) loaded by
file path, by `pkg.mod:Class` and by a `proxyd.http_filters` entry point of an installed
distribution; `proxyd check` refusing broken filters; a filter that raises or hangs
answers 500, is counted, and the worker lives on."""
from __future__ import annotations

import os
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from harness import REPO, Conn, Proxyd, free_port, http, run_cli, write_config

EXAMPLE = REPO / "etc" / "filters" / "python-filters.yaml"
MISBEHAVING = str(Path(__file__).parent / "filters" / "misbehaving_filter.py")


def example_config(module_for_gate=None, entry_point=None):
    """etc/filters/python-filters.yaml on free ports, the gate loaded as asked."""
    cfg = yaml.safe_load(EXAMPLE.read_text())
    cfg["admin"]["address"]["socket_address"]["port_value"] = free_port()
    lst = cfg["static_resources"]["listeners"][0]
    lst["address"]["socket_address"]["port_value"] = free_port()
    hcm = lst["filter_chains"][0]["filters"][0]["typed_config"]
    gate = next(f for f in hcm["http_filters"] if f["name"] == "api_key_gate")["typed_config"]
    if module_for_gate is not None:
        gate["value"]["module"] = module_for_gate
    if entry_point is not None:
        del gate["value"]["module"]
        gate["value"]["entry_point"] = entry_point
    return cfg


def stats(px) -> dict:
    text = urllib.request.urlopen(px.admin_url + "/stats", timeout=5).read().decode()
    return dict(line.split(": ", 1) for line in text.splitlines() if ": " in line)


def start(tmp_path, cfg, pythonpath=()):
    env = {"PYTHONPATH": os.pathsep.join([str(REPO), *map(str, pythonpath)])}
    px = Proxyd(write_config(tmp_path, cfg), env=env)
    px.start()
    return px


def assert_example_works(px):
    r = http(px.port, path="/")
    assert r.status == 401 and r.body == b"missing or unknown x-api-key\n"
    assert r.header("www-authenticate") == 'ApiKey realm="proxyd"'
    assert r.header("server-timing").startswith("proxy;dur=")   # the other filter ran too
    r = http(px.port, path="/", headers=[("x-api-key", "k2")])
    assert r.status == 200 and r.body == b"hello, key holder\n"
    r = http(px.port, path="/public/x")                          # disabled on this route
    assert r.status == 200 and r.body == b"public\n"
    s = stats(px)
    assert s["http.ingress_http.python.api_key_gate.denied"] == "1"
    assert s["http.ingress_http.python.api_key_gate.allowed"] == "1"
    deadline = time.monotonic() + 5                               # the log is batched
    while "key=k2" not in px.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "/ 200 key=k2" in px.log() and "/ 401 key=-" in px.log()   # %DYNAMIC_METADATA%


def test_example_by_file_path(tmp_path):
    px = start(tmp_path, example_config())
    try:
        assert_example_works(px)
    finally:
        px.cleanup()


def test_example_by_module_name(tmp_path):
    px = start(tmp_path, example_config("example_filter:ApiKeyGate"),
               [REPO / "etc" / "filters"])
    try:
        assert_example_works(px)
    finally:
        px.cleanup()


def test_example_by_entry_point(tmp_path):
    site = tmp_path / "site"
    dist = site / "proxyd_example_filters-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: proxyd-example-filters\n"
                                   "Version: 1.0\n")
    (dist / "entry_points.txt").write_text("[proxyd.http_filters]\n"
                                           "api-key-gate = example_filter:ApiKeyGate\n")
    px = start(tmp_path, example_config(entry_point="api-key-gate"),
               [site, REPO / "etc" / "filters"])
    try:
        assert_example_works(px)
    finally:
        px.cleanup()


@pytest.mark.parametrize("value, reason", [
    ({"module": "no_such_module_xyz:Gate"}, "cannot import no_such_module_xyz"),
    ({"module": MISBEHAVING + ":Missing"}, "has no attribute 'Missing'"),
    ({"module": MISBEHAVING + ":NoApi"}, "has none of the filter methods"),
    ({"entry_point": "not-installed"}, "no 'proxyd.http_filters' entry point named"),
    ({"module": "etc/filters/example_filter.py:ApiKeyGate", "config": {"keys": "k1"}},
     "'keys' must be a list of strings"),
    ({"module": "etc/filters/example_filter.py:ApiKeyGate", "colour": "red"},
     "unknown field(s) colour"),
])
def test_check_refuses_broken_filters(tmp_path, value, reason):
    cfg = example_config()
    hcm = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["http_filters"][1]["typed_config"]["value"] = value
    r = run_cli("check", "-c", write_config(tmp_path, cfg))
    assert r.returncode != 0
    assert "python filter: " in r.stderr and reason in r.stderr, r.stderr


def test_raising_and_hanging_filters_answer_500_and_are_counted(tmp_path):
    cfg = example_config(MISBEHAVING + ":Raising")
    hcm = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    slow = {"name": "slow", "typed_config": {
        "@type": "type.googleapis.com/xds.type.v3.TypedStruct",
        "type_url": "type.googleapis.com/proxyd.filters.http.python.v1.Python",
        "value": {"module": MISBEHAVING + ":Slow", "stat_prefix": "slow", "timeout": 0.3}}}
    slow["disabled"] = True          # off by default, enabled on /public only
    hcm["http_filters"].insert(0, slow)
    public = hcm["route_config"]["virtual_hosts"][0]["routes"][0]
    public["typed_per_filter_config"]["slow"] = {
        "@type": "type.googleapis.com/envoy.config.route.v3.FilterConfig", "disabled": False}
    px = start(tmp_path, cfg)
    try:
        pids = px.status()["workers"]
        r = http(px.port, path="/public/x")          # the slow filter times out
        assert r.status == 500
        with Conn(px.port) as c:                     # the raising one, twice on one connection
            for _ in range(2):
                assert c.request("GET", "/", (), None, "example.com").status == 500
        s = stats(px)
        assert s["http.ingress_http.python.slow.timeouts"] == "1"
        assert int(s["http.ingress_http.python.api_key_gate.errors"]) >= 1
        assert px.status()["workers"] == pids
        assert "a bug in on_request" in px.log()
    finally:
        px.cleanup()

