"""Per-stream HTTP/2 behaviour through a real proxyd, as Envoy has it: stream-level
errors reset one stream and leave the connection serving the others (RFC 9113 5.4.2),
stream_idle_timeout and request_timeout per stream, and the two-step GOAWAY drain."""
from __future__ import annotations

import re
import shutil
import signal
import subprocess
import time
import urllib.request

import pytest

from h2_helpers import h2_cluster
from h2client import H2Client
from h2server import H2Server
from harness import bootstrap, cluster, free_port, listener, route, simple_config, \
    virtual_host
from proxyd.http.codec import http2 as h2c

MAX_SID = 0x7FFFFFFF


@pytest.fixture
def h2_upstream():
    srv = H2Server()
    yield srv
    srv.stop()


def _stats(admin_port: int) -> dict:
    txt = urllib.request.urlopen("http://127.0.0.1:%d/stats" % admin_port, timeout=5).read()
    return {k: v for k, _, v in (line.partition(": ") for line in txt.decode().splitlines())}


def _config(port, h1_port, h2_port=None, admin=None, **hcm):
    routes = [route("/h2/", "h2up"), route("/", "h1up")] if h2_port else [route("/", "h1up")]
    clusters = [cluster("h1up", [("127.0.0.1", h1_port)])]
    if h2_port:
        clusters.append(h2_cluster("h2up", h2_port))
    return bootstrap([listener(port, virtual_hosts=[virtual_host(routes)], **hcm)], clusters,
                     admin_port=admin)


def test_streams_over_the_limit_are_refused_the_others_complete(upstream, proxyd_factory):
    px = proxyd_factory(simple_config(free_port(), upstream.port, http2_protocol_options={
        "max_concurrent_streams": 2}))
    with H2Client(px.port) as c:
        # sent before our SETTINGS are read, so the client does not hold itself back
        sids = [c.request("GET", "/slow%d?delay=0.4" % i) for i in range(4)]
        got = [c.wait(s, 5) for s in sids]
        assert [r.status for r in got[:2]] == [200, 200]
        assert all(r.ended for r in got[:2])
        assert [r.reset_code for r in got[2:]] == [h2c.REFUSED_STREAM] * 2
        assert not c.closed and c.goaway is None
        assert c.get("/after").status == 200


def test_malformed_streams_are_reset_alone(upstream, proxyd_factory):
    px = proxyd_factory(simple_config(free_port(), upstream.port))
    with H2Client(px.port) as c:
        slow = c.request("GET", "/inflight?delay=0.5")
        # an upper-case field name is a malformed request (RFC 9113 8.2.1)
        bad = c.request("GET", "/bad", headers=[("X-Upper", "1")])
        assert c.wait(bad, 5).reset_code == h2c.PROTOCOL_ERROR
        # a body longer than its content-length (8.1.1), on a stream proxyd already serves
        short = c.request("POST", "/short", headers=[("content-length", "3")], body=b"12345")
        assert c.wait(short, 5).reset_code == h2c.PROTOCOL_ERROR
        r = c.wait(slow, 5)
        assert (r.status, r.ended) == (200, True)
        assert c.get("/after").status == 200
        assert c.goaway is None


def test_upstream_stream_error_resets_that_stream_only(upstream, h2_upstream, proxyd_factory):
    """A body in reply to HEAD is a stream error on the upstream connection: proxyd resets
    that upstream stream and keeps the connection (and the stream next to it)."""
    px = proxyd_factory(_config(free_port(), upstream.port, h2_upstream.port))
    with H2Client(px.port) as c:
        assert c.get("/h2/first").body.startswith(b"conn=1 ")
        slow = c.request("GET", "/h2/slow")
        r = c.wait(c.request("HEAD", "/h2/head-body"), 5)
        assert (r.status, bytes(r.body), r.ended) == (200, b"", True)
        r = c.wait(c.request("GET", "/h2/get/head-body"), 5)
        assert (r.status, bytes(r.body)) == (200, b"hello")  # the same reply suits a GET
        r = c.wait(slow, 5)
        assert r.status == 200 and r.body.startswith(b"conn=1 ")
        assert c.get("/h2/last").body.startswith(b"conn=1 ")
    assert h2_upstream.connections == 1


def test_stream_idle_timeout_408_while_a_parallel_stream_completes(upstream, proxyd_factory):
    admin = free_port()
    px = proxyd_factory(_config(free_port(), upstream.port, admin=admin,
                                stream_idle_timeout="0.5s"))
    with H2Client(px.port) as c:
        t0 = time.monotonic()
        stalled = c.request("POST", "/stalled", end_stream=False)  # no body ever comes
        # busy for 1.4 s, but never quiet for 0.5 s
        busy = c.request("GET", "/busy?size=8&chunk=1&interval=0.2")
        r = c.wait(stalled, 5)
        assert r.status == 408 and bytes(r.body) == b"stream timeout"
        assert 0.45 < r.end_time - t0 < 1.5
        b = c.wait(busy, 5)
        assert (b.status, bytes(b.body), b.ended) == (200, b"01234567", True)
        assert b.end_time - t0 > 1.2
        # a response that stalls after its head is reset
        r = c.wait(c.request("GET", "/drip?size=4&chunk=1&interval=2"), 5)
        assert r.status == 200 and bytes(r.body) == b"0" and r.reset_code is not None
        assert c.get("/after").status == 200
        assert not c.closed
    st = _stats(admin)
    assert st["http.ingress_http.downstream_rq_idle_timeout"] == "2"


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl missing")
def test_stream_idle_timeout_with_curl(upstream, proxyd_factory):
    """A stream waiting on a silent upstream is idle too: Envoy 1.40 answers 504 "stream
    timeout" once the request is complete (408 only while it is still arriving)."""
    px = proxyd_factory(simple_config(free_port(), upstream.port, stream_idle_timeout="0.5s"))
    t0 = time.monotonic()
    out = subprocess.run(["curl", "-sS", "--http2-prior-knowledge", "-w", "\n%{http_code}",
                          px.url + "/silent?delay=3"], capture_output=True, timeout=20)
    assert out.stdout == b"stream timeout\n504", out
    assert time.monotonic() - t0 < 2.5


@pytest.mark.skipif(shutil.which("h2load") is None, reason="h2load missing (nghttp2-client)")
def test_h2load_refused_streams_and_busy_streams_never_idle_out(upstream, proxyd_factory):
    """h2load opens its 40 streams per connection before reading our SETTINGS (limit 20):
    the extra ones are refused, each connection goes on to finish its share; with a 1 s
    stream_idle_timeout no busy stream times out."""
    px = proxyd_factory(simple_config(free_port(), upstream.port, stream_idle_timeout="1s",
                                      http2_protocol_options={"max_concurrent_streams": 20}))
    n = 2000
    out = subprocess.run(["h2load", "-n", str(n), "-c", "2", "-m", "40",
                          px.url + "/small?size=2000"],
                         capture_output=True, text=True, timeout=60).stdout
    m = re.search(r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded, "
                  r"(\d+) failed, (\d+) errored, (\d+) timeout", out)
    assert m, out
    total, done, ok, failed, errored, timeout = (int(x) for x in m.groups())
    assert (total, done, timeout) == (n, n, 0), out
    assert failed == errored <= 40 and ok + errored == n, out
    assert "status codes: %d 2xx, 0 3xx, 0 4xx, 0 5xx" % ok in out, out


@pytest.mark.parametrize("upstream_h2", [False, True])
def test_request_timeout_on_an_h2_stream(upstream_h2, upstream, h2_upstream, proxyd_factory):
    px = proxyd_factory(_config(free_port(), upstream.port, h2_upstream.port,
                                request_timeout="0.5s"))
    path = "/h2/wait-end" if upstream_h2 else "/x"
    with H2Client(px.port) as c:
        t0 = time.monotonic()
        sid = c.request("POST", path, end_stream=False)  # the body never ends
        assert c.get(path).status == 200
        r = c.wait(sid, 5)
        assert r.status == 408 and bytes(r.body) == b"request timeout"
        assert 0.45 < r.end_time - t0 < 1.5
        assert c.get("/after").status == 200
    if upstream_h2:  # the upstream stream was cancelled, not left open
        assert h2_upstream.resets == [(1, h2c.CANCEL)]


def test_graceful_drain_two_goaways(upstream, proxyd_factory):
    """SIGTERM: a GOAWAY notice (last stream id 2^31-1), streams still accepted; the
    final GOAWAY drain_timeout later; in-flight streams finish; then the close."""
    px = proxyd_factory(simple_config(free_port(), upstream.port, drain_timeout="0.6s"),
                        drain_time_s=10)
    c = H2Client(px.port)
    try:
        assert c.get("/first").status == 200
        inflight = c.request("GET", "/inflight?delay=2")
        time.sleep(0.2)
        t0 = time.monotonic()
        px.signal(signal.SIGTERM)
        while not c.goaways:
            assert c.pump(5), "no GOAWAY"
        assert c.goaways[0][:2] == (MAX_SID, h2c.NO_ERROR)
        during = c.request("GET", "/during")  # between the two: still served
        assert c.wait(during, 5).status == 200
        while len(c.goaways) < 2:
            assert c.pump(5), "no final GOAWAY"
        last, code, t_final = c.goaways[1]
        assert (last, code) == (during, h2c.NO_ERROR)
        assert 0.5 < t_final - t0 < 1.6
        late = c.request("GET", "/late")  # above the final last-stream-id: refused
        assert c.wait(late, 5).reset_code == h2c.REFUSED_STREAM
        r = c.wait(inflight, 5)
        assert (r.status, r.ended) == (200, True)
        deadline = time.monotonic() + 5
        while not c.closed and time.monotonic() < deadline:
            c.pump(0.5)
        assert c.closed
        assert len(c.goaways) == 2
    finally:
        c.close()
