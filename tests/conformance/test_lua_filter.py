"""envoy.filters.http.lua next to real Envoy 1.40 (LuaJIT both sides): the scripts of
Envoy's `lua` sandbox unchanged (`require("lib.mylibrary")` through LUA_PATH, a header
added on the request, the response body's size added on the response) and more of the
handle API: headers get/replace/remove/pairs, request body(), respond(), a script error,
LuaPerRoute (disabled, a named source code)."""
from __future__ import annotations

import os

import pytest

from compare import response_diff

TEMPLATE = """
admin:
  address: {socket_address: {address: 127.0.0.1, port_value: $admin}}
static_resources:
  listeners:
  - name: main
    address: {socket_address: {address: 127.0.0.1, port_value: $listener}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress_http
          codec_type: auto
          route_config:
            name: local_route
            virtual_hosts:
            - name: local_service
              domains:
              - "*"
              routes:
              - match: {prefix: "/off"}
                route: {cluster: web_service}
                typed_per_filter_config:
                  envoy.filters.http.lua:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.lua.v3.LuaPerRoute
                    disabled: true
              - match: {prefix: "/api"}
                route: {cluster: web_service}
                typed_per_filter_config:
                  envoy.filters.http.lua:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.lua.v3.LuaPerRoute
                    name: api.lua
              - match:
                  prefix: "/"
                route:
                  cluster: web_service
          http_filters:
          - name: envoy.filters.http.lua
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua
              inline_code: |
                local mylibrary = require("lib.mylibrary")

                function envoy_on_request(request_handle)
                  request_handle:headers():add("foo", mylibrary.foobar())
                end
                function envoy_on_response(response_handle)
                  body_size = response_handle:body():length()
                  response_handle:headers():add("response-body-size", tostring(body_size))
                end
              source_codes:
                api.lua:
                  inline_string: |
                    function envoy_on_request(h)
                      local hs = h:headers()
                      if hs:get("x-deny") then
                        h:respond({[":status"] = "403", ["x-why"] = "denied"}, "nope")
                      end
                      if hs:get("x-boom") then error("boom") end
                      hs:replace("x-path", hs:get(":path"))
                      hs:remove("x-secret")
                      local b = h:body()
                      if b then hs:add("x-body", b:getBytes(0, b:length())) end
                      local n = 0
                      for k, v in pairs(h:headers()) do n = n + 1 end
                      h:headers():add("x-count", tostring(n))
                      h:logInfo("api request")
                    end
                    function envoy_on_response(h)
                      h:headers():replace("x-status", h:headers():get(":status"))
                    end
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: web_service
    connect_timeout: 0.25s
    type: STATIC
    lb_policy: round_robin
    load_assignment:
      cluster_name: web_service
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: {address: 127.0.0.1, port_value: $upstream}
"""

CASES = [
    ("GET", "/t?size=123", [], None),
    ("GET", "/echo", [], None),
    ("GET", "/off/t?size=9", [], None),
    ("POST", "/api/echo", [("x-secret", "s"), ("a", "1")], b"hello body"),
    ("GET", "/api/echo", [("x-deny", "1")], None),
    ("GET", "/api/echo", [("x-boom", "1")], None),
]


@pytest.fixture(scope="module")
def lua_path(tmp_path_factory):
    d = tmp_path_factory.mktemp("lua")
    (d / "lib").mkdir()
    (d / "lib" / "mylibrary.lua").write_text('M = {}\n\nfunction M.foobar()\n    return "bar"\n'
                                             'end\n\nreturn M\n')
    old = os.environ.get("LUA_PATH")
    os.environ["LUA_PATH"] = "%s/?.lua;;" % d
    yield
    if old is None:
        del os.environ["LUA_PATH"]
    else:
        os.environ["LUA_PATH"] = old


def test_lua_sandbox_scripts_and_handle_api_match_envoy(lua_path, pair_factory):
    pair = pair_factory(TEMPLATE)
    diffs, seen = [], []
    for method, path, headers, body in CASES:
        e, p = pair.both(lambda s: s.http(path, method=method, headers=headers, body=body))
        diffs += ["%s %s: %s" % (method, path, d) for d in response_diff(e, p)]
        seen.append(e)
    assert seen[0].header("response-body-size") == "123"   # the sandbox's verify.sh
    assert dict(seen[1].json()["headers"])["foo"] == "bar"
    assert seen[4].status == 403 and seen[4].header("x-status") == "403"
    stats = pair.both(lambda s: [line for line in s.admin("/stats").body.decode().splitlines()
                                 if ".lua." in line])
    if stats[0] != stats[1]:
        diffs.append("stats: envoy %s, proxyd %s" % stats)
    assert diffs == [], "\n".join(diffs)
