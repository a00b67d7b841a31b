"""RetryPolicy compiled from the real protos: defaults, where a policy applies, and what
proxyd refuses rather than ignores."""
import pytest

from proxyd.http.headers import Headers
from proxyd.http.message import ResponseHead
from routing_helpers import request, table_from


def _entry(vhost_policy=None, route_policy=None):
    action = {"cluster": "c"}
    if route_policy is not None:
        action["retry_policy"] = route_policy
    vh = {"name": "vh", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": action}]}
    if vhost_policy is not None:
        vh["retry_policy"] = vhost_policy
    return table_from({"virtual_hosts": [vh]}).match(request("/"))


def _resp(status, headers=()):
    return ResponseHead(status, Headers(list(headers)), "", "HTTP/1.1")


def test_defaults_are_envoys():
    p = _entry(route_policy={"retry_on": "5xx"}).retry_policy
    assert (p.num_retries, p.per_try_timeout, p.base_interval, p.max_interval) == (
        1, 0.0, 0.025, 0.25)


def test_the_route_policy_replaces_the_virtual_hosts_policy():
    p = _entry({"retry_on": "5xx", "num_retries": 4}, {"retry_on": "retriable-4xx"}).retry_policy
    assert p.num_retries == 1
    assert not p.retry_response(_resp(503)) and p.retry_response(_resp(409))
    assert _entry({"retry_on": "5xx"}).retry_policy.retry_response(_resp(500))
    assert _entry().retry_policy is None


def test_gateway_error_and_retriable_headers():
    p = _entry(route_policy={"retry_on": "gateway-error,retriable-headers", "retriable_headers": [
        {"name": "x-upstream-retry", "exact_match": "yes"}]}).retry_policy
    assert [p.retry_response(_resp(s)) for s in (500, 502, 503, 504)] == [False, True, True, True]
    assert p.retry_response(_resp(200, [("x-upstream-retry", "yes")]))
    assert not p.retry_response(_resp(200, [("x-upstream-retry", "no")]))


def test_unimplemented_retry_on_values_are_refused():
    with pytest.raises(ValueError, match=r"retry_policy\.retry_on: 'unavailable' is not supported"):
        _entry(route_policy={"retry_on": "5xx,unavailable"})


def test_back_off_max_below_base_is_refused():
    with pytest.raises(ValueError, match="max_interval"):
        _entry(route_policy={"retry_on": "5xx", "retry_back_off": {
            "base_interval": "0.1s", "max_interval": "0.05s"}})
