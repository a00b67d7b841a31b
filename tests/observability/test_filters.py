"""AccessLogFilter: each kind, combinations, runtime sampling, unsupported kinds."""
from __future__ import annotations

import pytest
from envoy.config.accesslog.v3.accesslog_pb2 import AccessLogFilter
from google.protobuf import json_format

from proxyd.observability.access_log.filters import compile_filter
from proxyd.runtime import Runtime, entry

from .conftest import make_info


def flt(d, ctx=None):
    return compile_filter(json_format.ParseDict(d, AccessLogFilter()), ctx)


def status(op, value):
    return {"status_code_filter": {"comparison": {"op": op, "value": {
        "default_value": value, "runtime_key": "access_log.status"}}}}


@pytest.mark.parametrize("op, value, code, expected", [
    ("EQ", 200, 200, True), ("EQ", 200, 201, False), ("GE", 500, 503, True),
    ("GE", 500, 404, False), ("LE", 299, 204, True), ("LE", 299, 301, False),
    ("NE", 200, 500, True), ("NE", 200, 200, False),
])
def test_status_code_filter(op, value, code, expected):
    assert flt(status(op, value))(make_info(response_code=code)) is expected


def test_duration_filter_uses_the_runtime_when_present():
    d = {"duration_filter": {"comparison": {"op": "GE", "value": {
        "default_value": 20, "runtime_key": "access_log.slow_ms"}}}}
    assert flt(d)(make_info()) is True                                  # 23 ms >= 20
    assert flt(d)(make_info(end_mono=1000.010)) is False                # 10 ms

    class Ctx:
        runtime = Runtime()
    compiled = flt(d, Ctx())
    assert compiled(make_info()) is True                                # empty runtime: 20
    Ctx.runtime.update({"access_log.slow_ms": entry(100)})
    assert compiled(make_info()) is False                               # the same filter: 100


def test_not_health_check_and_traceable():
    assert flt({"not_health_check_filter": {}})(make_info()) is True
    assert flt({"not_health_check_filter": {}})(make_info(is_health_check=True)) is False
    assert flt({"traceable_filter": {}})(make_info()) is False
    assert flt({"traceable_filter": {}})(make_info(trace=object())) is True


def test_runtime_filter_percent_and_request_id_consistency():
    def rf(num, denom="HUNDRED", independent=False):
        return flt({"runtime_filter": {"runtime_key": "access_log.sample", "percent_sampled": {
            "numerator": num, "denominator": denom}, "use_independent_randomness": independent}})
    assert rf(100)(make_info()) is True
    assert rf(0)(make_info()) is False
    # Not independent: the decision follows the x-request-id (first 8 hex digits mod 100).
    rid = "00000031-0000-4000-8000-000000000000"          # 0x31 = 49
    assert rf(50)(make_info(request_id=rid)) is True
    assert rf(49)(make_info(request_id=rid)) is False
    assert all(rf(50)(make_info(request_id=rid)) for _ in range(50))
    independent = rf(5000, "TEN_THOUSAND", True)
    hits = sum(independent(make_info(request_id=rid)) for _ in range(4000))
    assert 1600 < hits < 2400
    assert rf(1)(make_info(request_id=None, request=None)) in (True, False)


def test_and_or_filters():
    both = flt({"and_filter": {"filters": [status("GE", 500), {"not_health_check_filter": {}}]}})
    either = flt({"or_filter": {"filters": [status("GE", 500), status("EQ", 404)]}})
    assert both(make_info(response_code=503)) is True
    assert both(make_info(response_code=503, is_health_check=True)) is False
    assert either(make_info(response_code=404)) is True
    assert either(make_info(response_code=200)) is False


def test_response_flag_filter():
    assert flt({"response_flag_filter": {}})(make_info()) is False
    assert flt({"response_flag_filter": {}})(make_info(response_flags=["UF"])) is True
    only = flt({"response_flag_filter": {"flags": ["UT", "NR"]}})
    assert only(make_info(response_flags=["UF"])) is False
    assert only(make_info(response_flags=["UF", "NR"])) is True


def test_header_filter():
    f = flt({"header_filter": {"header": {"name": "user-agent", "prefix_match": "curl"}}})
    assert f(make_info()) is True
    assert f(make_info(request=None)) is False


@pytest.mark.parametrize("d, msg", [
    ({"grpc_status_filter": {}}, "filter.grpc_status_filter: access log filter not supported"),
    ({}, "filter: filter_specifier is required"),
    ({"and_filter": {"filters": [{"not_health_check_filter": {}}]}}, "needs at least 2"),
])
def test_unsupported_and_invalid(d, msg):
    with pytest.raises(ValueError, match=msg):
        flt(d)
