"""envoy.filters.http.lua end to end with real clients: curl (HTTP/1.1) and an HTTP/2
client through the lua sandbox's scripts; a request body a script rewrites reaches the
upstream rewritten (HTTP/2 upload, no Content-Length); respond() answers locally; a
script error counts lua.errors and the request goes on; Lua cannot reach Python."""
from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from harness import Proxyd, bootstrap, cluster, free_port, hcm, http, write_config

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "http2"))
from h2client import H2Client  # noqa: E402

LUA = "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua"
SCRIPT = """
function envoy_on_request(h)
  local hs = h:headers()
  hs:add("foo", "bar")
  if hs:get(":path") == "/deny" then
    h:respond({[":status"] = "418", ["x-lua"] = "yes"}, "short and stout")
  end
  if hs:get(":path") == "/boom" then error("boom") end
  if hs:get(":path") == "/python" then
    hs:add("x-escape", tostring(python ~= nil) .. tostring(h.__class__ ~= nil))
  end
  if hs:get(":method") == "POST" then
    local b = h:body()
    if b then b:setBytes(string.upper(b:getBytes(0, b:length()))) end
  end
end
function envoy_on_response(h)
  local size = h:body():length()   -- first: objects got before a wait are dead after it
  h:headers():add("response-body-size", tostring(size))
end
"""


@pytest.fixture(scope="module")
def px(upstream, tmp_path_factory):
    h = hcm(stat_prefix="lua_edge")
    h["http_filters"].insert(0, {"name": "envoy.filters.http.lua",
                                 "typed_config": {"@type": LUA, "inline_code": SCRIPT}})
    port = free_port()
    lst = {"name": "lua", "address": {"socket_address": {"address": "127.0.0.1",
                                                         "port_value": port}},
           "filter_chains": [{"filters": [{
               "name": "envoy.filters.network.http_connection_manager", "typed_config": h}]}]}
    cfg = bootstrap([lst], [cluster("upstream", [("127.0.0.1", upstream.port)])], free_port())
    p = Proxyd(write_config(tmp_path_factory.mktemp("lua"), cfg)).start()
    yield p
    p.cleanup()


def test_sandbox_scripts_with_curl(px):
    out = subprocess.run(["curl", "-s", "-D", "/dev/stderr",
                          "http://127.0.0.1:%d/echo" % px.port], capture_output=True, timeout=10)
    assert dict(json.loads(out.stdout)["headers"])["foo"] == "bar"
    assert "response-body-size: %d" % len(out.stdout) in out.stderr.decode().lower()


def test_http2_body_rewrite_respond_and_error(px):
    with H2Client(px.port) as c:
        r = c.wait(c.request("POST", "/echo", [], body=b"hello lua" * 1000))
        echo = json.loads(bytes(r.body))
        assert echo["body"] == "HELLO LUA" * 1000 and echo["body_len"] == 9000
        r = c.get("/deny")
        assert r.status == 418 and bytes(r.body) == b"short and stout"
        assert r.header("x-lua") == "yes" and r.header("response-body-size") == "15"
        assert c.get("/boom").status == 200
    s = urllib.request.urlopen(px.admin_url + "/stats", timeout=5).read().decode()
    assert "http.lua_edge.lua.errors: 1" in s


def test_lua_cannot_reach_python(px):
    r = http(px.port, path="/python")
    # no `python` module, and a handle is a Lua table (no Python attributes behind it)
    assert r.status == 200 and dict(r.json()["headers"])["x-escape"] == "falsefalse"
