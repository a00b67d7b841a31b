"""Connection reuse: downstream keep-alive, the upstream pool, and pipelining."""
import time

from harness import Conn, free_port, http, simple_config


def test_downstream_keep_alive(upstream, proxyd_factory):
    px = proxyd_factory(simple_config(free_port(), upstream.port))
    with Conn(px.port) as c:
        for i in range(5):
            r = c.request("GET", "/ka/%d" % i)
            assert r.status == 200 and r.json()["path"] == "/ka/%d" % i
            assert r.header("connection") != "close"


def test_upstream_connection_is_reused(upstream_factory, proxyd_factory):
    """Sequential requests, even on different client connections, share one pooled
    upstream connection (one worker)."""
    up = upstream_factory("pool")
    px = proxyd_factory(simple_config(free_port(), up.port))
    conn_ids = set()
    for i in range(10):
        r = http(px.port, path="/p/%d" % i)
        conn_ids.add(r.json()["conn_id"])
    assert up.stats() == {"connections": 1, "requests": 10}
    assert len(conn_ids) == 1


def test_upstream_closing_pooled_connection_is_survived(upstream_factory, proxyd_factory):
    """An upstream that answers with Connection: close is not reused; the next request
    gets a new connection and succeeds."""
    up = upstream_factory("closer")
    px = proxyd_factory(simple_config(free_port(), up.port))
    assert http(px.port, path="/?close_after=1").status == 200
    assert http(px.port, path="/next").status == 200
    assert up.stats()["connections"] == 2


def test_upstream_restart_between_requests(upstream_factory, proxyd_factory):
    """A pooled connection whose upstream went away is retried on a fresh one."""
    up = upstream_factory("restarting")
    port = up.port
    px = proxyd_factory(simple_config(free_port(), port))
    assert http(px.port, path="/1").status == 200
    up.stop()
    from harness import Upstream
    up2 = Upstream("restarted", port=port)
    try:
        r = http(px.port, path="/2")
        assert r.status == 200 and r.json()["server"] == "restarted"
    finally:
        up2.stop()


def test_pipelined_requests_answered_in_order(upstream, proxyd_factory):
    """Several requests in one write: the slow first one is still answered first."""
    px = proxyd_factory(simple_config(free_port(), upstream.port))
    with Conn(px.port) as c:
        c.send(b"GET /1?delay=0.3 HTTP/1.1\r\nHost: a\r\n\r\n"
               b"POST /2 HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc"
               b"GET /3 HTTP/1.1\r\nHost: a\r\n\r\n"
               b"HEAD /4?size=10 HTTP/1.1\r\nHost: a\r\n\r\n"
               b"GET /5?chunked=1&size=100 HTTP/1.1\r\nHost: a\r\n\r\n")
        paths = [c.read_response().json()["path"] for _ in range(3)]
        head = c.read_response("HEAD")
        last = c.read_response()
    assert paths == ["/1?delay=0.3", "/2", "/3"]
    assert head.status == 200 and head.body == b""
    assert len(last.body) == 100


def test_pipelined_burst(upstream, proxyd_factory):
    px = proxyd_factory(simple_config(free_port(), upstream.port))
    n = 50
    with Conn(px.port) as c:
        c.send(b"".join(b"GET /b/%d HTTP/1.1\r\nHost: a\r\n\r\n" % i for i in range(n)))
        got = [c.read_response().json()["path"] for _ in range(n)]
    assert got == ["/b/%d" % i for i in range(n)]


def test_idle_timeout_closes_downstream(upstream, proxyd_factory):
    px = proxyd_factory(simple_config(free_port(), upstream.port,
                                      common_http_protocol_options={"idle_timeout": "0.5s"}))
    with Conn(px.port) as c:
        assert c.request("GET", "/idle").status == 200
        t0 = time.monotonic()
        assert c.is_closed(timeout=5)
        assert 0.3 < time.monotonic() - t0 < 3
