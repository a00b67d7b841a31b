"""Virtual host selection by Host/:authority, as Envoy's RouteMatcher::findVirtualHost."""
import pytest

from proxyd.router.matchers import strip_host_port
from routing_helpers import request, table_from

ROUTE = [{"match": {"prefix": "/"}, "route": {"cluster": "c"}}]


def vhosts(*domain_lists, **extra):
    return table_from({"name": "rc", "virtual_hosts": [
        {"name": f"vh{i}", "domains": list(d), "routes": ROUTE}
        for i, d in enumerate(domain_lists)], **extra})


def vhost_for(table, host):
    entry = table.match(request("/", host=host))
    return entry.virtual_host_name if entry else None


PRECEDENCE = vhosts(
    ["api.example.com"],          # vh0 exact
    ["*.example.com"],            # vh1 suffix
    ["*-beta.example.com"],       # vh2 longer suffix
    ["api.*"],                    # vh3 prefix
    ["api.example.*"],            # vh4 longer prefix
    ["*"],                        # vh5 default
    ["*foo.com"],                 # vh6 suffix without a dot
)


@pytest.mark.parametrize("host,expected", [
    ("api.example.com", "vh0"),          # exact beats every wildcard
    ("www.example.com", "vh1"),
    ("x-beta.example.com", "vh2"),       # longest suffix wins
    ("api.example.org", "vh4"),          # longest prefix wins
    ("api.other", "vh3"),
    ("other.net", "vh5"),                # '*' last
    ("barfoo.com", "vh6"),               # '*foo.com' needs no dot
    ("foo.com", "vh5"),                  # a wildcard never matches the empty string
    (".example.com", "vh5"),             # '*.example.com' needs at least one character
    ("api.", "vh5"),                     # 'api.*' needs at least one character
    ("", "vh5"),
])
def test_domain_precedence(host, expected):
    assert vhost_for(PRECEDENCE, host) == expected


def test_suffix_wildcard_beats_prefix_wildcard_regardless_of_length():
    t = vhosts(["*.com"], ["api.example.*"])
    assert vhost_for(t, "api.example.com") == "vh0"


def test_host_matching_is_case_insensitive_both_ways():
    t = vhosts(["Example.COM"], ["*.Foo.com"])
    assert vhost_for(t, "EXAMPLE.com") == "vh0"
    assert vhost_for(t, "A.FOO.COM") == "vh1"


def test_port_is_part_of_the_host_by_default():
    t = vhosts(["example.com"], ["example.com:8080"], ["*"])
    assert vhost_for(t, "example.com") == "vh0"
    assert vhost_for(t, "example.com:8080") == "vh1"
    assert vhost_for(t, "example.com:9090") == "vh2"


def test_port_without_wildcard_or_default_is_no_match():
    t = vhosts(["example.com"])
    assert vhost_for(t, "example.com:8080") is None
    assert vhost_for(t, "other.com") is None


def test_wildcards_see_the_port_too():
    t = vhosts(["*.com"], ["example.*"])
    assert vhost_for(t, "example.com:80") == "vh1"   # the suffix is now ":80"; the prefix matches
    assert vhost_for(t, "example.com") == "vh0"
    assert vhost_for(t, "a.com:80") is None


def test_ignore_port_in_host_matching():
    t = vhosts(["example.com"], ["[::1]"], ignore_port_in_host_matching=True)
    assert vhost_for(t, "example.com:8080") == "vh0"
    assert vhost_for(t, "[::1]:8080") == "vh1"
    assert vhost_for(t, "[::1]") == "vh1"


def test_only_a_default_vhost_matches_even_without_authority():
    t = vhosts(["*"])
    assert t.match(request("/", host=None)).virtual_host_name == "vh0"


def test_missing_authority_with_named_vhosts_is_no_match():
    t = vhosts(["example.com"], ["*"])
    assert t.match(request("/", host=None)) is None


def test_no_virtual_hosts_at_all():
    assert table_from({"name": "rc"}).match(request("/")) is None


@pytest.mark.parametrize("domains,msg", [
    ([["a.com"], ["A.com"]], "Duplicate entry of domain"),
    ([["*"], ["*"]], "Only a single wildcard domain"),
    ([["*.a.com", "*.a.com"]], "Duplicate entry of domain"),
    ([["a.*"], ["a.*"]], "Duplicate entry of domain"),
])
def test_domain_conflicts_are_errors(domains, msg):
    with pytest.raises(ValueError, match=msg) as e:
        vhosts(*domains)
    assert str(e.value).startswith("virtual_hosts[")


def test_duplicate_vhost_name_is_an_error():
    with pytest.raises(ValueError, match=r"virtual_hosts\[1\]\.name"):
        table_from({"virtual_hosts": [{"name": "a", "domains": ["x"]},
                                      {"name": "a", "domains": ["y"]}]})


def test_vhost_needs_domains():
    with pytest.raises(ValueError, match=r"virtual_hosts\[0\]\.domains"):
        table_from({"virtual_hosts": [{"name": "a"}]})


@pytest.mark.parametrize("host,port,expected", [
    ("example.com:80", None, "example.com"),
    ("example.com:80", 80, "example.com"),
    ("example.com:80", 8080, "example.com:80"),    # strip_matching_host_port: only the listener's
    ("example.com", None, "example.com"),
    ("example.com:abc", None, "example.com:abc"),  # not a port
    ("[::1]:443", None, "[::1]"),
    ("[::1]", None, "[::1]"),
])
def test_strip_host_port(host, port, expected):
    assert strip_host_port(host, port) == expected
