"""request/response_headers_to_add/_to_remove at route, virtual host and route config level."""
import socket

import pytest

from proxyd.http.headers import Headers
from proxyd.router import header_mutation
from routing_helpers import request, stream_info, table_from


def hv(key, value, action=None, **extra):
    opt = {"header": {"key": key, "value": value}, **extra}
    if action:
        opt["append_action"] = action
    return opt


def table(route_level=None, vhost_level=None, global_level=None, most_specific_wins=False):
    """Each *_level is a dict of request_/response_headers_to_add/_to_remove lists."""
    return table_from({
        "name": "rc", "most_specific_header_mutations_wins": most_specific_wins,
        **(global_level or {}),
        "virtual_hosts": [{"name": "vh", "domains": ["*"], **(vhost_level or {}), "routes": [
            {"match": {"prefix": "/"}, "route": {"cluster": "c"}, **(route_level or {})}]}]})


def run_request(t, *headers):
    req = request("/", headers=headers)
    t.match(req).apply_request_headers(req, stream_info())
    return req.headers


def run_response(t, *headers):
    h = Headers([(k, v) for k, v in headers])
    t.match(request("/")).apply_response_headers(h, stream_info())
    return h


def test_levels_apply_route_then_vhost_then_global():
    t = table({"request_headers_to_add": [hv("x-a", "route")]},
              {"request_headers_to_add": [hv("x-a", "vhost")]},
              {"request_headers_to_add": [hv("x-a", "global")]})
    assert run_request(t).get_all("x-a") == ["route", "vhost", "global"]


def test_least_specific_overwrite_wins_by_default():
    t = table({"request_headers_to_add": [hv("x-a", "route", "OVERWRITE_IF_EXISTS_OR_ADD")]},
              {"request_headers_to_add": [hv("x-a", "vhost", "OVERWRITE_IF_EXISTS_OR_ADD")]},
              {"request_headers_to_add": [hv("x-a", "global", "OVERWRITE_IF_EXISTS_OR_ADD")]})
    assert run_request(t, ("x-a", "client")).get_all("x-a") == ["global"]


def test_most_specific_header_mutations_wins():
    t = table({"request_headers_to_add": [hv("x-a", "route", "OVERWRITE_IF_EXISTS_OR_ADD")]},
              {"request_headers_to_add": [hv("x-a", "vhost", "OVERWRITE_IF_EXISTS_OR_ADD")]},
              {"request_headers_to_add": [hv("x-a", "global", "OVERWRITE_IF_EXISTS_OR_ADD")]},
              most_specific_wins=True)
    assert run_request(t).get_all("x-a") == ["route"]


def test_remove_runs_before_add_within_a_level():
    t = table({"request_headers_to_remove": ["x-a"], "request_headers_to_add": [hv("x-a", "new")]})
    assert run_request(t, ("x-a", "old"), ("x-a", "older")).get_all("x-a") == ["new"]


def test_a_later_level_removes_what_an_earlier_level_added():
    t = table({"request_headers_to_add": [hv("x-a", "route")]},
              global_level={"request_headers_to_remove": ["X-A"]})
    assert "x-a" not in run_request(t)


@pytest.mark.parametrize("action,before,after", [
    ("APPEND_IF_EXISTS_OR_ADD", [], ["v"]),
    ("APPEND_IF_EXISTS_OR_ADD", ["old"], ["old", "v"]),
    ("ADD_IF_ABSENT", [], ["v"]),
    ("ADD_IF_ABSENT", ["old"], ["old"]),
    ("OVERWRITE_IF_EXISTS_OR_ADD", [], ["v"]),
    ("OVERWRITE_IF_EXISTS_OR_ADD", ["old", "older"], ["v"]),
    ("OVERWRITE_IF_EXISTS", [], []),
    ("OVERWRITE_IF_EXISTS", ["old"], ["v"]),
])
@pytest.mark.parametrize("level", ["route", "vhost", "global"])
def test_append_actions_at_every_level(action, before, after, level):
    mutation = {"request_headers_to_add": [hv("x-a", "v", action)],
                "response_headers_to_add": [hv("x-a", "v", action)]}
    levels = {"route_level": None, "vhost_level": None, "global_level": None}
    levels[level + "_level"] = mutation
    t = table(**levels)
    existing = [("x-a", b) for b in before]
    assert run_request(t, *existing).get_all("x-a") == after
    assert run_response(t, *existing).get_all("x-a") == after


@pytest.mark.parametrize("append,before,after", [
    (True, ["old"], ["old", "v"]),
    (False, ["old"], ["v"]),
])
def test_deprecated_append_bool(append, before, after):
    t = table({"request_headers_to_add": [hv("x-a", "v", append=append)]})
    assert run_request(t, *[("x-a", b) for b in before]).get_all("x-a") == after


def test_append_and_append_action_together_is_an_error():
    with pytest.raises(ValueError, match="Both append and append_action"):
        table({"request_headers_to_add": [hv("x-a", "v", "ADD_IF_ABSENT", append=True)]})


def test_checks_see_headers_before_this_levels_additions():
    t = table({"request_headers_to_add": [hv("x-a", "1", "ADD_IF_ABSENT"),
                                          hv("x-a", "2", "ADD_IF_ABSENT")]})
    assert run_request(t).get_all("x-a") == ["1", "2"]


def test_empty_values_are_skipped_unless_keep_empty_value():
    t = table({"request_headers_to_add": [hv("x-empty", ""),
                                          hv("x-kept", "", keep_empty_value=True)]})
    h = run_request(t)
    assert "x-empty" not in h
    assert h.get_all("x-kept") == [""]


def test_header_names_are_lower_cased():
    t = table({"request_headers_to_add": [hv("X-Mixed", "v")]})
    assert run_request(t).get("x-mixed") == "v"


def test_response_levels_and_removal():
    t = table({"response_headers_to_add": [hv("x-r", "route")],
               "response_headers_to_remove": ["server-timing"]},
              {"response_headers_to_add": [hv("x-r", "vhost")]},
              {"response_headers_to_add": [hv("x-r", "global")]})
    h = run_response(t, ("server-timing", "x"))
    assert h.get_all("x-r") == ["route", "vhost", "global"]
    assert "server-timing" not in h


def test_substitution_operators():
    t = table({"request_headers_to_add": [
        hv("x-remote", "%DOWNSTREAM_REMOTE_ADDRESS%"),
        hv("x-remote-ip", "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"),
        hv("x-local", "%DOWNSTREAM_LOCAL_ADDRESS%"),
        hv("x-proto", "proto=%PROTOCOL%;"),
        hv("x-up", "%UPSTREAM_HOST%"),
        hv("x-host", "%HOSTNAME%"),
        hv("x-pct", "100%% of %PROTOCOL%"),
        hv("x-short", "%REQ(x-long):4%"),
        hv("x-either", "%REQ(x-absent?x-long)%"),
    ]})
    req = request("/", headers=[("x-long", "abcdefgh")])
    info = stream_info()
    info.request = req
    t.match(req).apply_request_headers(req, info)
    h = req.headers
    assert h.get("x-remote") == "10.0.0.1:5555"
    assert h.get("x-remote-ip") == "10.0.0.1"
    assert h.get("x-local") == "10.0.0.2:10000"
    assert h.get("x-proto") == "proto=HTTP/1.1;"
    assert h.get("x-up") == "127.0.0.1:8080"
    assert h.get("x-host") == socket.gethostname() and h.get("x-host")
    assert h.get("x-pct") == "100% of HTTP/1.1"
    assert h.get("x-short") == "abcd"
    assert h.get("x-either") == "abcdefgh"


def test_request_and_response_headers_in_response_headers():
    """Envoy's zipkin front proxy echoes the trace id: %REQ(...)% in a response header."""
    t = table({"response_headers_to_add": [hv("x-b3-traceid", "%REQ(x-b3-traceid)%"),
                                           hv("x-status", "%RESP(:status)%/%RESPONSE_CODE%")]})
    req = request("/", headers=[("x-b3-traceid", "80f198ee56343ba8")])
    info = stream_info()
    info.request = req
    h = Headers([])
    t.match(req).apply_response_headers(h, info)
    assert h.get("x-b3-traceid") == "80f198ee56343ba8"
    assert h.get("x-status") == "/0"  # no response yet: empty, and code 0


def test_ipv6_remote_address_without_port():
    t = table({"request_headers_to_add": [hv("x-ip", "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%")]})
    req = request("/")
    info = stream_info()
    info.downstream_remote_address = "[::1]:80"
    t.match(req).apply_request_headers(req, info)
    assert req.headers.get("x-ip") == "::1"


def test_unavailable_value_makes_the_header_empty_and_skipped():
    t = table({"request_headers_to_add": [hv("x-up", "%UPSTREAM_HOST%")]})
    req = request("/")
    info = stream_info()
    info.upstream_host = None
    t.match(req).apply_request_headers(req, info)
    assert "x-up" not in req.headers


@pytest.mark.parametrize("value,message", [
    ("%REQ()%", "REQ requires parameters"),
    ("%UNKNOWN_THING%", "Not supported field in StreamInfo: UNKNOWN_THING"),
    ("50%", "Couldn't find valid command at position 2"),
    ("%lower%", "Couldn't find valid command at position 0"),
    ("%HOSTNAME(x)%", "HOSTNAME does not take any parameters or length"),
    ("%DOWNSTREAM_REMOTE_ADDRESS:4%", "does not take any parameters or length"),
])
def test_unsupported_or_malformed_operators_raise(value, message):
    with pytest.raises(ValueError, match=message) as e:
        table(global_level={"response_headers_to_add": [hv("x-a", value)]})
    assert str(e.value).startswith("response_headers_to_add[0].header.value")


def test_unknown_operator_error_names_the_route_path():
    with pytest.raises(ValueError) as e:
        table({"request_headers_to_add": [hv("x-a", "%BOGUS%")]})
    assert str(e.value).startswith(
        "virtual_hosts[0].routes[0].request_headers_to_add[0].header.value: ")
    assert "BOGUS" in str(e.value)


@pytest.mark.parametrize("field,value", [
    ("request_headers_to_add", hv(":path", "/x")),
    ("request_headers_to_add", hv("Host", "x")),
    ("request_headers_to_remove", ":authority"),
    ("request_headers_to_remove", "host"),
])
def test_pseudo_headers_and_host_may_not_be_mutated(field, value):
    with pytest.raises(ValueError, match="may not be"):
        table({field: [value]})


def test_raw_value_is_used_as_bytes():
    t = table({"request_headers_to_add": [{"header": {"key": "x-raw", "raw_value": "/w=="}}]})
    assert run_request(t).get("x-raw") == "\xff"


def test_utf8_value_reaches_the_wire_as_utf8():
    t = table({"request_headers_to_add": [hv("x-u", "é")]})
    assert run_request(t).get("x-u").encode("latin-1") == "é".encode("utf-8")


def test_finalize_request_applies_headers_before_rewrites():
    t = table_from({"virtual_hosts": [{"name": "vh", "domains": ["*"], "routes": [
        {"match": {"prefix": "/a"}, "route": {"cluster": "c", "prefix_rewrite": "/b"},
         "request_headers_to_remove": ["x-envoy-original-path"]}]}]})
    req = request("/a/x", headers=[("x-envoy-original-path", "spoofed")])
    t.match(req).finalize_request(req, stream_info())
    assert req.path == "/b/x"
    assert req.headers.get_all("x-envoy-original-path") == ["/a/x"]
