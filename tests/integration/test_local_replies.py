"""Envoy's local replies, as the client sees them: status, body, and that the
connection survives (or closes, for codec errors)."""
import time

import pytest

from harness import (Conn, bootstrap, cluster, closed_port, free_port, http, listener, raw_exchange,
                     route)


@pytest.fixture(scope="module")
def px(module_proxyd_factory, upstream):
    routes = [
        route("/closed/", "closed"),
        route("/unknown/", "no-such-cluster"),
        route("/empty/", "empty"),
        route("/slow/", "upstream", timeout="0.5s"),
        route("/notimeout/", "upstream", timeout="0s"),
        route("/reset/", "upstream"),
        {"match": {"prefix": "/direct"}, "direct_response": {"status": 200}},
    ]
    clusters = [cluster("upstream", [upstream.address]),
                cluster("closed", [("127.0.0.1", closed_port())], connect_timeout="1s"),
                cluster("empty", [("nonexistent.invalid", 80)], type="STRICT_DNS")]
    return module_proxyd_factory(bootstrap([listener(
        free_port(), routes=routes, route_config_extra={"validate_clusters": False})], clusters))


def test_404_no_route(px):
    with Conn(px.port) as c:
        r = c.request("GET", "/nowhere")
        assert (r.status, r.body) == (404, b"")
        assert r.header("content-length") == "0"
        assert c.request("GET", "/direct").status == 200  # still usable


def test_503_connect_failure(px):
    r = http(px.port, path="/closed/x")
    assert r.status == 503
    assert r.body.startswith(b"upstream connect error or disconnect/reset before headers. reset reason: ")
    assert b"connection" in r.body  # e.g. "connection refused" / "connection failure"


def test_503_unknown_cluster(px):
    """validate_clusters: false lets a route name a missing cluster: 503 (Envoy's NC)."""
    r = http(px.port, path="/unknown/x")
    assert r.status == 503


def test_503_no_healthy_upstream(px):
    r = http(px.port, path="/empty/x")
    assert (r.status, r.body) == (503, b"no healthy upstream")


def test_504_route_timeout(px):
    t0 = time.monotonic()
    with Conn(px.port) as c:
        r = c.request("GET", "/slow/?delay=3")
        elapsed = time.monotonic() - t0
        assert (r.status, r.body) == (504, b"upstream request timeout")
        assert 0.4 < elapsed < 2.0
        assert c.request("GET", "/direct").status == 200


def test_timeout_zero_disables_route_timeout(px):
    r = http(px.port, path="/notimeout/?delay=1")
    assert r.status == 200


def test_route_timeout_header_sent_upstream(px):
    sent = dict(http(px.port, path="/slow/x").json()["headers"])
    assert sent["x-envoy-expected-rq-timeout-ms"] == "500"


def test_upstream_closing_without_response_is_503(px):
    r = http(px.port, path="/reset/?close=1")
    assert r.status == 503
    assert r.body.startswith(b"upstream connect error or disconnect/reset before headers")


def test_400_bad_request_closes(px):
    data, closed = raw_exchange(px.port, b"GET / HTTP/1.1\r\nHost: a\r\nBad Header: x\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert data.endswith(b"\r\n\r\nBad Request")
    assert b"connection: close\r\n" in data.lower()
    assert closed


def test_431_closes(px):
    data, closed = raw_exchange(px.port, b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"a" * 70000 + b"\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n")
    assert closed


def test_max_request_headers_kb(module_proxyd_factory, upstream):
    px = module_proxyd_factory(bootstrap([listener(free_port(), max_request_headers_kb=2)],
                                         [cluster("upstream", [upstream.address])]))
    assert http(px.port, headers=[("X-A", "a" * 1000)]).status == 200
    data, closed = raw_exchange(px.port, b"GET / HTTP/1.1\r\nHost: a\r\nX-A: " + b"a" * 3000 + b"\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 431 ") and closed


def test_408_request_timeout_for_a_slow_body(module_proxyd_factory, upstream):
    """HCM request_timeout: a request whose body does not arrive in time gets 408 and
    the connection closes; a request completed in time is not cut by the timer even
    when the upstream is slower than the timeout."""
    px = module_proxyd_factory(bootstrap([listener(free_port(), request_timeout="0.5s")],
                                         [cluster("upstream", [upstream.address])]))
    with Conn(px.port) as c:
        c.sock.sendall(b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc")
        t0 = time.monotonic()
        r = c.read_response()
        assert (r.status, r.body) == (408, b"request timeout")
        assert 0.4 < time.monotonic() - t0 < 3
        assert r.header("connection") == "close"
    r = http(px.port, method="POST", path="/echo?delay=1", body=b"0123456789")
    assert r.status == 200
