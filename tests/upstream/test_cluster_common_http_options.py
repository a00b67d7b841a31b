"""A cluster's HttpProtocolOptions.common_http_protocol_options through a real proxyd,
on HTTP/1.1 and HTTP/2 upstreams: max_requests_per_connection (a connection carries that
many requests, then a new one is made; upstream_cx_max_requests), max_stream_duration
(504 UMSDR, retried as a reset when the route retries resets;
upstream_rq_max_duration_reached), idle_timeout (an idle connection closes when it
passes; upstream_cx_idle_timeout) and max_connection_duration (past it a connection is
closed when idle, not reused; upstream_cx_max_duration_reached)."""
from __future__ import annotations

import sys
import time
import urllib.request
from pathlib import Path

import pytest

from harness import Conn, bootstrap, cluster, free_port, listener, route

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "http2"))
from h2server import H2Server  # noqa: E402

UPH = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def _options(common: dict, h2: bool = False) -> dict:
    return {UPH: {"@type": "type.googleapis.com/" + UPH, "common_http_protocol_options": common,
                  "explicit_http_config": {"http2_protocol_options": {}} if h2 else
                  {"http_protocol_options": {}}}}


def _stats(admin_port: int) -> dict:
    txt = urllib.request.urlopen("http://127.0.0.1:%d/stats" % admin_port, timeout=5).read()
    return {k: v for k, _, v in (line.partition(": ") for line in txt.decode().splitlines())}


@pytest.fixture
def h2_upstream():
    srv = H2Server()
    yield srv
    srv.stop()


@pytest.fixture
def px(upstream, h2_upstream, proxyd_factory):
    admin = free_port()
    up = [("127.0.0.1", upstream.port)]
    h2 = [("127.0.0.1", h2_upstream.port)]
    routes = [route("/mrpc", "mrpc"), route("/h2mrpc", "h2mrpc"), route("/msd", "msd"),
              route("/retry", "msd", retry_policy={"retry_on": "reset", "num_retries": 1}),
              route("/h2msd", "h2msd"), route("/idle", "idle"), route("/mcd", "mcd"),
              route("/h2mcd", "h2mcd")]
    clusters = [
        cluster("mrpc", up, typed_extension_protocol_options=_options(
            {"max_requests_per_connection": 3})),
        cluster("h2mrpc", h2, typed_extension_protocol_options=_options(
            {"max_requests_per_connection": 2}, h2=True)),
        cluster("msd", up, typed_extension_protocol_options=_options(
            {"max_stream_duration": "0.3s"})),
        cluster("h2msd", h2, typed_extension_protocol_options=_options(
            {"max_stream_duration": "0.1s"}, h2=True)),
        cluster("idle", up, typed_extension_protocol_options=_options({"idle_timeout": "0.3s"})),
        cluster("mcd", up, typed_extension_protocol_options=_options(
            {"max_connection_duration": "0.5s"})),
        cluster("h2mcd", h2, typed_extension_protocol_options=_options(
            {"max_connection_duration": "0.5s"}, h2=True))]
    p = proxyd_factory(bootstrap([listener(free_port(), routes=routes)], clusters, admin))
    p.admin = admin
    return p


def test_http1_max_requests_per_connection(px):
    with Conn(px.port) as c:
        seen = [c.request(path="/mrpc/%d" % i).json() for i in range(7)]
    assert [s["conn_requests"] for s in seen] == [1, 2, 3, 1, 2, 3, 1]
    assert len({s["conn_id"] for s in seen}) == 3
    assert _stats(px.admin)["cluster.mrpc.upstream_cx_max_requests"] == "2"


def test_http2_max_requests_per_connection(px, h2_upstream):
    with Conn(px.port) as c:
        bodies = [c.request(path="/h2mrpc/%d" % i).body for i in range(5)]
    assert [b.split()[0] for b in bodies] == [b"conn=1", b"conn=1", b"conn=2", b"conn=2",
                                              b"conn=3"]
    assert h2_upstream.connections == 3
    assert _stats(px.admin)["cluster.h2mrpc.upstream_cx_max_requests"] == "2"


def test_upstream_max_stream_duration(px, upstream):
    with Conn(px.port) as c:
        r = c.request(path="/msd/x?delay=2")
        assert (r.status, r.body) == (504, b"upstream max stream duration reached")
        assert c.request(path="/msd/x").status == 200
        upstream.reset()
        r = c.request(path="/retry/x?delay=2")   # reset, retried once, reset again
        assert r.status == 504
    assert upstream.stats()["requests"] == 2
    r = Conn(px.port).request(path="/h2msd/slow")   # the H2 upstream answers after 0.3 s
    assert (r.status, r.body) == (504, b"upstream max stream duration reached")
    st = _stats(px.admin)
    assert st["cluster.msd.upstream_rq_max_duration_reached"] == "3"
    assert st["cluster.msd.upstream_rq_retry"] == "1"
    assert st["cluster.h2msd.upstream_rq_max_duration_reached"] == "1"


def test_upstream_idle_timeout(px):
    with Conn(px.port) as c:
        a = c.request(path="/idle/1").json()
        b = c.request(path="/idle/2").json()
        time.sleep(0.8)
        d = c.request(path="/idle/3").json()
    assert a["conn_id"] == b["conn_id"] != d["conn_id"] and d["conn_requests"] == 1
    st = _stats(px.admin)   # closed by its timer, not when next seen
    assert st["cluster.idle.upstream_cx_idle_timeout"] == "1"


def test_upstream_max_connection_duration(px, upstream, h2_upstream):
    with Conn(px.port) as c:
        first = c.request(path="/mcd/1").json()["conn_id"]
        time.sleep(1.0)                            # idle past 0.5 s: closed, not reused
        busy = c.request(path="/mcd/2?delay=0.8").json()
        after = c.request(path="/mcd/3").json()    # busy past it: not reused either
        assert len({first, busy["conn_id"], after["conn_id"]}) == 3
        h2 = [c.request(path="/h2mcd/%d" % i).body.split()[0] for i in range(2)]
        time.sleep(0.8)
        h2.append(c.request(path="/h2mcd/2").body.split()[0])
    assert h2[0] == h2[1] != h2[2]
    st = _stats(px.admin)
    assert int(st["cluster.mcd.upstream_cx_max_duration_reached"]) >= 2
    assert st["cluster.h2mcd.upstream_cx_max_duration_reached"] == "1"
