"""Route matching inside a virtual host: path specifiers, header matchers, order, errors."""
import pytest

from proxyd.config import supported
from proxyd.config.errors import format_path
from hypothesis import given, settings, strategies as st

from routing_helpers import one_vhost, request, route_config, table_from


def route(match, name=None, cluster="c"):
    r = {"match": match, "route": {"cluster": cluster}}
    if name:
        r["name"] = name
    return r


def matched(table, path, **kw):
    e = table.match(request(path, **kw))
    return e.name if e else None


# -- path specifiers -------------------------------------------------------------------

def test_prefix():
    t = one_vhost([route({"prefix": "/api/"}, "api")])
    assert matched(t, "/api/x") == "api"
    assert matched(t, "/api/") == "api"
    assert matched(t, "/api") is None
    assert matched(t, "/API/x") is None


def test_empty_prefix_matches_everything():
    t = one_vhost([route({"prefix": ""}, "all")])
    assert matched(t, "/anything?q") == "all"
    assert matched(t, "*") == "all"


def test_exact_path_ignores_query_and_fragment():
    t = one_vhost([route({"path": "/login"}, "login")])
    assert matched(t, "/login") == "login"
    assert matched(t, "/login?next=/x") == "login"
    assert matched(t, "/login#frag") == "login"
    assert matched(t, "/login/") is None
    assert matched(t, "/logi") is None


def test_prefix_sees_query_only_through_its_own_text():
    t = one_vhost([route({"prefix": "/a"}, "a")])
    assert matched(t, "/a?x=1") == "a"
    assert matched(t, "/?a") is None


def test_case_insensitive_prefix_and_path():
    t = one_vhost([route({"prefix": "/Api/", "case_sensitive": False}, "p"),
                   route({"path": "/Login", "case_sensitive": False}, "l")])
    assert matched(t, "/API/x") == "p"
    assert matched(t, "/api/x") == "p"
    assert matched(t, "/LOGIN?x") == "l"
    assert matched(t, "/login") == "l"


def test_case_sensitive_true_is_the_default():
    t = one_vhost([route({"path": "/a", "case_sensitive": True}, "a")])
    assert matched(t, "/A") is None


def test_regex_is_a_full_match_on_the_path_without_query():
    t = one_vhost([route({"safe_regex": {"regex": r"/users/\d+"}}, "user")])
    assert matched(t, "/users/42") == "user"
    assert matched(t, "/users/42?x=1") == "user"
    assert matched(t, "/users/42/x") is None      # not a search
    assert matched(t, "/v1/users/42") is None
    assert matched(t, "/users/") is None


def test_regex_ignores_case_sensitive():
    t = one_vhost([route({"safe_regex": {"regex": "/abc"}, "case_sensitive": False}, "r")])
    assert matched(t, "/abc") == "r"
    assert matched(t, "/ABC") is None


def test_regex_digit_class_is_ascii_only_as_in_re2():
    t = one_vhost([route({"safe_regex": {"regex": r"/\d"}}, "r")])
    assert matched(t, "/\u0663") is None


def test_regex_end_of_text_escape():
    t = one_vhost([route({"safe_regex": {"regex": r"/a\z"}}, "r")])
    assert matched(t, "/a") == "r"


def test_path_separated_prefix():
    t = one_vhost([route({"path_separated_prefix": "/api"}, "api")])
    assert matched(t, "/api") == "api"
    assert matched(t, "/api/x") == "api"
    assert matched(t, "/api?x") == "api"
    assert matched(t, "/apix") is None


def test_utf8_prefix_matches_the_request_bytes():
    t = one_vhost([route({"prefix": "/café"}, "cafe")])
    wire_path = "/café/menu".encode("utf-8").decode("latin-1")
    assert matched(t, wire_path) == "cafe"


def test_ignore_path_parameters_in_path_matching():
    t = table_from({"ignore_path_parameters_in_path_matching": True, "virtual_hosts": [
        {"name": "v", "domains": ["*"], "routes": [route({"path": "/a"}, "a")]}]})
    assert matched(t, "/a;jsessionid=1") == "a"


def test_first_match_wins():
    t = one_vhost([route({"prefix": "/a/b"}, "first"), route({"prefix": "/a"}, "second"),
                   route({"prefix": "/a/b/c"}, "never")])
    assert matched(t, "/a/b/c") == "first"
    assert matched(t, "/a/x") == "second"


def test_a_failed_header_condition_falls_through_to_the_next_route():
    t = one_vhost([route({"prefix": "/", "headers": [{"name": "x-canary", "exact_match": "1"}]},
                         "canary"),
                   route({"prefix": "/"}, "stable")])
    assert matched(t, "/", headers=[("x-canary", "1")]) == "canary"
    assert matched(t, "/", headers=[("x-canary", "0")]) == "stable"
    assert matched(t, "/") == "stable"


def test_no_route_is_none():
    t = one_vhost([route({"prefix": "/a"})])
    assert t.match(request("/b")) is None


# -- header matchers -------------------------------------------------------------------

def hm_table(*matchers):
    return one_vhost([route({"prefix": "/", "headers": list(matchers)}, "hit")])


def hits(table, *headers, method="GET", path="/"):
    return table.match(request(path, method=method, headers=headers)) is not None


@pytest.mark.parametrize("matcher,present_value,expected", [
    ({"exact_match": "abc"}, "abc", True),
    ({"exact_match": "abc"}, "abcd", False),
    ({"exact_match": ""}, "anything", True),             # Envoy: empty exact means "present"
    ({"prefix_match": "ab"}, "abc", True),
    ({"prefix_match": "ab"}, "cab", False),
    ({"suffix_match": "bc"}, "abc", True),
    ({"suffix_match": "bc"}, "bca", False),
    ({"contains_match": "b"}, "abc", True),
    ({"contains_match": "z"}, "abc", False),
    ({"safe_regex_match": {"regex": "a.c"}}, "abc", True),
    ({"safe_regex_match": {"regex": "a.c"}}, "abcd", False),   # full match
    ({"present_match": True}, "", True),
    ({"present_match": False}, "x", False),
    ({"range_match": {"start": 10, "end": 20}}, "10", True),
    ({"range_match": {"start": 10, "end": 20}}, "20", False),  # half open
    ({"range_match": {"start": -5, "end": 0}}, "-3", True),
    ({"range_match": {"start": 0, "end": 100}}, "12abc", False),
    ({"string_match": {"exact": "AbC", "ignore_case": True}}, "abc", True),
    ({"string_match": {"exact": "AbC"}}, "abc", False),
    ({"string_match": {"prefix": "Ab", "ignore_case": True}}, "aBc", True),
    ({"string_match": {"suffix": "bC", "ignore_case": True}}, "ABC", True),
    ({"string_match": {"contains": "B", "ignore_case": True}}, "abc", True),
    ({"string_match": {"contains": "B"}}, "abc", False),
    ({"string_match": {"safe_regex": {"regex": "[a-c]+"}}}, "abc", True),
    ({}, "x", True),                                           # no specifier: presence
])
def test_header_matcher_kinds(matcher, present_value, expected):
    t = hm_table({"name": "X-Test", **matcher})
    assert hits(t, ("x-test", present_value)) is expected
    inverted = hm_table({"name": "x-test", "invert_match": True, **matcher})
    assert hits(inverted, ("x-test", present_value)) is (not expected)


@pytest.mark.parametrize("matcher,absent_hits,inverted_absent_hits", [
    ({"exact_match": "a"}, False, False),           # a missing header fails, inverted or not
    ({"prefix_match": "a"}, False, False),
    ({"safe_regex_match": {"regex": ".*"}}, False, False),
    ({"present_match": True}, False, True),
    ({"present_match": False}, True, False),
    ({}, False, True),
])
def test_header_matchers_on_a_missing_header(matcher, absent_hits, inverted_absent_hits):
    assert hits(hm_table({"name": "x-test", **matcher})) is absent_hits
    inverted = hm_table({"name": "x-test", "invert_match": True, **matcher})
    assert hits(inverted) is inverted_absent_hits


def test_treat_missing_header_as_empty():
    t = hm_table({"name": "x-test", "treat_missing_header_as_empty": True,
                  "string_match": {"exact": ""}})
    assert hits(t)
    t = hm_table({"name": "x-test", "treat_missing_header_as_empty": True, "invert_match": True,
                  "string_match": {"exact": "bad"}})
    assert hits(t)
    assert not hits(t, ("x-test", "bad"))


def test_multiple_values_are_joined_with_commas():
    t = hm_table({"name": "x-test", "exact_match": "a,b"})
    assert hits(t, ("x-test", "a"), ("x-test", "b"))
    assert not hits(t, ("x-test", "a"))
    t = hm_table({"name": "x-test", "safe_regex_match": {"regex": "a"}})
    assert not hits(t, ("x-test", "a"), ("x-test", "a"))   # "a,a" is not a full match


def test_all_header_matchers_must_match():
    t = hm_table({"name": "a", "exact_match": "1"}, {"name": "b", "exact_match": "2"})
    assert hits(t, ("a", "1"), ("b", "2"))
    assert not hits(t, ("a", "1"))
    assert not hits(t, ("b", "2"))


def test_pseudo_header_matchers_read_the_request_line():
    t = hm_table({"name": ":method", "exact_match": "POST"})
    assert hits(t, method="POST")
    assert not hits(t, method="GET")
    t = hm_table({"name": ":path", "prefix_match": "/x?"})
    assert hits(t, path="/x?y")
    t = hm_table({"name": ":authority", "exact_match": "example.com"})
    assert hits(t)


def test_host_header_matcher_sees_nothing_as_in_envoy():
    t = hm_table({"name": "host", "present_match": True})
    assert not hits(t)


def test_header_values_compare_bytes():
    t = hm_table({"name": "x-name", "exact_match": "josé"})
    assert hits(t, ("x-name", "josé".encode("utf-8").decode("latin-1")))


# -- build-time errors ------------------------------------------------------------------

@pytest.mark.parametrize("match,where", [
    ({"safe_regex": {"regex": "/("}}, "routes[0].match.safe_regex.regex"),
    ({"safe_regex": {"regex": "/(?=a)"}}, "routes[0].match.safe_regex.regex"),
    ({"safe_regex": {"regex": r"/(a)\1"}}, "routes[0].match.safe_regex.regex"),
    ({"safe_regex": {"regex": r"/a\Z"}}, "routes[0].match.safe_regex.regex"),
    ({"prefix": "/", "headers": [{"name": "x", "safe_regex_match": {"regex": "[z-a]"}}]},
     "routes[0].match.headers[0].safe_regex_match.regex"),
    ({"prefix": "/", "headers": [{"name": "x", "string_match": {
        "safe_regex": {"regex": "a"}, "ignore_case": True}}]},
     "routes[0].match.headers[0].string_match"),
    ({"path_separated_prefix": "/api/"}, "routes[0].match.path_separated_prefix"),
    ({}, "routes[0].match"),
])
def test_bad_match_config_raises_with_its_path(match, where):
    with pytest.raises(ValueError) as e:
        one_vhost([route(match)])
    assert str(e.value).startswith(f"virtual_hosts[0].{where}"), str(e.value)


def _refused(doc) -> list:
    """What the one support table (proxyd/config/supported.py) refuses in a route config:
    RouteTable is built only from configs that passed it."""
    return [format_path(p) for p, _ in supported.check(route_config(doc))]


def test_unsupported_fields_are_refused_by_the_support_table():
    vh = {"name": "v", "domains": ["*"], "routes": [
        {"match": {"prefix": "/", "query_parameters": [{"name": "q"}],
                   "runtime_fraction": {"default_value": {"numerator": 1}}},
         "route": {"cluster": "c", "hedge_policy": {}}}]}
    assert sorted(_refused({"internal_only_headers": ["x-internal"], "virtual_hosts": [vh]})) == [
        "internal_only_headers",
        "virtual_hosts[0].routes[0].match.query_parameters",
        "virtual_hosts[0].routes[0].match.runtime_fraction",
        "virtual_hosts[0].routes[0].route.hedge_policy"]


def test_route_table_fields_are_all_in_the_support_table():
    """Every field the route table implements is accepted by the config check (one truth)."""
    assert _refused({
        "ignore_port_in_host_matching": True, "ignore_path_parameters_in_path_matching": True,
        "most_specific_header_mutations_wins": True, "max_direct_response_body_size_bytes": 10,
        "virtual_hosts": [{"name": "v", "domains": ["*"], "routes": [
            {"match": {"path_separated_prefix": "/a", "headers": [
                {"name": "x", "range_match": {"start": 1, "end": 2}},
                {"name": "y", "exact_match": "", "treat_missing_header_as_empty": True}]},
             "route": {"cluster_header": "x-c", "cluster_not_found_response_code": "NOT_FOUND",
                       "append_x_forwarded_host": True}},
            {"match": {"prefix": "/w"}, "route": {"weighted_clusters": {
                "clusters": [{"name": "a", "weight": 1}], "total_weight": 1}}},
            {"match": {"prefix": "/d"}, "direct_response": {
                "status": 200, "body": {"environment_variable": "HOME"}}}],
            "request_headers_to_add": [{"header": {"key": "k", "raw_value": "dg=="},
                                        "keep_empty_value": True}]}]}) == []


# -- robustness -------------------------------------------------------------------------

FUZZ_TABLE = table_from({"virtual_hosts": [
    {"name": "a", "domains": ["a.com", "*.b.com", "c.*"], "routes": [
        route({"prefix": "/p", "case_sensitive": False}),
        route({"path": "/exact"}),
        route({"path_separated_prefix": "/sep"}),
        route({"safe_regex": {"regex": "/r/[^/]+"}}),
        route({"prefix": "/", "headers": [
            {"name": "x-r", "range_match": {"start": 0, "end": 9}},
            {"name": "x-s", "string_match": {"prefix": "Q", "ignore_case": True}},
            {"name": ":authority", "invert_match": True, "suffix_match": "z"}]}),
    ]},
    {"name": "d", "domains": ["*"], "routes": [route({"prefix": "/"})]},
], "ignore_port_in_host_matching": True, "ignore_path_parameters_in_path_matching": True})


@settings(max_examples=300, deadline=None)
@given(host=st.one_of(st.none(), st.text()), path=st.text(),
       values=st.lists(st.tuples(st.sampled_from(["x-r", "x-s", "other"]), st.text()), max_size=4))
def test_match_never_raises(host, path, values):
    FUZZ_TABLE.match(request(path, host=host, headers=values))
    FUZZ_TABLE.describe(host, path, headers=values)


def test_regex_takes_re2_syntax():
    """Unicode classes are RE2 syntax that Python's re lacks; patterns match UTF-8 bytes."""
    t = one_vhost([route({"safe_regex": {"regex": r"/\p{Greek}+"}}, "greek")])
    assert matched(t, "/αβγ".encode("utf-8").decode("latin-1")) == "greek"
    assert matched(t, "/abc") is None


@pytest.mark.parametrize("regex,why", [
    ("/a(?=b)", "invalid perl operator: (?="),
    (r"/(a)\1", "invalid escape sequence: \\1"),
    ("/(a{50}|b{60})x", "RE2 program size of 118 > max program size of 100"),
])
def test_regex_refused_as_re2_refuses_it_with_the_config_path(regex, why):
    with pytest.raises(ValueError) as e:
        one_vhost([route({"safe_regex": {"regex": regex}}, "r")])
    assert why in str(e.value)
    assert "virtual_hosts[0].routes[0].match.safe_regex.regex" in str(e.value)
