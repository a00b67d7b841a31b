"""envoy.filters.http.rbac end to end: real proxyd, real upstream, real sockets. ALLOW
rules over methods, paths, ports and peer CIDRs, DENY shadow rules that only count, and
per-route RBACPerRoute (disabled, or replaced by stricter rules)."""
from __future__ import annotations

import time
import urllib.request
from pathlib import Path

import pytest

from harness import Proxyd, bootstrap, cluster, free_port, hcm, http, write_config

RBAC = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"
PER_ROUTE = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBACPerRoute"
ANY = {"any": True}


def config(port, admin_port, upstream_port, log_path):
    def up(prefix, per_route=None):
        r = {"match": {"prefix": prefix}, "route": {"cluster": "upstream"}}
        if per_route is not None:
            r["typed_per_filter_config"] = {"rbac": dict({"@type": PER_ROUTE}, **per_route)}
        return r

    rules = {"action": "ALLOW", "policies": {
        "allow-get": {"permissions": [{"header": {"name": ":method",
                                                  "string_match": {"exact": "GET"}}}],
                      "principals": [ANY]},
        "admin-local": {"permissions": [{"and_rules": {"rules": [
                            {"url_path": {"path": {"prefix": "/admin"}}},
                            {"destination_port": port}]}}],
                        "principals": [{"direct_remote_ip": {"address_prefix": "127.0.0.0",
                                                             "prefix_len": 8}}]},
        "from-ten": {"permissions": [ANY],
                     "principals": [{"or_ids": {"ids": [
                         {"remote_ip": {"address_prefix": "10.0.0.0", "prefix_len": 8}},
                         {"not_id": ANY}]}}]},
    }}
    shadow = {"action": "DENY", "policies": {"deny-secret": {
        "permissions": [{"url_path": {"path": {"prefix": "/secret"}}}], "principals": [ANY]}}}
    strict = {"action": "DENY", "policies": {"deny-all": {"permissions": [ANY],
                                                          "principals": [ANY]}}}
    routes = [up("/open", {}), up("/strict", {"rbac": {"rules": strict}}), up("/")]
    h = hcm(routes=routes, stat_prefix="ing", access_log=[{
        "name": "file", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
            "path": log_path, "log_format": {"text_format_source": {"inline_string":
                "%REQ(:METHOD)% %REQ(:PATH)% %RESPONSE_CODE% %RESPONSE_FLAGS% "
                "%RESPONSE_CODE_DETAILS% "
                "%DYNAMIC_METADATA(envoy.filters.http.rbac:shadow_engine_result)%\n"}}}}])
    h["http_filters"].insert(0, {"name": "rbac", "typed_config": {
        "@type": RBAC, "rules": rules, "shadow_rules": shadow}})
    return bootstrap([{"name": "l", "address": {"socket_address": {"address": "127.0.0.1",
                                                                   "port_value": port}},
                       "filter_chains": [{"filters": [{
                           "name": "envoy.filters.network.http_connection_manager",
                           "typed_config": h}]}]}],
                     [cluster("upstream", [("127.0.0.1", upstream_port)])], admin_port)


@pytest.fixture(scope="module")
def px(upstream, tmp_path_factory):
    d = tmp_path_factory.mktemp("rbac")
    log = str(d / "access.log")
    p = Proxyd(write_config(d, config(free_port(), free_port(), upstream.port, log)))
    p.start()
    p.access_log = log
    yield p
    p.cleanup()


def test_policies_allow_deny_shadow_and_per_route(px):
    cases = [("GET", "/x", 200), ("POST", "/x", 403), ("POST", "/admin/y?q=1", 200),
             ("GET", "/secret", 200), ("POST", "/open", 200), ("GET", "/strict", 403)]
    replies = {}
    for method, path, want in cases:
        r = http(px.port, method, path, body=b"" if method == "POST" else None)
        assert r.status == want, (method, path, r.status)
        replies[(method, path)] = r
    denied = replies[("POST", "/x")]
    assert denied.body == b"RBAC: access denied"
    assert denied.header("content-type") == "text/plain"
    text = urllib.request.urlopen(px.admin_url + "/stats", timeout=5).read().decode()
    stats = dict(line.split(": ", 1) for line in text.splitlines() if ": " in line)
    assert {n: stats["http.ing.rbac." + n] for n in
            ("allowed", "denied", "shadow_allowed", "shadow_denied")} == {
        "allowed": "3", "denied": "2", "shadow_allowed": "3", "shadow_denied": "1"}
    deadline = time.monotonic() + 5
    while True:
        lines = Path(px.access_log).read_text().splitlines() \
            if Path(px.access_log).exists() else []
        if len(lines) >= len(cases) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert lines == [
        "GET /x 200 - via_upstream allowed",
        "POST /x 403 - rbac_access_denied_matched_policy[none] allowed",
        "POST /admin/y?q=1 200 - via_upstream allowed",
        "GET /secret 200 - via_upstream denied",
        "POST /open 200 - via_upstream -",
        "GET /strict 403 - rbac_access_denied_matched_policy[deny-all] -",
    ]
