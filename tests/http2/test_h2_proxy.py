"""HTTP/2 through real proxyd processes: curl and h2load as clients, HTTP/1.1 and
HTTP/2 upstreams, concurrency on one connection, flow control, resets, GOAWAY."""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import socket
import subprocess
import threading
import time

import pytest

from h2_helpers import h2_cluster
from h2client import H2Client
from h2server import H2Server
from harness import Conn, bootstrap, cluster, free_port, listener, route, simple_config, \
    virtual_host
from proxyd.http.codec import http2 as h2c

PATTERN = b"0123456789abcdef"


def _body(size: int) -> bytes:
    return (PATTERN * (size // 16 + 1))[:size]


@pytest.fixture
def h2_upstream():
    srv = H2Server()
    yield srv
    srv.stop()


def _mixed_config(port, h1_port, h2_port, **hcm):
    routes = [route("/h2/", "h2up"), route("/", "h1up")]
    return bootstrap([listener(port, virtual_hosts=[virtual_host(routes)], **hcm)],
                     [cluster("h1up", [("127.0.0.1", h1_port)]), h2_cluster("h2up", h2_port)])


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl missing")
def test_curl_prior_knowledge_get_and_post(upstream, proxyd_factory):
    px = proxyd_factory(simple_config(free_port(), upstream.port))
    out = subprocess.run(["curl", "-sS", "--http2-prior-knowledge", "-D", "-",
                          px.url + "/hello?x=1"], capture_output=True, timeout=20)
    head, _, body = out.stdout.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/2 200"), out
    echo = __import__("json").loads(body)
    assert echo["path"] == "/hello?x=1" and echo["version"] == "HTTP/1.1"
    assert ["host", "127.0.0.1:%d" % px.port] in echo["headers"]
    data = os.urandom(1_500_000)
    out = subprocess.run(["curl", "-sS", "--http2-prior-knowledge", "--data-binary", "@-",
                          px.url + "/post"], input=data, capture_output=True, timeout=20)
    echo = __import__("json").loads(out.stdout)
    assert echo["body_len"] == len(data)
    assert echo["body_sha256"] == hashlib.sha256(data).hexdigest()


def test_http1_still_served_on_auto_listener(upstream, proxyd_factory):
    px = proxyd_factory(simple_config(free_port(), upstream.port))
    with Conn(px.port) as c:
        r = c.request("GET", "/h1", headers=[("Host", "x")])
        assert r.status == 200 and r.json()["path"] == "/h1"


@pytest.mark.skipif(shutil.which("h2load") is None, reason="h2load missing (nghttp2-client)")
def test_h2load_many_streams_few_connections(upstream, h2_upstream, proxyd_factory):
    px = proxyd_factory(_mixed_config(free_port(), upstream.port, h2_upstream.port))
    for path, n in (("/small?size=100", 4000), ("/h2/x", 3000)):
        out = subprocess.run(["h2load", "-n", str(n), "-c", "4", "-m", "50", px.url + path],
                             capture_output=True, text=True, timeout=120).stdout
        m = re.search(r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded, "
                      r"(\d+) failed, (\d+) errored, (\d+) timeout", out)
        assert m, out
        assert m.groups() == (str(n), str(n), str(n), "0", "0", "0"), out
        assert "status codes: %d 2xx" % n in out, out
    # 4 client connections x 50 streams were multiplexed upstream on few connections
    assert h2_upstream.connections <= 2
    assert h2_upstream.max_open > 1


def test_http1_client_to_http2_upstream_with_trailers(h2_upstream, proxyd_factory):
    port = free_port()
    cfg = bootstrap([listener(port)], [h2_cluster("upstream", h2_upstream.port)])
    px = proxyd_factory(cfg)
    with Conn(px.port) as c:
        r = c.request("GET", "/one", headers=[("Host", "example.com")])
        assert r.status == 200
        assert r.body.startswith(b"conn=1 sid=1 path=/one")
        assert r.header("transfer-encoding") == "chunked"  # no length from upstream
        r = c.request("GET", "/two", headers=[("Host", "example.com")])
        assert r.body.startswith(b"conn=1 sid=3 path=/two")
    # a client that asks for trailers gets them in the last chunk
    s = socket.create_connection(("127.0.0.1", px.port), timeout=5)
    s.sendall(b"GET /three HTTP/1.1\r\nHost: example.com\r\nTE: trailers\r\n\r\n")
    got = b""
    while not got.endswith(b"\r\n\r\n") or b"\r\n0\r\n" not in got:
        d = s.recv(65536)
        assert d
        got += d
    s.close()
    assert got.startswith(b"HTTP/1.1 200")
    assert got.endswith(b"\r\n0\r\nx-done: 1\r\n\r\n")
    assert b"path=/three" in got


def test_slow_stream_does_not_stall_others(upstream, proxyd_factory):
    px = proxyd_factory(simple_config(free_port(), upstream.port))
    with H2Client(px.port) as c:
        slow = c.request("GET", "/slow?delay=1.5")
        fast = [c.request("GET", "/fast%d" % i) for i in range(10)]
        for sid in fast:
            assert c.wait(sid, 5).status == 200
        assert not c.responses[slow].ended
        r = c.wait(slow, 5)
        assert r.status == 200
        assert r.end_time > max(c.responses[s].end_time for s in fast)


def _rss_kb(pids) -> int:
    total = 0
    for pid in pids:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total


def test_download_flow_control_bounds_buffering(upstream, proxyd_factory):
    """A client that stops acknowledging gets one window's worth; proxyd stops reading
    the upstream instead of buffering the rest, and resumes when the window opens."""
    size = 40 * 1024 * 1024
    px = proxyd_factory(simple_config(free_port(), upstream.port))
    with H2Client(px.port, auto_ack=False) as c:
        c.get("/warm")  # settle the worker's memory
        rss0 = _rss_kb(px.worker_pids())
        sid = c.request("GET", "/big?size=%d" % size)
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            c.pump(0.2)
        r = c.responses[sid]
        assert r.status == 200
        assert len(r.body) <= 65535
        grown = _rss_kb(px.worker_pids()) - rss0
        assert grown < 12 * 1024, "worker grew %d KiB while the client was stalled" % grown
        while not r.ended:
            c.ack(sid)
            c.pump(5)
        assert len(r.body) == size
        assert hashlib.sha256(r.body).digest() == hashlib.sha256(_body(size)).digest()


def test_upload_with_flow_control(upstream, proxyd_factory):
    px = proxyd_factory(simple_config(free_port(), upstream.port))
    data = os.urandom(5 * 1024 * 1024 + 7)
    with H2Client(px.port) as c:
        sid = c.request("POST", "/up", headers=[("content-length", str(len(data)))], body=data)
        echo = __import__("json").loads(bytes(c.wait(sid, 30).body))
        assert echo["body_len"] == len(data)
        assert echo["body_sha256"] == hashlib.sha256(data).hexdigest()
        # no content-length: an HTTP/1 upstream gets it chunked
        sid = c.request("POST", "/up2", body=data[:100000])
        echo = __import__("json").loads(bytes(c.wait(sid, 30).body))
        assert echo["body_len"] == 100000
        assert ["transfer-encoding", "chunked"] in echo["headers"]


def test_upstream_reset_before_headers_is_503(h2_upstream, upstream, proxyd_factory):
    px = proxyd_factory(_mixed_config(free_port(), upstream.port, h2_upstream.port))
    with H2Client(px.port) as c:
        r = c.get("/h2/rst")
        assert r.status == 503
        assert r.body.startswith(b"upstream connect error or disconnect/reset before headers")
        # reset after the response started: the client's stream is reset too
        r = c.wait(c.request("GET", "/h2/rst-after"))
        assert r.status == 200 and r.reset_code is not None and not r.ended
        # HTTP/1 upstream closing without an answer: 503 as well
        assert c.get("/x?close=1").status == 503
        assert c.get("/h2/ok").status == 200


def test_upstream_goaway_moves_new_streams_to_a_new_connection(h2_upstream, upstream,
                                                                proxyd_factory):
    px = proxyd_factory(_mixed_config(free_port(), upstream.port, h2_upstream.port))
    with H2Client(px.port) as c:
        assert c.get("/h2/a").body.startswith(b"conn=1 ")
        assert c.get("/h2/goaway").body.startswith(b"conn=1 ")
        assert c.get("/h2/b").body.startswith(b"conn=2 ")
        assert c.get("/h2/c").body.startswith(b"conn=2 ")


def test_upstream_max_concurrent_streams_opens_more_connections(upstream, proxyd_factory):
    srv = H2Server(max_concurrent_streams=2)
    try:
        px = proxyd_factory(_mixed_config(free_port(), upstream.port, srv.port))
        with H2Client(px.port) as c:
            c.get("/h2/warm")  # the upstream's SETTINGS are known from here on
            sids = [c.request("GET", "/h2/slow") for _ in range(6)]
            statuses = [(c.wait(s).status, bytes(c.responses[s].body)[:80]) for s in sids]
            assert all(st == 200 for st, _ in statuses), statuses
        assert srv.max_open <= 2
        assert srv.connections >= 3
    finally:
        srv.stop()


def _stats(admin_port: int) -> dict:
    import urllib.request
    txt = urllib.request.urlopen("http://127.0.0.1:%d/stats" % admin_port, timeout=5).read()
    return {k: v for k, _, v in (line.partition(": ") for line in txt.decode().splitlines())}


@pytest.mark.parametrize("upstream_h2", [False, True])
def test_client_reset_aborts_the_upstream_request(upstream_h2, upstream, h2_upstream,
                                                  proxyd_factory):
    admin = free_port()
    cfg = _mixed_config(free_port(), upstream.port, h2_upstream.port)
    cfg = dict({"admin": {"address": {"socket_address": {"address": "127.0.0.1",
                                                         "port_value": admin}}}}, **cfg)
    px = proxyd_factory(cfg)
    path, cluster_name = ("/h2/slow", "h2up") if upstream_h2 else ("/slow?delay=2", "h1up")
    with H2Client(px.port) as c:
        sid = c.request("GET", path)
        time.sleep(0.15)
        c.reset(sid)
        t0 = time.monotonic()
        assert c.get("/after").status == 200  # the connection lives on
        assert time.monotonic() - t0 < 1.0
    time.sleep(0.3)
    st = _stats(admin)
    assert st["http.ingress_http.downstream_rq_rx_reset"] == "1"
    assert st["cluster.%s.upstream_rq_tx_reset" % cluster_name] == "1"


def test_max_concurrent_streams_setting_is_advertised(upstream, proxyd_factory):
    px = proxyd_factory(simple_config(free_port(), upstream.port, http2_protocol_options={
        "max_concurrent_streams": 7, "initial_stream_window_size": 131072,
        "initial_connection_window_size": 1048576}))
    with H2Client(px.port) as c:
        c.get("/x")
        assert c.codec._c.remote_settings.max_concurrent_streams == 7
        assert c.codec._c.remote_settings.initial_window_size == 131072
        assert c.codec._c.outbound_flow_control_window >= 1048576 - 65535


def test_garbage_after_preface_gets_goaway(upstream, proxyd_factory):
    px = proxyd_factory(simple_config(free_port(), upstream.port))
    s = socket.create_connection(("127.0.0.1", px.port), timeout=5)
    s.sendall(h2c.PREFACE + b"\x00\x00\x04\x99\x00\x00\x00\x00\x01junk" * 2 +
              b"\x00\x00\x01\x01\x05\x00\x00\x00\x02\xff")
    got = b""
    try:
        while True:
            d = s.recv(65536)
            if not d:
                break
            got += d
    except OSError:
        pass
    s.close()
    assert b"\x07\x00\x00\x00\x00\x00" in got  # a GOAWAY frame header
    with H2Client(px.port) as c:
        assert c.get("/still-serving").status == 200


def test_bodyless_responses_end_with_the_head(upstream, h2_upstream, proxyd_factory):
    px = proxyd_factory(_mixed_config(free_port(), upstream.port, h2_upstream.port))
    with H2Client(px.port) as c:
        for method, path, status in (("HEAD", "/x", 200), ("GET", "/x?status=204", 204),
                                     ("GET", "/x?size=0", 200), ("HEAD", "/h2/x", 200)):
            r = c.wait(c.request(method, path), 5)
            assert (r.status, bytes(r.body), r.ended) == (status, b"", True), (method, path)
