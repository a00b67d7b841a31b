"""What a matched route does: clusters, timeouts, rewrites, redirects, direct responses."""
import random
import re
from collections import Counter

import pytest

from proxyd.http.headers import Headers
from proxyd.http.message import RequestHead
from routing_helpers import one_vhost, request


def entry_for(action, match=None, path="/", **req_kw):
    r = {"match": match or {"prefix": "/"}, "name": "r1", **action}
    t = one_vhost([r])
    req = request(path, **req_kw)
    return t.match(req), req


# -- cluster routes ---------------------------------------------------------------------

def test_plain_cluster_and_defaults():
    e, req = entry_for({"route": {"cluster": "backend"}})
    assert e.kind == "cluster"
    assert e.name == "r1"
    assert e.virtual_host_name == "vh"
    assert e.cluster_for(req) == "backend"
    assert e.timeout == 15.0
    assert e.auto_host_rewrite is False
    assert e.direct_status == 0 and e.direct_body is None
    assert e.cluster_not_found_status == 503


def test_unnamed_route_has_no_name():
    t = one_vhost([{"match": {"prefix": "/"}, "route": {"cluster": "c"}}])
    assert t.match(request("/")).name is None


@pytest.mark.parametrize("timeout,expected", [("0s", 0.0), ("2.5s", 2.5), ("120s", 120.0)])
def test_timeout(timeout, expected):
    e, _ = entry_for({"route": {"cluster": "c", "timeout": timeout}})
    assert e.timeout == expected


def test_auto_host_rewrite_flag():
    e, _ = entry_for({"route": {"cluster": "c", "auto_host_rewrite": True}})
    assert e.auto_host_rewrite is True


def test_cluster_header_takes_the_first_value():
    e, req = entry_for({"route": {"cluster_header": "X-Cluster",
                                  "cluster_not_found_response_code": "NOT_FOUND"}},
                       headers=[("x-cluster", "blue"), ("x-cluster", "green")])
    assert e.cluster_for(req) == "blue"
    assert e.cluster_for(request("/")) == ""
    assert e.cluster_not_found_status == 404


def test_weighted_clusters_follow_the_weights():
    e, req = entry_for({"route": {"weighted_clusters": {"clusters": [
        {"name": "a", "weight": 10}, {"name": "zero", "weight": 0},
        {"name": "b", "weight": 30}, {"name": "c", "weight": 60}]}}})
    random.seed(1234)
    n = 20000
    counts = Counter(e.cluster_for(req) for _ in range(n))
    assert counts["zero"] == 0
    for name, share in (("a", 0.1), ("b", 0.3), ("c", 0.6)):
        assert abs(counts[name] / n - share) < 0.02, counts


def test_weighted_clusters_need_a_positive_sum():
    with pytest.raises(ValueError, match="weighted_clusters"):
        entry_for({"route": {"weighted_clusters": {"clusters": [{"name": "a", "weight": 0}]}}})


# -- rewrites ---------------------------------------------------------------------------

def test_prefix_rewrite_keeps_the_rest_and_records_the_original():
    e, req = entry_for({"route": {"cluster": "c", "prefix_rewrite": "/v2/"}},
                       match={"prefix": "/api/"}, path="/api/users?id=1")
    e.rewrite_request(req)
    assert req.path == "/v2/users?id=1"
    assert req.headers.get("x-envoy-original-path") == "/api/users?id=1"


def test_prefix_rewrite_to_root():
    e, req = entry_for({"route": {"cluster": "c", "prefix_rewrite": "/"}},
                       match={"prefix": "/app/"}, path="/app/x")
    e.rewrite_request(req)
    assert req.path == "/x"


def test_prefix_rewrite_with_case_insensitive_match_replaces_the_request_text():
    e, req = entry_for({"route": {"cluster": "c", "prefix_rewrite": "/new"}},
                       match={"prefix": "/old", "case_sensitive": False}, path="/OLD/x")
    e.rewrite_request(req)
    assert req.path == "/new/x"


def test_prefix_rewrite_on_exact_and_regex_routes_replaces_the_path_not_the_query():
    for match in ({"path": "/a"}, {"safe_regex": {"regex": "/[a-z]"}}):
        e, req = entry_for({"route": {"cluster": "c", "prefix_rewrite": "/b"}},
                           match=match, path="/a?q=1")
        e.rewrite_request(req)
        assert req.path == "/b?q=1"


def test_prefix_rewrite_without_original_path_header():
    e, req = entry_for({"route": {"cluster": "c", "prefix_rewrite": "/b"}},
                       match={"prefix": "/a"}, path="/a")
    e.rewrite_request(req, insert_original_path=False)
    assert req.path == "/b"
    assert "x-envoy-original-path" not in req.headers


def test_no_rewrite_leaves_the_request_alone():
    e, req = entry_for({"route": {"cluster": "c"}}, path="/x")
    e.rewrite_request(req)
    assert req.path == "/x"
    assert req.headers.items == [("host", "example.com")]


def test_host_rewrite_literal_sets_authority_and_host_header():
    e, req = entry_for({"route": {"cluster": "c", "host_rewrite_literal": "internal.svc"}})
    e.rewrite_request(req)
    assert req.authority == "internal.svc"
    assert req.headers.get_all("host") == ["internal.svc"]


def test_host_rewrite_without_a_host_header_only_sets_authority():
    e, _ = entry_for({"route": {"cluster": "c", "host_rewrite_literal": "internal.svc"}})
    req = RequestHead("GET", "/", "example.com", "http", "HTTP/2", Headers())
    e.rewrite_request(req)
    assert req.authority == "internal.svc"
    assert "host" not in req.headers


def test_append_x_forwarded_host():
    e, req = entry_for({"route": {"cluster": "c", "host_rewrite_literal": "in",
                                  "append_x_forwarded_host": True}},
                       headers=[("x-forwarded-host", "edge")])
    e.rewrite_request(req)
    assert req.headers.get("x-forwarded-host") == "edge,example.com"


# -- redirects --------------------------------------------------------------------------

def redirect(redirect_cfg, path="/p?q=1", host="example.com", match=None, scheme="http",
             headers=()):
    e, req = entry_for({"redirect": redirect_cfg}, match=match, path=path, host=host,
                       scheme=scheme, headers=headers)
    assert e.kind == "redirect"
    return e.redirect(req)


@pytest.mark.parametrize("cfg,expected", [
    ({"https_redirect": True}, (301, "https://example.com/p?q=1")),
    ({"scheme_redirect": "ftp"}, (301, "ftp://example.com/p?q=1")),
    ({"host_redirect": "new.example.com"}, (301, "http://new.example.com/p?q=1")),
    ({"port_redirect": 8443}, (301, "http://example.com:8443/p?q=1")),
    ({"path_redirect": "/new"}, (301, "http://example.com/new?q=1")),     # query carried over
    ({"path_redirect": "/new?x=2"}, (301, "http://example.com/new?x=2")),  # its own query wins
    ({"path_redirect": "/new?x=2", "strip_query": True}, (301, "http://example.com/new?x=2")),
    ({"path_redirect": "/new", "strip_query": True}, (301, "http://example.com/new")),
    ({"strip_query": True}, (301, "http://example.com/p")),
    ({"host_redirect": "h", "port_redirect": 81, "https_redirect": True, "path_redirect": "/z"},
     (301, "https://h:81/z?q=1")),
    ({"response_code": "MOVED_PERMANENTLY"}, (301, "http://example.com/p?q=1")),
    ({"response_code": "FOUND"}, (302, "http://example.com/p?q=1")),
    ({"response_code": "SEE_OTHER"}, (303, "http://example.com/p?q=1")),
    ({"response_code": "TEMPORARY_REDIRECT"}, (307, "http://example.com/p?q=1")),
    ({"response_code": "PERMANENT_REDIRECT"}, (308, "http://example.com/p?q=1")),
])
def test_redirect_fields(cfg, expected):
    assert redirect(cfg) == expected


def test_redirect_prefix_rewrite_replaces_the_matched_prefix():
    assert redirect({"prefix_rewrite": "/new/"}, path="/old/x?q=1", match={"prefix": "/old/"}) \
        == (301, "http://example.com/new/x?q=1")
    assert redirect({"prefix_rewrite": "/new/", "strip_query": True}, path="/old/x?q=1",
                    match={"prefix": "/old/"}) == (301, "http://example.com/new/x")


def test_redirect_port_handling_follows_envoy():
    # https_redirect drops the default port of the old scheme...
    assert redirect({"https_redirect": True}, host="example.com:80", path="/")[1] \
        == "https://example.com/"
    # ...but keeps any other port
    assert redirect({"https_redirect": True}, host="example.com:8080", path="/")[1] \
        == "https://example.com:8080/"
    # a port_redirect replaces the request's port
    assert redirect({"port_redirect": 9000}, host="example.com:8080", path="/")[1] \
        == "http://example.com:9000/"
    assert redirect({"port_redirect": 9000}, host="[::1]:8080", path="/")[1] \
        == "http://[::1]:9000/"
    # no scheme change: the port stays even if it is the default
    assert redirect({"host_redirect": "", "strip_query": True}, host="example.com:80",
                    path="/")[1] == "http://example.com:80/"


def test_redirect_uses_x_forwarded_proto_for_port_stripping():
    assert redirect({"scheme_redirect": "http"}, host="example.com:443", path="/",
                    headers=[("x-forwarded-proto", "https")])[1] == "http://example.com/"


def test_redirect_keeps_the_request_scheme():
    assert redirect({"host_redirect": "b"}, scheme="https", path="/")[1] == "https://b/"


def test_redirect_on_a_cluster_route_is_a_type_error():
    e, req = entry_for({"route": {"cluster": "c"}})
    with pytest.raises(TypeError):
        e.redirect(req)


# -- direct responses -------------------------------------------------------------------

def test_direct_response_inline_string():
    e, req = entry_for({"direct_response": {"status": 200, "body": {"inline_string": "héllo"}}})
    assert e.kind == "direct"
    assert (e.direct_status, e.direct_body) == (200, "héllo".encode("utf-8"))
    assert e.direct_location(req) is None


def test_direct_response_inline_bytes_and_no_body():
    e, _ = entry_for({"direct_response": {"status": 503, "body": {"inline_bytes": "AAE="}}})
    assert e.direct_body == b"\x00\x01"
    e, _ = entry_for({"direct_response": {"status": 204}})
    assert (e.direct_status, e.direct_body) == (204, None)


def test_direct_response_file_is_read_at_build_time(tmp_path):
    f = tmp_path / "body.txt"
    f.write_bytes(b"from file\n")
    e, _ = entry_for({"direct_response": {"status": 200, "body": {"filename": str(f)}}})
    f.write_bytes(b"changed")
    assert e.direct_body == b"from file\n"


def test_direct_response_errors(tmp_path):
    with pytest.raises(ValueError, match=r"direct_response\.body\.filename: cannot read"):
        entry_for({"direct_response": {"status": 200,
                                       "body": {"filename": str(tmp_path / "missing")}}})
    with pytest.raises(ValueError, match="maximum is 4096"):
        entry_for({"direct_response": {"status": 200, "body": {"inline_string": "x" * 4097}}})
    with pytest.raises(ValueError, match=r"direct_response\.status"):
        entry_for({"direct_response": {"status": 99}})


def test_direct_response_body_limit_is_configurable():
    t = one_vhost([{"match": {"prefix": "/"},
                    "direct_response": {"status": 200, "body": {"inline_string": "x" * 5000}}}],
                  max_direct_response_body_size_bytes=8192)
    assert len(t.match(request("/")).direct_body) == 5000


def test_direct_response_3xx_gets_a_location_like_envoy():
    e, req = entry_for({"direct_response": {"status": 301}}, path="/a?b")
    assert e.direct_location(req) == "http://example.com/a?b"


# -- describe ---------------------------------------------------------------------------

def test_describe_explains_matches_and_misses():
    t = one_vhost([
        {"name": "api", "match": {"prefix": "/api", "headers": [{"name": "x-v", "exact_match": "2"}]},
         "route": {"cluster": "api2"}},
        {"name": "w", "match": {"prefix": "/"},
         "route": {"weighted_clusters": {"clusters": [{"name": "a", "weight": 1},
                                                      {"name": "b", "weight": 3}]}}},
    ], domains=["example.com", "*.example.com"])
    d = t.describe("www.example.com", "/api/x")
    assert d["virtual_host"] == "vh" and d["domain"] == "*.example.com"
    assert d["route"]["name"] == "w"
    assert d["route"]["weighted_clusters"] == [{"name": "a", "weight": 1}, {"name": "b", "weight": 3}]
    assert d["skipped"][0]["name"] == "api"
    assert "x-v" in d["skipped"][0]["reason"]

    d = t.describe("example.com", "/api/x", headers={"X-V": "2"})
    assert d["route"]["cluster"] == "api2" and d["reason"] == "matched"

    d = t.describe("other.org", "/")
    assert d["virtual_host"] is None and "no virtual host" in d["reason"]


def test_describe_redirect_and_direct():
    t = one_vhost([{"match": {"path": "/old"}, "redirect": {"path_redirect": "/new"}},
                   {"match": {"prefix": "/"}, "direct_response": {"status": 404}}])
    assert t.describe("h", "/old")["route"]["location"] == "http://h/new"
    assert t.describe("h", "/x")["route"]["status"] == 404


def test_regex_rewrite_replaces_every_match_in_the_path_only():
    """Envoy's regex_rewrite: RE2 GlobalReplace on the path, the query kept, \\N groups."""
    e, req = entry_for({"route": {"cluster": "c", "regex_rewrite": {
        "pattern": {"regex": "^/service/([^/]+)(/.*)$"}, "substitution": "\\2/instance/\\1"}}},
        path="/service/foo/v1/api?service=x")
    e.rewrite_request(req)
    assert req.path == "/v1/api/instance/foo?service=x"
    assert req.headers.get("x-envoy-original-path") == "/service/foo/v1/api?service=x"
    e, req = entry_for({"route": {"cluster": "c", "regex_rewrite": {
        "pattern": {"regex": "one"}, "substitution": "two"}}}, path="/xxx/one/yyy/one/zzz")
    e.rewrite_request(req)
    assert req.path == "/xxx/two/yyy/two/zzz"


@pytest.mark.parametrize("rewrite,message", [
    ({"pattern": {"regex": "/(a)"}, "substitution": "\\2"},
     "regex_rewrite.substitution: Rewrite schema requests 2 matches, but the regexp only has 1"),
    ({"pattern": {"regex": "/(?=a)"}, "substitution": "x"},
     "regex_rewrite.pattern.regex: invalid regex '/(?=a)': invalid perl operator: (?="),
])
def test_regex_rewrite_refused_as_envoy_refuses_it(rewrite, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        entry_for({"route": {"cluster": "c", "regex_rewrite": rewrite}})
