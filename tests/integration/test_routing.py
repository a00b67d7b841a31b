"""The route table through a running proxyd: virtual host domains, path/prefix/regex/
header matching, rewrites, direct responses, redirects and header mutations, as a
client and the upstream see them."""
import pytest

from harness import (Upstream, bootstrap, cluster, free_port, http, listener, route,
                     virtual_host)


@pytest.fixture(scope="module")
def env(module_proxyd_factory):
    a, b = Upstream("a"), Upstream("b")
    vhosts = [
        virtual_host(name="api", domains=["api.example.com", "api.example.com:8443"], routes=[
            route("/", "b", name="api-all"),
        ]),
        virtual_host(name="wild-suffix", domains=["*.suffix.test"], routes=[
            {"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": "suffix"}}},
        ]),
        virtual_host(name="wild-prefix", domains=["prefix.*"], routes=[
            {"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": "prefix"}}},
        ]),
        virtual_host(name="default", domains=["*"],
                     request_headers_to_add=[{"header": {"key": "x-vh", "value": "default"}}],
                     response_headers_to_add=[{"header": {"key": "x-vh-resp", "value": "1"}}],
                     routes=[
            route(None, "a", match={"path": "/exact"}, name="exact"),
            route(None, "b", match={"safe_regex": {"regex": "^/re/[0-9]+$"}}, name="regex"),
            route(None, "b", match={"prefix": "/hdr", "headers": [
                {"name": "x-canary", "string_match": {"exact": "yes"}}]}, name="hdr-canary"),
            route("/hdr", "a", name="hdr-default"),
            route(None, "b", match={"prefix": "/CaSe", "case_sensitive": False}, name="case"),
            route("/rewrite/", "a", prefix_rewrite="/new/", name="rewrite"),
            route("/strip/", "a", prefix_rewrite="/", name="strip"),
            route("/hostlit/", "a", host_rewrite_literal="rewritten.example", name="hostlit"),
            route("/autohost/", "dns", auto_host_rewrite=True, name="autohost"),
            route("/dns/", "dns", name="dns"),
            route("/mut/", "a", name="mut",
                  ) | {"request_headers_to_add": [{"header": {"key": "x-added", "value": "v"}}],
                       "request_headers_to_remove": ["x-remove-me"],
                       "response_headers_to_add": [{"header": {"key": "x-route-resp", "value": "r"}}],
                       "response_headers_to_remove": ["x-up-secret"]},
            {"match": {"path": "/direct"}, "direct_response": {"status": 418, "body": {"inline_string": "short and stout"}}},
            {"match": {"path": "/direct-empty"}, "direct_response": {"status": 204}},
            {"match": {"prefix": "/old/"}, "redirect": {"prefix_rewrite": "/new/"}},
            {"match": {"path": "/moved"}, "redirect": {"host_redirect": "other.example", "path_redirect": "/there",
                                                       "response_code": "PERMANENT_REDIRECT"}},
            {"match": {"path": "/secure"}, "redirect": {"https_redirect": True}},
            route("/", "a", name="catch-all"),
        ]),
    ]
    clusters = [cluster("a", [a.address]), cluster("b", [b.address]),
                cluster("dns", [("localhost", a.port)], type="STRICT_DNS", dns_lookup_family="V4_ONLY")]
    px = module_proxyd_factory(bootstrap([listener(free_port(), virtual_hosts=vhosts,
                                                   route_config_extra={
                                                       "response_headers_to_add": [{"header": {"key": "x-rc", "value": "1"}}]})],
                                         clusters))
    yield px, a, b
    a.stop()
    b.stop()


def get(env, path, host="example.com", headers=()):
    return http(env[0].port, path=path, host=host, headers=headers)


@pytest.mark.parametrize("host,server", [
    ("api.example.com", "b"), ("API.Example.COM", "b"), ("api.example.com:8443", "b"),
    ("api.example.com:9999", "a"), ("other.example.com", "a"),
])
def test_domains_select_virtual_host(env, host, server):
    """Domains match case-insensitively; a port is part of the host unless a domain names
    it (Envoy's default, without strip_any_host_port)."""
    assert get(env, "/x", host=host).json()["server"] == server


@pytest.mark.parametrize("host,body", [("a.suffix.test", b"suffix"), ("prefix.anything", b"prefix")])
def test_wildcard_domains(env, host, body):
    r = get(env, "/", host=host)
    assert (r.status, r.body) == (200, body)


@pytest.mark.parametrize("path,server,upstream_path", [
    ("/exact", "a", "/exact"), ("/exact?q=1", "a", "/exact?q=1"), ("/exact/more", "a", "/exact/more"),
    ("/re/123", "b", "/re/123"), ("/re/12a", "a", "/re/12a"), ("/case/x", "b", "/case/x"),
    ("/CASE/y", "b", "/CASE/y"), ("/anything", "a", "/anything"),
])
def test_path_matching(env, path, server, upstream_path):
    echo = get(env, path).json()
    assert (echo["server"], echo["path"]) == (server, upstream_path)


def test_header_matching(env):
    assert get(env, "/hdr").json()["server"] == "a"
    assert get(env, "/hdr", headers=[("X-Canary", "yes")]).json()["server"] == "b"
    assert get(env, "/hdr", headers=[("X-Canary", "no")]).json()["server"] == "a"


@pytest.mark.parametrize("path,upstream_path", [
    ("/rewrite/a/b?c=d", "/new/a/b?c=d"), ("/strip/x", "/x"), ("/strip/", "/"),
])
def test_prefix_rewrite(env, path, upstream_path):
    echo = get(env, path).json()
    assert echo["path"] == upstream_path
    assert dict(echo["headers"])["x-envoy-original-path"] == path


def test_host_rewrite_literal(env):
    echo = get(env, "/hostlit/x").json()
    assert dict(echo["headers"])["host"] == "rewritten.example"


def test_auto_host_rewrite_uses_dns_name(env):
    echo = get(env, "/autohost/x").json()
    assert dict(echo["headers"])["host"] == "localhost"


def test_strict_dns_localhost(env):
    """A STRICT_DNS cluster with `localhost` resolves in the master and is served."""
    r = get(env, "/dns/x")
    assert r.status == 200 and r.json()["server"] == "a"
    assert dict(r.json()["headers"])["host"] == "example.com"


def test_header_mutations(env):
    r = get(env, "/mut/x?hdr=X-Up-Secret:s&hdr=X-Up-Public:p", headers=[("X-Remove-Me", "1"), ("X-Keep", "1")])
    sent = dict(r.json()["headers"])
    assert sent["x-added"] == "v" and sent["x-vh"] == "default" and sent["x-keep"] == "1"
    assert "x-remove-me" not in sent
    assert r.header("x-route-resp") == "r" and r.header("x-vh-resp") == "1" and r.header("x-rc") == "1"
    assert r.header("x-up-public") == "p"
    assert r.header("x-up-secret") is None


def test_direct_response(env):
    r = get(env, "/direct")
    assert (r.status, r.body) == (418, b"short and stout")
    assert r.header("content-length") == "15"
    r = get(env, "/direct-empty")
    assert (r.status, r.body) == (204, b"")


def test_redirect_prefix_rewrite(env):
    r = get(env, "/old/page?x=1")
    assert r.status == 301
    assert r.header("location") == "http://example.com/new/page?x=1"
    assert r.body == b""


def test_redirect_host_and_path(env):
    r = get(env, "/moved")
    assert r.status == 308
    assert r.header("location") == "http://other.example/there"


@pytest.mark.parametrize("host,location", [
    ("example.com", "https://example.com/secure"), ("example.com:80", "https://example.com/secure"),
    ("example.com:8080", "https://example.com:8080/secure"),
])
def test_https_redirect(env, host, location):
    """The default port of the old scheme is dropped, any other kept (Envoy's newUri)."""
    r = get(env, "/secure", host=host)
    assert r.status == 301
    assert r.header("location") == location


def test_no_matching_virtual_host_is_404(module_proxyd_factory, upstream):
    vh = virtual_host([route("/")], domains=["only.example"])
    px = module_proxyd_factory(bootstrap([listener(free_port(), virtual_hosts=[vh])],
                                         [cluster("upstream", [upstream.address])]))
    assert http(px.port, path="/", host="only.example").status == 200
    r = http(px.port, path="/", host="other.example")
    assert (r.status, r.body) == (404, b"")
