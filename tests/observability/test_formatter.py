"""Access-log format strings: Envoy's default line, every operator, JSON formats, errors."""
from __future__ import annotations

import socket

import orjson
import pytest

from proxyd.http.headers import Headers
from proxyd.observability.access_log.formatter import (
    DEFAULT_FORMAT, TimeFormat, compile_json, compile_text, parse)

from .conftest import START, make_info


def fmt(f, info=None):
    return compile_text(f).format(info or make_info())


def test_default_format_is_envoys_line_byte_for_byte():
    assert DEFAULT_FORMAT == (
        '[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" '
        '%RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% '
        '%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%" '
        '"%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%"\n')


def test_default_line_field_by_field():
    line = compile_text(None).format(make_info())
    assert line == ('[2016-04-15T20:17:00.310Z] "POST /api/v1?x=1 HTTP/1.1" 201 - 11 27 23 9 '
                    '"203.0.113.7" "curl/8.5.0" "9b1deb4d-3b7d-4bad-9bdd-2b0d7b3dcb6d" '
                    '"svc.example.com" "10.0.0.9:8080"\n')


def test_default_line_prefers_original_path_and_renders_missing_as_dash():
    info = make_info(upstream_host=None, response=None, end_mono=None,
                     response_flags=["NR"], response_code=404)
    info.request.headers = Headers([("x-envoy-original-path", "/before/rewrite")])
    line = compile_text(None).format(info)
    assert line == ('[2016-04-15T20:17:00.310Z] "POST /before/rewrite HTTP/1.1" 404 NR 11 27 - - '
                    '"-" "-" "-" "svc.example.com" "-"\n')


def test_tcp_stream_without_request_renders_dashes():
    info = make_info(request=None, response=None, protocol=None)
    assert fmt('%REQ(:METHOD)% %REQ(:PATH)% %REQ(USER-AGENT)% %PROTOCOL% %RESP(A)%') == \
        "POST /api/v1?x=1 curl/8.5.0 HTTP/1.1 -"
    assert compile_text('%REQ(:METHOD)% %REQ(USER-AGENT)% %PROTOCOL% %RESP(A)% %TRAILER(B)%'
                        ).format(info) == "- - - - -"


@pytest.mark.parametrize("op, expected", [
    ("%PROTOCOL%", "HTTP/1.1"),
    ("%RESPONSE_CODE%", "201"),
    ("%RESPONSE_CODE_DETAILS%", "via_upstream"),
    ("%RESPONSE_FLAGS%", "-"),
    ("%BYTES_RECEIVED%", "11"),
    ("%BYTES_SENT%", "27"),
    ("%DURATION%", "23"),
    ("%REQUEST_DURATION%", "4"),
    ("%RESPONSE_DURATION%", "15"),
    ("%RESPONSE_TX_DURATION%", "8"),
    ("%UPSTREAM_HOST%", "10.0.0.9:8080"),
    ("%UPSTREAM_REMOTE_ADDRESS%", "10.0.0.9:8080"),
    ("%UPSTREAM_CLUSTER%", "backend"),
    ("%UPSTREAM_LOCAL_ADDRESS%", "10.0.0.2:40000"),
    ("%DOWNSTREAM_REMOTE_ADDRESS%", "10.1.2.3:51234"),
    ("%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%", "10.1.2.3"),
    ("%DOWNSTREAM_DIRECT_REMOTE_ADDRESS%", "10.1.2.3:51234"),
    ("%DOWNSTREAM_REMOTE_PORT%", "51234"),
    ("%DOWNSTREAM_LOCAL_ADDRESS%", "10.0.0.2:10000"),
    ("%DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT%", "10.0.0.2"),
    ("%DOWNSTREAM_LOCAL_PORT%", "10000"),
    ("%ROUTE_NAME%", "api_route"),
    ("%CONNECTION_ID%", "42"),
    ("%STREAM_ID%", "9b1deb4d-3b7d-4bad-9bdd-2b0d7b3dcb6d"),
    ("%TRACE_ID%", "-"),
    ("%START_TIME%", "2016-04-15T20:17:00.310Z"),
    ("%REQ(:METHOD)%", "POST"),
    ("%REQ(:PATH)%", "/api/v1?x=1"),
    ("%REQ(:AUTHORITY)%", "svc.example.com"),
    ("%REQ(:SCHEME)%", "https"),
    ("%REQ(HOST)%", "svc.example.com"),
    ("%REQ(User-Agent)%", "curl/8.5.0"),
    ("%REQ(X-DUP)%", "first"),
    ("%REQ(X-MISSING?USER-AGENT)%", "curl/8.5.0"),
    ("%REQ(USER-AGENT?X-FORWARDED-FOR)%", "curl/8.5.0"),
    ("%REQ(X-MISSING?X-ALSO-MISSING)%", "-"),
    ("%REQ(USER-AGENT):4%", "curl"),
    ("%RESP(CONTENT-TYPE)%", "application/json"),
    ("%RESP(:STATUS)%", "201"),
    ("%RESP(X-NONE)%", "-"),
    ("%TRAILER(GRPC-STATUS)%", "0"),
    ("%TRAILER(X-NONE)%", "-"),
    ("%HOSTNAME%", socket.gethostname()),
    ("%UPSTREAM_CLUSTER:3%", "bac"),
])
def test_operator(op, expected):
    assert fmt(op) == expected


def test_operators_with_nothing_recorded():
    info = make_info(response_code=0, response_code_details="", upstream_host=None,
                     upstream_cluster=None, upstream_local_address=None, route_name=None,
                     request_end_mono=None, response_start_mono=None, end_mono=None,
                     response_trailers=None, downstream_remote_address="")
    f = compile_text("%RESPONSE_CODE% %RESPONSE_CODE_DETAILS% %UPSTREAM_HOST% %UPSTREAM_CLUSTER% "
                     "%UPSTREAM_LOCAL_ADDRESS% %ROUTE_NAME% %DURATION% %REQUEST_DURATION% "
                     "%RESPONSE_DURATION% %RESPONSE_TX_DURATION% %TRAILER(GRPC-STATUS)% "
                     "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%")
    assert f.format(info) == "0 - - - - - - - - - - -"


def test_response_flags_joined_in_order():
    info = make_info(response_flags=["UF", "URX"])
    assert compile_text("%RESPONSE_FLAGS%").format(info) == "UF,URX"
    assert compile_text("%RESPONSE_FLAGS_LONG%").format(info) == \
        "UpstreamConnectionFailure,UpstreamRetryLimitExceeded"


@pytest.mark.parametrize("flag, status", [("NR", 404), ("UH", 503), ("UF", 503), ("UT", 504),
                                          ("UO", 503), ("DC", 0), ("RL", 429), ("SI", 408)])
def test_response_flags_as_the_data_path_records_them(flag, status):
    info = make_info(response_flags=[flag], response_code=status)
    assert fmt("%RESPONSE_CODE% %RESPONSE_FLAGS%", info) == f"{status} {flag}"


def test_ipv6_addresses_without_port():
    info = make_info(downstream_remote_address="[2001:db8::1]:443",
                     downstream_local_address="[::1]:10000")
    assert fmt("%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT% %DOWNSTREAM_REMOTE_PORT% "
               "%DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT%", info) == "2001:db8::1 443 ::1"


def test_trace_id_from_span():
    class Span:
        trace_id = "463ac35c9f6413ad"
    assert fmt("%TRACE_ID%", make_info(trace=Span())) == "463ac35c9f6413ad"


@pytest.mark.parametrize("spec, expected", [
    ("%Y/%m/%d %H:%M:%S", "2016/04/15 20:17:00"),
    ("%s", "1460751420"),
    ("%s.%3f", "1460751420.310"),
    ("%6f", "310500"),
    ("%9f", "310500000"),
    ("%1f", "3"),
    ("%H:%M:%E3S", "20:17:00.310"),
    ("%%Y literal %Y", "%Y literal 2016"),
])
def test_start_time_formats(spec, expected):
    assert fmt(f"%START_TIME({spec})%") == expected


def test_start_time_cache_tracks_second_changes():
    tf = TimeFormat(None)
    assert tf(START) == "2016-04-15T20:17:00.310Z"
    assert tf(START + 1.5) == "2016-04-15T20:17:01.810Z"
    assert tf(START) == "2016-04-15T20:17:00.310Z"
    assert TimeFormat("%M %3f")(START + 60.0005) == "18 311"
    # 0.31 is stored as 0.30999..., still printed as 310
    assert TimeFormat(None)(1460751420.31) == "2016-04-15T20:17:00.310Z"
    assert TimeFormat(None)(1460751420.99999) == "2016-04-15T20:17:00.999Z"


def test_literal_percent_and_braces_and_quotes():
    assert fmt("100%% {x} 'q' \"dq\" \\ %RESPONSE_CODE%\t\n") == "100% {x} 'q' \"dq\" \\ 201\t\n"


def test_unknown_operator_is_named():
    with pytest.raises(ValueError, match=r"^unknown access log command operator %FOO%$"):
        compile_text("[%START_TIME%] %FOO% %BYTES_SENT%")
    with pytest.raises(ValueError, match=r"unknown access log command operator %NOPE%"):
        compile_json({"a": "%NOPE(x):3%"})
    # Envoy 1.40 refuses %REQUEST_ID% too ("Not supported field in StreamInfo"): the id is
    # %STREAM_ID% or %REQ(X-REQUEST-ID)%
    with pytest.raises(ValueError, match=r"unknown access log command operator %REQUEST_ID%"):
        compile_text("%REQUEST_ID%")


def test_malformed_operator_reports_position():
    with pytest.raises(ValueError, match="position 6"):
        compile_text("hello %lower% x")
    with pytest.raises(ValueError, match="needs a header name"):
        compile_text("%REQ()%")
    with pytest.raises(ValueError, match="header alternatives"):
        compile_text("%REQ(A?B?C)%")


def test_parse_keeps_operator_text():
    parts = parse("a %REQ(X?Y):3% b")
    assert parts[0] == "a " and parts[2] == " b"
    assert (parts[1].name, parts[1].arg, parts[1].max_len) == ("REQ", "X?Y", 3)


def test_omit_empty_values_text():
    assert compile_text("[%UPSTREAM_HOST%]", omit_empty_values=True).format(
        make_info(upstream_host=None)) == "[]"


def test_json_typed_values_keys_in_order_one_line():
    f = compile_json({
        "start_time": "%START_TIME%", "method": "%REQ(:METHOD)%", "code": "%RESPONSE_CODE%",
        "bytes": "%BYTES_SENT%", "duration": "%DURATION%", "missing": "%REQ(X-NOPE)%",
        "upstream": "%UPSTREAM_HOST%", "line": "%REQ(:METHOD)% %REQ(:PATH)% %REQ(X-NOPE)%",
        "const": "static", "num": 7, "flag": True, "nested": {"cluster": "%UPSTREAM_CLUSTER%"},
        "flags": "%RESPONSE_FLAGS%",
    })
    line = f.format(make_info())
    assert line.endswith("\n") and line.count("\n") == 1
    doc = orjson.loads(line)
    assert list(doc) == ["start_time", "method", "code", "bytes", "duration", "missing",
                         "upstream", "line", "const", "num", "flag", "nested", "flags"]
    assert doc == {
        "start_time": "2016-04-15T20:17:00.310Z", "method": "POST", "code": 201, "bytes": 27,
        "duration": 23, "missing": None, "upstream": "10.0.0.9:8080",
        "line": "POST /api/v1?x=1 -", "const": "static", "num": 7, "flag": True,
        "nested": {"cluster": "backend"}, "flags": "-",
    }


def test_json_untyped_renders_strings():
    doc = orjson.loads(compile_json({"code": "%RESPONSE_CODE%", "d": "%DURATION%",
                                     "m": "%UPSTREAM_LOCAL_ADDRESS%"}, typed=False)
                       .format(make_info(upstream_local_address=None)))
    assert doc == {"code": "201", "d": "23", "m": None}


def test_json_escapes_hostile_header_values():
    info = make_info()
    info.request.headers.add("x-evil", 'a"b\\c\n{"injected": 1}')
    doc = orjson.loads(compile_json({"v": "%REQ(X-EVIL)%"}).format(info))
    assert doc == {"v": 'a"b\\c\n{"injected": 1}'}


def test_json_omit_empty_values():
    doc = orjson.loads(compile_json({"a": "%UPSTREAM_HOST%", "b": "%RESPONSE_CODE%"},
                                    omit_empty_values=True).format(make_info(upstream_host=None)))
    assert doc == {"b": 201}


def test_substitution_format_string_protos():
    from envoy.config.core.v3.substitution_format_string_pb2 import SubstitutionFormatString
    from google.protobuf import json_format

    from proxyd.observability.access_log.formatter import compile_substitution_format

    def sfs(d):
        return compile_substitution_format(json_format.ParseDict(d, SubstitutionFormatString()))

    assert sfs({"text_format_source": {"inline_string": "%RESPONSE_CODE%\n"}}).format(
        make_info()) == "201\n"
    assert sfs({"text_format": "%PROTOCOL%"}).format(make_info()) == "HTTP/1.1"
    doc = orjson.loads(sfs({"json_format": {"code": "%RESPONSE_CODE%", "p": "%PROTOCOL%"}})
                       .format(make_info()))
    assert doc == {"code": 201, "p": "HTTP/1.1"}
    assert sfs({"text_format_source": {"inline_string": "[%UPSTREAM_HOST%]"},
                "omit_empty_values": True}).format(make_info(upstream_host=None)) == "[]"
