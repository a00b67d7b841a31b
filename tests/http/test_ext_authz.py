"""envoy.filters.http.ext_authz end to end: real proxyd, real upstream, a real grpcio
authorization server deciding with a Rego policy (regopy), a plain HTTP authorization
service, and a dead one (failure_mode_allow). Statuses, headers both ways, bodies, per
route disable and context_extensions, the request body, stats under the HCM and the
route's cluster, flags and details in the access log."""
from __future__ import annotations

import time
import urllib.request
from pathlib import Path

import pytest

from authz_services import HttpAuthz, RegoAuthz
from harness import Proxyd, bootstrap, closed_port, cluster, free_port, hcm, http, write_config
from side_services import H2_OPTIONS

EXT_AUTHZ = "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz"
PER_ROUTE = "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute"
LOG_FORMAT = ("%REQ(:PATH)% %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% "
              "%DYNAMIC_METADATA(envoy.filters.http.ext_authz:user)%\n")


def _listener(name, port, prefix, authz, routes, log_path):
    h = hcm(routes=routes, stat_prefix=prefix, access_log=[{
        "name": "file", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
            "path": log_path, "log_format": {"text_format_source": {"inline_string":
                                                                     LOG_FORMAT}}}}])
    h["http_filters"].insert(0, {"name": "envoy.filters.http.ext_authz",
                                 "typed_config": dict({"@type": EXT_AUTHZ}, **authz)})
    return {"name": name, "address": {"socket_address": {"address": "127.0.0.1",
                                                         "port_value": port}},
            "filter_chains": [{"filters": [{
                "name": "envoy.filters.network.http_connection_manager", "typed_config": h}]}]}


def _route(prefix, per_route=None):
    r = {"match": {"prefix": prefix}, "route": {"cluster": "upstream"}}
    if per_route is not None:
        r["typed_per_filter_config"] = {"envoy.filters.http.ext_authz":
                                        dict({"@type": PER_ROUTE}, **per_route)}
    return r


def config(ports, upstream_port, grpc_port, http_port, log_dir):
    grpc_authz = {"grpc_service": {"envoy_grpc": {"cluster_name": "authz"}, "timeout": "0.25s"},
                  "transport_api_version": "V3"}
    http_authz = {"http_service": {
                      "server_uri": {"uri": "http://authz_http", "cluster": "authz_http",
                                     "timeout": "0.5s"},
                      "path_prefix": "/authz",
                      "authorization_request": {"allowed_headers": {"patterns": [
                          {"exact": "x-user"}]}},
                      "authorization_response": {
                          "allowed_upstream_headers": {"patterns": [{"exact": "x-authz-user"}]},
                          "allowed_client_headers": {"patterns": [
                              {"exact": "www-authenticate"}, {"exact": "x-deny-reason"}]}}},
                  "with_request_body": {"max_request_bytes": 1024},
                  "transport_api_version": "V3"}
    dead_authz = {"grpc_service": {"envoy_grpc": {"cluster_name": "authz_dead"}},
                  "failure_mode_allow": True, "failure_mode_allow_header_add": True,
                  "transport_api_version": "V3"}
    routes = [_route("/public", {"disabled": True}),
              _route("/ctx", {"check_settings": {"context_extensions": {"tier": "gold"}}}),
              _route("/")]
    listeners = [
        _listener("grpc", ports[0], "ingress", grpc_authz, routes, str(log_dir / "grpc.log")),
        _listener("http", ports[1], "ingress_http", http_authz, [_route("/")],
                  str(log_dir / "http.log")),
        _listener("dead", ports[2], "ingress_dead", dead_authz, [_route("/")],
                  str(log_dir / "dead.log")),
    ]
    clusters = [cluster("upstream", [("127.0.0.1", upstream_port)]),
                cluster("authz", [("127.0.0.1", grpc_port)],
                        typed_extension_protocol_options=H2_OPTIONS),
                cluster("authz_http", [("127.0.0.1", http_port)]),
                cluster("authz_dead", [("127.0.0.1", closed_port())],
                        typed_extension_protocol_options=H2_OPTIONS)]
    return bootstrap(listeners, clusters, ports[3])


@pytest.fixture(scope="module")
def authz():
    g, h = RegoAuthz(), HttpAuthz()
    yield g, h
    g.stop()
    h.stop()


@pytest.fixture(scope="module")
def px(upstream, authz, tmp_path_factory):
    d = tmp_path_factory.mktemp("ext_authz")
    ports = [free_port() for _ in range(4)]
    p = Proxyd(write_config(d, config(ports, upstream.port, authz[0].port, authz[1].port, d)))
    p.start()
    p.ports = ports
    p.dir = d
    yield p
    p.cleanup()


def stats(px) -> dict:
    text = urllib.request.urlopen(px.admin_url + "/stats", timeout=5).read().decode()
    return dict(line.split(": ", 1) for line in text.splitlines() if ": " in line)


def log_lines(path: Path, n: int) -> list[str]:
    deadline = time.monotonic() + 10
    while True:
        lines = path.read_text().splitlines() if path.exists() else []
        if len(lines) >= n or time.monotonic() > deadline:
            return lines
        time.sleep(0.05)


def test_grpc_authorization_with_a_rego_policy(px, authz):
    port = px.ports[0]
    ok = http(port, "GET", "/a", headers=[("x-user", "alice"), ("x-secret", "s")])
    assert ok.status == 200
    echo = {k.lower(): v for k, v in ok.json()["headers"]}
    assert echo["x-authz-user"] == "alice" and "x-secret" not in echo
    assert ok.header("x-authz-said") == "ok"
    bob = http(port, "GET", "/b", headers=[("x-user", "bob")])
    assert (bob.status, bob.body, bob.header("x-deny-reason")) == (401, b"bob is not welcome",
                                                                    "bob")
    assert bob.header_all("content-type") == ["application/json"]   # the service's wins
    nobody = http(port, "GET", "/c")
    assert (nobody.status, nobody.body) == (403, b"")
    assert http(port, "GET", "/public/x").status == 200     # per-route disabled: no call
    carol = http(port, "GET", "/ctx", headers=[("x-user", "carol")])
    assert carol.status == 200
    assert {k.lower(): v for k, v in carol.json()["headers"]}["x-ctx"] == "gold"
    slow = http(port, "GET", "/slow", headers=[("x-user", "alice")])   # 0.25 s timeout
    assert (slow.status, slow.body) == (403, b"")
    # what the authorization server was asked
    seen = [s for s in authz[0].seen if s["attributes"]["request"]["http"]["path"] == "/a"][0]
    h = seen["attributes"]["request"]["http"]
    assert h["method"] == "GET" and h["headers"]["x-user"] == "alice"
    assert h["headers"][":path"] == "/a" and h["protocol"] == "HTTP/1.1"
    assert seen["attributes"]["source"]["address"]["socket_address"]["address"] == "127.0.0.1"
    assert not any(s["attributes"]["request"]["http"]["path"].startswith("/public")
                   for s in authz[0].seen)
    s = stats(px)
    for scope in ("http.ingress.ext_authz.", "cluster.upstream.ext_authz."):
        assert (s[scope + "ok"], s[scope + "denied"], s[scope + "error"]) == ("2", "2", "1"), scope
    assert s["cluster.upstream.upstream_rq_401"] == "1"
    # the checks went through the authz cluster: 4 answered, 1 timed out
    assert (s["cluster.authz.upstream_rq_200"], s["cluster.authz.upstream_rq_timeout"]) == (
        "4", "1")
    assert log_lines(px.dir / "grpc.log", 6) == [
        "/a 200 - via_upstream alice",
        "/b 401 UAEX ext_authz_denied -",
        "/c 403 UAEX ext_authz_denied -",
        "/public/x 200 - via_upstream -",
        "/ctx 200 - via_upstream -",
        "/slow 403 UAEX ext_authz_error -",
    ]


def test_http_authorization_service(px, authz):
    port = px.ports[1]
    ok = http(port, "POST", "/p?q=1", headers=[("x-user", "alice"), ("x-secret", "s"),
                                                ("authorization", "Bearer t")], body=b"hello")
    assert ok.status == 200
    echo = {k.lower(): v for k, v in ok.json()["headers"]}
    assert echo["x-authz-user"] == "alice" and "x-authz-extra" not in echo
    assert "x-secret" not in echo and ok.json()["body_len"] == 5
    asked = authz[1].seen[-1]
    assert asked["path"] == "/authz/p?q=1" and asked["method"] == "POST"
    ah = dict(asked["headers"])
    assert ah["x-user"] == "alice" and ah["authorization"] == "Bearer t"
    assert "x-secret" not in ah and asked["body"] == "hello"
    denied = http(port, "GET", "/d")
    assert (denied.status, denied.body) == (401, b"who are you?")
    assert denied.header("www-authenticate") == 'Basic realm="t"'
    assert denied.header("x-deny-reason") == "http"
    err = http(port, "GET", "/error")
    assert (err.status, err.body) == (403, b"")
    big = http(port, "POST", "/big", headers=[("x-user", "alice")], body=b"x" * 2000)
    assert big.status == 413
    s = stats(px)
    assert (s["http.ingress_http.ext_authz.ok"], s["http.ingress_http.ext_authz.denied"],
            s["http.ingress_http.ext_authz.error"]) == ("1", "1", "1")
    assert log_lines(px.dir / "http.log", 4)[:3] == [
        "/p?q=1 200 - via_upstream -",
        "/d 401 UAEX ext_authz_denied -",
        "/error 403 UAEX ext_authz_error -",
    ]


def test_failure_mode_allow(px):
    r = http(px.ports[2], "GET", "/f")
    assert r.status == 200
    echo = {k.lower(): v for k, v in r.json()["headers"]}
    assert echo["x-envoy-auth-failure-mode-allowed"] == "true"
    s = stats(px)
    assert s["http.ingress_dead.ext_authz.error"] == "1"
    assert s["http.ingress_dead.ext_authz.failure_mode_allowed"] == "1"
    assert s["cluster.upstream.ext_authz.failure_mode_allowed"] == "1"
